#!/usr/bin/env bash
# Builds daffe's Debian package with dpkg-deb alone (no debhelper, no cargo
# plugin): the stripped binary, systemd units (daffe.service,
# daffe-agent.service), /etc/daffe/daffe.toml as a conffile, man pages and
# bash/zsh/fish completions generated from the binary's own clap definitions
# (`daffe generate`), the docs and the maintainer scripts in packaging/debian/.
#
# Usage: packaging/build-deb.sh [--bin PATH] [--profile PROFILE] [--out DIR]
#   --bin      the daffe binary to package (default: build it with cargo)
#   --profile  cargo profile to build when --bin is not given (default
#              release, the one to ship; the tests package a dev build to
#              save the release build's time)
#   --out      where the .deb goes (default: $CARGO_TARGET_DIR/debian, else
#              target/debian)
# Prints the path of the .deb on its last line.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin=""
profile=release
target="${CARGO_TARGET_DIR:-$here/target}"
out="$target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in dpkg-deb strip objdump gzip; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool not found (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done

if [ -z "$bin" ]; then
  (cd "$here" && cargo build --locked --profile "$profile" -p daffe-plugin)
  dir=$profile
  [ "$profile" = dev ] && dir=debug
  bin="$target/$dir/daffe"
fi
[ -x "$bin" ] || { echo "build-deb.sh: no daffe binary at $bin" >&2; exit 1; }

# The workspace version; the Debian revision is 1 (one packaging per release).
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -1)"
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }
debversion="$version-1"
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d /var/tmp/daffe-deb.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
umask 022

# The binary, stripped: the release binary's line tables are most of its size.
install -D -m 0755 "$bin" "$root/usr/bin/daffe"
strip --strip-unneeded "$root/usr/bin/daffe"
# The lowest glibc the binary runs on: the newest symbol version it uses.
glibc="$(objdump -T "$root/usr/bin/daffe" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"

# Completions and man pages from the binary being packaged.
"$root/usr/bin/daffe" generate completions "$stage/completions"
"$root/usr/bin/daffe" generate man "$stage/man"
install -D -m 0644 "$stage/completions/daffe.bash" "$root/usr/share/bash-completion/completions/daffe"
install -D -m 0644 "$stage/completions/_daffe" "$root/usr/share/zsh/vendor-completions/_daffe"
install -D -m 0644 "$stage/completions/daffe.fish" "$root/usr/share/fish/vendor_completions.d/daffe.fish"
install -d -m 0755 "$root/usr/share/man/man1"
for page in "$stage"/man/*.1; do
  gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done

install -D -m 0644 "$here/packaging/daffe.service" "$root/lib/systemd/system/daffe.service"
install -D -m 0644 "$here/packaging/daffe-agent.service" "$root/lib/systemd/system/daffe-agent.service"
install -D -m 0644 "$here/packaging/daffe.toml" "$root/etc/daffe/daffe.toml"

doc="$root/usr/share/doc/daffe"
install -D -m 0644 "$here/README.md" "$doc/README.md"
install -m 0644 "$here/plugin/README.md" "$doc/plugin.md"
install -m 0644 "$here/packaging/README.md" "$doc/packaging.md"
install -m 0644 "$here/packaging/UPGRADING.md" "$doc/UPGRADING.md"
install -m 0644 "$here/packaging/debian/copyright" "$doc/copyright"

install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$here/packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/daffe/daffe.toml >"$root/DEBIAN/conffiles"
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$root/DEBIAN/md5sums"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$debversion/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@GLIBC@/$glibc/" \
  "$here/packaging/debian/control.in" >"$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/daffe_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
