#!/bin/sh
# Writes a Kamailio db_text database directory holding the subscriber table
# (plus the version table db_text needs) for the Ringmesh reference server:
# users user0 .. user{N-1}, alice and bob, all with the same password, in
# DOMAIN (= the digest realm), like `ringmesh dev --users N`. Rows carry the
# clear password and the precomputed HA1 = MD5(user:realm:password) (and ha1b
# = MD5(user@domain:realm:password)); auth_db reads the ha1 column
# (calculate_ha1 no), Kamailio's usual production setting. db_text refuses
# empty (NULL) ha1 fields.
#
#   gen_subscribers.sh DIR [N [DOMAIN [PASSWORD]]]     (defaults 1000 ringmesh.test secret)
set -eu
dir=${1:?usage: gen_subscribers.sh DIR [N [DOMAIN [PASSWORD]]]}
n=${2:-1000}
domain=${3:-ringmesh.test}
password=${4:-secret}
case $n in ''|*[!0-9]*) echo "N must be a number: $n" >&2; exit 2;; esac
case "$domain$password" in *:*|*\\*) echo "domain and password may not contain ':' or '\\'" >&2; exit 2;; esac
mkdir -p "$dir"
printf '%s\n' 'id(int,auto) table_name(string) table_version(int) ' \
	'0:version:1' '0:subscriber:7' '0:location:9' > "$dir/version"
python3 - "$n" "$domain" "$password" > "$dir/subscriber" <<'PY'
import hashlib, sys
n, d, p = int(sys.argv[1]), sys.argv[2], sys.argv[3]
md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
out = ["id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string) "]
for i, u in enumerate(["alice", "bob"] + [f"user{k}" for k in range(n)], 1):
    out.append(f"{i}:{u}:{d}:{p}:{md5(f'{u}:{d}:{p}')}:{md5(f'{u}@{d}:{d}:{p}')}")
sys.stdout.write("\n".join(out) + "\n")
PY
