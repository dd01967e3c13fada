//! The control routes, called as the socket calls them (method, path, JSON
//! body), over a service on the EBS backend and the in-memory EC2 or on the
//! local backend; and the routes' time limits over real sockets.

use super::{ControlApi, Limits};
use crate::backend::ebs::testkit::rig;
use crate::server::Handler;
use crate::service::VolumeService;
use crate::service::tests::ebs_service;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use profiles::Catalog;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

mod limits;

async fn call(api: &ControlApi, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let r = api.call(&method, path, body).await;
    (r.status, r.body)
}

fn err(body: &Value) -> &str {
    body["Err"].as_str().unwrap_or_default()
}

const PROFILES: &str = "/v1/configuration/profiles";

fn silver() -> Value {
    json!({"name": "silver", "description": "gp3 above baseline",
           "ebs": {"type": "gp3", "iops": 4000, "throughput": 250}})
}

#[tokio::test]
async fn posted_profiles_are_validated_with_400s_and_listed() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    let api = ControlApi::new(svc, Limits::default());
    let bad = [
        (json!({"ebs": {"type": "gp3"}}), "missing \"name\""),
        (
            json!({"name": 7, "ebs": {"type": "gp3"}}),
            "must be a string",
        ),
        (
            json!({"name": "Bad Name", "ebs": {"type": "gp3"}}),
            "invalid profile name",
        ),
        (
            json!({"name": "x", "description": "nothing"}),
            "defines no backend",
        ),
        (
            json!({"name": "x", "ebz": {"type": "gp3"}}),
            "unknown field `ebz`",
        ),
        (json!({"name": "x", "ebs": {"type": "gp9"}}), "gp9"),
        (json!({"name": "x", "ebs": {"type": "io2"}}), "io2"),
        (
            json!({"name": "x", "ebs": {"type": "gp3", "throughput": 5000}}),
            "5000 MiB/s",
        ),
        (
            json!({"name": "x", "ebs": {"type": "io2", "iops": 1000, "throughput": 200}}),
            "throughput",
        ),
    ];
    for (body, want) in bad {
        let (status, reply) = call(&api, Method::POST, PROFILES, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert!(err(&reply).contains(want), "{body}: {reply}");
    }
    let (status, reply) = call(&api, Method::POST, PROFILES, Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");

    let (status, reply) = call(&api, Method::POST, PROFILES, silver()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["profile"]["name"], "silver");
    assert_eq!(reply["profile"]["ebs"]["throughput"], 250);
    let (status, reply) = call(&api, Method::GET, PROFILES, Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = reply["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["default", "gold", "silver"]);
}

#[tokio::test]
async fn posted_profiles_survive_a_restart() {
    let r = rig();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut svc = VolumeService::new(
            crate::state::Records::open(&dir.path().join("state.redb")).unwrap(),
            crate::backend::Storage::ebs(r.be.clone()),
            Catalog::builtin(),
            dir.path().to_owned(),
        );
        svc.persist_profiles(&dir.path().join("state")).unwrap();
        ControlApi::new(Arc::new(svc), Limits::default())
    };
    let api = open();
    let (status, reply) = call(&api, Method::POST, PROFILES, silver()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    drop(api);
    let api = open();
    let (_, reply) = call(&api, Method::GET, PROFILES, Value::Null).await;
    let silver = reply["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "silver")
        .cloned();
    assert_eq!(silver.unwrap()["ebs"]["iops"], 4000, "{reply}");
}

#[tokio::test]
async fn set_profile_route_changes_the_volume_or_says_why_not() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    svc.create("db", &BTreeMap::new()).unwrap();
    let api = ControlApi::new(svc.clone(), Limits::default());
    let (status, _) = call(&api, Method::POST, PROFILES, silver()).await;
    assert_eq!(status, StatusCode::OK);

    let cases = [
        (
            "db",
            json!({"profile": "gold"}),
            StatusCode::CONFLICT,
            "encrypt",
        ),
        (
            "db",
            json!({"profile": "nope"}),
            StatusCode::BAD_REQUEST,
            "unknown profile",
        ),
        (
            "db",
            json!({"profil": "gold"}),
            StatusCode::BAD_REQUEST,
            "bad request body",
        ),
        (
            "ghost",
            json!({"profile": "silver"}),
            StatusCode::NOT_FOUND,
            "ghost",
        ),
    ];
    for (name, body, want_status, want) in cases {
        let path = format!("/v1/volumes/{name}/profile");
        let (status, reply) = call(&api, Method::POST, &path, body.clone()).await;
        assert_eq!(status, want_status, "{name} {body}: {reply}");
        assert!(err(&reply).contains(want), "{name} {body}: {reply}");
    }

    let (status, reply) = call(
        &api,
        Method::POST,
        "/v1/volumes/db/profile",
        json!({"profile": "silver"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["to_profile"], "silver");
    assert_eq!(reply["modified"], true);
    assert_eq!(r.volume_of("db").throughput, Some(250));
    // Inspect through the percent-encoded docker name the CLI sends.
    let (status, reply) = call(&api, Method::GET, "/v1/volumes/db%40silver", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test]
async fn a_storage_failure_while_reapplying_is_a_502_naming_the_volume() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    let api = ControlApi::new(svc.clone(), Limits::default());
    let (status, _) = call(&api, Method::POST, PROFILES, silver()).await;
    assert_eq!(status, StatusCode::OK);
    svc.create("a@silver", &BTreeMap::new()).unwrap();
    let with =
        |t: u32| json!({"name": "silver", "ebs": {"type": "gp3", "iops": 4000, "throughput": t}});
    let (status, reply) = call(&api, Method::POST, PROFILES, with(300)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // AWS is still applying that change: the next one is refused by EC2.
    let (status, reply) = call(&api, Method::POST, PROFILES, with(400)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{reply}");
    assert!(err(&reply).contains("was defined"), "{reply}");
    let v = &reply["volumes"][0];
    assert_eq!(v["docker_name"], "a@silver");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("IncorrectModificationState"),
        "{reply}"
    );
    // The profile is the new one; the volume's record keeps what EBS has.
    assert_eq!(
        svc.catalog()
            .get("silver")
            .unwrap()
            .def
            .ebs
            .as_ref()
            .unwrap()
            .throughput,
        Some(400)
    );
    assert_eq!(r.volume_of("a").throughput, Some(300));
    let (_, reply) = call(&api, Method::GET, "/v1/volumes/a", Value::Null).await;
    assert_eq!(reply["settings"]["throughput"], 300, "{reply}");
}

/// Failures say what kind they are (`"Code"`) beside the message, from the
/// parser and from the service alike.
#[tokio::test]
async fn failures_carry_their_code() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    svc.create("db", &BTreeMap::new()).unwrap();
    let api = ControlApi::new(svc, Limits::default());
    let cases = [
        (
            Method::GET,
            "/v1/nope",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/v1/volumes",
            Value::Null,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid",
        ),
        (
            Method::POST,
            "/v1/volumes/db/move",
            json!({}),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::GET,
            "/v1/volumes/ghost",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/volumes/db/fence",
            json!({"to": "hostb"}),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            Method::POST,
            "/v1/receive/check",
            json!({"volume": "x"}),
            StatusCode::CONFLICT,
            "refused",
        ),
    ];
    for (method, path, body, want_status, want_code) in cases {
        let (status, reply) = call(&api, method.clone(), path, body).await;
        assert_eq!(status, want_status, "{method} {path}: {reply}");
        assert_eq!(reply["Code"], want_code, "{method} {path}: {reply}");
        assert!(!err(&reply).is_empty(), "{method} {path}: {reply}");
    }
}
