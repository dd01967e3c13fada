//! The control socket (default /run/daffe/control.sock): what the `daffe`
//! CLI and schedulers read, since the store's file is locked by the daemon.
//!
//! Routes (GET, JSON):
//! - `/v1/configuration/profiles`: the profiles and what each means on every
//!   backend (the endpoint FlockerProfiles proposed), plus this host's backend.
//! - `/v1/volumes`: every volume with its record, mountpoint, mount counts.
//! - `/v1/volumes/NAME`: one volume, by NAME or by docker name (`db@gold`).
//!
//! Errors are `{"Err": message}` with a 4xx/5xx status. Routes that change
//! things (profiles, set-profile, EBS migration steps) are in
//! [`crate::control_ext`].

use crate::api::reply::Reply;
use crate::server::Handler;
use crate::service::VolumeService;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// Where the control socket lives unless configured otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/daffe/control.sock";

pub struct ControlApi {
    svc: Arc<VolumeService>,
}

impl ControlApi {
    pub fn new(svc: Arc<VolumeService>) -> Self {
        Self { svc }
    }

    pub fn route(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET {
            return Reply::method_not_allowed(method);
        }
        let path = percent_decode(path);
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let result = match segs.as_slice() {
            ["v1", "configuration", "profiles"] => {
                let catalog = self.svc.catalog();
                let profiles: Vec<_> = catalog.iter().collect();
                return Reply::json(json!({
                    "backend": self.svc.backend_kind(),
                    "profiles": profiles,
                }));
            }
            ["v1", "volumes"] => self.svc.views().map(|v| json!(v)),
            ["v1", "volumes", name] => self.svc.inspect(name).map(|v| json!(v)),
            _ => return Reply::error(StatusCode::NOT_FOUND, format!("no route {path}")),
        };
        result.map(Reply::json).unwrap_or_else(Reply::from)
    }
}

impl Handler for ControlApi {
    async fn call(&self, method: &Method, path: &str, body: Bytes) -> Reply {
        let decoded = percent_decode(path);
        let segs: Vec<&str> = decoded.trim_matches('/').split('/').collect();
        if let Some(reply) = crate::migrate::control::route(&self.svc, method, &segs, &body) {
            return reply;
        }
        if let Some(reply) = crate::control_ext::route(&self.svc, method, &segs, &body).await {
            return reply;
        }
        self.route(method, path)
    }
}

/// Decodes `%XX` escapes (clients may escape the `@` of `db@gold`).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters, for building request paths.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for s in ["db@gold", "a b/c%", "plain", "é"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
        assert_eq!(percent_decode("db%40gold"), "db@gold");
        assert_eq!(percent_decode("bad%4"), "bad%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
