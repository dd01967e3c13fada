//! `daffe migrate VOLUME --via-ebs --to-zone ZONE` through the plugin against
//! moto: the volume's device is pushed as EBS snapshots, a new volume is
//! created in ZONE from the final snapshot, and the source refuses Mount
//! ("moved"). Every EC2 fact is read back from moto itself, including that
//! the migration deleted its snapshots (and nothing else) once the copy
//! held the data (hardening finding 11).

use daffe_e2e::docker::test_image;
use daffe_e2e::moto::{Moto, xml_value as one, xml_values};
use daffe_e2e::plugin::{Plugin, daffe_bin};
use std::io::BufRead;
use std::process::{Command, Stdio};

/// A moto instance in us-east-1b and a plugin on the EBS backend (loop
/// devices stand in for NVMe).
fn setup(moto: &Moto) -> Plugin {
    host_in(moto, "us-east-1b")
}

/// A moto instance in `zone` and a plugin on the EBS backend for it.
fn host_in(moto: &Moto, zone: &str) -> Plugin {
    let (instance, zone) = moto.run_instance(zone);
    let config = moto.ebs_config(&instance, &zone);
    Plugin::start_with_env(Some(&config), moto.env())
}

/// Like [`host_in`], with the loop stand-in's files in `loop_dir`: hosts
/// sharing it share the volumes' data, as EC2 instances share EBS. A copy
/// is filled there when it is created, so the host that adopts it reads
/// it after the snapshots are gone.
fn host_sharing(moto: &Moto, zone: &str, loop_dir: &std::path::Path) -> Plugin {
    let (instance, zone) = moto.run_instance(zone);
    // ebs_config ends in the [aws] table, where loop_dir belongs.
    let config = moto.ebs_config(&instance, &zone)
        + &format!("loop_dir = {:?}\n", loop_dir.display().to_string());
    Plugin::start_with_env(Some(&config), moto.env())
}

/// The ids of the snapshots daffe migrations made (tag `daffe:migration`).
fn migration_snapshots(moto: &Moto) -> Vec<String> {
    let xml = moto.ec2(
        "DescribeSnapshots",
        &[
            ("Filter.1.Name", "tag-key"),
            ("Filter.1.Value.1", "daffe:migration"),
        ],
    );
    xml_values(&xml, "snapshotId")
}

