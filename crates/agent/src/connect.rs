//! How the agent reaches the API server: a kubeconfig file, or a server URL with a bearer token
//! (and a CA file, or no verification for tests).

use std::path::PathBuf;

use serde_json::json;

/// Where the API server is and how to authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// A server URL and a bearer token.
    Token {
        server: String,
        token: String,
        /// PEM CA bundle to verify the server with (default: the system roots).
        ca_file: Option<PathBuf>,
        /// Do not verify the server's certificate.
        insecure: bool,
    },
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("the client configuration")]
    Client(#[source] kube::Error),
}

/// A kube client for these credentials.
pub async fn client(creds: &Credentials) -> Result<kube::Client, ConnectError> {
    let kubeconfig = match creds {
        Credentials::Kubeconfig(path) => {
            kube::config::Kubeconfig::read_from(path).map_err(ConnectError::Kubeconfig)?
        }
        Credentials::Token {
            server,
            token,
            ca_file,
            insecure,
        } => {
            let mut cluster = json!({"server": server});
            if let Some(ca) = ca_file {
                cluster["certificate-authority"] = ca.display().to_string().into();
            }
            if *insecure {
                cluster["insecure-skip-tls-verify"] = true.into();
            }
            // JSON is YAML.
            let doc = json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "nodeless", "cluster": cluster}],
                "users": [{"name": "agent", "user": {"token": token}}],
                "contexts": [{"name": "agent", "context": {"cluster": "nodeless", "user": "agent"}}],
                "current-context": "agent",
            });
            kube::config::Kubeconfig::from_yaml(&doc.to_string())
                .map_err(ConnectError::Kubeconfig)?
        }
    };
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(ConnectError::Kubeconfig)?;
    kube::Client::try_from(cfg).map_err(ConnectError::Client)
}
