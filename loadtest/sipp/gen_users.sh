#!/bin/sh
# Writes a sipp injection file (stdout) with one user per line:
#   SEQUENTIAL
#   user;domain;password;[authentication username=user password=password]
# fields: [field0] = user, [field1] = domain, [field2] = password,
#         [field3] = the digest credentials keyword. sipp 3.6 does not expand
#         [fieldN] inside [authentication ...], but it does expand keywords
#         found in an injected field, so the keyword comes from the file.
#
#   gen_users.sh N [DOMAIN [PASSWORD [PREFIX [START]]]] > users.csv
#       users PREFIX{START} .. PREFIX{START+N-1} (defaults: ringmesh.test secret user 0)
#   gen_users.sh --names alice,bob [DOMAIN [PASSWORD]] > ab.csv   (or -n alice,bob)
#       exactly the named users, in that order
#
# Same subscribers as `ringmesh dev --users N` and
# loadtest/kamailio/run-kamailio.sh --auth --users N (user0.., alice, bob / secret).
set -eu
if [ "${1:-}" = --names ] || [ "${1:-}" = -n ]; then
	names=${2:?usage: gen_users.sh --names a,b [DOMAIN [PASSWORD]]}
	domain=${3:-ringmesh.test}
	password=${4:-secret}
	echo SEQUENTIAL
	echo "$names" | tr ',' '\n' | awk -v d="$domain" -v p="$password" \
		'NF { print $0 ";" d ";" p ";[authentication username=" $0 " password=" p "]" }'
	exit 0
fi
n=${1:?usage: gen_users.sh N [DOMAIN [PASSWORD [PREFIX [START]]]]}
domain=${2:-ringmesh.test}
password=${3:-secret}
prefix=${4:-user}
start=${5:-0}
case $n$start in *[!0-9]*) echo "N and START must be numbers" >&2; exit 2 ;; esac
case "$domain$password$prefix" in *\;*|*\[*|*\]*|*\ *) echo "no ';', '[', ']' or spaces in domain, password, prefix" >&2; exit 2 ;; esac
echo SEQUENTIAL
awk -v n="$n" -v s="$start" -v d="$domain" -v p="$password" -v x="$prefix" \
	'BEGIN { for (i = s; i < s + n; i++)
		print x i ";" d ";" p ";[authentication username=" x i " password=" p "]" }'
