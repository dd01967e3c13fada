//! Crash torture of the plugin (issue 12, "Crash torture", plugin part):
//! clients drive `daffe serve`'s VolumeDriver socket as dockerd does
//! (Create, Mount, Unmount, Remove, each client its own volumes, block and
//! dir), and the daemon is killed with SIGKILL at a random moment, again and
//! again. After each restart:
//!
//! - the state reopens (the daemon serves);
//! - every volume whose Create was answered (what dockerd knows) and not
//!   removed is listed, and nothing answered as removed is;
//! - a listed volume is `ready` and usable (it mounts, and the file written
//!   into it earlier is there): no half-made volume is listed;
//! - each mount ID's count is what the answered calls left (an op cut off by
//!   the kill may have happened or not; nothing else may differ);
//! - the kernel agrees: a block volume is mounted, on one loop device, iff
//!   its count is above 0; no other mount or loop device under the data root.
//!
//! Short here (`DAFFE_PLUGIN_TORTURE` kills, default 4); `bench/torture.sh
//! plugin` runs it long.

use daffe_e2e::plugin::Plugin;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 3;
const NAMES_PER_CLIENT: usize = 4;
const IDS: [&str; 2] = ["ca", "cb"];

/// xorshift64*; the seed is printed, so a failure can be replayed
/// (`DAFFE_TORTURE_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Create,
    Remove,
    Mount(String),
    Unmount(String),
}

/// What the answered calls say about one volume.
#[derive(Clone, Debug, Default)]
struct Known {
    exists: bool,
    mounts: BTreeMap<String, u64>,
    /// The call in flight when the daemon died: it may have happened.
    cut: Option<Op>,
    /// A file was written into the volume: it must stay there.
    marked: bool,
}

enum Outcome {
    Done(Value),
    Refused(String),
    /// No answer: the daemon died (or was not there).
    Lost,
}

fn call(socket: &Path, endpoint: &str, body: &Value) -> Outcome {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return Outcome::Lost;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let body = body.to_string();
    let req = format!(
        "POST {endpoint} HTTP/1.0\r\nHost: daffe\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return Outcome::Lost;
    }
    let mut reply = String::new();
    if s.read_to_string(&mut reply).is_err() {
        return Outcome::Lost;
    }
    let Some((head, json)) = reply.split_once("\r\n\r\n") else {
        return Outcome::Lost;
    };
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let err = v["Err"].as_str().unwrap_or_default();
    if head.split(' ').nth(1) == Some("200") && err.is_empty() {
        Outcome::Done(v)
    } else {
        Outcome::Refused(format!("{head}: {json}"))
    }
}

/// Even volumes are block (`@gold`, a loop-mounted ext4 image), odd are dir.
fn docker_name(name: &str) -> String {
    let n: usize = name
        .rsplit('v')
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if n.is_multiple_of(2) {
        format!("{name}@gold")
    } else {
        name.to_owned()
    }
}

fn is_block(name: &str) -> bool {
    docker_name(name).ends_with("@gold")
}

