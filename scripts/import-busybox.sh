#!/usr/bin/env bash
# Makes a local busybox image without a registry: a rootfs of Debian's static
# busybox plus its applet links, `docker import`ed.
# Usage: scripts/import-busybox.sh [IMAGE=daffe-test/busybox:latest]
set -euo pipefail
image="${1:-daffe-test/busybox:latest}"
bb=/bin/busybox
# Debian's busybox-static: one self-contained binary, all a test image needs.
[ -x "$bb" ] || apt-get install -y busybox-static >/dev/null
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"/rootfs/{bin,tmp,data,proc,sys,dev,etc}
cp "$bb" "$dir/rootfs/bin/busybox"
for applet in $("$bb" --list); do
  [ -e "$dir/rootfs/bin/$applet" ] || ln -s busybox "$dir/rootfs/bin/$applet"
done
tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
docker import --change 'ENV PATH=/bin' "$dir/rootfs.tar" "$image" >/dev/null
echo "imported $image"
