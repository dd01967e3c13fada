//! Debian's docker-compose 1.29 with `name: data@gold` and the plugin as driver.
//! On a private engine: compose looks the volume up by name before creating
//! it, and on the shared engine that lookup waits on every plugin other tests
//! left behind (see `PrivateDockerd`).

use daffe_e2e::docker::{PrivateDockerd, test_image};
use daffe_e2e::plugin::Plugin;
use std::process::Command;

fn compose(p: &Plugin, project: &str, args: &[&str]) -> String {
    let out = Command::new("docker-compose")
        .arg("-p")
        .arg(project)
        .env(
            "DOCKER_HOST",
            p.docker.host().unwrap_or("unix:///var/run/docker.sock"),
        )
        .arg("-f")
        .arg(p.dir.path().join("docker-compose.yml"))
        .args(args)
        .output()
        .expect("cannot run docker-compose (apt-get install docker-compose)");
    assert!(
        out.status.success(),
        "docker-compose {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn compose_up_down_and_down_v() {
    let engine = PrivateDockerd::start();
    let p = Plugin::start_for(&engine, None);
    let project = p.name.replace('-', "");
    let vol = format!("{project}data@gold");
    let yml = format!(
        r#"version: "3.7"
services:
  app:
    image: {img}
    container_name: {c}
    network_mode: none
    command: ["sh", "-c", "cat /data/count 2>/dev/null; echo x >> /data/count; sleep 600"]
    volumes:
      - data:/data
volumes:
  data:
    name: {vol}
    driver: {drv}
    driver_opts:
      size: 48M
"#,
        img = test_image(),
        c = p.container("app"),
        drv = p.name,
    );
    std::fs::write(p.dir.path().join("docker-compose.yml"), yml).unwrap();
    compose(&p, &project, &["up", "-d"]);
    let v = p.docker.volume_inspect(&vol);
    assert_eq!(v["Driver"], p.name.as_str());
    assert_eq!(v["Status"]["profile"], "gold");
    assert_eq!(v["Status"]["size"], "48M");
    assert_eq!(p.mount_count(&vol), 1);
    compose(&p, &project, &["down"]);
    assert_eq!(p.mount_count(&vol), 0);
    assert!(
        p.docker.volume_names(&p.name).contains(&vol),
        "down keeps the volume"
    );
    compose(&p, &project, &["up", "-d"]);
    let count = p
        .docker
        .ok(&["exec", &p.container("app"), "cat", "/data/count"]);
    assert_eq!(count, "x\nx", "the second up saw the first one's data");
    let df = p
        .docker
        .ok(&["exec", &p.container("app"), "df", "-k", "/data"]);
    let kib: u64 = df
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        kib <= 48 * 1024 && kib > 38 * 1024,
        "a 48M block volume (ext4 keeps ~15% at this size): {df}"
    );
    compose(&p, &project, &["down", "-v"]);
    assert!(
        !p.docker.volume_names(&p.name).contains(&vol),
        "down -v removes it"
    );
    let gone = p.daffe(&["volume", "inspect", &vol, "--json"]);
    assert!(!gone.status.success(), "and the plugin deleted it");
}
