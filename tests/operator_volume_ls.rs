//! Used space in Status and `daffe volume ls` (issue 13, item 11): docker
//! volume inspect's Status has `used`/`used_bytes`, `volume ls` a USED
//! column, `-q` and `--format`, and STATE is words, never the record's JSON.

use daffe_e2e::plugin::{Plugin, call_socket};
use serde_json::json;

#[test]
fn used_space_quiet_format_and_a_readable_state() {
    let p = Plugin::start();
    for v in ["a", "b"] {
        let (st, r) = p.call("/VolumeDriver.Create", &json!({"Name": v, "Opts": {}}));
        assert_eq!(st, 200, "{r}");
    }
    let (st, r) = p.call("/VolumeDriver.Mount", &json!({"Name": "a", "ID": "c1"}));
    assert_eq!(st, 200, "{r}");
    let mp = r["Mountpoint"].as_str().unwrap().to_owned();
    std::fs::write(format!("{mp}/blob"), vec![7u8; 3 << 20]).unwrap();

    // What `docker volume inspect` shows: Status.used and used_bytes.
    let (st, r) = p.call("/VolumeDriver.Get", &json!({"Name": "a"}));
    assert_eq!(st, 200, "{r}");
    let status = &r["Volume"]["Status"];
    let used = status["used_bytes"].as_u64().unwrap();
    assert!((3 << 20..4 << 20).contains(&used), "{status}");
    assert_eq!(status["used"], "3.0 MiB", "{status}");

    // -q: names only.
    let out = p.daffe(&["volume", "ls", "-q"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");

    // --format, with docker's \t.
    let out = p.daffe(&["volume", "ls", "--format", "{{.Name}}\\t{{.Used}}"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "a\t3.0 MiB"), "{text}");
    // --format json: one object a line.
    let out = p.daffe(&["volume", "ls", "--format", "json"]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["Name"], "a", "{first}");
    // A misspelt field is a usage error.
    let out = p.daffe(&["volume", "ls", "--format", "{{.Nmae}}"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // A volume being moved reads "moving -> hostb", not {"moving":{"to":..}}.
    let (st, r) = call_socket(
        &p.control_socket(),
        "POST",
        "/v1/volumes/b/move",
        &json!({"to": "hostb"}).to_string(),
    );
    assert_eq!(st, 200, "{r}");
    let out = p.daffe(&["volume", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("USED") && header.contains("STATE"),
        "{text}"
    );
    let b = text.lines().find(|l| l.starts_with("b ")).unwrap();
    assert!(b.contains("moving -> hostb"), "{text}");
    assert!(!text.contains('{'), "{text}");
    let out = p.daffe(&["volume", "inspect", "b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("moving -> hostb") && !text.contains("{\"moving"),
        "{text}"
    );
}
