#!/usr/bin/env bash
# Runs the functional sipp scenarios of loadtest/sipp/ against a SIP server
# (Kamailio reference or a Ringmesh supernode) and prints PASS/FAIL per test.
#
#   run_suite.sh [options] SERVER_IP:SERVER_PORT
#     --domain D        served domain / realm (default ringmesh.test)
#     --password PW     subscribers' password (default secret)
#     --users N         registration test: user0..user{N-1} over UDP (default 1000)
#     --tcp-users N     registration test: user0..user{N-1} over TCP, one
#                       connection each (default 100)
#     --noauth          the server has no authentication (`--auth none`):
#                       run the no-auth scenarios instead
#     --base-port P     local ports P..P+9 are used (default 0: each one a
#                       free port the kernel chose)
#     --work DIR        logs and CSV files (default: a new mktemp -d)
#     --only LIST       comma-separated test names to run (default: all)
#
# Needs subscribers alice, bob, user0..user{N-1} with the password (auth
# mode), e.g. loadtest/kamailio/run-kamailio.sh --auth --users 1000 PORT
# or `ringmesh dev --users 1000`. Every sipp run is bounded (-m, -timeout,
# -timeout_error, and `timeout`). Exit status: number of failed tests.
set -u
here=$(cd "$(dirname "$0")" && pwd)

domain=ringmesh.test
password=secret
users=1000
tcp_users=100
noauth=0
base=0
work=
only=
server=
while [ $# -gt 0 ]; do
	case $1 in
	--domain) domain=$2; shift ;;
	--password) password=$2; shift ;;
	--users) users=$2; shift ;;
	--tcp-users) tcp_users=$2; shift ;;
	--noauth) noauth=1 ;;
	--base-port) base=$2; shift ;;
	--work) work=$2; shift ;;
	--only) only=,$2, ;;
	-h|--help) sed -n '2,20p' "$0"; exit 0 ;;
	-*) echo "unknown option $1" >&2; exit 2 ;;
	*) server=$1 ;;
	esac
	shift
done
[ -n "$server" ] || { echo "usage: run_suite.sh [options] SERVER_IP:SERVER_PORT" >&2; exit 2; }
work=${work:-$(mktemp -d /tmp/ringmesh-sipp-suite.XXXXXX)}
mkdir -p "$work"
cd "$work" || exit 2

# A local port: P+n, or with P = 0 one the kernel has free now (UDP and
# TCP), so that suites can run side by side.
port() {
	if [ "$base" = 0 ]; then
		python3 -c 'import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    t = socket.socket(); p = u.getsockname()[1]
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
	else
		echo $((base + $1))
	fi
}
P_CALLER=$(port 1) P_CALLEE=$(port 2) P_CALLEE2=$(port 3)
P_REG=$(port 4) P_REGTCP=$(port 5) P_OPT=$(port 6)
P_OB1=$(port 7) P_OB2=$(port 8)
S=$here
common=(-i 127.0.0.1 -nostdin -timeout_error)

"$S/gen_users.sh" "$users" "$domain" "$password" > users.csv
"$S/gen_users.sh" "$tcp_users" "$domain" "$password" > users_tcp.csv
"$S/gen_users.sh" --names alice "$domain" "$password" > alice.csv
"$S/gen_users.sh" --names bob "$domain" "$password" > bob.csv

