//! Volume endpoints: Create, Remove, Mount, Unmount, Path, Get, List.

use super::Limits;
use super::request::Request;
use crate::bounded;
use crate::server::Reply;
use crate::service::{VolumeInfo, VolumeService};
use serde_json::json;
use std::sync::Arc;

/// List's serialised reply, tagged with the records' write generation: the
/// daemon's one List cache. `docker volume ls` and dockerd's sweeps call List
/// often, and with thousands of volumes reading the records and building the
/// JSON is most of the cost. Every record write goes through
/// `state::Records`, which moves the generation, so the cache is never
/// served after a write.
pub(crate) type ListCache = std::sync::Mutex<Option<(u64, bytes::Bytes)>>;

fn list(svc: &VolumeService, cache: &ListCache) -> Reply {
    let generation = svc.generation();
    if let Some(generation) = generation {
        let c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, bytes)) = &*c
            && *g == generation
        {
            return Reply::raw(bytes.clone());
        }
    }
    list_reply(svc.list(), generation, cache)
}

/// List's reply, kept in the cache under `generation` when there is one
/// (none in cluster mode, where other nodes change the catalogue).
fn list_reply(
    listed: Result<Vec<(String, std::path::PathBuf)>, crate::service::ServiceError>,
    generation: Option<u64>,
    cache: &ListCache,
) -> Reply {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        #[serde(rename = "Name")]
        name: &'a str,
        #[serde(rename = "Mountpoint")]
        mountpoint: &'a std::path::Path,
    }
    #[derive(serde::Serialize)]
    struct ListReply<'a> {
        #[serde(rename = "Volumes")]
        volumes: Vec<Entry<'a>>,
        #[serde(rename = "Err")]
        err: &'a str,
    }
    match listed {
        Ok(vs) => {
            let body = ListReply {
                volumes: vs
                    .iter()
                    .map(|(name, mountpoint)| Entry { name, mountpoint })
                    .collect(),
                err: "",
            };
            let bytes = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            if let Some(generation) = generation {
                *cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((generation, bytes.clone()));
            }
            Reply::raw(bytes)
        }
        Err(e) => Reply::from(e),
    }
}

pub(crate) async fn handle(
    svc: &Arc<VolumeService>,
    limits: Limits,
    list_cache: &ListCache,
    req: Request,
) -> Reply {
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
        // Cluster mode: these ask etcd (bounded), off the async threads.
        Request::Path { name } if svc.cluster().is_some() => {
            let n = name.clone();
            bounded::run("path", &n, limits.fast, move |_| svc.path(&name))
                .await
                .map(|p| Reply::ok(json!({ "Mountpoint": p })))
        }
        Request::Get { name } if svc.cluster().is_some() => {
            let n = name.clone();
            bounded::run("get", &n, limits.fast, move |_| svc.get_clustered(&name))
                .await
                .map(|v| Reply::ok(json!({ "Volume": volume_json(&v) })))
        }
        Request::List if svc.cluster().is_some() => {
            let listed = bounded::run("list", "", limits.fast, move |_| svc.list()).await;
            return list_reply(listed, None, list_cache);
        }
        // Path, Get and List read the store only (microseconds, no volume
        // lock), so they run inline: Get's latency is dockerd's Create latency.
        Request::Path { name } => svc
            .path(&name)
            .map(|p| Reply::ok(json!({ "Mountpoint": p }))),
        Request::Get { name } => match svc.get(&name) {
            Ok(Some(v)) => Ok(v),
            // A new docker name for an existing volume: recorded under the
            // volume's lock, off the async threads.
            Ok(None) => {
                let n = name.clone();
                bounded::run("get", &n, limits.fast, move |_| svc.get_recording(&name)).await
            }
            Err(e) => Err(e),
        }
        .map(|v| Reply::ok(json!({ "Volume": volume_json(&v) }))),
        Request::List => return list(&svc, list_cache),
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
