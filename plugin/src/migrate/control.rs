//! The control socket's migration routes (POST, JSON body, JSON reply):
//!
//! Source host:
//! - `/v1/volumes/NAME/move {"to"}`: `Ready -> Moving` (pre-copy; mountable)
//! - `/v1/volumes/NAME/fence {"to"}`: `Moving -> Fenced` once unmounted
//!   (409 "in use" before that)
//! - `/v1/volumes/NAME/moved {"to"}`: `Fenced -> Moved` (Mount fails for good)
//! - `/v1/volumes/NAME/abort`: back to `Ready`
//!
//! Destination host:
//! - `/v1/receive/check {"volume","options","need_bytes"}`: profile, room
//! - `/v1/receive/prepare {"volume","options","from"}`: volume in `Receiving`
//! - `/v1/volumes/NAME/own`: `Receiving -> Ready`
//!
//! Both: `GET /v1/volumes/NAME/transfer`: where the mover reads or writes.

use crate::api::reply::Reply;
use crate::service::VolumeService;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
struct To {
    to: String,
}

#[derive(Debug, Deserialize)]
struct Check {
    volume: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    need_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Prepare {
    volume: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    from: String,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// Answers a migration route, or `None` if `path` is not one (the caller
/// then routes it as before).
pub fn route(svc: &VolumeService, method: &Method, segs: &[&str], body: &[u8]) -> Option<Reply> {
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let r = match segs {
        ["v1", "volumes", name, "transfer"] if get => svc.transfer_paths(name).map(|p| json!(p)),
        ["v1", "volumes", name, op] if post => {
            let result = match *op {
                "move" | "fence" | "moved" => match parse::<To>(body) {
                    Ok(t) => match *op {
                        "move" => svc.begin_move(name, &t.to),
                        "fence" => svc.fence(name, &t.to),
                        _ => svc.finish_move(name, &t.to),
                    },
                    Err(reply) => return Some(reply),
                },
                "abort" => svc.abort_move(name),
                "own" => svc.take_ownership(name),
                _ => return None,
            };
            result.map(|v| json!(v))
        }
        ["v1", "receive", "check"] if post => match parse::<Check>(body) {
            Ok(c) => svc
                .check_receive(&c.volume, &c.options, c.need_bytes)
                .map(|v| json!(v)),
            Err(reply) => return Some(reply),
        },
        ["v1", "receive", "prepare"] if post => match parse::<Prepare>(body) {
            Ok(p) => svc
                .prepare_receive(&p.volume, &p.options, &p.from)
                .map(|v| json!(v)),
            Err(reply) => return Some(reply),
        },
        _ => return None,
    };
    Some(r.map(Reply::json).unwrap_or_else(Reply::from))
}
