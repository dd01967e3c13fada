#!/usr/bin/env bash
# Builds daffe's managed-plugin rootfs and installs it into Docker:
#   docker plugin create NAME DIR   (DIR = config.json + rootfs/)
#   docker plugin enable NAME
#
# The rootfs is self-contained: the daffe binary, mkfs.ext4 (and mkfs.xfs if
# present), mount and umount, each with the shared libraries ldd lists.
#
# Usage: packaging/build-plugin.sh [--name NAME] [--bin PATH] [--dir DIR]
#                                  [--config-dir DIR] [--no-enable]
#   --name   plugin name (default daffe; docker calls the driver NAME:latest)
#   --bin    the daffe binary (default $DAFFE_BIN, else target/release/daffe,
#            built with cargo if missing)
#   --dir    where to build the plugin directory (default: a temp dir, removed after)
#   --config-dir  host directory the plugin sees as /etc/daffe, where it reads
#            daffe.toml (default /etc/daffe, made if missing: docker refuses
#            to enable a plugin whose bind-mount source is absent)
#   --no-enable  create the plugin but leave it disabled
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
name=daffe
bin="${DAFFE_BIN:-}"
dir=""
enable=1
config_dir=/etc/daffe
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --config-dir) config_dir="$2"; shift 2 ;;
    --no-enable) enable=0; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build-plugin.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  target="${CARGO_TARGET_DIR:-$here/target}"
  bin="$target/release/daffe"
  if [ ! -x "$bin" ]; then
    (cd "$here" && cargo build --release -p daffe-plugin)
  fi
fi
[ -x "$bin" ] || { echo "build-plugin.sh: no daffe binary at $bin" >&2; exit 1; }

cleanup=""
if [ -z "$dir" ]; then
  dir="$(mktemp -d /var/tmp/daffe-plugin.XXXXXX)"
  cleanup="$dir"
fi
trap '[ -n "$cleanup" ] && rm -rf "$cleanup"' EXIT
rootfs="$dir/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,sbin,etc/daffe,dev,proc,sys,tmp,run/docker/plugins,var/lib/daffe}

# copy_with_libs FILE DEST: the file plus every library ldd names, at their paths.
copy_with_libs() {
  install -m 0755 "$1" "$rootfs/$2"
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$lib" ] && cp -L --parents "$lib" "$rootfs/"
  done
}

copy_with_libs "$bin" bin/daffe
for tool in mkfs.ext4 mount umount; do
  path="$(command -v "$tool" || true)"
  [ -n "$path" ] || { echo "build-plugin.sh: $tool not found (apt-get install e2fsprogs mount)" >&2; exit 1; }
  copy_with_libs "$path" "sbin/$tool"
done
if path="$(command -v mkfs.xfs)"; then copy_with_libs "$path" sbin/mkfs.xfs; fi
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$rootfs/etc/"
touch "$rootfs/etc/fstab"

cp "$here/config.json" "$dir/config.json"

if docker plugin inspect "$name" >/dev/null 2>&1; then
  echo "build-plugin.sh: plugin $name exists; remove it first (docker plugin disable -f $name; docker plugin rm $name)" >&2
  exit 1
fi
docker plugin create "$name" "$dir"
mkdir -p "$config_dir"
docker plugin set "$name" "config.source=$config_dir"
if [ "$enable" = 1 ]; then
  docker plugin enable "$name"
fi
docker plugin ls --filter "capability=volumedriver"
