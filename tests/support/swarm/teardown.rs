//! The swarm's teardown script: one idempotent shell script written when the
//! swarm is made, run by `Drop` and by the reaper (see the module docs).

use super::Swarm;

impl Swarm {
    /// The teardown script (see the module docs). Everything it touches is
    /// named after this swarm's id, or found through its namespaces.
    pub(super) fn teardown_script(&self, count: usize) -> String {
        let nodes: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
        format!(
            r#"#!/bin/sh
# Tears down swarm {id}: idempotent.
ID={id}
DIR={dir}
NODES="{nodes}"
BRNS={brns}
# Processes are found only through this swarm's own namespaces and cgroups
# (never by name or by a pid file that may have gone stale): everything in
# the nodes' network namespaces (holders, engines, containerd, shims, etcd,
# plugins, host-network containers) or in the engines' cgroups (containers
# with namespaces of their own).
inos=
for n in $NODES; do
  i=$(stat -L -c %i /var/run/netns/df${{ID}}n$n 2>/dev/null) && inos="$inos $i"
done
victims() {{
  if [ -n "$inos" ]; then
    for p in /proc/[0-9]*; do
      i=$(stat -L -c %i $p/ns/net 2>/dev/null) || continue
      case " $inos " in *" $i "*) echo ${{p#/proc/}};; esac
    done
  fi
  for n in $NODES; do
    for d in /sys/fs/cgroup/*/daffe-$ID-n$n; do
      [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {{}} + 2>/dev/null
    done
  done
}}
# Engines first, with SIGTERM: they stop their containers and call their
# plugins while those still run (15 s at most).
engines=
for p in $(victims | sort -u); do
  [ "$(cat /proc/$p/comm 2>/dev/null)" = dockerd ] && engines="$engines $p"
done
if [ -n "$engines" ]; then
  kill -TERM $engines 2>/dev/null
  i=0
  alive() {{ for p in $engines; do kill -0 $p 2>/dev/null && return 0; done; return 1; }}
  while [ $i -lt 150 ] && alive; do sleep 0.1; i=$((i+1)); done
fi
for sig in TERM KILL KILL; do
  v=$(victims | sort -u)
  [ -z "$v" ] && break
  kill -$sig $v 2>/dev/null
  sleep 1
done
for n in $NODES; do
  for d in /sys/fs/cgroup/*/daffe-$ID-n$n; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {{}} + 2>/dev/null
  done
done
# Loop devices over files of this swarm (plugins' block volumes).
losetup -l -n -O NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
  case "$file" in "$DIR"/*) losetup -d "$dev" 2>/dev/null;; esac
done
# Mounts in this namespace under the swarm's paths (none expected: the
# nodes' mounts died with their namespaces).
awk '{{print $5}}' /proc/self/mountinfo | grep -E "^($DIR|/run/daffe-$ID-)" | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
for n in $NODES; do ip netns del df${{ID}}n$n 2>/dev/null; done
ip netns del "$BRNS" 2>/dev/null
i=0
while [ $i -lt 10 ]; do
  rm -rf "$DIR" /run/daffe-$ID-n* 2>/dev/null && break
  sleep 0.5; i=$((i+1))
done
exit 0
"#,
            id = self.id,
            dir = self.dir.display(),
            nodes = nodes.join(" "),
            brns = self.bridge_ns,
        )
    }
}
