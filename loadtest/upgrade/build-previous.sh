#!/bin/sh
# Builds the previous release, the commit PREVIOUS_RELEASE names, into
# TARGET/upgrade/bin/ringmesh (TARGET: $CARGO_TARGET_DIR or ./target), for
# `make upgrade`. Its source comes from this clone's history (git archive);
# it is built in the same target directory, so the registry crates already
# built are reused. The workspace's own crates of the two trees share
# artifact names there: the old build replaces the current one (and
# TARGET/release/ringmesh), so `make upgrade` builds the current release
# again right after (a few minutes each way, against a full build).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
sha=$(grep -v '^#' "$root/loadtest/upgrade/PREVIOUS_RELEASE" | head -n 1)
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/upgrade
if [ -x "$out/bin/ringmesh" ] && [ "$(cat "$out/bin/SHA" 2>/dev/null)" = "$sha" ]; then
    echo "upgrade: the previous release $sha is built ($out/bin/ringmesh)"
    exit 0
fi
if ! git -C "$root" cat-file -e "$sha^{commit}" 2>/dev/null; then
    # A shallow clone: ask its origin for that one commit.
    git -C "$root" fetch --quiet --depth=1 origin "$sha" 2>/dev/null || true
fi
if ! git -C "$root" cat-file -e "$sha^{commit}" 2>/dev/null; then
    echo "upgrade: the previous release $sha is not in this clone's history, and its origin did not give it: a full clone (or git fetch --tags) has it" >&2
    exit 1
fi
rm -rf "$out/src" "$out/bin"
mkdir -p "$out/src" "$out/bin"
git -C "$root" archive "$sha" | tar -x -C "$out/src"
echo "upgrade: building the previous release $sha"
(cd "$out/src" && CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --release --locked -p ringmesh)
cp "$target/release/ringmesh" "$out/bin/ringmesh"
echo "$sha" > "$out/bin/SHA"
rm -rf "$out/src"
