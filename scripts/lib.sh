# Shared set-up steps for scripts/run.sh (the main job) and tests/run-all.sh
# (every test). Source it; each function is idempotent and prints what it does.
# Assumes a Debian 12 machine with Rust, run as root.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Packages the product and the tests need. docker.io is Debian's Docker Engine;
# docker-compose is the compose CLI the tests use; rsync/casync are the peers
# the benchmarks compare with; busybox-static makes the test image (no registry
# is reachable); attr/acl set xattrs and ACLs in the metadata tests.
# PostgreSQL 15 is the database the live-migration tests move; the tests call
# the binaries under /usr/lib/postgresql/15/bin: postgresql-15 has the server,
# initdb, pg_ctl, pg_checksums, pgbench and the amcheck extension;
# postgresql-client-15 has psql and pg_amcheck; postgresql-contrib is the
# metapackage that names the contrib modules explicitly.
# etcd-server/etcd-client (3.4) back the cluster tests: one member per Swarm
# node namespace. protobuf-compiler: the etcd client crate compiles etcd's
# .proto files at build time and needs protoc plus the well-known types
# (google/protobuf/descriptor.proto) from libprotobuf-dev, which protoc only
# recommends (and we install without recommends). xfsprogs: xfs_io shuts a
# fenced block volume's filesystem down in cluster mode (ext4 and XFS).
# debootstrap makes the clean root the Debian package test installs into;
# binutils strips the packaged binary; systemd's systemd-analyze checks the
# units.
DAFFE_PACKAGES=(docker.io docker-compose containerd runc rsync casync e2fsprogs busybox-static
    python3-venv iproute2 attr acl util-linux kmod time jq curl bc procps
    postgresql-15 postgresql-client-15 postgresql-contrib
    etcd-server etcd-client protobuf-compiler libprotobuf-dev xfsprogs
    debootstrap binutils systemd)

need_root() { [ "$(id -u)" = 0 ] || die "run as root (the plugin mounts filesystems and talks to dockerd)"; }

ensure_packages() {
    local missing=()
    for p in "${DAFFE_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # The tests run their own PostgreSQL and etcd on private sockets and
        # ports; a system cluster (postgresql's "main" on 5432) or a system
        # etcd (127.0.0.1:2379) would only take memory and ports. So: no main
        # cluster, and no service started by the package scripts while we
        # install (policy-rc.d exit 101 = "action forbidden").
        mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/daffe-no-main.conf
        local own_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 0755 /usr/sbin/policy-rc.d
            own_policy=1
        fi
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
    fi
    stop_system_services
    modprobe loop 2>/dev/null || true
}

# A system PostgreSQL cluster or etcd that an earlier install (or systemd)
# started is stopped: the tests start their own, and must not meet a stranger
# on a port they probe. Only services of those packages are touched.
stop_system_services() {
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _; do
            if [ "${status%%,*}" = online ]; then
                log "stopping system PostgreSQL cluster $ver/$name"
                pg_ctlcluster "$ver" "$name" stop || true
            fi
        done
    fi
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        log "stopping the system etcd service"
        systemctl stop etcd || true
    fi
}

# moto's server mode stands in for EC2 and EBS; a venv keeps it off the system Python.
DAFFE_VENV=${DAFFE_VENV:-/var/tmp/daffe-venv}
ensure_moto() {
    if [ ! -x "$DAFFE_VENV/bin/moto_server" ]; then
        log "installing moto[server] into $DAFFE_VENV"
        python3 -m venv "$DAFFE_VENV"
        "$DAFFE_VENV/bin/pip" install -q 'moto[server]==5.*'
    fi
    export DAFFE_MOTO_SERVER="$DAFFE_VENV/bin/moto_server"
}

