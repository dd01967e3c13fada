//! FlockerProfiles' two examples, verbatim but for the driver name and the
//! image (a local busybox: no registry here), against the real engine.
//! Each on a private engine, so the verbatim names (`testapp`,
//! `cheapvolume`, port 27017) cannot clash with anything else on the host.

use daffe_e2e::docker::{PrivateDockerd, test_image};
use daffe_e2e::plugin::Plugin;

#[test]
fn cheapvolume_example_writes_and_a_new_container_reads_back() {
    let engine = PrivateDockerd::start();
    let p = Plugin::start_for(&engine, None);
    let img = test_image();
    let testapp = "testapp";
    // docker run --name testapp --volume-driver=flocker -v cheapvolume@default:/data busybox sh -c "echo hello > /data/state.txt"
    p.docker.ok(&[
        "run",
        "--name",
        testapp,
        &format!("--volume-driver={}", p.name),
        "-v",
        "cheapvolume@default:/data",
        &img,
        "sh",
        "-c",
        "echo hello > /data/state.txt",
    ]);
    let out = p.docker.ok(&[
        "run",
        "--rm",
        &format!("--volume-driver={}", p.name),
        "-v",
        "cheapvolume@default:/data",
        &img,
        "cat",
        "/data/state.txt",
    ]);
    assert_eq!(out, "hello");
    let v = p.docker.volume_inspect("cheapvolume@default");
    assert_eq!(v["Driver"], p.name.as_str());
    assert_eq!(v["Status"]["profile"], "default");
    assert_eq!(v["Status"]["format"], "dir");
    assert_eq!(v["Status"]["backend"], "local");
    // "-v name@default:/data is equivalent to -v name:/data"
    let out = p.docker.ok(&[
        "run",
        "--rm",
        &format!("--volume-driver={}", p.name),
        "-v",
        "cheapvolume:/data",
        &img,
        "cat",
        "/data/state.txt",
    ]);
    assert_eq!(out, "hello");
    p.docker.ok(&["rm", testapp]);
}

#[test]
fn highperfvolume_example_gets_a_gold_block_volume() {
    let engine = PrivateDockerd::start();
    let p = Plugin::start_for(&engine, None);
    let img = test_image();
    let mongo = "mongo";
    // docker run --name mongo -p 27017:27017 --volume-driver=flocker -v highperfvolume@gold:/data mongo:3.0.4
    p.docker.ok(&[
        "run",
        "-d",
        "--name",
        mongo,
        "-p",
        "27017:27017",
        &format!("--volume-driver={}", p.name),
        "-v",
        "highperfvolume@gold:/data",
        &img,
        "sh",
        "-c",
        "echo ready > /data/db.txt; sleep 600",
    ]);
    let v = p.docker.volume_inspect("highperfvolume@gold");
    assert_eq!(v["Status"]["profile"], "gold");
    assert_eq!(v["Status"]["format"], "block");
    assert_eq!(v["Status"]["size"], "1G");
    assert_eq!(v["Status"]["settings"]["filesystem"], "ext4");
    assert_eq!(v["Status"]["mounted"], true);
    // The container sees an ext4 filesystem of about 1 GiB at /data.
    let df = p.docker.ok(&["exec", mongo, "df", "-k", "/data"]);
    let kib: u64 = df
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!((900 * 1024..=1024 * 1024).contains(&kib), "{df}");
    assert_eq!(
        p.docker.ok(&["exec", mongo, "cat", "/data/db.txt"]),
        "ready"
    );
    assert_eq!(p.mount_count("highperfvolume"), 1);
    p.docker.ok(&["rm", "-f", mongo]);
    assert_eq!(p.mount_count("highperfvolume"), 0);
}

#[test]
fn anonymous_volumes_get_the_default_profile() {
    let p = Plugin::start();
    let c = p.container("anon");
    p.docker.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        &format!("--volume-driver={}", p.name),
        "-v",
        "/data",
        &test_image(),
        "sh",
        "-c",
        "echo anon > /data/f; sleep 600",
    ]);
    let vol = p
        .docker
        .ok(&["inspect", "-f", "{{(index .Mounts 0).Name}}", &c]);
    assert_eq!(vol.len(), 64, "{vol}");
    let v = p.inspect(&vol);
    assert_eq!(v["profile"], "default");
    assert_eq!(v["mount_count"], 1);
    p.docker.ok(&["rm", "-f", "-v", &c]);
    assert!(
        !p.docker.volume_names(&p.name).contains(&vol),
        "rm -v removed it"
    );
}
