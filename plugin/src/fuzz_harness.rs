//! One harness per plugin decoder of outside bytes (issue 12, "Fuzzing"):
//! the same code runs under libFuzzer (`fuzz/fuzz_targets/plugin_*.rs`,
//! which path-include this file and the decoders, not the whole crate: a
//! nightly build of the crate would rebuild the AWS SDK) and on stable,
//! where `hostile_input.rs` replays the checked-in corpora
//! (`fuzz/corpus/plugin_*/`) through it in `cargo test`.
//!
//! A harness panics only on a bug: a decoder that panics, or a value that
//! does not survive its own encoding (what the daemon writes it must read
//! back). An `Err` from a decoder is the right answer to garbage.
//!
//! Every `crate::` path below exists in both crates; keep it so (the fuzz
//! crate mirrors the module paths in `fuzz/src/lib.rs`).

use crate::api::request::Request;
use crate::clustering::catalogue::CatalogueRecord;
use crate::config::Config;
use crate::control::ControlRequest;
use crate::migrate::wire::PeerRequest;
use crate::state::record::VolumeRecord;
use std::path::Path;

/// Splits `data` at its first newline: a request line, then a body.
fn line_and_body(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|&c| c == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// VolumeDriver socket: `PATH\nBODY`, as dockerd (or anything that can
/// reach the socket) sends them.
pub fn volume_driver_request(data: &[u8]) {
    let (path, body) = line_and_body(data);
    if let Ok(r) = Request::parse(&path, body) {
        let _ = r.endpoint();
    }
}

/// Control socket: `METHOD PATH\nBODY`. A request that parses must come
/// back the same through the client's encoding of it (`to_http`): the
/// client and the router cannot disagree on a route.
pub fn control_request(data: &[u8]) {
    let (line, body) = line_and_body(data);
    let (method, path) = line.split_once(' ').unwrap_or(("POST", &line));
    let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(req) = ControlRequest::parse(&method, path, body) else {
        return;
    };
    let (m, p, json) = req.to_http();
    let bytes = json
        .map(|v| serde_json::to_vec(&v).expect("a JSON value encodes"))
        .unwrap_or_default();
    let again = ControlRequest::parse(&m, &p, &bytes);
    assert_eq!(
        again.as_ref(),
        Ok(&req),
        "{m} {p} {}",
        String::from_utf8_lossy(&bytes)
    );
    let _ = (req.op(), req.subject());
}

/// `daffe serve --config FILE` (with its profiles and `[cluster]`).
pub fn config(data: &[u8]) {
    let _ = Config::parse(&String::from_utf8_lossy(data), Path::new("fuzz.toml"));
}

/// The `NAME@PROFILE` grammar of docker volume names.
pub fn volume_name(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(n) = profiles::VolumeName::parse(&text) {
        let _ = (n.name(), n.profile());
    }
}

/// A volume record as the state store keeps it (JSON in redb): written by
/// this daemon or an older one, read back at every start.
pub fn volume_record(data: &[u8]) {
    let Ok(r) = serde_json::from_slice::<VolumeRecord>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&r).expect("a record encodes");
    let back: VolumeRecord = serde_json::from_slice(&bytes).expect("an encoded record decodes");
    assert_eq!(back, r);
}

/// A catalogue record in etcd (cluster mode): any node writes them.
pub fn catalogue_record(data: &[u8]) {
    let Ok(r) = CatalogueRecord::decode("fuzz", data) else {
        return;
    };
    let back = CatalogueRecord::decode("fuzz", &r.encode()).expect("an encoded record decodes");
    assert_eq!(back, r);
}

/// What a migration source asks this host's agent (JSON inside the peer
/// protocol's `Control` messages; the frames and messages around it are
/// the mover's `frame` and `message` targets).
pub fn peer_request(data: &[u8]) {
    let Ok(r) = serde_json::from_slice::<PeerRequest>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&r).expect("a request encodes");
    let back: PeerRequest = serde_json::from_slice(&bytes).expect("an encoded request decodes");
    assert_eq!(back, r);
}
