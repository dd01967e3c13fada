//! Containers sharing a volume, `docker cp` into a mounted volume, and
//! `docker volume rm` while mounted.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;

fn run_d(p: &Plugin, name: &str, vol: &str, script: &str) {
    p.docker.ok(&[
        "run",
        "-d",
        "--name",
        name,
        &format!("--volume-driver={}", p.name),
        "-v",
        &format!("{vol}:/data"),
        &test_image(),
        "sh",
        "-c",
        script,
    ]);
}

#[test]
fn stopping_one_of_two_containers_leaves_the_other_reading_and_writing() {
    let p = Plugin::start();
    for vol in ["shared", "sharedblk@gold"] {
        let (a, b) = (
            p.container(&format!("a{}", vol.len())),
            p.container(&format!("b{}", vol.len())),
        );
        run_d(&p, &a, vol, "echo from-a > /data/a; sleep 600");
        run_d(&p, &b, vol, "sleep 600");
        assert_eq!(p.mount_count(vol), 2, "{vol}");
        assert_eq!(p.docker.ok(&["exec", &b, "cat", "/data/a"]), "from-a");
        p.docker.ok(&["stop", "-t", "0", &a]);
        assert_eq!(p.mount_count(vol), 1, "{vol}: one container left");
        p.docker
            .ok(&["exec", &b, "sh", "-c", "echo from-b > /data/b"]);
        assert_eq!(
            p.docker.ok(&["exec", &b, "cat", "/data/a", "/data/b"]),
            "from-a\nfrom-b"
        );
        // The restarted container sees b's write: same storage throughout.
        p.docker.ok(&["start", &a]);
        assert_eq!(p.docker.ok(&["exec", &a, "cat", "/data/b"]), "from-b");
        p.docker.ok(&["rm", "-f", &a, &b]);
        assert_eq!(p.mount_count(vol), 0, "{vol}");
    }
}

#[test]
fn docker_cp_into_a_running_containers_volume_then_write_inside() {
    let p = Plugin::start();
    for vol in ["cpdir", "cpblk@gold"] {
        let c = p.container(&format!("cp{}", vol.len()));
        run_d(&p, &c, vol, "sleep 600");
        let src = p.dir.path().join(format!("in-{}", vol.len()));
        std::fs::write(&src, "copied\n").unwrap();
        // docker cp mounts the volume again with the container's mount ID.
        p.docker.ok(&[
            "cp",
            &src.to_string_lossy(),
            &format!("{c}:/data/copied.txt"),
        ]);
        assert_eq!(
            p.mount_count(vol),
            1,
            "{vol}: the reused ID is counted, then released"
        );
        p.docker
            .ok(&["exec", &c, "sh", "-c", "echo inside >> /data/copied.txt"]);
        assert_eq!(
            p.docker.ok(&["exec", &c, "cat", "/data/copied.txt"]),
            "copied\ninside"
        );
        // And out again.
        let dst = p.dir.path().join(format!("out-{}", vol.len()));
        p.docker.ok(&[
            "cp",
            &format!("{c}:/data/copied.txt"),
            &dst.to_string_lossy(),
        ]);
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "copied\ninside\n");
        p.docker.ok(&["rm", "-f", &c]);
        assert_eq!(p.mount_count(vol), 0, "{vol}");
    }
}

#[test]
fn volume_rm_of_a_mounted_volume_fails_and_works_once_the_container_is_gone() {
    let p = Plugin::start();
    for vol in ["busy", "busyblk@gold"] {
        let c = p.container(&format!("busy{}", vol.len()));
        run_d(&p, &c, vol, "sleep 600");
        // dockerd itself refuses while a container references the volume...
        let err = p.docker.fails(&["volume", "rm", vol]);
        assert!(err.contains("in use"), "{err}");
        // ...and so does the plugin, asked directly while it is mounted.
        let (status, reply) = p.call("/VolumeDriver.Remove", &serde_json::json!({ "Name": vol }));
        let msg = reply["Err"].as_str().unwrap();
        assert!(
            status >= 400 && msg.contains("is in use: 1 mount(s)"),
            "{status} {msg}"
        );
        p.docker.ok(&["rm", "-f", &c]);
        p.docker.ok(&["volume", "rm", vol]);
        // (Not `docker volume inspect`: for an unknown name dockerd asks every
        // plugin it knows, including other tests' dead ones, and waits.)
        assert!(!p.docker.volume_names(&p.name).contains(&vol.to_owned()));
        let gone = p.daffe(&["volume", "inspect", vol, "--json"]);
        assert!(!gone.status.success());
    }
    // Remove deletes the data.
    assert!(!p.data_root().join("local/default/busy").exists());
    assert!(!p.data_root().join("local/gold/busyblk").exists());
}
