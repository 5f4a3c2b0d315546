//! How the agent reaches the API server: a kubeconfig file, or a server URL with a bearer token
//! (and a CA file, or no verification for tests). Also the bearer token itself: the agent's
//! streaming server accepts exactly the token the agent uses.

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
    #[error("reading the token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The bearer token these credentials authenticate with: the token, or the kubeconfig's
/// current user's `token` (else its `tokenFile`). None when the kubeconfig's user has none
/// (client certificates, exec plugins).
pub fn bearer_token(creds: &Credentials) -> Result<Option<String>, ConnectError> {
    let path = match creds {
        Credentials::Token { token, .. } => return Ok(Some(token.clone())),
        Credentials::Kubeconfig(path) => path,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(ConnectError::Kubeconfig)?;
    token_of(&kubeconfig, path.parent())
}

fn token_of(
    kubeconfig: &kube::config::Kubeconfig,
    dir: Option<&std::path::Path>,
) -> Result<Option<String>, ConnectError> {
    let context = kubeconfig
        .current_context
        .as_deref()
        .and_then(|cur| kubeconfig.contexts.iter().find(|c| c.name == cur))
        .or(kubeconfig.contexts.first())
        .and_then(|c| c.context.as_ref());
    let user = match context {
        Some(c) => kubeconfig
            .auth_infos
            .iter()
            .find(|a| Some(a.name.as_str()) == c.user.as_deref()),
        None => kubeconfig.auth_infos.first(),
    };
    let Some(auth) = user.and_then(|u| u.auth_info.as_ref()) else {
        return Ok(None);
    };
    // The token is a SecretString; its serialization is the way to read it.
    let v = serde_json::to_value(auth).unwrap_or_default();
    if let Some(t) = v
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(t.to_string()));
    }
    let Some(file) = &auth.token_file else {
        return Ok(None);
    };
    let mut path = PathBuf::from(file);
    if path.is_relative()
        && let Some(dir) = dir
    {
        path = dir.join(path);
    }
    let token = std::fs::read_to_string(&path)
        .map_err(|source| ConnectError::TokenFile { path, source })?;
    Ok(Some(token.trim().to_string()))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_token_of_the_current_user() {
        let yaml = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users:
- {name: other, user: {token: wrong}}
- {name: admin, user: {token: s3cret}}
contexts:
- {name: a, context: {cluster: c, user: other}}
- {name: b, context: {cluster: c, user: admin}}
current-context: b
"#;
        let k = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
        assert_eq!(token_of(&k, None).unwrap().as_deref(), Some("s3cret"));

        let dir = std::env::temp_dir().join(format!("agent-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "from-file\n").unwrap();
        let yaml = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {tokenFile: tok}}]
contexts: [{name: a, context: {cluster: c, user: u}}]
current-context: a
"#;
        let path = dir.join("kubeconfig");
        std::fs::write(&path, yaml).unwrap();
        let creds = Credentials::Kubeconfig(path);
        assert_eq!(bearer_token(&creds).unwrap().as_deref(), Some("from-file"));
        std::fs::remove_dir_all(&dir).unwrap();

        let t = Credentials::Token {
            server: "https://x".into(),
            token: "t".into(),
            ca_file: None,
            insecure: false,
        };
        assert_eq!(bearer_token(&t).unwrap().as_deref(), Some("t"));
    }
}
