//! The HTTP face: [`router`] serves the distribution API under `/v2/`, the token endpoint at `/token`
//! and the admin API at `POST /nodeless/v1/<Action>` (ECR-like JSON bodies, admin password only).
//!
//! Every request needs credentials: HTTP Basic (any user, the password being a login token or the
//! admin password) or a Bearer token from `/token`. Without them the answer is 401 with a
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;

use crate::auth::{self, Access, Claims, Presented};
use crate::digest::Digest;
use crate::error::{ErrorCode, RegistryError};
use crate::manifest::OCI_INDEX;
use crate::meta::TagMutability;
use crate::names::{Reference, RepoName, Route, Tag, parse_route};
use crate::registry::{Registry, now_secs, parse_reference};
use crate::store::ByteStream;

const API_VERSION: &str = "registry/2.0";
/// Most `tag` parameters one manifest PUT may carry (the spec asks for at least 10; more get 414).
pub const MAX_TAGS_PER_PUT: usize = 100;

/// The registry's router: `/v2/...`, `/token`, `/nodeless/v1/<Action>`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/token", get(token).post(token_post))
        .route("/nodeless/v1/{action}", post(admin))
        .fallback(v2)
        .with_state(registry)
}

// ---- small helpers ------------------------------------------------------------------------------

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query pairs of a URI.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn with_headers(mut resp: Response, headers: &[(&str, String)]) -> Response {
    for (k, v) in headers {
        if let Ok(name) = header::HeaderName::from_bytes(k.as_bytes()) {
            resp.headers_mut().insert(name, hv(v));
        }
    }
    resp
}

fn empty(status: StatusCode, headers: &[(&str, String)]) -> Response {
    with_headers((status, Body::empty()).into_response(), headers)
}

fn json(status: StatusCode, content_type: &str, value: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    with_headers(
        (status, body).into_response(),
        &[("content-type", content_type.to_string())],
    )
}

fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream()
        .map(|r| r.map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e)))
        .boxed()
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    header_str(h, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// Parse `Range: bytes=a-b | a- | -n` against a blob of `size` bytes; `Err` if unsatisfiable.
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (s, e) => {
            let e: u64 = e.parse().map_err(|_| ())?;
            (s.parse().map_err(|_| ())?, e.min(size.saturating_sub(1)))
        }
    };
    if start > end || start >= size {
        return Err(());
    }
    Ok((start, end))
}

/// Parse a chunk's `Content-Range: <start>-<end>` (with or without a `bytes ` prefix and `/total`).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

fn name_of(raw: &str) -> Result<RepoName, RegistryError> {
    RepoName::parse(raw).map_err(|e| RegistryError::spec(ErrorCode::NameInvalid, e.to_string()))
}

fn digest_of(raw: &str) -> Result<Digest, RegistryError> {
    raw.parse::<Digest>()
        .map_err(|e| RegistryError::spec(ErrorCode::DigestInvalid, e.to_string()))
}

fn parse_n(q: &[(String, String)]) -> Result<Option<usize>, RegistryError> {
    match param(q, "n") {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| RegistryError::BadRequest(format!("invalid n {v:?}"))),
    }
}

// ---- authentication -----------------------------------------------------------------------------

fn presented(h: &HeaderMap) -> Option<Presented> {
    header_str(h, header::AUTHORIZATION).and_then(auth::parse_authorization)
}

fn authenticate(reg: &Registry, h: &HeaderMap) -> Option<Claims> {
    if !reg.config().auth {
        return Some(Claims {
            sub: "anonymous".into(),
            iat: 0,
            exp: u64::MAX,
            admin: true,
            access: vec![],
            refresh: false,
        });
    }
    reg.authority().check(&presented(h)?, now_secs())
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn challenge(
    reg: &Registry,
    req_headers: &HeaderMap,
    scope: Option<String>,
    error: Option<&str>,
) -> String {
    let cfg = reg.config();
    let realm = match &cfg.realm {
        Some(r) => r.clone(),
        None => {
            let host = header_str(req_headers, header::HOST)
                .filter(|h| host_ok(h))
                .unwrap_or("localhost");
            format!("{}://{host}/token", cfg.scheme)
        }
    };
    let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", cfg.service);
    if let Some(s) = scope {
        c.push_str(&format!(",scope=\"{s}\""));
    }
    if let Some(e) = error {
        c.push_str(&format!(",error=\"{e}\""));
    }
    c
}

fn required_action(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "push",
    }
}

