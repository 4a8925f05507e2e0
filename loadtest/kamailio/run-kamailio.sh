#!/bin/sh
# Start the Kamailio reference server for Ringmesh (see README.md).
#
#   run-kamailio.sh [options] PORT [auth|noauth]
#
# options (all optional):
#   --auth              same as the trailing word `auth`: digest auth (db_text)
#   --addr IP           listen address (default 127.0.0.1); UDP and TCP on PORT
#   --domain D          served domain and digest realm (default ringmesh.test)
#   --users N           auth only: subscribers user0..user{N-1} + alice, bob (default 1000)
#   --password PW       auth only: their password (default secret)
#   --run-dir DIR       pid file, log, ctl socket, db_text files
#                       (default ${TMPDIR:-/tmp}/ringmesh-kamailio-PORT)
#   --shm MB            shared memory (default 1024: room for 1,000,000 contacts)
#   --pkg MB            private memory per process (default 32)
#   --children N        UDP (and TCP) worker processes (default 2)
#   --malloc qm|fm|tlsf Kamailio memory manager (-x/-X; default: Kamailio's
#                       own default, qm)
#   --cpu LIST          pin with `taskset -c LIST` (e.g. 1)
#   --tls PORT CERT KEY SIP over TLS on PORT too (the tls module), with the
#                       certificate and key files (PEM)
#   --dmq SEED_PORT     a cluster node: usrloc replicated by DMQ (dmq_usrloc)
#                       to the other nodes; SEED_PORT is the SIP port (on
#                       --addr) of the node it first asks for the others
#   --daemon            start in the background, wait until it answers OPTIONS,
#                       print its PID (also in RUN/kamailio.pid) and return;
#                       log in RUN/kamailio.log. Stop it with
#                       kill "$(cat RUN/kamailio.pid)".
# Without --daemon Kamailio stays in the foreground (-DD) and logs to stderr;
# Ctrl-C stops it.
#
# Kamailio runs as the invoking user; nothing is written outside the run dir.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

addr=127.0.0.1
domain=ringmesh.test
users=1000
password=secret
run_dir=
shm=1024
pkg=32
children=2
malloc=
cpu=
tls_port= tls_cert= tls_key=
dmq_seed=
daemon=0
auth=0
port=

while [ $# -gt 0 ]; do
	case $1 in
	--auth) auth=1 ;;
	--addr) addr=$2; shift ;;
	--domain) domain=$2; shift ;;
	--users) users=$2; shift ;;
	--password) password=$2; shift ;;
	--run-dir) run_dir=$2; shift ;;
	--shm) shm=$2; shift ;;
	--pkg) pkg=$2; shift ;;
	--children) children=$2; shift ;;
	--malloc) malloc=$2; shift ;;
	--cpu) cpu=$2; shift ;;
	--tls) tls_port=$2 tls_cert=$3 tls_key=$4; shift 3 ;;
	--dmq) dmq_seed=$2; shift ;;
	--daemon) daemon=1 ;;
	auth) auth=1 ;;
	noauth) auth=0 ;;
	-h|--help) sed -n '2,33p' "$0"; exit 0 ;;
	-*) echo "unknown option: $1" >&2; exit 2 ;;
	*)
		if [ -n "$port" ]; then echo "unexpected argument: $1" >&2; exit 2; fi
		port=$1 ;;
	esac
	shift
done
case $port in ''|*[!0-9]*) echo "usage: run-kamailio.sh [options] PORT [auth|noauth]" >&2; exit 2 ;; esac
for v in "$shm" "$pkg" "$children" "$users" ${dmq_seed:+"$dmq_seed"}; do
	case $v in ''|*[!0-9]*) echo "not a number: $v" >&2; exit 2 ;; esac
done

run_dir=${run_dir:-${TMPDIR:-/tmp}/ringmesh-kamailio-$port}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
pidfile=$run_dir/kamailio.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
	echo "kamailio already running with pid $(cat "$pidfile") (run dir $run_dir)" >&2
	exit 1
fi
rm -f "$pidfile" "$run_dir/ctl.sock"

set -- -f "$here/kamailio-bench.cfg" \
	-l "udp:$addr:$port" -l "tcp:$addr:$port" \
	-m "$shm" -M "$pkg" \
	-Y "$run_dir" -w "$run_dir" -P "$pidfile" \
	-A "DOMAIN=\"$domain\"" \
	-A "CTLSOCK=\"unix:$run_dir/ctl.sock\"" \
	-A "CHILDREN=$children" \
	-E -DD
if [ -n "$malloc" ]; then
	set -- "$@" -x "$malloc" -X "$malloc"
fi
if [ -n "$tls_port" ]; then
	set -- "$@" -l "tls:$addr:$tls_port" -A WITH_TLS -A "TLSCERT=\"$tls_cert\"" -A "TLSKEY=\"$tls_key\""
fi
if [ -n "$dmq_seed" ]; then
	set -- "$@" -A WITH_DMQ -A "DMQ_SELF=\"sip:$addr:$port\"" -A "DMQ_SEED=\"sip:$addr:$dmq_seed\""
fi
if [ "$auth" = 1 ]; then
	"$here/gen_subscribers.sh" "$run_dir/dbtext" "$users" "$domain" "$password"
	set -- "$@" -A WITH_AUTH -A "DBURL=\"text://$run_dir/dbtext\""
fi
if [ -n "$cpu" ]; then
	set -- taskset -c "$cpu" kamailio "$@"
else
	set -- kamailio "$@"
fi

if [ "$daemon" = 0 ]; then
	exec "$@"
fi

"$@" > "$run_dir/kamailio.log" 2>&1 &
pid=$!
# wait (up to 10 s) until it answers OPTIONS on UDP
if ! python3 - "$addr" "$port" <<'EOF'
import socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 0))
lport = s.getsockname()[1]
s.settimeout(0.2)
deadline = time.time() + 10
n = 0
while time.time() < deadline:
    n += 1
    msg = (f"OPTIONS sip:{addr}:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {addr}:{lport};branch=z9hG4bK-probe{n}\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:probe@{addr}>;tag=p{n}\r\n"
           f"To: <sip:{addr}:{port}>\r\nCall-ID: probe-{n}@{addr}\r\n"
           f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    try:
        s.sendto(msg, (addr, port))
        data = s.recv(65535)
        if data.startswith(b"SIP/2.0 200"):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
EOF
then
	echo "kamailio (pid $pid) did not answer OPTIONS within 10 s; log: $run_dir/kamailio.log" >&2
	tail -n 20 "$run_dir/kamailio.log" >&2
	kill "$pid" 2>/dev/null || true
	exit 1
fi
# -DD: the process we started is Kamailio's main process; it wrote $pidfile
[ -f "$pidfile" ] || echo "$pid" > "$pidfile"
echo "$pid"
