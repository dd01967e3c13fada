//! The two-host harness itself: the link is shaped, can be cut and restored,
//! and host B's own Docker engine runs containers in B's namespace.

use daffe_e2e::netns::{ADDR_A, ADDR_B, Link, NsDockerd, sh_in};

#[test]
fn link_is_shaped_and_can_be_cut() {
    let link = Link::new("100mbit");
    let qdisc = sh_in(&link.a, &format!("tc qdisc show dev {}", link.dev_a));
    assert!(
        qdisc.contains("tbf") && qdisc.contains("100Mbit"),
        "{qdisc}"
    );
    sh_in(&link.a, &format!("busybox ping -c1 -W2 {ADDR_B}"));
    link.down();
    let cut = link
        .a
        .command("busybox")
        .args(["ping", "-c1", "-W1", &ADDR_B.to_string()])
        .output()
        .unwrap();
    assert!(
        !cut.status.success(),
        "ping must fail while the link is down"
    );
    link.up();
    // The veth needs a moment to come back (carrier).
    let mut ok = false;
    for _ in 0..50 {
        let out = link
            .b
            .command("busybox")
            .args(["ping", "-c1", "-W1", &ADDR_A.to_string()])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "link did not come back");
}

#[test]
fn host_b_runs_its_own_docker_engine_in_its_namespace() {
    let link = Link::new("100mbit");
    let image =
        std::env::var("DAFFE_TEST_IMAGE").unwrap_or_else(|_| "daffe-test/busybox:latest".into());
    let b = NsDockerd::start(&link.b);
    b.load_image(&image);
    let out = b
        .docker()
        .args(["run", "--rm", "--network", "host", &image, "ip", "addr"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&ADDR_B.to_string()),
        "container is not in B's namespace:\n{text}"
    );
}
