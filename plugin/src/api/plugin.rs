//! Plugin-level endpoints: handshake and capabilities.

use crate::server::Reply;
use serde_json::json;

pub(crate) fn activate() -> Reply {
    Reply::ok(json!({ "Implements": ["VolumeDriver"] }))
}

/// `local` scope: a volume lives on this host; dockerd does not assume other
/// hosts see the same volume under the same name.
pub(crate) fn capabilities() -> Reply {
    Reply::ok(json!({ "Capabilities": { "Scope": "local" } }))
}
