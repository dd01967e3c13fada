//! The managed plugin end to end: build the rootfs, `docker plugin create`
//! and `enable`, use volumes, `disable -f` and `enable` keep them, remove.
//! The plugin reads its config file from the host directory mounted at
//! /etc/daffe (`--config-dir`): a profile defined there is usable.

use daffe_e2e::docker::{Docker, test_image};
use daffe_e2e::plugin::{call_socket, daffe_bin};
use std::path::Path;
use std::process::Command;

/// Removes the plugin and its volumes even if the test fails half-way.
struct Installed {
    name: String,
    docker: Docker,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let d = &self.docker;
        let ids = d.run(&["ps", "-aq", "--filter", &format!("name={}-", self.name)]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            d.run(&["rm", "-f", id]);
        }
        for v in d.volume_names(&format!("{}:latest", self.name)) {
            d.run(&["volume", "rm", "-f", &v]);
        }
        d.run(&["plugin", "disable", "-f", &self.name]);
        d.run(&["plugin", "rm", "-f", &self.name]);
    }
}

#[test]
fn managed_plugin_install_use_disable_enable_remove() {
    let d = Docker::default();
    let name = daffe_e2e::unique("daffe-m");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-plugin.sh");
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("daffe.toml"),
        "[profiles.silver]\ndescription = \"from the mounted config\"\n\
         [profiles.silver.local]\nformat = \"dir\"\n",
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--name", &name, "--bin"])
        .arg(daffe_bin())
        .arg("--config-dir")
        .arg(config.path())
        .output()
        .unwrap();
    let installed = Installed {
        name: name.clone(),
        docker: d.clone(),
    };
    assert!(
        out.status.success(),
        "build-plugin.sh: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let driver = format!("{name}:latest");
    assert_eq!(
        d.ok(&["plugin", "inspect", "-f", "{{.Enabled}}", &name]),
        "true"
    );
    let img = test_image();
    let c = format!("{name}-app");
    d.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        &format!("--volume-driver={driver}"),
        "-v",
        "mdata@gold:/g",
        "-v",
        "mcheap:/c",
        &img,
        "sh",
        "-c",
        "echo gold > /g/f; echo cheap > /c/f; sleep 600",
    ]);
    assert_eq!(
        d.ok(&["exec", &c, "sh", "-c", "sleep 1; cat /g/f /c/f"]),
        "gold\ncheap"
    );
    let v = d.volume_inspect("mdata@gold");
    assert_eq!(v["Driver"], driver.as_str());
    assert_eq!(v["Status"]["format"], "block");
    assert!(
        v["Mountpoint"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/daffe/"),
        "{v}"
    );
    // The control socket is on the host under the plugin's socket directory.
    let id = d.ok(&["plugin", "inspect", "-f", "{{.Id}}", &name]);
    let control = format!("/run/docker/plugins/{id}/control.sock");
    let (status, view) = call_socket(Path::new(&control), "GET", "/v1/volumes/mdata", "");
    assert_eq!(
        (status, view["mount_count"].as_u64()),
        (200, Some(1)),
        "{view}"
    );

    // The profile from the config directory the plugin sees as /etc/daffe.
    let (status, profiles) =
        call_socket(Path::new(&control), "GET", "/v1/configuration/profiles", "");
    assert_eq!(status, 200, "{profiles}");
    assert!(
        profiles["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "silver" && p["description"] == "from the mounted config"),
        "{profiles}"
    );
    d.ok(&["volume", "create", "-d", &driver, "msilver@silver"]);
    assert_eq!(
        d.volume_inspect("msilver@silver")["Status"]["profile"],
        "silver"
    );
    d.ok(&["volume", "rm", "msilver@silver"]);

    d.ok(&["rm", "-f", &c]);
    d.ok(&["plugin", "disable", "-f", &name]);
    d.ok(&["plugin", "enable", &name]);
    let listed = d.volume_names(&driver);
    assert!(
        listed.contains(&"mdata@gold".to_owned()) && listed.contains(&"mcheap".to_owned()),
        "{listed:?}"
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "-v",
        "mdata@gold:/g",
        "-v",
        "mcheap:/c",
        &img,
        "cat",
        "/g/f",
        "/c/f",
    ]);
    assert_eq!(out, "gold\ncheap", "data kept across disable -f / enable");
    d.ok(&["volume", "rm", "mdata@gold", "mcheap"]);
    d.ok(&["plugin", "disable", &name]);
    d.ok(&["plugin", "rm", &name]);
    assert!(!d.run(&["plugin", "inspect", &name]).status.success());
    drop(installed);
}
