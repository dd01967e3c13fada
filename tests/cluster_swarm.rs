//! Cluster mode on a real three-manager Swarm with a 3-member etcd (issue
//! 14): one daffe per node, `[cluster]` in each config.
//!
//! - Three nodes creating the same volume at once make one volume; every
//!   node's engine lists and finds every volume; Remove is refused while
//!   another node mounts the volume, and then removes it everywhere.
//! - kill -9 of the owner's dockerd and daffe: its container keeps running
//!   (containerd-shim), and the fence watchdog shuts the block volume's
//!   filesystem down within the lease time; when Swarm reschedules the task
//!   elsewhere, that node's copy is stale and is refused, never served.
//! - A cut link: the partitioned owner stops writing within its lease, the
//!   others see the volume free after it, and the node rejoins unfenced
//!   (its old copy stays fenced).
//! - etcd: one member down changes nothing; two down, no mount anywhere
//!   gets ownership, and the owner stops writing within its lease.
//! - The data path: a service moved to another node (and back) finds every
//!   write of the old node there, on a block and a dir volume: the new
//!   node's stale copy is brought up to date from the last writer's agent
//!   before its Mount returns.

use daffe_e2e::docker::test_image;
use daffe_e2e::swarm::{self, CLUSTER, Lease};
use std::time::{Duration, Instant};

const SCHEDULE_LIMIT: Duration = Duration::from_secs(60);

/// The shared swarm with daffe in cluster mode on every node.
fn with_daffe(lease: Lease) -> std::sync::MutexGuard<'static, daffe_e2e::swarm::Swarm> {
    let mut s = swarm::shared();
    for n in 1..=s.nodes.len() {
        s.start_daffe(n, lease);
    }
    s
}

