#!/bin/sh
# Renders config.template + accounts.template into DIR and runs a headless
# baresip 1.0 registered to a SIP server, for at most SECONDS.
#
#   run-baresip.sh [options] DIR USER SIP_PORT CTRL_PORT SERVER_IP:SERVER_PORT
#     --domain D        AOR domain / realm (default ringmesh.test)
#     --password PW     (default secret)
#     --transport T     udp|tcp|tls (default udp)
#     --cafile FILE     CA certificates for TLS (sip_cafile; baresip 1.0's
#                       libre loads them but accepts any server certificate)
#     --answer MODE     auto|manual (default auto: incoming calls are answered)
#     --seconds N       baresip -t N: quit after N s (default 20); the whole run is
#                       wrapped in `timeout N+10` (baresip waits for the
#                       un-REGISTER at exit)
#     --rtp LO-HI       RTP port range (default 30000-30099)
#     -e CMD            a command to run at start (repeatable), e.g. -e "/dial sip:bob@ringmesh.test"
# Output (SIP trace with -s and baresip's log) goes to stdout; run it in the
# background with `&` and keep $! to stop it with kill.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
domain=ringmesh.test password=secret transport=udp answer=auto seconds=20 rtp=30000-30099 cafile=
set_e=""
while [ $# -gt 0 ]; do
	case $1 in
	--domain) domain=$2; shift ;;
	--password) password=$2; shift ;;
	--transport) transport=$2; shift ;;
	--cafile) cafile=$2; shift ;;
	--answer) answer=$2; shift ;;
	--seconds) seconds=$2; shift ;;
	--rtp) rtp=$2; shift ;;
	-e) set_e="$set_e$(printf '%s\n' "$2")
"; shift ;;
	-*) echo "unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done
[ $# = 5 ] || { sed -n '2,21p' "$0" >&2; exit 2; }
dir=$1 user=$2 sip_port=$3 ctrl_port=$4 server=$5
mkdir -p "$dir"
# A 440 Hz tone, 8 kHz mono s16 (the PCMU/PCMA rate: ausine only produces
# 48 kHz and baresip then rejects the call with 486), lasting the whole run:
# at the end of the file baresip 1.0 raises AUDIO_ERROR and hangs up.
python3 - "$dir/tone8k.wav" "$((seconds + 10))" <<'PY'
import math, struct, sys, wave
one_second = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000))
w = wave.open(sys.argv[1], "wb")
w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
w.writeframes(one_second * int(sys.argv[2]))
w.close()
PY
sed -e "s/@SIP_ADDR@/127.0.0.1/; s/@SIP_PORT@/$sip_port/; s/@CTRL_PORT@/$ctrl_port/; s/@RTP_PORTS@/$rtp/" \
	-e "s|@AUDIO_SOURCE@|aufile,$dir/tone8k.wav|" \
	"$here/config.template" > "$dir/config"
[ -z "$cafile" ] || printf 'sip_cafile\t\t%s\n' "$cafile" >> "$dir/config"
sed -e '/^#/d' -e "s/@USER@/$user/g; s/@DOMAIN@/$domain/g; s/@PASSWORD@/$password/g; s/@SERVER@/$server/g; s/@TRANSPORT@/$transport/g; s/@ANSWERMODE@/$answer/g" \
	"$here/accounts.template" > "$dir/accounts"
: > "$dir/contacts"
# -e arguments, one per command
set -- baresip -f "$dir" -t "$seconds" -s
if [ -n "$set_e" ]; then
	old_ifs=$IFS; IFS='
'
	for c in $set_e; do set -- "$@" -e "$c"; done
	IFS=$old_ifs
fi
exec timeout $((seconds + 10)) "$@" < /dev/null
