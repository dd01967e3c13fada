//! Volume endpoints: Create, Remove, Mount, Unmount, Path, Get, List.

use super::Limits;
use super::reply::Reply;
use super::request::Request;
use crate::bounded;
use crate::service::{VolumeInfo, VolumeService};
use serde_json::json;
use std::sync::Arc;

pub async fn handle(svc: &Arc<VolumeService>, limits: Limits, req: Request) -> Reply {
    let svc = svc.clone();
    let result = match req {
        Request::Create { name, opts } => {
            let n = name.clone();
            bounded::run("create", &n, limits.slow, move |_| svc.create(&name, &opts))
                .await
                .map(|()| Reply::ok(json!({})))
        }
        Request::Remove { name } => {
            let n = name.clone();
            bounded::run("remove", &n, limits.fast, move |_| svc.remove(&name))
                .await
                .map(|()| Reply::ok(json!({})))
        }
        Request::Mount { name, id } => {
            let n = name.clone();
            bounded::run("mount", &n, limits.slow, move |fence| {
                svc.mount(&name, &id, fence)
            })
            .await
            .map(|p| Reply::ok(json!({ "Mountpoint": p })))
        }
        Request::Unmount { name, id } => {
            let n = name.clone();
            bounded::run("unmount", &n, limits.fast, move |_| svc.unmount(&name, &id))
                .await
                .map(|()| Reply::ok(json!({})))
        }
        // Path, Get and List read the store only (microseconds, no volume
        // lock), so they run inline: Get's latency is dockerd's Create latency.
        Request::Path { name } => svc
            .path(&name)
            .map(|p| Reply::ok(json!({ "Mountpoint": p }))),
        Request::Get { name } => svc
            .get(&name)
            .map(|v| Reply::ok(json!({ "Volume": volume_json(&v) }))),
        Request::List => svc.list().map(|vs| {
            let list: Vec<_> = vs
                .iter()
                .map(|v| json!({ "Name": v.name, "Mountpoint": v.mountpoint }))
                .collect();
            Reply::ok(json!({ "Volumes": list }))
        }),
        Request::Activate | Request::Capabilities => {
            return Reply::error(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "misrouted request",
            );
        }
    };
    result.unwrap_or_else(Reply::from)
}

fn volume_json(v: &VolumeInfo) -> serde_json::Value {
    json!({
        "Name": v.name,
        "Mountpoint": v.mountpoint,
        "CreatedAt": v.created_at,
        "Status": v.status,
    })
}
