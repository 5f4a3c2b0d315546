//! The admin client (what the CLI verbs use) against a TLS server with the registry's own CA.
#![allow(clippy::unwrap_used)]

mod common;

use registry::client::{AdminClient, ClientError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_client_over_tls() {
    let h = common::harness();
    let srv = common::serve_tls(&h).await;
    let ca = std::fs::read_to_string(srv.certs.join("ca.crt")).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", srv.port);
    let c = AdminClient::new(&endpoint, h.reg.authority().admin_password(), Some(&ca)).unwrap();
    let v = c
        .call(
            "CreateRepository",
            serde_json::json!({"repositoryName": "team/api", "imageTagMutability": "IMMUTABLE"}),
        )
        .await
        .unwrap();
    assert_eq!(v["repository"]["repositoryName"], "team/api");
    let v = c
        .call("DescribeRepositories", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(v["repositories"][0]["imageTagMutability"], "IMMUTABLE");
    // errors carry the registry's code
    match c
        .call(
            "CreateRepository",
            serde_json::json!({"repositoryName": "team/api"}),
        )
        .await
    {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 409);
            assert!(message.contains("already exists"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // a login token is not an admin credential
    let token = h.auth.strip_prefix("Bearer ").unwrap();
    let c2 = AdminClient::new(&endpoint, token, Some(&ca)).unwrap();
    assert!(matches!(
        c2.call("DescribeRepositories", serde_json::json!({})).await,
        Err(ClientError::Api { status: 403, .. })
    ));
    let c3 = AdminClient::new(&endpoint, "wrong", Some(&ca)).unwrap();
    assert!(matches!(
        c3.call("DescribeRepositories", serde_json::json!({})).await,
        Err(ClientError::Api { status: 401, .. })
    ));
    // another CA is not trusted
    let other = tempfile::tempdir().unwrap();
    let other_ca = registry::tls::ensure(other.path(), &["localhost".into()])
        .unwrap()
        .ca_pem;
    let c4 = AdminClient::new(
        &endpoint,
        h.reg.authority().admin_password(),
        Some(&other_ca),
    )
    .unwrap();
    assert!(
        c4.call("DescribeRepositories", serde_json::json!({}))
            .await
            .is_err()
    );
    // bad endpoints
    assert!(AdminClient::new("ftp://x", "p", None).is_err());
    assert!(AdminClient::new("https://x:1", "p", None).is_err());
}
