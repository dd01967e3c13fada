//! Issue 12, finding 6, end to end: the destination commits (it owns the
//! volume) but its reply never reaches the source. The agent link is mutual
//! TLS, so the reply is lost by the agent's test hook (feature `testing`,
//! `DAFFE_TEST_LOSE_COMMIT_REPLY`): the connection drops after the commit,
//! before the reply. The first `daffe migrate` fails with the source still
//! fenced (never two owners); rerunning it finishes the handover instead of
//! getting 409 and leaving the source fenced for good.

use daffe_e2e::hosts::{TwoHosts, ok, test_image};

#[test]
fn finding_06_a_rerun_after_a_lost_commit_reply_finishes_the_move() {
    let mut h = TwoHosts::start("100mbit");
    let image = test_image();
    ok(
        h.docker_a(&[
            "run",
            "--rm",
            "--volume-driver",
            &h.plugin,
            "-v",
            "lost:/data",
            &image,
            "sh",
            "-c",
            "head -c 4194304 /dev/urandom > /data/f && echo kept > /data/note",
        ]),
        "make a volume",
    );
    let marker = h.b.dir.join("lose-commit-reply");
    std::fs::write(&marker, b"once").unwrap();
    h.start_agent_env(&[], &[("DAFFE_TEST_LOSE_COMMIT_REPLY", &marker)]);

    let (child, _rx) = h.migrate("lost", &[]);
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the first run saw a reply the agent never sent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!marker.exists(), "the hook did not fire");
    // Committed there, fenced here: one owner, and it is B.
    assert_eq!(h.b.inspect("lost")["status"]["state"], "ready");
    assert_eq!(h.a.inspect("lost")["status"]["state"], "fenced");

    let (child, _rx) = h.migrate("lost", &[]);
    let report = h.finish(child);
    assert!(
        report["cutover_reason"]
            .as_str()
            .unwrap()
            .contains("already owned"),
        "{report:#}"
    );
    assert_eq!(h.a.inspect("lost")["status"]["state"], "moved");
    assert_eq!(h.b.inspect("lost")["status"]["state"], "ready");
    let note = ok(
        h.docker_b(&[
            "run",
            "--rm",
            "--volume-driver",
            &h.plugin,
            "-v",
            "lost:/data",
            &image,
            "cat",
            "/data/note",
        ]),
        "read on B",
    );
    assert_eq!(note.trim(), "kept");
}