// ---- /v2/ -----------------------------------------------------------------------------------------

async fn v2(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let mut resp = match v2_inner(&reg, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    resp
}

async fn v2_inner(reg: &Arc<Registry>, req: Request) -> Result<Response, RegistryError> {
    let path = req.uri().path().to_string();
    let Some(route) = parse_route(&path) else {
        return Err(RegistryError::spec_with_status(
            ErrorCode::NameInvalid,
            StatusCode::NOT_FOUND,
            format!("no such API path {path:?}"),
        ));
    };
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    // HTTP/2 carries the host in the URI authority, not in a Host header
    if !headers.contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let query = query_pairs(req.uri().query());
    let action = required_action(&method);
    let valid_name = route.name().and_then(|n| RepoName::parse(n).ok());
    let Some(claims) = authenticate(reg, &headers) else {
        let scope = valid_name.as_ref().map(|n| {
            format!(
                "repository:{n}:{}",
                if action == "pull" {
                    "pull"
                } else {
                    "pull,push"
                }
            )
        });
        return Err(RegistryError::Unauthenticated {
            challenge: challenge(reg, &headers, scope, None),
        });
    };
    let name = match route.name() {
        None => None,
        Some(raw) => {
            let n = name_of(raw)?;
            if !claims.allows(n.as_str(), action) {
                if matches!(presented(&headers), Some(Presented::Bearer(_))) {
                    let actions = if action == "pull" {
                        "pull"
                    } else {
                        "pull,push"
                    };
                    let actions = if action == "delete" {
                        "delete"
                    } else {
                        actions
                    };
                    return Err(RegistryError::Unauthenticated {
                        challenge: challenge(
                            reg,
                            &headers,
                            Some(format!("repository:{n}:{actions}")),
                            Some("insufficient_scope"),
                        ),
                    });
                }
                return Err(RegistryError::spec(
                    ErrorCode::Denied,
                    format!("{action} on {n} is not allowed for these credentials"),
                ));
            }
            Some(n)
        }
    };
    let body = req.into_body();
    let name_ref = || {
        name.clone()
            .ok_or_else(|| RegistryError::BadRequest("no name".into()))
    };
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(json(
            StatusCode::OK,
            "application/json",
            &serde_json::json!({}),
        )),
        (Route::Catalog, Method::GET) => {
            let n = parse_n(&query)?;
            let (repos, more) = reg
                .catalog(|r| claims.allows(r, "pull"), n, param(&query, "last"))
                .await;
            let mut resp = json(
                StatusCode::OK,
                "application/json",
                &serde_json::json!({ "repositories": repos }),
            );
            if more && let (Some(n), Some(last)) = (n, repos.last()) {
                resp = with_headers(
                    resp,
                    &[(
                        "link",
                        format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
                    )],
                );
            }
            Ok(resp)
        }
        (Route::Tags { .. }, Method::GET) => {
            let name = name_ref()?;
            let n = parse_n(&query)?;
            let (tags, more) = reg.tags(&name, n, param(&query, "last")).await?;
            let mut resp = json(
                StatusCode::OK,
                "application/json",
                &serde_json::json!({ "name": name, "tags": tags }),
            );
            if more && let (Some(n), Some(last)) = (n, tags.last()) {
                resp = with_headers(
                    resp,
                    &[(
                        "link",
                        format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
                    )],
                );
            }
            Ok(resp)
        }
        (Route::Manifest { reference, .. }, m @ (Method::GET | Method::HEAD)) => {
            let name = name_ref()?;
            let reference = parse_reference(&reference)?;
            if m == Method::HEAD {
                let (digest, rec) = reg.manifest_head(&name, &reference).await?;
                return Ok(empty(
                    StatusCode::OK,
                    &[
                        ("content-type", rec.media_type),
                        ("content-length", rec.size.to_string()),
                        ("docker-content-digest", digest.to_string()),
                        ("etag", format!("\"{digest}\"")),
                    ],
                ));
            }
            let m = reg.manifest_get(&name, &reference).await?;
            Ok(with_headers(
                (StatusCode::OK, m.body).into_response(),
                &[
                    ("content-type", m.media_type),
                    ("docker-content-digest", m.digest.to_string()),
                    ("etag", format!("\"{}\"", m.digest)),
                ],
            ))
        }
        (Route::Manifest { reference, .. }, Method::PUT) => {
            let name = name_ref()?;
            let reference = parse_reference(&reference)?;
            // distribution-spec: `?tag=a&tag=b` tags the manifest with each (all validated first)
            let extra_tags = query
                .iter()
                .filter(|(k, _)| k == "tag")
                .map(|(_, v)| {
                    Tag::parse(v)
                        .map_err(|e| RegistryError::spec(ErrorCode::TagInvalid, e.to_string()))
                })
                .collect::<Result<Vec<Tag>, _>>()?;
            if extra_tags.len() > MAX_TAGS_PER_PUT {
                return Err(RegistryError::spec_with_status(
                    ErrorCode::TagInvalid,
                    StatusCode::URI_TOO_LONG,
                    format!("at most {MAX_TAGS_PER_PUT} tag parameters per request"),
                ));
            }
            let max = reg.config().max_manifest_bytes;
            let too_big = || {
                RegistryError::spec_with_status(
                    ErrorCode::SizeInvalid,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("manifest is larger than {max} bytes"),
                )
            };
            if content_length(&headers).is_some_and(|l| l > max as u64) {
                return Err(too_big());
            }
            let bytes = axum::body::to_bytes(body, max)
                .await
                .map_err(|_| too_big())?;
            let pushed = reg
                .manifest_put_tagged(
                    &name,
                    &reference,
                    header_str(&headers, header::CONTENT_TYPE),
                    bytes,
                    &extra_tags,
                )
                .await?;
            let mut h = vec![
                (
                    "location",
                    format!("/v2/{name}/manifests/{}", pushed.digest),
                ),
                ("docker-content-digest", pushed.digest.to_string()),
            ];
            if let Some(s) = pushed.subject {
                h.push(("oci-subject", s.to_string()));
            }
            let mut resp = empty(StatusCode::CREATED, &h);
            if !extra_tags.is_empty() {
                // one `OCI-Tag` header per tag the manifest now carries
                let mut tags: Vec<&str> = extra_tags.iter().map(Tag::as_str).collect();
                if let Reference::Tag(t) = &reference {
                    tags.insert(0, t.as_str());
                }
                tags.dedup();
                for t in tags {
                    resp.headers_mut().append("oci-tag", hv(t));
                }
            }
            Ok(resp)
        }
        (Route::Manifest { reference, .. }, Method::DELETE) => {
            let name = name_ref()?;
            let reference = parse_reference(&reference)?;
            reg.manifest_delete(&name, &reference).await?;
            Ok(empty(StatusCode::ACCEPTED, &[]))
        }
        (Route::Blob { digest, .. }, m @ (Method::GET | Method::HEAD)) => {
            let name = name_ref()?;
            let digest = digest_of(&digest)?;
            let size = reg.blob_size(&name, &digest).await?;
            let mut h = vec![
                ("docker-content-digest", digest.to_string()),
                ("etag", format!("\"{digest}\"")),
                ("accept-ranges", "bytes".to_string()),
                ("content-type", "application/octet-stream".to_string()),
            ];
            let range = match header_str(&headers, header::RANGE) {
                None => None,
                Some(r) => match parse_range(r, size) {
                    Ok(r) => Some(r),
                    Err(()) => {
                        return Ok(empty(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            &[("content-range", format!("bytes */{size}"))],
                        ));
                    }
                },
            };
            let (status, len) = match range {
                Some((a, b)) => {
                    h.push(("content-range", format!("bytes {a}-{b}/{size}")));
                    (StatusCode::PARTIAL_CONTENT, b - a + 1)
                }
                None => (StatusCode::OK, size),
            };
            h.push(("content-length", len.to_string()));
            if m == Method::HEAD {
                return Ok(empty(status, &h));
            }
            let stream = reg.blob_read(&digest, range).await?;
            Ok(with_headers(
                (status, Body::from_stream(stream)).into_response(),
                &h,
            ))
        }
        (Route::Blob { digest, .. }, Method::DELETE) => {
            let name = name_ref()?;
            let digest = digest_of(&digest)?;
            reg.blob_delete(&name, &digest).await?;
            Ok(empty(StatusCode::ACCEPTED, &[]))
        }
        (Route::UploadStart { .. }, Method::POST) => {
            let name = name_ref()?;
            if let (Some(mount), Some(from)) = (param(&query, "mount"), param(&query, "from")) {
                let digest = digest_of(mount)?;
                if let Ok(from) = RepoName::parse(from)
                    && claims.allows(from.as_str(), "pull")
                    && reg.mount(&name, &from, &digest).await?
                {
                    return Ok(empty(
                        StatusCode::CREATED,
                        &[
                            ("location", format!("/v2/{name}/blobs/{digest}")),
                            ("docker-content-digest", digest.to_string()),
                        ],
                    ));
                }
            }
            if let Some(d) = param(&query, "digest") {
                let digest = digest_of(d)?;
                let id = reg.upload_start(&name).await?;
                let res = async {
                    reg.upload_append(
                        &name,
                        &id,
                        Some(0),
                        body_stream(body),
                        content_length(&headers),
                    )
                    .await?;
                    reg.upload_finish(&name, &id, &digest).await
                }
                .await;
                if let Err(e) = res {
                    let _ = reg.upload_cancel(&name, &id).await;
                    return Err(e);
                }
                return Ok(empty(
                    StatusCode::CREATED,
                    &[
                        ("location", format!("/v2/{name}/blobs/{digest}")),
                        ("docker-content-digest", digest.to_string()),
                    ],
                ));
            }
            let id = reg.upload_start(&name).await?;
            Ok(empty(
                StatusCode::ACCEPTED,
                &[
                    ("location", format!("/v2/{name}/blobs/uploads/{id}")),
                    ("range", "0-0".to_string()),
                    ("docker-upload-uuid", id),
                ],
            ))
        }
        (Route::Upload { id, .. }, Method::GET) => {
            let name = name_ref()?;
            let info = reg.upload_status(&name, &id).await?;
            Ok(empty(
                StatusCode::NO_CONTENT,
                &[
                    ("location", format!("/v2/{name}/blobs/uploads/{id}")),
                    ("range", range_header(info.size)),
                    ("docker-upload-uuid", id),
                ],
            ))
        }
        (Route::Upload { id, .. }, Method::PATCH) => {
            let name = name_ref()?;
            let (start, declared) = match header_str(&headers, header::CONTENT_RANGE) {
                Some(cr) => match parse_content_range(cr) {
                    Some((a, b)) => (Some(a), Some(b - a + 1)),
                    None => {
                        return Err(RegistryError::spec(
                            ErrorCode::RangeInvalid,
                            format!("invalid Content-Range {cr:?}"),
                        ));
                    }
                },
                None => (None, None),
            };
            if let (Some(d), Some(cl)) = (declared, content_length(&headers))
                && d != cl
            {
                return Err(RegistryError::spec(
                    ErrorCode::RangeInvalid,
                    "Content-Range and Content-Length disagree",
                ));
            }
            let declared = declared.or(content_length(&headers));
            let size = match reg
                .upload_append(&name, &id, start, body_stream(body), declared)
                .await
            {
                Ok(s) => s,
                Err(
                    e @ RegistryError::Spec {
                        code: ErrorCode::RangeInvalid,
                        ..
                    },
                ) => {
                    let info = reg.upload_status(&name, &id).await?;
                    return Ok(with_headers(
                        e.into_response(),
                        &[
                            ("location", format!("/v2/{name}/blobs/uploads/{id}")),
                            ("range", range_header(info.size)),
                        ],
                    ));
                }
                Err(e) => return Err(e),
            };
            Ok(empty(
                StatusCode::ACCEPTED,
                &[
                    ("location", format!("/v2/{name}/blobs/uploads/{id}")),
                    ("range", range_header(size)),
                    ("docker-upload-uuid", id),
                ],
            ))
        }
        (Route::Upload { id, .. }, Method::PUT) => {
            let name = name_ref()?;
            reg.upload_status(&name, &id).await?;
            let Some(d) = param(&query, "digest") else {
                return Err(RegistryError::spec(
                    ErrorCode::DigestInvalid,
                    "the digest query parameter is required",
                ));
            };
            let digest = digest_of(d)?;
            let start = match header_str(&headers, header::CONTENT_RANGE) {
                Some(cr) => parse_content_range(cr).map(|(a, _)| a),
                None => None,
            };
            if content_length(&headers) != Some(0) {
                reg.upload_append(
                    &name,
                    &id,
                    start,
                    body_stream(body),
                    content_length(&headers),
                )
                .await?;
            }
            reg.upload_finish(&name, &id, &digest).await?;
            Ok(empty(
                StatusCode::CREATED,
                &[
                    ("location", format!("/v2/{name}/blobs/{digest}")),
                    ("docker-content-digest", digest.to_string()),
                ],
            ))
        }
        (Route::Upload { id, .. }, Method::DELETE) => {
            let name = name_ref()?;
            reg.upload_cancel(&name, &id).await?;
            Ok(empty(StatusCode::NO_CONTENT, &[]))
        }
        (Route::Referrers { digest, .. }, Method::GET) => {
            let name = name_ref()?;
            let digest = digest_of(&digest)?;
            let filter = param(&query, "artifactType").filter(|s| !s.is_empty());
            let refs = reg.referrers(&name, &digest, filter).await?;
            let resp = json(
                StatusCode::OK,
                OCI_INDEX,
                &serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": refs,
                }),
            );
            Ok(match filter {
                Some(_) => with_headers(resp, &[("oci-filters-applied", "artifactType".into())]),
                None => resp,
            })
        }
        (_, m) => Err(RegistryError::spec(
            ErrorCode::Unsupported,
            format!("method {m} is not supported here"),
        )),
    }
}

