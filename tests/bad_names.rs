//! Every bad volume name is refused within 1 s, and the refusal, with the
//! naming rule and the profiles, reaches the docker CLI.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;
use std::time::{Duration, Instant};

/// FlockerProfiles saw a bad name hang `docker run`; a refusal must be
/// immediate. 1 s covers the docker CLI, dockerd and the plugin together
/// (unloaded, each refusal takes 20-300 ms here; a machine busy compiling can
/// push `docker run` past it).
const LIMIT: Duration = Duration::from_secs(1);

#[test]
fn bad_names_fail_fast_with_the_message_in_the_docker_cli() {
    let p = Plugin::start();
    let img = test_image();
    let long = format!("{}@gold", "x".repeat(97));
    // (name, what the message must say)
    let cases: Vec<(&str, &str)> = vec![
        ("vol@", "empty PROFILE"),
        ("@gold", "empty NAME"),
        ("a@b@c", "more than one '@'"),
        ("a/b@gold", "contains '/'"),
        ("..@gold", "must start with a letter or digit"),
        (&long, "the maximum is 96"),
        ("db@silver", "unknown profile \"silver\""),
    ];
    for (name, want) in &cases {
        let t = Instant::now();
        let err = p.docker.fails(&["volume", "create", "-d", &p.name, name]);
        let took = t.elapsed();
        assert!(took < LIMIT, "{name}: took {took:?}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("profiles: default, gold"), "{name}: {err}");
        if *want != "unknown profile \"silver\"" {
            assert!(
                err.contains("NAME starts with a letter or digit"),
                "{name}: the rule: {err}"
            );
        }
    }
    // docker run passes names through to the plugin too (all but `..@gold`,
    // which the docker CLI takes for a relative host path).
    // `docker run` itself (CLI, container set-up) costs time on a loaded
    // machine that is not ours: the limit applies on top of a plain run's.
    for (name, want) in cases.iter().filter(|(n, _)| !n.starts_with("..")) {
        let t = Instant::now();
        p.docker.ok(&["run", "--rm", &img, "true"]);
        let baseline = t.elapsed();
        let t = Instant::now();
        let err = p.docker.fails(&[
            "run",
            "--rm",
            &format!("--volume-driver={}", p.name),
            "-v",
            &format!("{name}:/data"),
            &img,
            "true",
        ]);
        let took = t.elapsed();
        assert!(
            took < baseline + LIMIT,
            "docker run {name}: took {took:?} (a plain run: {baseline:?})"
        );
        assert!(err.contains(want), "docker run {name}: {err}");
    }
    // Bad options too, naming the valid ones.
    let err = p
        .docker
        .fails(&["volume", "create", "-d", &p.name, "-o", "iops=100", "x"]);
    assert!(
        err.contains("unknown option \"iops\"; valid options: profile, size"),
        "{err}"
    );
    let err = p.docker.fails(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "profile=default",
        "x@gold",
    ]);
    assert!(
        err.contains("names profile \"gold\" but option profile=\"default\""),
        "{err}"
    );
    let err = p.docker.fails(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "size=1G",
        "x@default",
    ]);
    assert!(err.contains("cannot enforce a size"), "{err}");
    assert!(
        p.docker.volume_names(&p.name).is_empty(),
        "nothing was created"
    );
}