#[test]
fn a_volume_moves_to_another_zone_through_snapshots() {
    let moto = Moto::start();
    moto.reset();
    // Declared first, dropped last: the plugins release their loops first.
    let loop_dir = tempfile::tempdir().unwrap();
    let p = host_sharing(&moto, "us-east-1b", loop_dir.path());
    let driver = format!("--volume-driver={}", p.name);
    let img = test_image();

    p.docker.ok(&[
        "volume",
        "create",
        &format!("--driver={}", p.name),
        "db@gold",
    ]);
    let source_id = p.docker.volume_inspect("db@gold")["Status"]["volume_id"]
        .as_str()
        .unwrap()
        .to_owned();
    p.docker.ok(&[
        "run",
        "--rm",
        &driver,
        "-v",
        "db@gold:/data",
        &img,
        "sh",
        "-c",
        "echo kept > /data/state.txt",
    ]);

    // An operator's own snapshot, tagged with the volume's name as daffe's
    // are, but not made by a migration: it must survive the move.
    let xml = moto.ec2(
        "CreateSnapshot",
        &[
            ("VolumeId", source_id.as_str()),
            ("TagSpecification.1.ResourceType", "snapshot"),
            ("TagSpecification.1.Tag.1.Key", "daffe:source"),
            ("TagSpecification.1.Tag.1.Value", "db@gold"),
        ],
    );
    let foreign = one(&xml, "snapshotId");

    // Block indexes in a temporary state dir, not the host's.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(daffe_bin())
        .args([
            "migrate",
            "db@gold",
            "--via-ebs",
            "--to-zone",
            "us-east-1c",
            "--json",
            "--endpoint-url",
            &moto.url,
            "--region",
            "us-east-1",
            "--state-dir",
        ])
        .arg(state.path())
        .envs(moto.env())
        .env("DAFFE_CONTROL_SOCKET", p.control_socket())
        .stdin(Stdio::null())
        .output()
        .expect("run daffe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "migrate failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    assert_eq!(report["to_zone"], "us-east-1c", "{report}");
    assert_eq!(report["source_volume_id"], source_id.as_str(), "{report}");
    // Not mounted: no pre-copy, one full round after the fence.
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1, "{report}");
    assert!(
        rounds[0]["blocks_changed"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(stderr.contains("fenced"), "{stderr}");
    // Its snapshots are gone, by EC2's own account; the operator's stays.
    assert_eq!(
        report["snapshots"]["deleted"].as_array().unwrap().len(),
        rounds.len(),
        "{report}"
    );
    assert_eq!(
        report["snapshots"]["warnings"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(migration_snapshots(&moto), Vec::<String>::new());
    let xml = moto.ec2("DescribeSnapshots", &[("SnapshotId.1", foreign.as_str())]);
    assert_eq!(one(&xml, "snapshotId"), foreign, "{xml}");

    // The new volume, as EC2 sees it: in the new zone, from the final snapshot.
    let new_id = report["new_volume_id"].as_str().unwrap();
    assert_ne!(new_id, source_id);
    let xml = moto.ec2("DescribeVolumes", &[("VolumeId.1", new_id)]);
    assert_eq!(one(&xml, "availabilityZone"), "us-east-1c", "{xml}");
    assert_eq!(
        one(&xml, "snapshotId"),
        report["final_snapshot_id"].as_str().unwrap(),
        "{xml}"
    );

    // The copy was filled when it was created (the loop stand-in's file is
    // there before any host attaches it), so deleting the snapshots lost
    // nothing.
    let copy_file = loop_dir.path().join(format!("{new_id}.img"));
    assert!(copy_file.exists(), "{} missing", copy_file.display());

    // The source is moved: Mount refuses and says where it went.
    let err = p
        .docker
        .fails(&["run", "--rm", &driver, "-v", "db@gold:/data", &img, "true"]);
    assert!(err.contains("moved"), "{err}");

    // A host in the target zone adopts the copy (tags: this cluster, this
    // zone, unclaimed) and reads the data back: the copy's, the snapshots
    // being deleted.
    // Docker holds one volume per name, so the source host lets go first.
    p.docker.ok(&["volume", "rm", "db@gold"]);
    drop(p);
    let b = host_sharing(&moto, "us-east-1c", loop_dir.path());
    // Asked of daffe, not `docker volume inspect`: without a driver, docker
    // would ask every plugin it ever saw, dead test plugins included.
    let v = b.inspect("db@gold");
    assert!(v.to_string().contains(new_id), "{v}");
    let out = b.docker.ok(&[
        "run",
        "--rm",
        &format!("--volume-driver={}", b.name),
        "-v",
        "db@gold:/data",
        &img,
        "cat",
        "/data/state.txt",
    ]);
    assert_eq!(out, "kept");
}

#[test]
fn a_mounted_volume_is_pre_copied_then_moved_once_its_container_stops() {
    let moto = Moto::start();
    moto.reset();
    let p = setup(&moto);
    let driver = format!("--volume-driver={}", p.name);
    let img = test_image();
    p.docker.ok(&[
        "volume",
        "create",
        &format!("--driver={}", p.name),
        "-o",
        "size=4G",
        "web@gold",
    ]);
    // A writer that keeps changing the volume during pre-copy.
    let c = p.container("writer");
    p.docker.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        &driver,
        "-v",
        "web@gold:/data",
        &img,
        "sh",
        "-c",
        "while true; do date >> /data/log; sync; sleep 0.2; done",
    ]);

    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(daffe_bin())
        .args([
            "migrate",
            "web@gold",
            "--via-ebs",
            "--to-zone",
            "us-east-1c",
            "--json",
            "--max-rounds",
            "3",
            "--keep-snapshots",
            "1",
            "--unmount-timeout",
            "2m",
            "--state-dir",
        ])
        .arg(state.path())
        .envs(moto.env())
        .env("DAFFE_CONTROL_SOCKET", p.control_socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run daffe");
    // The operator's part: stop the container when migrate asks for it.
    let mut stderr = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr += &line;
        stderr += "\n";
        if line.starts_with("waiting for web@gold to be unmounted") {
            p.docker.ok(&["rm", "-f", &c]);
            break;
        }
    }
    for line in lines {
        stderr += &line.unwrap();
        stderr += "\n";
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "migrate failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    let rounds = report["rounds"].as_array().unwrap();
    assert!(rounds.len() >= 2, "{report}");
    assert_eq!(rounds[0]["final_round"], false, "{report}");
    assert!(rounds[0]["parent"].is_null(), "{report}");
    // Each round is incremental against the one before; the last is final.
    for w in rounds.windows(2) {
        assert_eq!(w[1]["parent"], w[0]["snapshot_id"], "{report}");
    }
    let last = rounds.last().unwrap();
    assert_eq!(last["final_round"], true, "{report}");
    assert_eq!(last["snapshot_id"], report["final_snapshot_id"], "{report}");
    // --keep-snapshots 1: the final snapshot stays, the pre-copy ones go.
    assert_eq!(
        report["snapshots"]["kept"],
        serde_json::json!([report["final_snapshot_id"]]),
        "{report}"
    );
    assert_eq!(
        report["snapshots"]["deleted"].as_array().unwrap().len(),
        rounds.len() - 1,
        "{report}"
    );
    assert_eq!(
        migration_snapshots(&moto),
        [report["final_snapshot_id"].as_str().unwrap()],
        "{report}"
    );

    let xml = moto.ec2(
        "DescribeVolumes",
        &[("VolumeId.1", report["new_volume_id"].as_str().unwrap())],
    );
    assert_eq!(one(&xml, "availabilityZone"), "us-east-1c", "{xml}");
    assert_eq!(
        one(&xml, "snapshotId"),
        report["final_snapshot_id"].as_str().unwrap(),
        "{xml}"
    );
    let err = p
        .docker
        .fails(&["run", "--rm", &driver, "-v", "web@gold:/data", &img, "true"]);
    assert!(err.contains("moved"), "{err}");
}