// ---- /token -------------------------------------------------------------------------------------

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The (repository, actions) pairs of every `scope` value (each space-separated).
fn requested_scopes(q: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    q.iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|s| auth::parse_scope(&s))
        .collect()
}

/// The token response for `claims` narrowed to `requested` (both token endpoints).
fn token_response(
    reg: &Registry,
    claims: &Claims,
    requested: &[(String, Vec<String>)],
    refresh_token: Option<String>,
) -> Response {
    let now = now_secs();
    let narrowed = claims.narrow(requested, now, auth::LOGIN_TTL_SECS);
    let token = reg.authority().issue(&narrowed);
    let scope: Vec<String> = narrowed
        .access
        .iter()
        .map(|a| format!("repository:{}:{}", a.repository, a.actions.join(",")))
        .collect();
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": narrowed.exp.saturating_sub(now),
        "issued_at": rfc3339(now),
        "scope": scope.join(" "),
    });
    if let Some(r) = refresh_token {
        body["refresh_token"] = serde_json::Value::String(r);
    }
    with_headers(
        json(StatusCode::OK, "application/json", &body),
        &[
            ("cache-control", "no-store".into()),
            ("pragma", "no-cache".into()),
        ],
    )
}

/// `GET /token?service=..&scope=..[&offline_token=true&client_id=..]` (the distribution token
/// spec): credentials by Basic (a login token or the admin password) or Bearer.
async fn token(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let headers = req.headers();
    let Some(claims) = authenticate(&reg, headers) else {
        let mut resp =
            RegistryError::spec(ErrorCode::Unauthorized, "credentials required").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            hv(&format!("Basic realm=\"{}\"", reg.config().service)),
        );
        return resp;
    };
    let q = query_pairs(req.uri().query());
    let refresh = (param(&q, "offline_token") == Some("true"))
        .then(|| reg.authority().refresh_token(&claims, now_secs()));
    token_response(&reg, &claims, &requested_scopes(&q), refresh)
}