failed=0
wanted() { [ -z "$only" ] || [[ $only == *",$1,"* ]]; }
result() { # name rc start_seconds
	local t=$(( $(date +%s%N) / 1000000 - $3 ))
	if [ "$2" = 0 ]; then echo "PASS $1 (${t} ms)"; else echo "FAIL $1 (exit $2, ${t} ms, logs in $work/$1.*)"; failed=$((failed + 1)); fi
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# sipp wrapper: name, bound seconds, args...
sp() { local name=$1 secs=$2; shift 2
	timeout $((secs + 10)) sipp "$@" "${common[@]}" -timeout "${secs}s" \
		-trace_err -error_file "$name.err" "$server" > "$name.out" 2>&1
}
# a callee (uas_reg.xml + out-of-call scenario) in the background; sets CALLEE_PID
callee() { local name=$1 port=$2 ooc=$3; shift 3
	rm -f "$name.msg"
	sp "$name" 40 -sf "$S/uas_reg.xml" -oocsf "$S/$ooc" -inf bob.csv -p "$port" -m 1 \
		-auth_uri "$domain" -trace_msg -message_file "$name.msg" "$@" &
	CALLEE_PID=$!
	CALLEES="${CALLEES:-} $name"
}
# wait (at most 10 s) until every callee started since the last call got the
# 200 for its authenticated REGISTER (CSeq 2), as seen in its message trace
wait_registered() { local n deadline=$(( $(now_ms) + 10000 ))
	for n in $CALLEES; do
		until grep -A8 '^SIP/2.0 200' "$n.msg" 2>/dev/null | grep -q 'CSeq: 2 REGISTER'; do
			[ "$(now_ms)" -lt "$deadline" ] || { echo "  $n: not registered after 10 s"; break; }
			sleep 0.05
		done
	done
	CALLEES=
}

test_options() { local t=$1 name=options_$1 s; s=$(now_ms)
	sp "$name" 10 -sf "$S/options.xml" -p "$P_OPT" -t "$t" -m 1; result "$name" $? "$s"; }

if [ "$noauth" = 0 ]; then
	for t in u1 t1; do wanted options_$t && test_options $t; done

	if wanted reg_auth_udp; then s=$(now_ms)
		sp reg_auth_udp 60 -sf "$S/reg_auth.xml" -inf users.csv -p "$P_REG" -t u1 \
			-r 500 -m "$users" -l 500 -auth_uri "$domain"
		result reg_auth_udp $? "$s"; fi
	if wanted reg_auth_tcp; then s=$(now_ms)
		sp reg_auth_tcp 60 -sf "$S/reg_auth.xml" -inf users_tcp.csv -p "$P_REGTCP" -t tn \
			-max_socket 1000 -r 100 -m "$tcp_users" -auth_uri "$domain"
		result reg_auth_tcp $? "$s"; fi

	for t in u1 t1; do
		if wanted call_$t; then s=$(now_ms)
			callee callee_$t "$P_CALLEE" uas_answer.xml -t $t; wait_registered
			sp call_$t 20 -sf "$S/uac_call.xml" -inf alice.csv -s bob -auth_uri "bob@$domain" \
				-p "$P_CALLER" -t $t -m 1 -d 200
			rc=$?; wait "$CALLEE_PID"; rc2=$?; [ $rc = 0 ] && rc=$rc2
			result call_$t $rc "$s"; fi
	done

	for t in u1 t1; do
		if wanted fork_$t; then s=$(now_ms)
			callee fork_answer_$t "$P_CALLEE" uas_answer.xml -t $t -d 300; a=$CALLEE_PID
			callee fork_ring_$t "$P_CALLEE2" uas_ring_cancel.xml -t $t; b=$CALLEE_PID
			wait_registered
			sp fork_$t 20 -sf "$S/uac_call.xml" -inf alice.csv -s bob -auth_uri "bob@$domain" \
				-p "$P_CALLER" -t $t -m 1 -d 200 -trace_msg -message_file fork_$t.msg
			rc=$?; wait $a; ra=$?; wait $b; rb=$?
			n200=$(grep -A8 '^SIP/2.0 200' fork_$t.msg | grep -c 'CSeq: 2 INVITE')
			[ $rc = 0 ] && rc=$ra; [ $rc = 0 ] && rc=$rb
			[ $rc = 0 ] && [ "$n200" != 1 ] && { echo "  caller got $n200 200 OK for the INVITE"; rc=9; }
			result fork_$t $rc "$s"; fi
	done

	if wanted cancel; then s=$(now_ms)
		callee cancel_callee "$P_CALLEE" uas_ring_cancel.xml; wait_registered
		sp cancel 20 -sf "$S/uac_cancel.xml" -inf alice.csv -s bob -auth_uri "bob@$domain" \
			-p "$P_CALLER" -m 1 -d 200
		rc=$?; wait "$CALLEE_PID"; rc2=$?; [ $rc = 0 ] && rc=$rc2
		result cancel $rc "$s"; fi

	if wanted busy; then s=$(now_ms)
		callee busy_callee "$P_CALLEE" uas_busy.xml; wait_registered
		sp busy 20 -sf "$S/uac_expect_486.xml" -inf alice.csv -s bob -auth_uri "bob@$domain" \
			-p "$P_CALLER" -m 1
		rc=$?; wait "$CALLEE_PID"; rc2=$?; [ $rc = 0 ] && rc=$rc2
		result busy $rc "$s"; fi

	# Not a subscriber: the same 480 as a subscriber without a binding, so
	# nothing tells the two apart.
	if wanted unknown_480; then s=$(now_ms)
		sp unknown_480 20 -sf "$S/uac_expect_480.xml" -inf alice.csv -s nosuchuser \
			-auth_uri "nosuchuser@$domain" -p "$P_CALLER" -m 1
		result unknown_480 $? "$s"; fi

	# bob is a subscriber and, after the tests above, has no binding
	if wanted unavailable_480; then s=$(now_ms)
		sp unavailable_480 20 -sf "$S/uac_expect_480.xml" -inf alice.csv -s bob \
			-auth_uri "bob@$domain" -p "$P_CALLER" -m 1
		result unavailable_480 $? "$s"; fi

	# Flow 1 over UDP, flow 2 over TCP: the first sipp exits before the
	# second starts, and a TCP flow that closes takes its binding with it
	# (RFC 5626); a UDP flow stays until silent past its Flow-Timer.
	if wanted outbound; then s=$(now_ms)
		inst=$(python3 -c 'import uuid; print(uuid.uuid4())')
		sp outbound_flow1 10 -sf "$S/reg_outbound.xml" -inf alice.csv -key regid 1 -key bindings 1 \
			-key instance "$inst" -auth_uri "$domain" -p "$P_OB1" -t u1 -m 1
		rc=$?
		if [ $rc = 0 ]; then
			sp outbound_flow2 10 -sf "$S/reg_outbound.xml" -inf alice.csv -key regid 2 -key bindings 2 \
				-key instance "$inst" -auth_uri "$domain" -p "$P_OB2" -t t1 -m 1
			rc=$?
		fi
		result outbound $rc "$s"; fi

	for t in u1 t1; do wanted options_after_$t && { s=$(now_ms)
		sp options_after_$t 10 -sf "$S/options.xml" -p "$P_OPT" -t $t -m 1; result options_after_$t $? "$s"; }; done
else
	for t in u1 t1; do wanted options_$t && test_options $t; done
	if wanted reg_noauth; then s=$(now_ms)
		sp reg_noauth 60 -sf "$S/reg_noauth.xml" -inf users.csv -p "$P_REG" -t u1 -r 1000 -m "$users"
		result reg_noauth $? "$s"; fi
	if wanted call_noauth; then s=$(now_ms)
		# 100 callees registered with the UAS's port, then 200 calls over them
		"$S/gen_users.sh" 100 "$domain" "$password" callee > callees.csv
		sp call_noauth_reg 20 -sf "$S/reg_noauth.xml" -inf callees.csv -p "$P_CALLEE" -r 200 -m 100
		rc=$?
		if [ $rc = 0 ]; then
			sp call_noauth_uas 40 -sf "$S/uas_noauth.xml" -p "$P_CALLEE" -m 200 &
			u=$!; sleep 0.3
			sp call_noauth 30 -sf "$S/uac_call_noauth.xml" -inf callees.csv -p "$P_CALLER" -r 100 -m 200
			rc=$?; wait $u; rc2=$?; [ $rc = 0 ] && rc=$rc2
		fi
		result call_noauth $rc "$s"; fi
	for t in u1 t1; do wanted options_after_$t && { s=$(now_ms)
		sp options_after_$t 10 -sf "$S/options.xml" -p "$P_OPT" -t $t -m 1; result options_after_$t $? "$s"; }; done
fi
echo "$failed failed; logs in $work"
exit "$failed"
