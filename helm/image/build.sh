#!/bin/sh
# Builds the Ringmesh image with no registry: a small Debian bookworm root
# made by debootstrap from the Debian mirror this machine uses, the release
# binary built on the host, imported into podman as ringmesh:VERSION; and
# an SPDX SBOM of what is in it (Debian packages and Rust crates).
#
#   helm/image/build.sh [TARGET_DIR]     (make image; run from the repo root)
#
# The root is cached in TARGET_DIR/image/rootfs (delete it to refresh the
# Debian packages). Needs root (debootstrap, rootful podman).
set -eu

target=${1:-target}
out="$target/image"
rootfs="$out/rootfs"
bin="$target/release/ringmesh"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
image="localhost/ringmesh:$version"
podman="helm/image/podman"

[ -x "$bin" ] || { echo "no $bin: run cargo build --release -p ringmesh first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "make image needs root (debootstrap, rootful podman)" >&2; exit 2; }

# The mirror apt uses here (deb822 or one-line sources), else Debian's.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

if [ ! -f "$rootfs/.complete" ]; then
  rm -rf "$rootfs"
  mkdir -p "$out"
  echo "debootstrap bookworm from $mirror (minbase, ca-certificates)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" > "$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; exit 1; }
  # What a server image does not need.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  touch "$rootfs/.complete"
fi

# The packages' list before the image's own files go in (for the SBOM).
dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Package}\t${Version}\t${Architecture}\n' > "$out/packages.tsv"

# The user the chart runs as, its data directory, and the binary.
stage="$out/stage"
rm -rf "$stage"
cp -a "$rootfs" "$stage"
rm -f "$stage/.complete"
grep -q '^ringmesh:' "$stage/etc/group" || echo 'ringmesh:x:10001:' >> "$stage/etc/group"
grep -q '^ringmesh:' "$stage/etc/passwd" || \
  echo 'ringmesh:x:10001:10001:Ringmesh:/var/lib/ringmesh:/usr/sbin/nologin' >> "$stage/etc/passwd"
install -d -o 10001 -g 10001 -m 0750 "$stage/var/lib/ringmesh"
# Without the line tables (a quarter of the size); symbols stay, so
# backtraces still name functions.
install -d "$stage/usr/local/bin"
strip --strip-debug -o "$stage/usr/local/bin/ringmesh" "$bin"
chmod 0755 "$stage/usr/local/bin/ringmesh"

python3 helm/image/sbom.py "$out/packages.tsv" "$version" > "$out/ringmesh-$version.spdx.json"
install -D -m 0644 "$out/ringmesh-$version.spdx.json" "$stage/usr/share/doc/ringmesh/sbom.spdx.json"

tar -C "$stage" --numeric-owner -cf "$out/ringmesh-$version.tar" .
rm -rf "$stage"
"$podman" rmi -f "$image" > /dev/null 2>&1 || true
# SIP (UDP, TCP), overlay links (QUIC), admin gRPC, metrics and probes,
# provisioning and enrollment gRPC: as helm/Dockerfile.
expose=""
for p in 5060/udp 5060/tcp 5160/udp 5260/tcp 5360/tcp 5660/tcp 5661/tcp; do
  expose="$expose --change=EXPOSE=$p"
done
# shellcheck disable=SC2086 # one word per --change
"$podman" import $expose \
  --change 'USER 10001:10001' \
  --change 'WORKDIR /var/lib/ringmesh' \
  --change 'ENTRYPOINT ["/usr/local/bin/ringmesh"]' \
  --change 'CMD ["--help"]' \
  "$out/ringmesh-$version.tar" "$image" > /dev/null
rm -f "$out/ringmesh-$version.tar"
size=$("$podman" image inspect "$image" --format '{{.Size}}')
echo "$image built ($((size / 1048576)) MiB); SBOM $out/ringmesh-$version.spdx.json"
