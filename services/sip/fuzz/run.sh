#!/usr/bin/env bash
# Bounded fuzzing of ringmesh-sip, for `make test` and by hand.
#
#   services/sip/fuzz/run.sh SECONDS [TARGET...]
#
# SECONDS is the fuzzing time shared by the targets (default: all four).
# Works on a clean machine: installs cargo-fuzz if missing and builds on
# the stable toolchain with RUSTC_BOOTSTRAP=1. The corpus grows in
# corpus/TARGET (git-ignored), seeded from the committed seeds/TARGET;
# a crash leaves its input in artifacts/TARGET and fails the run.
set -euo pipefail

secs="${1:-60}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(message_roundtrip digest_credentials transactions stream_framing)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
per=$(( secs / ${#targets[@]} ))
[ "$per" -ge 1 ] || per=1

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds="seeds/$t"
    [ -d "$seeds" ] || seeds="seeds/message_roundtrip"
    echo "fuzz: $t for ${per}s"
    log="target/fuzz-$t.log"
    mkdir -p target
    # -a: debug assertions and overflow checks in the fuzzed code.
    status=0
    cargo fuzz run -a "$t" "corpus/$t" "$seeds" -- \
        -max_total_time="$per" -max_len=8192 -dict=sip.dict -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t, log $here/$log)" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} target(s) ran ${per}s each without a crash"
