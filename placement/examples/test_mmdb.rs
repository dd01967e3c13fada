//! Writes a small MaxMind-format database for trying `daffe placement
//! observe` by hand: the documentation networks placed in three cities.
//!
//! `cargo run -p placement --features testing --example test_mmdb -- OUT.mmdb`
//! then, e.g., `mmdblookup --file OUT.mmdb --ip 192.0.2.1 location`.

use placement::testing::mmdb::{MmdbWriter, Value};

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: test_mmdb OUT.mmdb");
        std::process::exit(2);
    };
    let city = |name: &str, lat: f64, lon: f64, continent: &str| {
        Value::map([
            (
                "city",
                Value::map([("names", Value::map([("en", Value::Str(name.into()))]))]),
            ),
            (
                "continent",
                Value::map([("code", Value::Str(continent.into()))]),
            ),
            (
                "location",
                Value::map([
                    ("latitude", Value::F64(lat)),
                    ("longitude", Value::F64(lon)),
                ]),
            ),
        ])
    };
    let mut w = MmdbWriter::new("daffe-test-City");
    w.insert(
        "192.0.2.0/24".parse().expect("net"),
        city("Munich", 48.14, 11.58, "EU"),
    );
    w.insert(
        "198.51.100.0/24".parse().expect("net"),
        city("Tokyo", 35.68, 139.7, "AS"),
    );
    w.insert(
        "203.0.113.0/24".parse().expect("net"),
        city("New York", 40.71, -74.0, "NA"),
    );
    w.insert(
        "2001:db8::/32".parse().expect("net"),
        city("Sydney", -33.87, 151.21, "OC"),
    );
    if let Err(e) = std::fs::write(&out, w.to_bytes()) {
        eprintln!("{out}: {e}");
        std::process::exit(1);
    }
}