/// One client: random calls on its own volumes until one gets no answer.
fn client(
    socket: PathBuf,
    names: Vec<String>,
    model: Arc<Mutex<BTreeMap<String, Known>>>,
    refusals: Arc<Mutex<Vec<String>>>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    loop {
        let name = &names[usize::try_from(rng.below(names.len() as u64)).unwrap()];
        let k = model.lock().unwrap()[name].clone();
        let held: Vec<&String> = k.mounts.keys().collect();
        let op = if !k.exists {
            Op::Create
        } else {
            match rng.below(5) {
                0 | 1 => Op::Mount(IDS[usize::from(rng.below(2) == 1)].to_owned()),
                2 | 3 if !held.is_empty() => Op::Unmount(
                    held[usize::try_from(rng.below(held.len() as u64)).unwrap()].clone(),
                ),
                _ if held.is_empty() => Op::Remove,
                _ => Op::Mount(IDS[0].to_owned()),
            }
        };
        let dn = docker_name(name);
        let (endpoint, body) = match &op {
            Op::Create => (
                "/VolumeDriver.Create",
                if is_block(name) {
                    json!({"Name": dn, "Opts": {"size": "16M"}})
                } else {
                    json!({"Name": dn, "Opts": null})
                },
            ),
            Op::Remove => ("/VolumeDriver.Remove", json!({"Name": dn})),
            Op::Mount(id) => ("/VolumeDriver.Mount", json!({"Name": dn, "ID": id})),
            Op::Unmount(id) => ("/VolumeDriver.Unmount", json!({"Name": dn, "ID": id})),
        };
        match call(&socket, endpoint, &body) {
            Outcome::Lost => {
                model.lock().unwrap().get_mut(name).unwrap().cut = Some(op);
                return;
            }
            Outcome::Refused(e) => refusals
                .lock()
                .unwrap()
                .push(format!("{endpoint} {body}: {e}")),
            Outcome::Done(reply) => {
                let mut m = model.lock().unwrap();
                let k = m.get_mut(name).unwrap();
                match op {
                    Op::Create => k.exists = true,
                    Op::Remove => *k = Known::default(),
                    Op::Mount(id) => {
                        *k.mounts.entry(id).or_default() += 1;
                        let mp = PathBuf::from(reply["Mountpoint"].as_str().unwrap_or_default());
                        if !k.marked {
                            std::fs::write(mp.join("marker"), name.as_bytes())
                                .unwrap_or_else(|e| panic!("write into {}: {e}", mp.display()));
                            k.marked = true;
                        }
                    }
                    Op::Unmount(id) => {
                        let c = k.mounts.get_mut(&id).unwrap();
                        *c -= 1;
                        if *c == 0 {
                            k.mounts.remove(&id);
                        }
                    }
                }
            }
        }
    }
}

/// Mount points (mountinfo field 5) at or under `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&format!("{root}/")))
        .collect()
}

/// Loop devices whose backing file is under `root`.
fn loops_under(root: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--raw", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    let root = root.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, f)| f.starts_with(&format!("{root}/")))
        })
        .map(str::to_owned)
        .collect()
}

/// The daemon's view of one volume: `None` if it does not list it.
fn daemon_view(p: &Plugin, listed: &[String], name: &str) -> Option<Value> {
    listed
        .iter()
        .any(|l| *l == docker_name(name))
        .then(|| p.inspect(&docker_name(name)))
}

/// The invariants after a restart; resolves the cut-off calls into the
/// model (to what the daemon says, once that is one of the two outcomes).
fn check(p: &Plugin, model: &mut BTreeMap<String, Known>, round: usize) {
    let list = match call(&p.socket(), "/VolumeDriver.List", &json!({})) {
        Outcome::Done(v) => v,
        _ => panic!("round {round}: List failed after the restart:\n{}", p.log()),
    };
    let listed: Vec<String> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap().to_owned())
        .collect();
    let data_root = p.data_root();
    let mut block_mounted = 0;
    for (name, k) in model.iter_mut() {
        let view = daemon_view(p, &listed, name);
        let cut = k.cut.take();
        let exists = view.is_some();
        match &cut {
            Some(Op::Create | Op::Remove) => k.exists = exists,
            _ => assert_eq!(
                exists, k.exists,
                "round {round}: {name}: listed {exists}, but the answered calls say {}",
                k.exists
            ),
        }
        let Some(v) = view else {
            *k = Known::default();
            continue;
        };
        assert_eq!(v["state"], "ready", "round {round}: {name} listed but {v}");
        let theirs: BTreeMap<String, u64> = v["mounts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(id, c)| (id.clone(), c.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        for id in IDS {
            let mine = k.mounts.get(id).copied().unwrap_or(0);
            let got = theirs.get(id).copied().unwrap_or(0);
            let ok = match &cut {
                Some(Op::Mount(c)) if c == id => got == mine || got == mine + 1,
                Some(Op::Unmount(c)) if c == id => got == mine || got + 1 == mine,
                _ => got == mine,
            };
            assert!(
                ok,
                "round {round}: {name}: mount ID {id} counted {got}, the calls say {mine} (cut off: {cut:?})"
            );
        }
        assert_eq!(
            theirs
                .keys()
                .filter(|id| !IDS.contains(&id.as_str()))
                .count(),
            0,
            "{v}"
        );
        k.mounts = theirs;
        let count: u64 = k.mounts.values().sum();
        assert_eq!(
            v["mount_count"].as_u64(),
            Some(count),
            "round {round}: {name}: {v}"
        );
        let mountpoint = v["mountpoint"].as_str().unwrap().to_owned();
        let in_kernel = mounts_under(&data_root).contains(&mountpoint);
        if is_block(name) {
            assert_eq!(
                in_kernel,
                count > 0,
                "round {round}: {name}: kernel mount {in_kernel}, mount count {count}"
            );
            block_mounted += usize::from(count > 0);
        }
        // Usable, with what was written into it: mount once more, look, let go.
        let Outcome::Done(r) = call(
            &p.socket(),
            "/VolumeDriver.Mount",
            &json!({"Name": docker_name(name), "ID": "check"}),
        ) else {
            panic!(
                "round {round}: {name} is listed but does not mount:\n{}",
                p.log()
            );
        };
        let mp = Path::new(r["Mountpoint"].as_str().unwrap());
        if k.marked {
            assert_eq!(
                std::fs::read(mp.join("marker")).ok().as_deref(),
                Some(name.as_bytes()),
                "round {round}: {name}: the file written into it is gone"
            );
        }
        let done = call(
            &p.socket(),
            "/VolumeDriver.Unmount",
            &json!({"Name": docker_name(name), "ID": "check"}),
        );
        assert!(
            matches!(done, Outcome::Done(_)),
            "round {round}: {name}: unmount"
        );
    }
    for l in &listed {
        assert!(
            model.keys().any(|n| docker_name(n) == *l),
            "round {round}: {l} listed, never created"
        );
    }
    let mounts = mounts_under(&data_root);
    let loops = loops_under(&data_root);
    assert_eq!(
        mounts.len(),
        block_mounted,
        "round {round}: mounts under the data root: {mounts:?}"
    );
    assert_eq!(
        loops.len(),
        block_mounted,
        "round {round}: loop devices: {loops:?}"
    );
}

