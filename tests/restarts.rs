//! The plugin killed (-9) or stopped while a container uses its volume, and
//! restarted: state comes back from the store; later unmount and rm work.
//! Plus the daemon's socket hygiene: stale socket at start, removed at exit.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;
use serde_json::json;

#[test]
fn kill_9_while_a_container_runs_then_restart_keeps_everything() {
    let mut p = Plugin::start();
    let c = p.container("app");
    let vols = ["k9dir", "k9blk@gold"];
    let mut args = vec!["run".to_owned(), "-d".into(), "--name".into(), c.clone()];
    args.push(format!("--volume-driver={}", p.name));
    for (i, v) in vols.iter().enumerate() {
        args.extend(["-v".into(), format!("{v}:/d{i}")]);
    }
    args.extend([
        test_image(),
        "sh".into(),
        "-c".into(),
        "echo one > /d0/f; echo one > /d1/f; sleep 600".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.docker.ok(&args);
    let pid = p.pid();
    p.kill9();
    assert!(p.socket().exists(), "kill -9 leaves the socket file behind");
    assert!(
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&*p.data_root().to_string_lossy()),
        "the block volume stays mounted for the running container"
    );
    // The container keeps working while the plugin is down.
    p.docker.ok(&["exec", &c, "sh", "-c", "echo two >> /d1/f"]);
    p.start_again();
    assert_ne!(p.pid(), pid);
    let listed = p.docker.volume_names(&p.name);
    for v in vols {
        assert!(listed.iter().any(|l| l == v), "{v} not in {listed:?}");
        assert_eq!(p.mount_count(v), 1, "{v}: mount count survived");
    }
    assert_eq!(p.docker.ok(&["exec", &c, "cat", "/d1/f"]), "one\ntwo");
    p.docker.ok(&["stop", "-t", "0", &c]);
    for v in vols {
        assert_eq!(p.mount_count(v), 0, "{v}: unmounted after the restart");
    }
    assert_eq!(
        p.inspect("k9blk")["status"]["mounted"],
        false,
        "the loop mount is gone"
    );
    p.docker.ok(&["rm", &c]);
    for v in vols {
        p.docker.ok(&["volume", "rm", v]);
    }
    assert!(p.docker.volume_names(&p.name).is_empty());
}

#[test]
fn sigterm_removes_the_socket_and_a_restart_serves_the_same_volumes() {
    let mut p = Plugin::start();
    p.docker.ok(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "size=32M",
        "term@gold",
    ]);
    let st = p.stop().unwrap();
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    assert!(!p.socket().exists(), "socket removed at exit");
    assert!(
        !p.control_socket().exists(),
        "control socket removed at exit"
    );
    p.start_again();
    let v = p.docker.volume_inspect("term@gold");
    assert_eq!(v["Status"]["size"], "32M");
    p.docker.ok(&["volume", "rm", "term@gold"]);
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused() {
    let p = Plugin::start();
    let out = std::process::Command::new(daffe_e2e::plugin::daffe_bin())
        .arg("serve")
        .arg("--socket")
        .arg(p.socket())
        .arg("--control-socket")
        .arg(p.dir.path().join("other.sock"))
        .arg("--data-root")
        .arg(p.dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is serving it"), "{err}");
    // And the first one is unharmed.
    let (status, reply) = p.call("/Plugin.Activate", &json!({}));
    assert_eq!(
        (status, reply["Implements"][0].as_str()),
        (200, Some("VolumeDriver"))
    );
}

#[test]
fn a_dockerd_restart_keeps_the_volumes() {
    let mut engine = daffe_e2e::docker::PrivateDockerd::start();
    let p = Plugin::start_for(&engine, None);
    let d = engine.docker();
    let img = test_image();
    let drv = format!("--volume-driver={}", p.name);
    for v in ["dr@default", "drblk@gold"] {
        d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &drv,
            "-v",
            &format!("{v}:/data"),
            &img,
            "sh",
            "-c",
            "echo kept > /data/f",
        ]);
    }
    let c = p.container("live");
    d.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        "--network",
        "none",
        &drv,
        "-v",
        "drblk@gold:/data",
        &img,
        "sleep",
        "600",
    ]);
    assert_eq!(p.mount_count("drblk"), 1);
    engine.restart();
    let d = engine.docker();
    // dockerd asked Get for each volume at start and kept them.
    let listed = d.volume_names(&p.name);
    assert!(
        listed.contains(&"dr@default".to_owned()) && listed.contains(&"drblk@gold".to_owned()),
        "{listed:?}\n{}",
        engine.log()
    );
    // The stopped engine stopped the container: its unmount reached us.
    assert_eq!(p.mount_count("drblk"), 0, "{}", p.log());
    for v in ["dr@default", "drblk@gold"] {
        let out = d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &drv,
            "-v",
            &format!("{v}:/data"),
            &img,
            "cat",
            "/data/f",
        ]);
        assert_eq!(out, "kept", "{v}");
    }
    // The gold volume is still its own 1 GiB filesystem, not the directory under it.
    let df = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "drblk@gold:/data",
        &img,
        "df",
        "-k",
        "/data",
    ]);
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
    d.ok(&["rm", "-f", &c]);
    for v in ["dr@default", "drblk@gold"] {
        d.ok(&["volume", "rm", v]);
    }
}