/// An OAuth2 error (RFC 6749 section 5.2): `{"error": code, "error_description": ..}`.
fn oauth_error(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    let resp = json(
        status,
        "application/json",
        &serde_json::json!({ "error": code, "error_description": description.into() }),
    );
    with_headers(
        resp,
        &[
            ("cache-control", "no-store".into()),
            ("pragma", "no-cache".into()),
        ],
    )
}

/// `POST /token` (the distribution OAuth2 variant, as docker and containerd use it): a form with
/// `grant_type=password` (`username`, `password`) or `grant_type=refresh_token` (`refresh_token`),
/// `service`, `client_id`, `scope` (space-separated, may repeat) and `access_type=offline` for a
/// refresh token. Errors follow RFC 6749: 400 `invalid_request` / `unsupported_grant_type` /
/// `invalid_grant`; 401 `invalid_client` when an `Authorization` header carries bad credentials.
async fn token_post(State(reg): State<Arc<Registry>>, headers: HeaderMap, body: Bytes) -> Response {
    let bad = |m: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", m);
    let form_type = header_str(&headers, header::CONTENT_TYPE)
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return bad("the body must be application/x-www-form-urlencoded");
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad("the form is not UTF-8");
    };
    let form = query_pairs(Some(text));
    if presented(&headers).is_some() && reg.config().auth && authenticate(&reg, &headers).is_none()
    {
        let resp = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the credentials of the Authorization header are not valid",
        );
        return with_headers(
            resp,
            &[(
                "www-authenticate",
                format!("Basic realm=\"{}\"", reg.config().service),
            )],
        );
    }
    let Some(grant_type) = param(&form, "grant_type").filter(|g| !g.is_empty()) else {
        return bad("grant_type is required");
    };
    if param(&form, "client_id").is_none_or(str::is_empty) {
        return bad("client_id is required");
    }
    match param(&form, "service") {
        None | Some("") => return bad("service is required"),
        Some(s) if s != reg.config().service => {
            return bad(&format!(
                "this server issues tokens for service {:?}, not {s:?}",
                reg.config().service
            ));
        }
        Some(_) => {}
    }
    let offline = match param(&form, "access_type") {
        None | Some("") | Some("online") => false,
        Some("offline") => true,
        Some(other) => return bad(&format!("unknown access_type {other:?}")),
    };
    let now = now_secs();
    let invalid_grant = |m: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", m);
    let (claims, refresh) = match grant_type {
        "password" => {
            let (Some(user), Some(password)) = (param(&form, "username"), param(&form, "password"))
            else {
                return bad("grant_type=password needs username and password");
            };
            let claims = if reg.config().auth {
                match reg.authority().check_password(password, now) {
                    Some(c) => c,
                    None => return invalid_grant("the username or password is not valid"),
                }
            } else {
                match authenticate(&reg, &headers) {
                    Some(c) => c,
                    None => return invalid_grant("the username or password is not valid"),
                }
            };
            let claims = Claims {
                sub: if user.is_empty() {
                    claims.sub
                } else {
                    user.to_string()
                },
                ..claims
            };
            let refresh = offline.then(|| reg.authority().refresh_token(&claims, now));
            (claims, refresh)
        }
        "refresh_token" => {
            let Some(token) = param(&form, "refresh_token").filter(|t| !t.is_empty()) else {
                return bad("grant_type=refresh_token needs refresh_token");
            };
            match reg.authority().check_refresh(token, now) {
                // the same refresh token comes back; no new one is made
                Some(c) => (c, offline.then(|| token.to_string())),
                None => return invalid_grant("the refresh token is not valid or has expired"),
            }
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported (password, refresh_token)"),
            );
        }
    };
    token_response(&reg, &claims, &requested_scopes(&form), refresh)
}

