//! `-o size=` makes a block volume whose filesystem has that size, and
//! enforces it.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;

/// Filesystem size in KiB as `df` inside a container reports it.
fn df_kib(p: &Plugin, vol: &str) -> u64 {
    let out = p.docker.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/data"),
        &test_image(),
        "df",
        "-k",
        "/data",
    ]);
    let line = out.lines().nth(1).unwrap_or_else(|| panic!("df: {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn size_option_gives_a_filesystem_of_that_size() {
    let p = Plugin::start();
    // (create args, expected size in MiB)
    let cases: [(&[&str], u64); 3] = [
        (&["-o", "size=64M", "sized@gold"], 64),
        (&["-o", "size=200M", "-o", "profile=gold", "sized2"], 200),
        (&["gold1@gold"], 1024),
    ];
    for (args, mib) in cases {
        let mut full = vec!["volume", "create", "-d", &p.name];
        full.extend_from_slice(args);
        let vol = p.docker.ok(&full);
        let v = p.docker.volume_inspect(&vol);
        assert_eq!(v["Status"]["format"], "block", "{vol}");
        let kib = df_kib(&p, &vol);
        // ext4 metadata and journal take a few percent of the image.
        assert!(
            kib <= mib * 1024 && kib >= mib * 1024 * 85 / 100,
            "{vol}: {kib} KiB for {mib} MiB"
        );
        // The image is sparse: it costs far less than its size on the host.
        let img = p.data_root().join(format!(
            "local/gold/{}/image.ext4",
            vol.split('@').next().unwrap()
        ));
        let meta = std::fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), mib << 20, "{vol}");
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < meta.len() / 2,
            "{vol}: image not sparse"
        );
    }
    // The size is a real limit.
    let out = p.docker.run(&[
        "run",
        "--rm",
        "-v",
        "sized@gold:/data",
        &test_image(),
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=1M count=80 2>&1; echo rc=$?",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No space left on device"), "{text}");
    // And the data survives an unmount and remount.
    p.docker.ok(&[
        "run",
        "--rm",
        "-v",
        "sized@gold:/data",
        &test_image(),
        "sh",
        "-c",
        "rm /data/big; echo persisted > /data/f",
    ]);
    let out = p.docker.ok(&[
        "run",
        "--rm",
        "-v",
        "sized@gold:/data",
        &test_image(),
        "cat",
        "/data/f",
    ]);
    assert_eq!(out, "persisted");
}
