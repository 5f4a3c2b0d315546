//! The API server's router driven without a socket (axum `oneshot`) on the in-memory store:
//! error Statuses, body limits, decoders, watch semantics, deletion and subresources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use apiserver::State;
use apiserver::objects::Objects;
use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token";

async fn state_with(backend: Arc<dyn store::Backend>) -> Arc<State> {
    let objects = Objects::new(
        backend.clone(),
        apiserver::default_admission(backend.clone()),
    );
    apiserver::bootstrap(&objects).await.unwrap();
    let watch_cache = apiserver::watchcache::WatchCache::start(backend, 1000)
        .await
        .unwrap();
    Arc::new(State {
        objects,
        tokens: apiserver::Tokens::new([TOKEN.to_string()]),
        pod_proxy: Arc::new(apiserver::NoNodes),
        server_address: "127.0.0.1:6443".into(),
        watch_cache: Some(watch_cache),
    })
}

async fn state() -> Arc<State> {
    state_with(Arc::new(store::memory::Memory::new())).await
}

async fn call(
    st: &Arc<State>,
    method: &str,
    uri: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, http::HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", content_type)
        .body(body.into())
        .unwrap();
    let resp = apiserver::router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

async fn post(st: &Arc<State>, uri: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, v) = call(st, "POST", uri, "application/json", body.to_string()).await;
    (s, v)
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

#[tokio::test]
async fn unauthenticated_requests_get_401_status() {
    let st = state().await;
    let req = Request::builder()
        .uri("/api/v1/pods")
        .body(Body::empty())
        .unwrap();
    let resp = apiserver::router(st.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["reason"].as_str(), v["code"].as_i64()),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    let req = Request::builder()
        .uri("/api/v1/pods")
        .header("Authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        apiserver::router(st).oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bad_bodies_get_4xx_statuses_and_write_nothing() {
    let st = state().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let (s, _, v) = call(&st, "POST", uri, "application/json", "{not json").await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    let (s, _, v) = call(&st, "POST", uri, "application/yaml", "a: [unclosed").await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    let (s, _, v) = call(
        &st,
        "POST",
        uri,
        "application/vnd.kubernetes.protobuf",
        vec![0x6b, 0x38, 0x73, 0x00, 0xff, 0xff],
    )
    .await;
    assert!(s.is_client_error(), "{s} {v}");
    let (s, _, v) = call(&st, "POST", uri, "text/plain", "hello").await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("UnsupportedMediaType")
        )
    );
    // wrong kind for the URL
    let (s, v) = post(
        &st,
        uri,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // name that is not DNS-1123
    let (s, v) = post(&st, uri, cm("Not_Valid")).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
        "{v}"
    );
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    // type errors
    let (s, v) = post(&st, uri, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t"}, "data": "not-a-map"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // over 3 MiB
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": "x".repeat(3 * 1024 * 1024 + 10)}});
    let (s, v) = post(&st, uri, big).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestEntityTooLarge"))
    );
    // nothing was written
    let (s, _, list) = call(&st, "GET", uri, "application/json", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test]
async fn field_validation_strict_warn_ignore() {
    let st = state().await;
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "bogus": 1})
            .to_string();
    let uri = "/api/v1/namespaces/default/configmaps";
    let (s, _, v) = call(
        &st,
        "POST",
        &format!("{uri}?fieldValidation=Strict"),
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"bogus\""),
        "{v}"
    );
    let (s, h, v) = call(
        &st,
        "POST",
        &format!("{uri}?fieldValidation=Warn"),
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(
        h.get("Warning")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("bogus")
    );
    assert!(v.get("bogus").is_none(), "unknown fields are dropped");
    let body = body.replace("\"a\"", "\"b\"");
    let (s, h, _) = call(
        &st,
        "POST",
        &format!("{uri}?fieldValidation=Ignore"),
        "application/json",
        body,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(h.get("Warning").is_none());
}

#[tokio::test]
async fn optimistic_concurrency_and_generate_name() {
    let st = state().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let (s, created) = post(
        &st,
        uri,
        json!({"metadata": {"generateName": "gen-"}, "data": {"a": "1"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(
        created["metadata"]["uid"].is_string()
            && created["metadata"]["creationTimestamp"].is_string()
    );
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh["data"]["a"] = "2".into();
    let (s, _, updated) = call(
        &st,
        "PUT",
        &format!("{uri}/{name}"),
        "application/json",
        fresh.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    stale["data"]["a"] = "3".into();
    let (s, _, v) = call(
        &st,
        "PUT",
        &format!("{uri}/{name}"),
        "application/json",
        stale.to_string(),
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict"))
    );
    let (s, v) = post(&st, uri, json!({"metadata": {"name": name}})).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists"))
    );
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let st = state().await;
    let (s, v) = post(
        &st,
        "/api/v1/namespaces/default/configmaps?dryRun=All",
        cm("dry"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, _) = call(
        &st,
        "GET",
        "/api/v1/namespaces/default/configmaps/dry",
        "",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Read watch lines from a streaming response until `n` events or the timeout.
async fn watch_events(st: &Arc<State>, uri: &str, n: usize) -> Vec<Value> {
    let req = Request::builder()
        .uri(uri)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = apiserver::router(st.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            _ => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn watch_sees_exactly_the_matching_changes_in_order() {
    let st = state().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let (_, _, list) = call(&st, "GET", uri, "", Body::empty()).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let st2 = st.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut a = cm("a");
        a["metadata"]["labels"] = json!({"team": "x"});
        post(&st2, uri, a).await;
        post(&st2, uri, cm("b")).await; // never matches
        // a stops matching -> DELETED for this watch; then matches again -> ADDED
        call(
            &st2,
            "PATCH",
            &format!("{uri}/a"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"team":"y"}}}"#,
        )
        .await;
        call(
            &st2,
            "PATCH",
            &format!("{uri}/a"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"team":"x"}}}"#,
        )
        .await;
        call(
            &st2,
            "PATCH",
            &format!("{uri}/a"),
            "application/merge-patch+json",
            r#"{"data":{"k":"v2"}}"#,
        )
        .await;
        call(&st2, "DELETE", &format!("{uri}/a"), "", Body::empty()).await;
    });
    let events = watch_events(
        &st,
        &format!("{uri}?watch=true&resourceVersion={rv}&labelSelector=team%3Dx"),
        5,
    )
    .await;
    writer.await.unwrap();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let expect = [
        ("ADDED", "a"),
        ("DELETED", "a"),
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ];
    assert_eq!(
        seen,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let revs: Vec<i64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "in revision order: {revs:?}"
    );
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_410_gone() {
    let backend = Arc::new(store::memory::Memory::new());
    let st = state_with(backend.clone()).await;
    for i in 0..5 {
        post(
            &st,
            "/api/v1/namespaces/default/configmaps",
            cm(&format!("c{i}")),
        )
        .await;
    }
    let current = store::Backend::current_revision(backend.as_ref())
        .await
        .unwrap();
    store::Backend::compact(backend.as_ref(), current - 1)
        .await
        .unwrap();
    let events = watch_events(
        &st,
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2",
        1,
    )
    .await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn watch_with_bookmarks_and_initial_events() {
    let st = state().await;
    post(&st, "/api/v1/namespaces/default/configmaps", cm("x")).await;
    let events = watch_events(
        &st,
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        2,
    )
    .await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds() {
    let st = state().await;
    let started = std::time::Instant::now();
    let events = watch_events(
        &st,
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1&timeoutSeconds=1",
        100,
    )
    .await;
    assert!(events.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream ended by itself"
    );
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let st = state().await;
    for i in 0..7 {
        post(
            &st,
            "/api/v1/namespaces/default/configmaps",
            cm(&format!("p{i}")),
        )
        .await;
    }
    let mut names = Vec::new();
    let mut uri = "/api/v1/namespaces/default/configmaps?limit=3".to_string();
    loop {
        let (s, _, page) = call(&st, "GET", &uri, "", Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(c) => uri = format!("/api/v1/namespaces/default/configmaps?limit=3&continue={c}"),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
    let (s, _, v) = call(
        &st,
        "GET",
        "/api/v1/namespaces/default/configmaps?continue=garbage",
        "",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn pods_delete_gracefully_once_bound_and_bind_once() {
    let st = state().await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (s, created) = post(&st, pods, pod).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(
        created["spec"]["tolerations"].as_array().unwrap().len(),
        2,
        "default tolerations"
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let (s, v) = post(&st, &format!("{pods}/p/binding"), binding.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = post(&st, &format!("{pods}/p/binding"), binding).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // bound: a delete marks it terminating (the node agent finishes it)
    let (s, _, v) = call(&st, "DELETE", &format!("{pods}/p"), "", Body::empty()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
    // grace 0 finishes it
    let (s, _, _) = call(
        &st,
        "DELETE",
        &format!("{pods}/p"),
        "application/json",
        r#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&st, "GET", &format!("{pods}/p"), "", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn foreground_and_orphan_deletion_add_their_finalizers() {
    let st = state().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    post(&st, uri, cm("fg")).await;
    let (s, _, v) = call(
        &st,
        "DELETE",
        &format!("{uri}/fg"),
        "application/json",
        r#"{"propagationPolicy":"Foreground"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    post(&st, uri, cm("or")).await;
    let (_, _, v) = call(
        &st,
        "DELETE",
        &format!("{uri}/or?propagationPolicy=Orphan"),
        "",
        Body::empty(),
    )
    .await;
    assert_eq!(v["metadata"]["finalizers"], json!(["orphan"]));
    let (s, _, v) = call(
        &st,
        "DELETE",
        &format!("{uri}/or?propagationPolicy=Sideways"),
        "",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

#[tokio::test]
async fn deployment_scale_and_status_subresources() {
    let st = state().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let dep = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let (s, v) = post(&st, uri, dep).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["replicas"], 1);
    let (s, _, scale) = call(&st, "GET", &format!("{uri}/d/scale"), "", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (scale["kind"].as_str(), scale["status"]["selector"].as_str()),
        (Some("Scale"), Some("app=d"))
    );
    let (s, _, scale) = call(
        &st,
        "PATCH",
        &format!("{uri}/d/scale"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":7}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{scale}");
    assert_eq!(scale["spec"]["replicas"], 7);
    let (_, _, d) = call(&st, "GET", &format!("{uri}/d"), "", Body::empty()).await;
    assert_eq!(
        (
            d["spec"]["replicas"].as_i64(),
            d["metadata"]["generation"].as_i64()
        ),
        (Some(7), Some(2))
    );
    let (s, _, d) = call(
        &st,
        "PATCH",
        &format!("{uri}/d/status"),
        "application/merge-patch+json",
        r#"{"status":{"replicas":3},"spec":{"replicas":1}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            d["status"]["replicas"].as_i64(),
            d["spec"]["replicas"].as_i64()
        ),
        (Some(3), Some(7)),
        "status writes ignore spec"
    );
}

#[tokio::test]
async fn events_are_served_by_both_apis_from_one_storage() {
    let st = state().await;
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "ctl", "reportingInstance": "ctl-1", "action": "Scheduled", "reason": "Scheduled", "type": "Normal",
        "regarding": {"kind": "Pod", "namespace": "default", "name": "p", "uid": "u1"}, "note": "assigned"});
    let (s, v) = post(&st, "/apis/events.k8s.io/v1/namespaces/default/events", ev).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, core) = call(
        &st,
        "GET",
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dp",
        "",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{core}");
    let items = core["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{core}");
    assert_eq!(
        (
            items[0]["message"].as_str(),
            items[0]["involvedObject"]["uid"].as_str()
        ),
        (Some("assigned"), Some("u1"))
    );
}

#[tokio::test]
async fn table_responses_have_upstream_columns() {
    let st = state().await;
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Body::empty())
        .unwrap();
    let resp = apiserver::router(st).oneshot(req).await.unwrap();
    let t: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Status", "Age"]);
    let row = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "default")
        .unwrap();
    assert_eq!(row["cells"][1], "Active");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
}

#[tokio::test]
async fn watch_from_a_past_revision_replays_the_backlog_once() {
    let st = state().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let (_, _, list) = call(&st, "GET", uri, "", Body::empty()).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..3 {
        post(&st, uri, cm(&format!("b{i}"))).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st2 = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        post(&st2, uri, cm("live")).await;
    });
    let events = watch_events(&st, &format!("{uri}?watch=1&resourceVersion={rv}"), 4).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["b0", "b1", "b2", "live"],
        "backlog then live, each once"
    );
}

#[tokio::test]
async fn serverless_profiles_mark_and_police_pods() {
    let st = state().await;
    let profiles = "/apis/nodeless.io/v1/serverlessprofiles";
    let fp = json!({"apiVersion": "nodeless.io/v1", "kind": "ServerlessProfile", "metadata": {"name": "fp-default"},
        "spec": {"selectors": [{"namespace": "default"}, {"namespace": "team-*", "labels": {"app": "web"}}]}});
    let (s, v) = post(&st, profiles, fp).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // immutable
    let (s, _, v) = call(
        &st,
        "PATCH",
        &format!("{profiles}/fp-default"),
        "application/merge-patch+json",
        r#"{"spec":{"selectors":[{"namespace":"x"}]}}"#,
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
        "{v}"
    );
    // a pod in a selected namespace is marked
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "1", "memory": "8Gi"}}}]}});
    let (s, v) = post(&st, "/api/v1/namespaces/default/pods", pod).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["schedulerName"], "serverless-scheduler");
    assert_eq!(v["metadata"]["labels"]["nodeless.io/profile"], "fp-default");
    assert_eq!(
        v["metadata"]["annotations"]["CapacityProvisioned"],
        "2vCPU 9GB"
    );
    // opt out
    let pod = json!({"metadata": {"name": "q", "annotations": {"eks.amazonaws.com/compute-type": "ec2"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (_, v) = post(&st, "/api/v1/namespaces/default/pods", pod).await;
    assert_eq!(v["spec"]["schedulerName"], "default-scheduler");
    // what a serverless pod cannot have, in one message
    let pod = json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox",
        "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 80}]}]}});
    let (s, v) = post(&st, "/api/v1/namespaces/default/pods", pod).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("HostNetwork") && m.contains("Privileged") && m.contains("HostPort"),
        "{m}"
    );
    // a namespace no profile selects: untouched
    post(
        &st,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "other"}}),
    )
    .await;
    let pod = json!({"metadata": {"name": "o"}, "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox"}]}});
    let (s, v) = post(&st, "/api/v1/namespaces/other/pods", pod).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["schedulerName"], "default-scheduler");
}
