//! A small HTTP/1.1 client for the admin API (`POST /nodeless/v1/<Action>`), over plain TCP or TLS
//! trusting the registry's own CA. The CLI verbs use it; so do the end-to-end tests.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?} (want http://HOST:PORT or https://HOST:PORT)")]
    Endpoint(String),
    #[error("connect")]
    Io(#[from] std::io::Error),
    #[error("tls")]
    Tls(#[from] crate::tls::TlsError),
    #[error("http")]
    Http(#[from] hyper::Error),
    #[error("request")]
    Request(#[from] http::Error),
    #[error("registry answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("response is not JSON")]
    Json(#[from] serde_json::Error),
}

/// HTTP/1.1 connection settings: a read buffer that may grow to 4 MiB, so a large blob comes in
/// with few, large reads.
fn http1() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.max_buf_size(4 << 20);
    b
}

/// An admin API client.
#[derive(Clone)]
pub struct AdminClient {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminClient({}:{})", self.host, self.port)
    }
}

impl AdminClient {
    /// A client for `endpoint` (`http://` or `https://`), presenting `password` (the admin password)
    /// and trusting `ca_pem` for https.
    pub fn new(
        endpoint: &str,
        password: &str,
        ca_pem: Option<&str>,
    ) -> Result<AdminClient, ClientError> {
        let bad = || ClientError::Endpoint(endpoint.to_string());
        let (https, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = endpoint.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        let tls = match (https, ca_pem) {
            (true, Some(ca)) => Some(crate::tls::client_config(ca)?),
            (true, None) => return Err(bad()),
            (false, _) => None,
        };
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("nodeless:{password}"));
        Ok(AdminClient {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
            authorization: format!("Basic {creds}"),
        })
    }

    /// Send one request and return the status and body.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), ClientError> {
        let (status, _, body) = self
            .request_with(method, path, &[("content-type", "application/json")], body)
            .await?;
        Ok((status, body))
    }

    /// Send one request with extra headers and return the status, headers and body.
    pub async fn request_with(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), ClientError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    /// Send one request and read the response body to its end without keeping it: the status,
    /// headers and the number of body bytes (large blobs, benchmarks).
    pub async fn request_counting(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, http::HeaderMap, u64), ClientError> {
        let resp = self.send(method, path, headers, Bytes::new()).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                n += data.len() as u64;
            }
        }
        Ok((status, headers, n))
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host_header)
            .header(http::header::AUTHORIZATION, &self.authorization);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let resp = match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| ClientError::Endpoint(self.host.clone()))?;
                let mut cfg = (**cfg).clone();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp)
                    .await?;
                let (mut sender, conn) = http1().handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
            None => {
                let (mut sender, conn) = http1().handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
        };
        Ok(resp)
    }

    /// Call an admin action with a JSON body.
    pub async fn call(
        &self,
        action: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let (status, bytes) = self
            .request(
                http::Method::POST,
                &format!("/nodeless/v1/{action}"),
                Bytes::from(serde_json::to_vec(&body)?),
            )
            .await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v["errors"][0]["message"]
                        .as_str()
                        .map(|m| format!("{}: {m}", v["errors"][0]["code"].as_str().unwrap_or("")))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
