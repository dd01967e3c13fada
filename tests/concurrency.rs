//! Parallel creates and simultaneous mounts leave exact counts in the store.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;

#[test]
fn twenty_parallel_creates_all_land() {
    let p = Plugin::start();
    std::thread::scope(|s| {
        for i in 0..20 {
            let p = &p;
            s.spawn(move || {
                let vol = if i % 4 == 0 {
                    format!("par{i}@gold")
                } else {
                    format!("par{i}")
                };
                let mut args = vec!["volume", "create", "-d", &p.name];
                if i % 4 == 0 {
                    args.extend(["-o", "size=16M"]);
                }
                args.push(&vol);
                p.docker.ok(&args);
            });
        }
    });
    let views = p.daffe(&["volume", "ls", "--json"]);
    let views: serde_json::Value = serde_json::from_slice(&views.stdout).unwrap();
    let views = views.as_array().unwrap();
    assert_eq!(views.len(), 20);
    assert!(
        views
            .iter()
            .all(|v| v["state"] == "ready" && v["mount_count"] == 0)
    );
    assert_eq!(views.iter().filter(|v| v["profile"] == "gold").count(), 5);
    assert_eq!(p.docker.volume_names(&p.name).len(), 20);
}

#[test]
fn five_containers_mounting_one_volume_at_once_leave_exact_counts() {
    let p = Plugin::start();
    for vol in ["five", "fiveblk@gold"] {
        p.docker.ok(&["volume", "create", "-d", &p.name, vol]);
        let names: Vec<String> = (0..5)
            .map(|i| p.container(&format!("{}{i}", vol.len())))
            .collect();
        std::thread::scope(|s| {
            for n in &names {
                let p = &p;
                s.spawn(move || {
                    p.docker.ok(&[
                        "run",
                        "-d",
                        "--name",
                        n,
                        "-v",
                        &format!("{vol}:/data"),
                        &test_image(),
                        "sh",
                        "-c",
                        &format!("echo {n} > /data/{n}; sleep 600"),
                    ]);
                });
            }
        });
        let v = p.inspect(vol);
        assert_eq!(v["mount_count"], 5, "{vol}: {v}");
        assert_eq!(
            v["mounts"].as_object().unwrap().len(),
            5,
            "five distinct mount IDs"
        );
        let files = p.docker.ok(&["exec", &names[0], "ls", "/data"]);
        assert_eq!(
            files.lines().filter(|l| l.starts_with(&p.name)).count(),
            5,
            "{files}"
        );
        std::thread::scope(|s| {
            for n in &names[..3] {
                let p = &p;
                s.spawn(move || p.docker.ok(&["rm", "-f", n]));
            }
        });
        assert_eq!(p.mount_count(vol), 2, "{vol}");
        p.docker.ok(&["rm", "-f", &names[3], &names[4]]);
        assert_eq!(p.mount_count(vol), 0, "{vol}");
        p.docker.ok(&["volume", "rm", vol]);
    }
}
