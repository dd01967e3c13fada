//! The EBS backend through the plugin, against the real engine and moto:
//! `docker volume create` makes a real CreateVolume (type, IOPS rule,
//! encryption, this instance's zone, daffe's tags); the first Mount attaches
//! the volume to this "instance" (a moto instance; a loop device stands in for
//! the NVMe device) and mounts ext4 from it; the last Unmount detaches; data
//! survives detach and re-attach; `daffe volume set-profile` reaches EC2 as
//! ModifyVolume; Remove deletes the EC2 volume. Every EC2 fact is read back
//! from moto itself, not from daffe.

use daffe_e2e::docker::test_image;
use daffe_e2e::moto::{Moto, xml_value as one, xml_values};
use daffe_e2e::plugin::Plugin;
use std::collections::BTreeMap;

/// One volume as EC2 (moto) describes it.
#[derive(Debug)]
struct Ec2Volume {
    volume_type: String,
    size_gib: u64,
    iops: u64,
    encrypted: bool,
    zone: String,
    /// The volume's status (`available`, `in-use`).
    status: String,
    /// The instance it is attached to, if any.
    attached_to: Option<String>,
    tags: BTreeMap<String, String>,
}

fn describe(moto: &Moto, id: &str) -> Ec2Volume {
    let xml = moto.ec2("DescribeVolumes", &[("VolumeId.1", id)]);
    let keys = xml_values(&xml, "key");
    let values = xml_values(&xml, "value");
    assert_eq!(keys.len(), values.len(), "tags in {xml}");
    // The volume's own <status> comes before its attachments' in moto's reply.
    let attached_to = xml_values(&xml, "instanceId").into_iter().next();
    Ec2Volume {
        volume_type: one(&xml, "volumeType"),
        size_gib: one(&xml, "size").parse().unwrap(),
        iops: one(&xml, "iops").parse().unwrap(),
        encrypted: one(&xml, "encrypted") == "true",
        zone: one(&xml, "availabilityZone"),
        status: one(&xml, "status"),
        attached_to,
        tags: keys.into_iter().zip(values).collect(),
    }
}

/// Every EC2 volume id moto knows.
fn all_volume_ids(moto: &Moto) -> Vec<String> {
    let mut ids = xml_values(&moto.ec2("DescribeVolumes", &[]), "volumeId");
    ids.sort();
    ids.dedup();
    ids
}

fn volume_id(p: &Plugin, name: &str) -> String {
    let v = p.docker.volume_inspect(name);
    v["Status"]["volume_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no volume_id in {v}"))
        .to_owned()
}

/// A moto instance to attach to, and a plugin on the EBS backend pointing at
/// moto with the loop-device resolver.
fn setup(moto: &Moto) -> (Plugin, String, String) {
    let (instance, zone) = moto.run_instance("us-east-1b");
    let config = moto.ebs_config(&instance, &zone)
        + r#"
[profiles.silver]
description = "gp3 with more IOPS, encrypted"
[profiles.silver.ebs]
type = "gp3"
iops = 4000
throughput = 250
encrypted = true
[profiles.silver.local]
format = "dir"
"#;
    let p = Plugin::start_with_env(Some(&config), moto.env());
    (p, instance, zone)
}

