//! GET /v1/configuration/profiles (FlockerProfiles' endpoint) and `daffe
//! profiles ls`, with a configured profile that docker can then use; `daffe
//! profiles set` with the README's own profile block.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::{Plugin, call_socket};

const CONFIG: &str = r#"
[profiles.silver]
description = "middle of the road"
[profiles.silver.local]
format = "block"
default_size = "24M"
[profiles.silver.ebs]
type = "gp3"
iops = 6000
throughput = 250
"#;

#[test]
fn profiles_endpoint_lists_profiles_per_backend() {
    let p = Plugin::start_with_config(CONFIG);
    let (status, body) = call_socket(&p.control_socket(), "GET", "/v1/configuration/profiles", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "local");
    let profiles = body["profiles"].as_array().unwrap();
    let names: Vec<_> = profiles
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "gold", "silver"]);
    let gold = &profiles[1];
    assert_eq!(gold["builtin"], true);
    assert_eq!(gold["ebs"]["type"], "io2");
    assert_eq!(gold["ebs"]["iops"]["per_gib"], 30);
    assert_eq!(gold["ebs"]["encrypted"], true);
    assert_eq!(gold["local"]["format"], "block");
    let silver = &profiles[2];
    assert_eq!(silver["builtin"], false);
    assert_eq!(silver["ebs"]["iops"], 6000);
    assert_eq!(silver["local"]["default_size"], "24M");
    // Unknown routes and methods say so.
    let (status, body) = call_socket(&p.control_socket(), "GET", "/v1/nope", "");
    assert_eq!(
        (status, body["Err"].as_str().unwrap()),
        (404, "no route /v1/nope")
    );
    // A definition without a name is refused with the reason.
    let (status, reply) = call_socket(
        &p.control_socket(),
        "POST",
        "/v1/configuration/profiles",
        "{}",
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply["Err"].as_str().unwrap().contains("name"), "{reply}");
    // The CLI shows the same.
    let out = p.daffe(&["profiles", "ls", "--json"]);
    assert!(out.status.success());
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, body_of(&p));
    let text = String::from_utf8_lossy(&p.daffe(&["profiles", "ls"]).stdout).into_owned();
    assert!(
        text.contains("silver")
            && text.contains("block 24M ext4")
            && text.contains("gp3 6000 IOPS"),
        "{text}"
    );
    // And docker can use the configured profile.
    let (kib, out) = df_kib(&p, "mid@silver");
    assert!(kib <= 24 * 1024 && kib > 18 * 1024, "{out}");
}

/// The size in KiB that `df` shows for `volume` mounted in a container, and
/// df's output.
fn df_kib(p: &Plugin, volume: &str) -> (u64, String) {
    let out = p.docker.ok(&[
        "run",
        "--rm",
        &format!("--volume-driver={}", p.name),
        "-v",
        &format!("{volume}:/data"),
        &test_image(),
        "df",
        "-k",
        "/data",
    ]);
    let kib = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no size in df's output: {out}"));
    (kib, out)
}

fn body_of(p: &Plugin) -> serde_json::Value {
    call_socket(&p.control_socket(), "GET", "/v1/configuration/profiles", "").1
}

#[test]
fn volume_cli_lists_and_inspects() {
    let p = Plugin::start();
    p.docker.ok(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "size=20M",
        "clidb@gold",
    ]);
    p.docker.ok(&["volume", "create", "-d", &p.name, "cliweb"]);
    let out = String::from_utf8_lossy(&p.daffe(&["volume", "ls"]).stdout).into_owned();
    let lines: Vec<_> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("clidb") && lines[1].contains("gold") && lines[1].contains("20M"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("cliweb") && lines[2].contains("dir"),
        "{out}"
    );
    let v = p.inspect("clidb@gold");
    assert_eq!(v["docker_name"], "clidb@gold");
    assert_eq!(v["settings"]["size"], "20M");
    assert_eq!(v["options"]["size"], "20M");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000);
    let out = p.daffe(&["volume", "inspect", "nosuch", "--json"]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("volume \"nosuch\" not found"),
        "{err}"
    );
}

/// FlockerProfiles' POST: a profile defined at runtime is listed, docker can
/// use it at once, and it is still there after the daemon restarts.
#[test]
fn a_profile_posted_at_runtime_is_usable_and_survives_a_restart() {
    let mut p = Plugin::start();
    let def = r#"{"name": "bronze", "description": "small block volumes",
                  "local": {"format": "block", "default_size": "16M"}}"#;
    let (status, reply) = call_socket(
        &p.control_socket(),
        "POST",
        "/v1/configuration/profiles",
        def,
    );
    assert_eq!(status, 200, "{reply}");
    // A bad value is a 400 that says which, and changes nothing.
    let bad = r#"{"name": "bronze", "local": {"format": "floppy"}}"#;
    let (status, reply) = call_socket(
        &p.control_socket(),
        "POST",
        "/v1/configuration/profiles",
        bad,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply["Err"].as_str().unwrap().contains("floppy"), "{reply}");
    let names = |p: &Plugin| -> Vec<String> {
        let mut n: Vec<String> = body_of(p)["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&p), ["bronze", "default", "gold"]);
    p.restart();
    assert_eq!(names(&p), ["bronze", "default", "gold"]);
    let (kib, out) = df_kib(&p, "small@bronze");
    assert!(kib <= 16 * 1024 && kib > 10 * 1024, "{out}");
}

/// The README's `daffe profiles set silver silver.toml` with the README's own
/// `[profiles.silver]` block, as an operator would copy it.
#[test]
fn profiles_set_takes_the_readme_block() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split("```toml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("[profiles.silver]"))
        .expect("a toml block with [profiles.silver] in the README");
    let p = Plugin::start();
    let file = p.dir.path().join("silver.toml");
    std::fs::write(&file, block).unwrap();
    let out = p.daffe(&["profiles", "set", "silver", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let silver = body_of(&p)["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "silver")
        .cloned()
        .expect("silver defined");
    assert_eq!(
        silver["description"], "general purpose, encrypted",
        "{silver}"
    );
    assert_eq!(silver["ebs"]["type"], "gp3", "{silver}");
}
