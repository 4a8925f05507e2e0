#!/usr/bin/env bash
# The operations tests: the Helm chart, its schema, the dashboards and alert
# rules (static and against a live farm), the Dockerfile and Terraform.
#
#   helm/tests/run.sh [pytest arguments...]
#
# 1. Creates or refreshes the virtualenv .venv/ops from
#    helm/tests/requirements.txt (pinned; reinstalled when the file changes).
# 2. Installs the Debian packages the tests drive, only those missing:
#    sip-tester (sipp), etcd-server, openssl, python3-venv. Prometheus
#    (prometheus, promtool) comes from the Makefile's deps-test.
# 3. Builds the binary (cargo build --release -p ringmesh) unless
#    RINGMESH_BIN names one.
# 4. Runs pytest on helm/tests and terraform/tests, bounded in time, and
#    exits non-zero naming what failed.
#
# Environment: RINGMESH_BIN (a ringmesh binary to use), RINGMESH_OPS_IMG
# (where the dashboard PNGs go; default docs/img), RINGMESH_OPS_KEEP=1
# (keep the live farm's logs), OPS_TIMEOUT (seconds for pytest, default 900).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=$repo/.venv/ops
req=$here/requirements.txt
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
step() { printf '\n==> %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# --- Debian packages --------------------------------------------------------
step "Debian packages"
missing=()
need_deb() { # package command
	command -v "$2" >/dev/null 2>&1 || missing+=("$1")
}
need_deb sip-tester sipp
need_deb etcd-server etcd
need_deb openssl openssl
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	# Debian may start etcd as a service on install; the tests start their own.
fi
for c in sipp etcd openssl promtool prometheus; do
	command -v "$c" >/dev/null 2>&1 || die "$c not found (prometheus and promtool: make deps-test installs them)"
done
echo "sipp, etcd, openssl, prometheus, promtool: present"

# --- virtualenv -------------------------------------------------------------
step "virtualenv $venv"
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	if [ -x "$venv/bin/python" ]; then
		echo "requirements changed: refreshing"
	else
		python3 -m venv "$venv"
	fi
	timeout 1200 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
		--no-input -r "$req" || die "pip install -r $req failed"
	"$venv/bin/python" -m pip check || die "the virtualenv's packages conflict"
	echo "$want" >"$stamp"
else
	echo "up to date"
fi
export VIRTUAL_ENV=$venv
export PATH=$venv/bin:$PATH

# --- the binary -------------------------------------------------------------
step "ringmesh binary"
if [ -z "${RINGMESH_BIN:-}" ]; then
	(cd "$repo" && timeout 1800 cargo build --release -p ringmesh) || die "cargo build --release -p ringmesh failed"
	export RINGMESH_BIN=$repo/target/release/ringmesh
fi
[ -x "$RINGMESH_BIN" ] || die "RINGMESH_BIN=$RINGMESH_BIN is not an executable"
echo "$RINGMESH_BIN"

# --- the tests --------------------------------------------------------------
step "pytest helm/tests terraform/tests"
cd "$repo"
set +e
timeout "${OPS_TIMEOUT:-900}" python -m pytest -p no:cacheprovider -o console_output_style=classic \
	-rfE --durations=8 "$here" "$repo/terraform/tests" "$@"
rc=$?
set -e
case $rc in
0) step "operations tests passed" ;;
124) die "the tests did not finish within ${OPS_TIMEOUT:-900} s (killed)" ;;
*) die "operations tests FAILED (pytest exit $rc): see the FAILED/ERROR lines above" ;;
esac