#[test]
fn ebs_volumes_follow_their_profile_and_the_mount_lifecycle() {
    let moto = Moto::start();
    moto.reset();
    let (p, instance, zone) = setup(&moto);
    let driver = format!("--driver={}", p.name);
    let img = test_image();

    // gold: io2, IOPS = 30 x GiB, encrypted, in this instance's zone, tagged.
    p.docker.ok(&["volume", "create", &driver, "db@gold"]);
    let db = volume_id(&p, "db@gold");
    let v = describe(&moto, &db);
    assert_eq!(
        (v.volume_type.as_str(), v.iops, v.encrypted),
        ("io2", v.size_gib * 30, true),
        "{v:?}"
    );
    assert_eq!(v.zone, zone);
    assert_eq!(v.status, "available");
    assert_eq!(v.tags.get("daffe:name").map(String::as_str), Some("db"));
    assert_eq!(
        v.tags.get("daffe:profile").map(String::as_str),
        Some("gold")
    );

    p.docker
        .ok(&["volume", "create", &driver, "-o", "size=100G", "big@gold"]);
    let big = describe(&moto, &volume_id(&p, "big@gold"));
    assert_eq!((big.size_gib, big.iops), (100, 3000), "{big:?}");

    // default: the cheapest general-purpose type, unencrypted.
    p.docker.ok(&["volume", "create", &driver, "cheap"]);
    let cheap = describe(&moto, &volume_id(&p, "cheap"));
    assert_eq!(cheap.volume_type, "gp3", "{cheap:?}");

    // A request EBS cannot meet is refused, and nothing is created.
    let before = all_volume_ids(&moto);
    let err = p.docker.fails(&[
        "volume",
        "create",
        &driver,
        "-o",
        "size=70000G",
        "huge@gold",
    ]);
    assert!(err.contains("huge"), "{err}");
    assert_eq!(all_volume_ids(&moto), before);

    // First Mount: attached to our instance, ext4 from a loop device.
    let c = p.container("writer");
    p.docker.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        &format!("--volume-driver={}", p.name),
        "-v",
        "db@gold:/data",
        &img,
        "sh",
        "-c",
        "echo kept > /data/state.txt && sleep 300",
    ]);
    let v = describe(&moto, &db);
    assert_eq!(v.status, "in-use", "{v:?}");
    assert_eq!(v.attached_to.as_deref(), Some(instance.as_str()));
    let mountpoint = p.docker.volume_inspect("db@gold")["Mountpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mountpoint.as_str()))
        .unwrap_or_else(|| panic!("{mountpoint} not mounted:\n{mounts}"));
    assert!(
        line.starts_with("/dev/loop") && line.split(' ').nth(2) == Some("ext4"),
        "{line}"
    );

    // Last Unmount: unmounted and detached.
    p.docker.ok(&["rm", "-f", &c]);
    let v = describe(&moto, &db);
    assert_eq!(
        (v.status.as_str(), v.attached_to.as_deref()),
        ("available", None)
    );

    // Attached again: the data is still there.
    let out = p.docker.ok(&[
        "run",
        "--rm",
        &format!("--volume-driver={}", p.name),
        "-v",
        "db@gold:/data",
        &img,
        "cat",
        "/data/state.txt",
    ]);
    assert_eq!(out, "kept");
    assert_eq!(describe(&moto, &db).status, "available");

    // set-profile: one ModifyVolume to the new type and IOPS.
    let out = p.daffe(&["volume", "set-profile", "db@gold", "silver"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = describe(&moto, &db);
    assert_eq!((v.volume_type.as_str(), v.iops), ("gp3", 4000), "{v:?}");
    assert_eq!(
        v.tags.get("daffe:profile").map(String::as_str),
        Some("silver")
    );
    assert_eq!(p.inspect("db@gold")["profile"], "silver");
    // A change EBS cannot make in place (dropping encryption) is refused
    // and leaves the volume as it was.
    let out = p.daffe(&["volume", "set-profile", "db@gold", "default"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("encrypt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(describe(&moto, &db).volume_type, "gp3");

    // Remove deletes the EC2 volume.
    p.docker.ok(&["volume", "rm", "db@gold"]);
    assert!(!all_volume_ids(&moto).contains(&db));
}

/// The ids of the live volumes moto has tagged `daffe:name` = `name`.
fn volumes_named(moto: &Moto, name: &str) -> Vec<String> {
    let xml = moto.ec2(
        "DescribeVolumes",
        &[
            ("Filter.1.Name", "tag:daffe:name"),
            ("Filter.1.Value.1", name),
        ],
    );
    xml_values(&xml, "volumeId")
}

/// Torture: kill -9 of the daemon while its CreateVolume is on the wire.
/// EC2 creates the volume after the daemon died; the restart finds the
/// interrupted Create (its journal) and rolls it back by the volume's tags,
/// and Docker's repeated Create makes the volume again: one volume, never
/// an orphan.
#[test]
fn a_daemon_killed_during_create_leaves_no_orphan_volume() {
    use daffe_e2e::fault_proxy::FaultProxy;
    use std::sync::{Mutex, mpsc};
    use std::time::{Duration, Instant};

    let moto = Moto::start();
    moto.reset();
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let proxy = FaultProxy::start(moto.port, move |seen| {
        if seen.action.as_deref() == Some("CreateVolume") {
            let _ = tx.lock().unwrap().send(());
            // Held until the daemon is dead, then forwarded: EC2 makes a
            // volume nobody is waiting for.
            std::thread::sleep(Duration::from_secs(2));
        }
        None
    });
    let (instance, zone) = moto.run_instance("us-east-1b");
    let config = moto
        .ebs_config(&instance, &zone)
        .replace(&moto.url, &proxy.url);
    let mut p = Plugin::start_with_env(Some(&config), moto.env());
    let create = serde_json::json!({ "Name": "crash@gold", "Opts": {} });

    let socket = p.socket();
    let body = create.to_string();
    let client = std::thread::spawn(move || {
        daffe_e2e::plugin::call_socket(&socket, "POST", "/VolumeDriver.Create", &body)
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the daemon never sent CreateVolume");
    p.kill9();
    // The client sees the daemon die (an error, or a panic on the reset).
    let _ = client.join();

    // The held CreateVolume reaches EC2 after the daemon died.
    let t = Instant::now();
    while volumes_named(&moto, "crash").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no volume was created"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let made = volumes_named(&moto, "crash");
    assert_eq!(made.len(), 1, "{made:?}");

    p.start_again();
    // Docker repeats a Create it got no answer for.
    let (status, reply) = p.call("/VolumeDriver.Create", &create);
    assert_eq!(status, 200, "{reply}");
    assert!(reply["Err"].as_str().unwrap_or("").is_empty(), "{reply}");
    let now = volumes_named(&moto, "crash");
    assert_eq!(now.len(), 1, "a second volume: {now:?}\n{}", p.log());
    let v = p.inspect("crash@gold");
    assert!(v.to_string().contains(&now[0]), "{v}");
    // The volume EC2 made for the dead daemon is that one (adopted) or
    // gone (the restart rolls an interrupted Create back): no orphan.
    let all = xml_values(&moto.ec2("DescribeVolumes", &[]), "volumeId");
    assert!(
        made[0] == now[0] || !all.contains(&made[0]),
        "{} left behind: {all:?}",
        made[0]
    );

    // And Remove deletes it: nothing left behind.
    let (status, reply) = p.call(
        "/VolumeDriver.Remove",
        &serde_json::json!({ "Name": "crash@gold" }),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply["Err"].as_str().unwrap_or("").is_empty(), "{reply}");
    assert_eq!(volumes_named(&moto, "crash"), Vec::<String>::new());
}