#[test]
fn kill_9_during_create_mount_unmount_remove_keeps_the_state_true() {
    let kills: usize = std::env::var("DAFFE_PLUGIN_TORTURE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("DAFFE_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos(),
            )
        });
    eprintln!("plugin torture: {kills} kills, DAFFE_TORTURE_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let mut p = Plugin::start();
    let prefix = daffe_e2e::unique("pt").replace('-', "");
    let names: Vec<String> = (0..CLIENTS * NAMES_PER_CLIENT)
        .map(|i| format!("{prefix}v{i}"))
        .collect();
    let model = Arc::new(Mutex::new(
        names
            .iter()
            .map(|n| (n.clone(), Known::default()))
            .collect::<BTreeMap<_, _>>(),
    ));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    for round in 0..kills {
        let threads: Vec<_> = names
            .chunks(NAMES_PER_CLIENT)
            .map(|mine| {
                let (socket, mine, model, refusals) =
                    (p.socket(), mine.to_vec(), model.clone(), refusals.clone());
                let s = rng.next();
                std::thread::spawn(move || client(socket, mine, model, refusals, s))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rng.below(1500)));
        p.kill9();
        for t in threads {
            t.join().unwrap();
        }
        let refused = std::mem::take(&mut *refusals.lock().unwrap());
        assert!(
            refused.is_empty(),
            "round {round}: refused while the daemon ran: {refused:#?}"
        );
        p.start_again();
        check(&p, &mut model.lock().unwrap(), round);
    }
    // The end: let go of everything; nothing may be left behind.
    let mut m = model.lock().unwrap();
    for (name, k) in m.iter_mut() {
        for (id, c) in std::mem::take(&mut k.mounts) {
            for _ in 0..c {
                let r = call(
                    &p.socket(),
                    "/VolumeDriver.Unmount",
                    &json!({"Name": docker_name(name), "ID": id}),
                );
                assert!(matches!(r, Outcome::Done(_)), "{name}: final unmount");
            }
        }
        if k.exists {
            let r = call(
                &p.socket(),
                "/VolumeDriver.Remove",
                &json!({"Name": docker_name(name)}),
            );
            assert!(matches!(r, Outcome::Done(_)), "{name}: final remove");
        }
    }
    let Outcome::Done(list) = call(&p.socket(), "/VolumeDriver.List", &json!({})) else {
        panic!("list");
    };
    assert_eq!(list["Volumes"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(mounts_under(&p.data_root()), Vec::<String>::new());
    assert_eq!(loops_under(&p.data_root()), Vec::<String>::new());
    eprintln!(
        "plugin torture: {kills} kills of daffe serve, {} s, invariants held after each restart",
        t0.elapsed().as_secs()
    );
}