// ---- admin API ----------------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AdminRequest {
    repository_name: Option<String>,
    repository_names: Option<Vec<String>>,
    image_tag_mutability: Option<TagMutability>,
    force: bool,
    lifecycle_policy_text: Option<String>,
    dry_run: bool,
    grace_period_seconds: Option<u64>,
    repositories: Option<Vec<String>>,
    actions: Option<Vec<String>>,
}

async fn admin(
    State(reg): State<Arc<Registry>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admin_inner(&reg, &action, &headers, body).await {
        Ok(v) => json(StatusCode::OK, "application/json", &v),
        Err(e) => e.into_response(),
    }
}

async fn admin_inner(
    reg: &Arc<Registry>,
    action: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<serde_json::Value, RegistryError> {
    let Some(claims) = authenticate(reg, headers) else {
        return Err(RegistryError::Unauthenticated {
            challenge: format!("Basic realm=\"{}\"", reg.config().service),
        });
    };
    if !claims.admin {
        return Err(RegistryError::spec(
            ErrorCode::Denied,
            "the admin API needs the admin credential",
        ));
    }
    let req: AdminRequest = if body.is_empty() {
        AdminRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| RegistryError::BadRequest(e.to_string()))?
    };
    let repo_name = || -> Result<RepoName, RegistryError> {
        let raw = req
            .repository_name
            .as_deref()
            .ok_or_else(|| RegistryError::BadRequest("repositoryName is required".into()))?;
        name_of(raw)
    };
    use serde_json::json as j;
    match action {
        "CreateRepository" => {
            let r = reg
                .create_repository(&repo_name()?, req.image_tag_mutability.unwrap_or_default())
                .await?;
            Ok(j!({ "repository": r }))
        }
        "DescribeRepositories" => {
            let names = match &req.repository_names {
                Some(ns) => Some(
                    ns.iter()
                        .map(|n| name_of(n))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
            };
            let rs = reg.describe_repositories(names.as_deref()).await?;
            Ok(j!({ "repositories": rs }))
        }
        "DeleteRepository" => {
            let r = reg.delete_repository(&repo_name()?, req.force).await?;
            Ok(j!({ "repository": r }))
        }
        "ListImages" => {
            let images = reg.describe_images(&repo_name()?).await?;
            let mut ids = Vec::new();
            for i in images {
                if i.image_tags.is_empty() {
                    ids.push(j!({ "imageDigest": i.image_digest }));
                }
                for t in i.image_tags {
                    ids.push(j!({ "imageDigest": i.image_digest, "imageTag": t }));
                }
            }
            Ok(j!({ "imageIds": ids }))
        }
        "DescribeImages" => {
            let images = reg.describe_images(&repo_name()?).await?;
            Ok(j!({ "imageDetails": images }))
        }
        "PutLifecyclePolicy" => {
            let name = repo_name()?;
            let text = req.lifecycle_policy_text.as_deref().ok_or_else(|| {
                RegistryError::BadRequest("lifecyclePolicyText is required".into())
            })?;
            reg.set_lifecycle_policy(&name, Some(text)).await?;
            Ok(j!({ "repositoryName": name, "lifecyclePolicyText": text }))
        }
        "GetLifecyclePolicy" => {
            let name = repo_name()?;
            let text = reg.lifecycle_policy(&name).await?;
            Ok(j!({ "repositoryName": name, "lifecyclePolicyText": text }))
        }
        "DeleteLifecyclePolicy" => {
            let name = repo_name()?;
            reg.set_lifecycle_policy(&name, None).await?;
            Ok(j!({ "repositoryName": name }))
        }
        "StartLifecyclePolicy" => {
            let name = match &req.repository_name {
                Some(n) => Some(name_of(n)?),
                None => None,
            };
            let expired = reg
                .apply_lifecycle(name.as_ref(), now_secs(), req.dry_run)
                .await?;
            let expired: Vec<_> = expired
                .into_iter()
                .map(|(r, d)| j!({ "repositoryName": r, "imageDigest": d }))
                .collect();
            Ok(j!({ "expired": expired, "dryRun": req.dry_run }))
        }
        "RunGarbageCollection" => {
            let grace = req
                .grace_period_seconds
                .map(std::time::Duration::from_secs)
                .unwrap_or(reg.config().gc_grace);
            let report = reg.collect_garbage(grace, req.dry_run).await?;
            Ok(serde_json::to_value(report)?)
        }
        "GetAuthorizationToken" => {
            let repos = req.repositories.unwrap_or_else(|| vec!["*".into()]);
            let actions = req
                .actions
                .unwrap_or_else(|| auth::ACTIONS.iter().map(|a| a.to_string()).collect());
            for a in &actions {
                if !auth::ACTIONS.contains(&a.as_str()) {
                    return Err(RegistryError::BadRequest(format!("unknown action {a:?}")));
                }
            }
            let access = repos
                .into_iter()
                .map(|repository| Access {
                    repository,
                    actions: actions.clone(),
                })
                .collect();
            let now = now_secs();
            let token = reg.authority().login_token("nodeless", access, now);
            Ok(j!({ "authorizationToken": token, "expiresAt": now + auth::LOGIN_TTL_SECS }))
        }
        other => Err(RegistryError::BadRequest(format!(
            "unknown action {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Ok((50, 99)));
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-1", 100).is_err());
        assert!(parse_range("items=0-1", 100).is_err());
        assert!(parse_range("bytes=0-1,3-4", 100).is_err());
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_660_496), "2026-11-26T02:34:56Z");
    }

    #[test]
    fn queries() {
        let q = query_pairs(Some("scope=repository%3Aa%2Fb%3Apull&n=2&x"));
        assert_eq!(param(&q, "scope"), Some("repository:a/b:pull"));
        assert_eq!(param(&q, "n"), Some("2"));
        assert_eq!(param(&q, "x"), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