# Start dockerd unless one answers. systemd may be absent (containers, CI), so
# start it by hand and wait for its socket.
ensure_dockerd() {
    if docker info >/dev/null 2>&1; then return; fi
    log "starting dockerd (log: /var/log/daffe-dockerd.log)"
    (setsid dockerd >/var/log/daffe-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    tail -20 /var/log/daffe-dockerd.log >&2
    die "dockerd did not come up within 60 s"
}

# A busybox image built locally: docker import of a one-file rootfs.
DAFFE_TEST_IMAGE=${DAFFE_TEST_IMAGE:-daffe-test/busybox:latest}
ensure_test_image() {
    export DAFFE_TEST_IMAGE
    if docker image inspect "$DAFFE_TEST_IMAGE" >/dev/null 2>&1; then return; fi
    log "importing $DAFFE_TEST_IMAGE from /bin/busybox"
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$DAFFE_TEST_IMAGE" >/dev/null
    rm -rf "$root"
    # The FlockerProfiles examples say plain `busybox`.
    docker image inspect busybox:latest >/dev/null 2>&1 || docker tag "$DAFFE_TEST_IMAGE" busybox:latest
}

# Build the workspace binaries; sets DAFFE_BIN. PROFILE=release for benchmarks.
build_daffe() {
    local profile=${1:-dev}
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    log "building daffe ($profile profile, target dir $CARGO_TARGET_DIR)"
    cargo build --locked --profile "$profile" --workspace --bins
    local dir=$profile
    [ "$profile" = dev ] && dir=debug
    export DAFFE_BIN="$CARGO_TARGET_DIR/$dir/daffe"
    [ -x "$DAFFE_BIN" ] || die "no binary at $DAFFE_BIN"
}

# Builds what the tests run, the test binaries and the daffe binary, in one
# pass. `cargo build --bins` resolves features without the dev-dependencies
# (placement's tokio test-util), so everything on tokio, the AWS SDK
# included, would compile a second time for the tests.
build_tests() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    log "building daffe and the tests (target dir $CARGO_TARGET_DIR)"
    cargo test --locked --workspace --no-run
    export DAFFE_BIN="$CARGO_TARGET_DIR/debug/daffe"
    [ -x "$DAFFE_BIN" ] || die "no binary at $DAFFE_BIN"
}

# Seconds `docker volume ls` takes on the default engine. A healthy engine
# answers in about 10 ms; each legacy plugin dockerd has used and lost costs
# its 15 s retry window (dockerd keeps them until it restarts).
volume_ls_seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    docker volume ls >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

# Fails if the engine got slower than BEFORE (seconds) by more than the
# margin: 5 s is hundreds of times a healthy answer, so load on a busy
# machine does not trip it, and a third of what one lost plugin costs, so
# a single one does.
ENGINE_SLOWDOWN_MARGIN=5
check_engine_as_found() {
    local before=$1 after
    after=$(volume_ls_seconds)
    log "docker volume ls: ${before}s before the tests, ${after}s after"
    if [ "$(echo "$after > $before + $ENGINE_SLOWDOWN_MARGIN" | bc)" = 1 ]; then
        printf 'error: the tests left the Docker engine slower (docker volume ls %ss, was %ss): a test plugin was left registered with it\n' "$after" "$before" >&2
        return 1
    fi
}

# Removes the write trackers' tracefs instances (`daffe-*`) that tests'
# daemons left: one killed with -9 cannot remove its own, and the next
# daemon's start sweeps those no live daemon holds
# (`tracefs::sweep_unheld`), but none starts after the last test (a block
# tracker left behind records its loop device's writes until someone does).
# The same rule as that sweep: rmdir only; the kernel refuses an instance a
# live daemon holds open (EBUSY), so it is left as it is. Says how many.
sweep_tracking_left_by_tests() {
    local d n=0
    for d in /sys/kernel/tracing/instances/daffe-* /sys/kernel/debug/tracing/instances/daffe-*; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null && n=$((n + 1))
    done
    [ "$n" = 0 ] || log "removed $n tracefs instance(s) left by test daemons killed mid-run"
}