fn etcd_keys(s: &daffe_e2e::swarm::Swarm, prefix: &str) -> Vec<String> {
    let out = s.etcd.as_ref().unwrap().etcdctl(
        0,
        &[
            "get",
            "--prefix",
            "--keys-only",
            &format!("/daffe/{CLUSTER}/{prefix}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn one_volume_for_three_concurrent_creates_listed_on_every_node_removed_only_unmounted() {
    let mut s = with_daffe(Lease::default());
    // The same name on all three engines at once.
    std::thread::scope(|sc| {
        for n in 0..3 {
            let d = s.nodes[n].docker();
            sc.spawn(move || d.ok(&["volume", "create", "-d", "daffe", "shared@gold"]));
        }
    });
    let ours = |s: &daffe_e2e::swarm::Swarm| -> Vec<String> {
        etcd_keys(s, "volumes/")
            .into_iter()
            .filter(|k| k.ends_with("/shared") || k.ends_with("/only1"))
            .collect()
    };
    assert_eq!(
        ours(&s),
        vec![format!("/daffe/{CLUSTER}/volumes/shared")],
        "three creates made more than one volume"
    );
    // A volume made on node 1 only is known on every node (List and Get).
    s.nodes[0]
        .docker()
        .ok(&["volume", "create", "-d", "daffe", "only1"]);
    for n in 0..3 {
        let names = s.nodes[n].docker().volume_names("daffe");
        for want in ["shared@gold", "only1"] {
            assert!(names.iter().any(|v| v == want), "node {}: {names:?}", n + 1);
        }
    }
    let st = s.nodes[2].docker().volume_inspect("only1");
    assert_eq!(st["Status"]["profile"], "default", "{st}");
    let status = s.cluster_status(1);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    let listed: Vec<_> = status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        listed.contains(&"shared".to_owned()) && listed.contains(&"only1".to_owned()),
        "{status}"
    );

    // Node 1 mounts it: Remove on node 2 is refused, naming node 1.
    let image = test_image();
    let c = s.nodes[0].docker().ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "-v",
        "shared@gold:/data",
        &image,
        "sh",
        "-c",
        "echo one > /data/f; sleep 600",
    ]);
    let st = s.cluster_status(2);
    let vol = st["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "shared")
        .cloned()
        .unwrap();
    assert_eq!(vol["owner"], "swnode1", "{st}");
    let here = s.nodes[0].docker().volume_inspect("shared@gold")["Status"]["cluster"].clone();
    assert_eq!(here["node"], "swnode1", "{here}");
    assert_eq!(here["owned_here"], vol["epoch"], "{here}");
    let err = s.nodes[1].docker().fails(&["volume", "rm", "shared@gold"]);
    assert!(err.contains("in use on node swnode1"), "{err}");
    assert_eq!(ours(&s).len(), 2);
    // Unmounted on node 1: node 2's Remove removes it everywhere.
    s.nodes[0].docker().ok(&["rm", "-f", &c]);
    let t = Instant::now();
    loop {
        let out = s.nodes[1].docker().run(&["volume", "rm", "shared@gold"]);
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "remove after the unmount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ours(&s), vec![format!("/daffe/{CLUSTER}/volumes/only1")]);
    let names = s.nodes[2].docker().volume_names("daffe");
    assert!(!names.iter().any(|v| v == "shared@gold"), "{names:?}");
    s.nodes[0].docker().ok(&["volume", "rm", "only1"]);
    s.reset();
}

#[test]
fn a_killed_owner_is_fenced_and_its_stale_copy_is_never_served_elsewhere() {
    let lease = Lease::default();
    let mut s = with_daffe(lease);
    // Node 3 (not the raft leader, node 1) owns the volume.
    let script =
        "trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); echo $i >> /data/log; sleep 0.2; done";
    s.create_service(
        "fenced",
        3,
        &[
            "--mount",
            "type=volume,source=fdb@gold,target=/data,volume-driver=daffe,volume-nocopy=true",
        ],
        &test_image(),
        &["sh", "-c", script],
    );
    let on3 = s.wait_running("fenced", 3, SCHEDULE_LIMIT);
    let t = Instant::now();
    while s.nodes[2]
        .docker()
        .run(&["exec", &on3, "sh", "-c", "test $(wc -l < /data/log) -ge 3"])
        .status
        .code()
        != Some(0)
    {
        assert!(t.elapsed() < Duration::from_secs(20), "not counting");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mp = s.nodes[2].docker().volume_inspect("fdb@gold")["Mountpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    // Swarm may reschedule to node 2 only (a constraint node 3 still meets
    // does not move the running task).
    s.manager().ok(&[
        "service",
        "update",
        "--detach",
        "--constraint-rm",
        "node.labels.daffe.node==swnode3",
        "--constraint-add",
        "node.labels.daffe.node!=swnode1",
        "fenced",
    ]);

    s.kill_node(3);
    // The orphan container still runs; the watchdog must stop its writes
    // within the lease time (node 3's daffe is dead; its logs stay).
    let fenced_after = wait_fenced(&s, 3, &mp, Duration::from_secs(lease.ttl_secs));
    eprintln!(
        "fenced {:.2} s after kill -9 (lease {} s, margin {} ms)",
        fenced_after.as_secs_f64(),
        lease.ttl_secs,
        lease.margin_ms
    );
    // Swarm reschedules on node 2; node 2's copy never saw node 3's writes.
    let t = Instant::now();
    let refused = loop {
        let tasks = s.tasks("fenced");
        if let Some(task) = tasks
            .iter()
            .find(|t| t.node == "swnode2" && t.error.contains("stale"))
        {
            break task.error.clone();
        }
        assert!(
            !tasks
                .iter()
                .any(|t| t.node == "swnode2" && t.current.starts_with("Running")),
            "node 2 runs the task on a stale copy: {tasks:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "no refused task on node 2: {tasks:?}\n{}",
            s.nodes[1].log("daffe")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(refused.contains("swnode3"), "{refused}");
    let w = s.etcd.as_ref().unwrap().etcdctl(
        0,
        &[
            "get",
            "--print-value-only",
            &format!("/daffe/{CLUSTER}/writers/fdb"),
        ],
    );
    let writer = String::from_utf8_lossy(&w.stdout);
    assert!(writer.starts_with("swnode3@"), "{writer}");
    s.remove_service("fenced");
    s.reset();
}

/// Polls `echo x >> MP/probe` on node `n` until it fails with EIO (the
/// filesystem shut down); returns how long that took, or panics after `limit`.
fn wait_fenced(s: &daffe_e2e::swarm::Swarm, n: usize, mp: &str, limit: Duration) -> Duration {
    let probe = format!("echo x >> {mp}/probe");
    let t = Instant::now();
    loop {
        let out = s.nodes[n - 1]
            .enter("sh")
            .args(["-c", &probe])
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Input/output error"), "{err}");
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "node {n} still writes {mp} after {:?}:\n{}",
            t.elapsed(),
            s.nodes[n - 1].log("daffe")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A container writing `vol` on node `n` (plain `docker run`: what Swarm
/// does after a cut is not what these tests look at); returns its id and
/// the volume's mountpoint there.
fn writer(s: &daffe_e2e::swarm::Swarm, n: usize, vol: &str) -> (String, String) {
    let d = s.nodes[n - 1].docker();
    let c = d.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--volume-driver",
        "daffe",
        "-v",
        &format!("{vol}:/data"),
        &test_image(),
        "sh",
        "-c",
        "while :; do date >> /data/log; sleep 0.2; done",
    ]);
    let mp = d.volume_inspect(vol)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, mp)
}

fn owner_of(s: &daffe_e2e::swarm::Swarm, via: usize, vol: &str) -> serde_json::Value {
    let st = s.cluster_status(via);
    st["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vol)
        .map(|v| v["owner"].clone())
        .unwrap_or_default()
}

#[test]
fn a_partitioned_owner_stops_writing_within_its_lease_and_rejoins_unfenced() {
    let lease = Lease::default();
    let mut s = with_daffe(lease);
    let (c, mp) = writer(&s, 3, "part@gold");
    assert_eq!(owner_of(&s, 1, "part"), "swnode3");
    s.cut(3);
    let after = wait_fenced(&s, 3, &mp, Duration::from_secs(lease.ttl_secs));
    eprintln!(
        "partitioned owner fenced {:.2} s after the cut",
        after.as_secs_f64()
    );
    // The rest of the cluster sees the volume free once the lease is gone.
    let t = Instant::now();
    while owner_of(&s, 1, "part") != serde_json::Value::Null {
        assert!(
            t.elapsed() < Duration::from_secs(lease.ttl_secs + 5),
            "node 3's ownership outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.restore(3);
    // Back on the network, node 3 starts a new term (it may claim again),
    // but the copy under the running container stays fenced.
    let t = Instant::now();
    loop {
        // Unreachable for a moment while node 3's etcd connections are
        // re-made; that is not a failure, staying fenced (or unreachable)
        // for 20 s is.
        let status = s.try_cluster_status(3);
        if matches!(&status, Ok(v) if v["fenced"] == serde_json::Value::Bool(false)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node 3 stays fenced or etcd stays unreachable: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_fenced(&s, 3, &mp, Duration::from_secs(1));
    s.nodes[2].docker().ok(&["rm", "-f", &c]);
    s.reset();
}

#[test]
fn one_etcd_member_down_changes_nothing_two_down_no_owner_is_made_and_owners_fence() {
    let lease = Lease::default();
    let mut s = with_daffe(lease);
    s.nodes[1]
        .docker()
        .ok(&["volume", "create", "-d", "daffe", "quorum2"]);
    s.etcd.as_mut().unwrap().kill_member(2);
    // One member down: create, mount and ownership work as before.
    let (c1, mp) = writer(&s, 1, "quorum1@gold");
    assert_eq!(owner_of(&s, 1, "quorum1"), "swnode1");
    std::thread::sleep(Duration::from_secs(lease.ttl_secs + 1));
    let probe = s.nodes[0]
        .enter("sh")
        .args(["-c", &format!("echo x >> {mp}/probe")])
        .output()
        .unwrap();
    assert!(probe.status.success(), "fenced with a quorum up");
    // Two members down: no quorum. No new owner anywhere (bounded, clear),
    // and the existing owner stops writing within its lease.
    s.etcd.as_mut().unwrap().kill_member(1);
    // etcd renews leases on the leader without consensus, so the last
    // member may renew until it notices it lost quorum (its election
    // timeout, about a second, plus the renewal then in flight); the owner
    // counts its lease from the last renewal acknowledged.
    let after = wait_fenced(&s, 1, &mp, Duration::from_secs(lease.ttl_secs + 3));
    eprintln!(
        "owner fenced {:.2} s after quorum was lost (lease {} s)",
        after.as_secs_f64(),
        lease.ttl_secs
    );
    let t = Instant::now();
    let out = s.nodes[1].docker().run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--volume-driver",
        "daffe",
        "-v",
        "quorum2:/data",
        &test_image(),
        "true",
    ]);
    assert!(
        !out.status.success(),
        "a mount without quorum succeeded:\n{}",
        s.nodes[1].log("daffe")
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcd") || err.contains("fenced"),
        "a mount without quorum: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    s.nodes[0].docker().ok(&["rm", "-f", &c1]);
    s.reset();
}

/// The writer's log on node `n`'s container `c`: `(index, node)` per line.
fn read_log(s: &daffe_e2e::swarm::Swarm, n: usize, c: &str, path: &str) -> Vec<(u64, String)> {
    let out = s.nodes[n - 1].docker().run(&["exec", c, "cat", path]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (i, node) = l.split_once(' ')?;
            Some((i.parse().ok()?, node.to_owned()))
        })
        .collect()
}

/// Every index from 1 on, once, in order: nothing lost, nothing twice.
fn assert_unbroken(log: &[(u64, String)], what: &str) {
    for (k, (i, _)) in log.iter().enumerate() {
        assert_eq!(*i, k as u64 + 1, "{what}: line {} is {i}: {log:?}", k + 1);
    }
}

/// Waits until node `n`'s container `c` has at least `lines` lines in `path`.
fn wait_lines(s: &daffe_e2e::swarm::Swarm, n: usize, c: &str, path: &str, lines: usize) {
    let t = Instant::now();
    while read_log(s, n, c, path).len() < lines {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{path} on node {n} stays under {lines} lines: {:?}",
            read_log(s, n, c, path)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_moved_service_finds_every_write_of_the_old_node_on_block_and_dir_volumes() {
    let mut s = with_daffe(Lease::default());
    // Each line is "INDEX NODE": an index going on from the last line, so a
    // lost write is a gap, and a stale (or empty) copy starts again low.
    let script = "trap 'exit 0' TERM; \
        for f in /g/log /d/log; do touch $f; done; \
        i=$(wc -l < /g/log); \
        while :; do i=$((i+1)); \
          echo \"$i $WHERE\" >> /g/log; echo \"$i $WHERE\" >> /d/log; \
          sleep 0.1; done";
    s.create_service(
        "mover",
        1,
        &[
            "--env",
            "WHERE={{.Node.Hostname}}",
            "--mount",
            "type=volume,source=mvblock@gold,target=/g,volume-driver=daffe,volume-nocopy=true",
            "--mount",
            "type=volume,source=mvdir,target=/d,volume-driver=daffe,volume-nocopy=true",
        ],
        &test_image(),
        &["sh", "-c", script],
    );
    let on1 = s.wait_running("mover", 1, SCHEDULE_LIMIT);
    wait_lines(&s, 1, &on1, "/g/log", 20);

    // Node 1 -> node 2: node 2's copies are empty (made by Get), so stale.
    let t = Instant::now();
    s.move_service("mover", 1, 2);
    let on2 = s.wait_running("mover", 2, SCHEDULE_LIMIT);
    eprintln!(
        "moved to node 2: running after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    wait_lines(&s, 2, &on2, "/g/log", 1);
    std::thread::sleep(Duration::from_secs(1));
    for path in ["/g/log", "/d/log"] {
        let log = read_log(&s, 2, &on2, path);
        assert_unbroken(&log, path);
        let from1 = log.iter().filter(|(_, n)| n == "swnode1").count();
        let from2 = log.iter().filter(|(_, n)| n == "swnode2").count();
        assert!(
            from1 >= 20,
            "{path}: node 1's writes are missing on node 2: {log:?}"
        );
        assert!(from2 >= 1, "{path}: node 2 does not write: {log:?}");
        // Node 1's lines all come first: node 2 went on from node 1's last.
        assert!(
            log[..from1].iter().all(|(_, n)| n == "swnode1"),
            "{path}: {log:?}"
        );
    }
    let writer = s.etcd.as_ref().unwrap().etcdctl(
        0,
        &[
            "get",
            "--print-value-only",
            &format!("/daffe/{CLUSTER}/writers/mvblock"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&writer.stdout).starts_with("swnode2@"),
        "{writer:?}"
    );
    wait_lines(
        &s,
        2,
        &on2,
        "/g/log",
        read_log(&s, 2, &on2, "/g/log").len() + 10,
    );

    // And back: node 1's copy was handed over (moved), so stale in its turn.
    let t = Instant::now();
    s.move_service("mover", 2, 1);
    let back = s.wait_running("mover", 1, SCHEDULE_LIMIT);
    eprintln!(
        "moved back to node 1: running after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    wait_lines(&s, 1, &back, "/g/log", 1);
    std::thread::sleep(Duration::from_secs(1));
    for path in ["/g/log", "/d/log"] {
        let log = read_log(&s, 1, &back, path);
        assert_unbroken(&log, path);
        let nodes: Vec<&str> = log.iter().map(|(_, n)| n.as_str()).collect();
        let mut runs = nodes.clone();
        runs.dedup();
        assert_eq!(runs, ["swnode1", "swnode2", "swnode1"], "{path}: {log:?}");
    }
    let before = read_log(&s, 1, &back, "/d/log");
    s.remove_service("mover");

    // `daffe volume move`, asked on node 2, for a volume no service runs:
    // node 3 gets node 1's copy (refused while the task still stops).
    let t = Instant::now();
    let moved = loop {
        let out = s.daffe(2, &["volume", "move", "mvdir", "--to", "swnode3", "--json"]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("swnode1"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(30), "{err}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(moved["node"], "swnode3", "{moved}");
    assert_eq!(moved["from"], "swnode1", "{moved}");
    let out = s.nodes[2].docker().ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "mvdir:/d",
        &test_image(),
        "cat",
        "/d/log",
    ]);
    let on3: Vec<&str> = out.lines().collect();
    assert!(
        on3.len() >= before.len().max(1),
        "{} lines on node 3",
        on3.len()
    );
    let writer = s.etcd.as_ref().unwrap().etcdctl(
        0,
        &[
            "get",
            "--print-value-only",
            &format!("/daffe/{CLUSTER}/writers/mvdir"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&writer.stdout).starts_with("swnode3@"),
        "{writer:?}"
    );
    s.reset();
}

/// Node `n`'s view of `vol`'s standbys (`cluster status` on the owner).
fn standbys(s: &daffe_e2e::swarm::Swarm, n: usize, vol: &str) -> Vec<serde_json::Value> {
    let st = s.cluster_status(n);
    st["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == vol)
        .and_then(|v| v["standbys"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_planned_move_into_a_warm_standby_sends_only_the_last_delta() {
    const BIG_MIB: u64 = 48;
    let mut s = with_daffe(Lease::default());
    // 48 MiB written once at the start (incompressible), then a line every
    // 100 ms: "INDEX NODE", so a lost write is a gap.
    let script = format!(
        "trap 'exit 0' TERM; touch /g/log; \
         [ -f /g/big ] || dd if=/dev/urandom of=/g/big bs=1M count={BIG_MIB} 2>/dev/null; \
         i=$(wc -l < /g/log); \
         while :; do i=$((i+1)); echo \"$i $WHERE\" >> /g/log; sleep 0.1; done"
    );
    s.create_service(
        "warm",
        1,
        &[
            "--env",
            "WHERE={{.Node.Hostname}}",
            "--mount",
            "type=volume,source=wblock@gold,target=/g,volume-driver=daffe,volume-nocopy=true",
        ],
        &test_image(),
        &["sh", "-c", &script],
    );
    let on1 = s.wait_running("warm", 1, SCHEDULE_LIMIT);
    wait_lines(&s, 1, &on1, "/g/log", 5);

    // gold keeps one standby: node 1, the owner, streams rounds to node 2
    // (the first other node by name). Warm: two rounds done, the last one
    // carrying only the appended lines.
    let t = Instant::now();
    let warm = loop {
        let sb = standbys(&s, 1, "wblock");
        if let Some(x) = sb.first()
            && x["node"] == "swnode2"
            && x["rounds"].as_u64().unwrap_or(0) >= 2
            && x["error"].is_null()
            && x["last_round_bytes"].as_u64().unwrap_or(u64::MAX) < 4 << 20
        {
            break x.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "node 2 never became a warm standby: {sb:?}\n{}",
            s.nodes[0].log("daffe")
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "warm standby after {:.1} s: {warm}",
        t.elapsed().as_secs_f64()
    );
    assert!(warm["lag_ms"].as_u64().unwrap() < 30_000, "{warm}");
    let there = s.nodes[1].docker().volume_inspect("wblock@gold")["Status"].clone();
    assert_eq!(there["state"], "receiving", "{there}");

    // The planned move: only what changed since the last round crosses.
    let t = Instant::now();
    s.move_service("warm", 1, 2);
    let on2 = s.wait_running("warm", 2, SCHEDULE_LIMIT);
    eprintln!(
        "moved to node 2: running after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    wait_lines(&s, 2, &on2, "/g/log", 1);
    std::thread::sleep(Duration::from_secs(1));
    let log = read_log(&s, 2, &on2, "/g/log");
    assert_unbroken(&log, "/g/log");
    assert!(log.iter().any(|(_, n)| n == "swnode1"), "{log:?}");
    assert!(log.iter().any(|(_, n)| n == "swnode2"), "{log:?}");
    let size = s.nodes[1]
        .docker()
        .ok(&["exec", &on2, "wc", "-c", "/g/big"]);
    assert!(
        size.trim_start().starts_with(&(BIG_MIB << 20).to_string()),
        "{size}"
    );
    let cl = s.nodes[1].docker().volume_inspect("wblock@gold")["Status"]["cluster"].clone();
    let last = &cl["last_handover"];
    eprintln!("handover into the standby: {last}");
    assert_eq!(last["from"], "swnode1", "{cl}");
    let bytes = last["bytes"].as_u64().unwrap();
    assert!(
        bytes < 4 << 20,
        "the handover carried {bytes} bytes for a {BIG_MIB} MiB volume with a warm standby"
    );
    s.remove_service("warm");
    s.reset();
}

/// Node `n`'s standby of `vol` as its owner sees it, once it has at least
/// `rounds` sealed rounds and no error; panics after 150 s.
fn wait_sealed_standby(
    s: &daffe_e2e::swarm::Swarm,
    n: usize,
    vol: &str,
    rounds: u64,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let sb = standbys(s, n, vol);
        if let Some(x) = sb.first()
            && x["rounds"].as_u64().unwrap_or(0) >= rounds
            && x["sealed"] == true
            && x["error"].is_null()
        {
            return x.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "no sealed standby of {vol}: {sb:?}\n{}",
            s.nodes[n - 1].log("daffe")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Node `n`'s config for the failover test: nodes 1 and 3 (where the
/// service may run) are zone a, node 2 zone b, and gold keeps its standby
/// in zone a (gold redefined whole, as an operator would).
fn zoned(n: usize) -> String {
    let zone = if n == 2 { "b" } else { "a" };
    format!(
        "[cluster.labels]\nzone = \"{zone}\"\n\
         [profiles.gold]\nstandbys = 1\nstandby_label = \"zone=a\"\n\
         [profiles.gold.local]\nformat = \"block\"\ndefault_size = \"1G\"\n"
    )
}

#[test]
fn a_killed_owners_standby_takes_over_from_its_last_sealed_round_and_it_rejoins_as_a_standby() {
    let lease = Lease::default();
    let mut s = swarm::shared();
    for n in 1..=s.nodes.len() {
        s.start_daffe_with(n, lease, &zoned(n));
    }
    // "INDEX NODE" every 200 ms, the index going on from the last line: a
    // lost write inside what is there is a gap, a garbled line breaks the
    // count.
    let script = "trap 'exit 0' TERM; touch /g/log; i=$(wc -l < /g/log); \
        while :; do i=$((i+1)); echo \"$i $WHERE\" >> /g/log; sleep 0.2; done";
    // Node 3 owns it; gold keeps one standby in zone a: node 1. When node 3
    // dies Swarm may reschedule on node 1 only.
    s.create_service(
        "failover",
        3,
        &[
            "--constraint",
            "node.labels.daffe.node!=swnode2",
            "--env",
            "WHERE={{.Node.Hostname}}",
            "--mount",
            "type=volume,source=fover@gold,target=/g,volume-driver=daffe,volume-nocopy=true",
        ],
        &test_image(),
        &["sh", "-c", script],
    );
    let on3 = s.wait_running("failover", 3, SCHEDULE_LIMIT);
    wait_lines(&s, 3, &on3, "/g/log", 5);
    // The pin goes (node 3 still meets the rest: the task stays there).
    s.manager().ok(&[
        "service",
        "update",
        "--detach",
        "--constraint-rm",
        "node.labels.daffe.node==swnode3",
        "failover",
    ]);
    let warm = wait_sealed_standby(&s, 3, "fover", 3);
    assert_eq!(warm["node"], "swnode1", "{warm}");
    eprintln!("sealed standby on node 1: {warm}");
    let on3 = s.wait_running("failover", 3, SCHEDULE_LIMIT);
    // A few more seconds of rounds, then kill -9 at a moment the rounds
    // do not know of.
    std::thread::sleep(Duration::from_millis(3_700));
    let before = read_log(&s, 3, &on3, "/g/log");
    let killed_at = unix_ms();
    s.kill_node(3);
    let written = before.last().map_or(0, |(i, _)| *i);
    let t = Instant::now();
    let on1 = s.wait_running("failover", 1, Duration::from_secs(150));
    eprintln!(
        "running on node 1 {:.1} s after the kill",
        t.elapsed().as_secs_f64()
    );
    wait_lines(&s, 1, &on1, "/g/log", 5);
    // The writer on node 1 goes on for a while.
    std::thread::sleep(Duration::from_secs(2));
    // One read: every line parses ("INDEX NODE"), none garbled.
    let raw = s.nodes[0].docker().ok(&["exec", &on1, "cat", "/g/log"]);
    let log: Vec<(u64, String)> = raw
        .lines()
        .map(|l| {
            let (i, n) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("garbled {l:?}:\n{raw}"));
            (
                i.parse()
                    .unwrap_or_else(|_| panic!("garbled {l:?}:\n{raw}")),
                n.to_owned(),
            )
        })
        .collect();
    assert_unbroken(&log, "/g/log after the failover");
    let from3 = log.iter().filter(|(_, n)| n == "swnode3").count() as u64;
    assert!(
        log.iter().all(|(_, n)| n == "swnode3" || n == "swnode1"),
        "{log:?}"
    );
    assert!(
        from3 > 0 && log.iter().any(|(_, n)| n == "swnode1"),
        "{log:?}"
    );
    // What the takeover says.
    let cl = s.nodes[0].docker().volume_inspect("fover@gold")["Status"]["cluster"].clone();
    let tk = cl["last_takeover"].clone();
    eprintln!("takeover: {tk}");
    assert_eq!(tk["from"], "swnode3", "{cl}");
    assert_eq!(tk["sealed"], true, "{tk}");
    assert!(
        tk["checked"]
            .as_str()
            .unwrap()
            .starts_with("e2fsck -n -f: clean"),
        "{tk}"
    );
    let sealed_at = tk["round_at_unix_ms"].as_u64().unwrap();
    let age_at_kill = killed_at.saturating_sub(sealed_at);
    let takeover_ms = tk["takeover_ms"].as_u64().unwrap();
    eprintln!(
        "failover: {written} lines written on node 3 by the kill, {from3} on node 1 \
         ({} lost); data age at the kill {age_at_kill} ms (RPO), rpo at takeover {} ms, \
         takeover {takeover_ms} ms from the Mount's start",
        written.saturating_sub(from3),
        tk["rpo_ms"]
    );
    // At most two rounds back (5 s each), and the lines lost are those.
    assert!(age_at_kill <= 10_000, "RPO {age_at_kill} ms: {tk}");
    assert!(
        written.saturating_sub(from3) <= age_at_kill / 200 + 5,
        "{written} written, {from3} kept, age {age_at_kill} ms"
    );
    assert!(
        takeover_ms <= (lease.ttl_secs + 5) * 1000,
        "takeover {takeover_ms} ms: {tk}"
    );
    // `cluster status` on the new owner says it too.
    let st = s.cluster_status(1);
    let row = st["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "fover")
        .cloned()
        .unwrap();
    assert_eq!(row["owner"], "swnode1", "{row}");
    assert_eq!(row["last_takeover"]["from"], "swnode3", "{row}");
    // While node 3 is down, zone a has no other node: no standby.
    assert!(standbys(&s, 1, "fover").is_empty());

    // Node 3 comes back: its engine (whose restart kills the orphan
    // container; the plugin is down, so Docker's Unmount never reaches it),
    // then its daffe. Its copy, with the lines written after the last
    // round, is stale: never served; once nothing holds it, it is node 1's
    // standby, fed from node 1's writes.
    let t = Instant::now();
    s.node(3).start_dockerd();
    s.start_daffe_with(3, lease, &zoned(3));
    // Zone a's only other node: the first standby listed is node 3.
    let back = wait_sealed_standby(&s, 1, "fover", 2);
    assert_eq!(back["node"], "swnode3", "{back}");
    eprintln!(
        "node 3 back as node 1's standby {:.1} s after its engine restarted: {back}",
        t.elapsed().as_secs_f64()
    );
    assert!(back["lag_ms"].as_u64().unwrap() < 30_000, "{back}");
    let there = s.nodes[2].docker().volume_inspect("fover@gold")["Status"].clone();
    assert_eq!(there["state"], "receiving", "{there}");
    // Either way is right: its start dropped the dead container's count,
    // or Docker's Unmount reached it late.
    eprintln!(
        "node 3's count of the dead container's mount went {}",
        if s.nodes[2]
            .log("daffe")
            .contains("their mounts are no longer counted")
        {
            "at its daffe's start"
        } else {
            "with Docker's Unmount"
        }
    );
    s.remove_service("failover");
    s.reset();
}
