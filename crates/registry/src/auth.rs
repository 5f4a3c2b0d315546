//! Credentials: signed tokens scoped to repositories and actions, the admin password, and the parsing of
//! `Authorization` headers and token-request scopes. Sans-IO except [`Authority::load_or_create`].
//!
//! A token is `nlr1.<base64url(claims json)>.<base64url(HMAC-SHA256(key, "nlr1." + claims))>`. The key and
//! the admin password live in `<data-dir>/auth/` (mode 0600). The same token works as the password of
//! `podman login` (HTTP Basic) and as a Bearer token; the `/token` endpoint trades either for a Bearer
//! token limited to the scopes a client asks for (the distribution token flow).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use sha2::Digest as _;

/// How long a login password lasts (as ECR's).
pub const LOGIN_TTL_SECS: u64 = 12 * 3600;

/// Actions a token may grant on a repository.
pub const ACTIONS: [&str; 3] = ["pull", "push", "delete"];

/// One grant: a repository pattern (exact name, `*`, or `prefix/*`) and its actions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Access {
    pub repository: String,
    pub actions: Vec<String>,
}

impl Access {
    fn matches(&self, repo: &str) -> bool {
        if self.repository == "*" {
            return true;
        }
        if let Some(prefix) = self.repository.strip_suffix("/*") {
            return repo.len() > prefix.len() + 1
                && repo.starts_with(prefix)
                && repo.as_bytes()[prefix.len()] == b'/';
        }
        self.repository == repo
    }
}

/// What a credential grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub access: Vec<Access>,
    /// A refresh token (OAuth2 `access_type=offline`): good only for `POST /token` with
    /// `grant_type=refresh_token`, never as a credential for the API itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh: bool,
}

impl Claims {
    /// Whether `action` on `repo` is granted.
    pub fn allows(&self, repo: &str, action: &str) -> bool {
        self.admin
            || self
                .access
                .iter()
                .any(|a| a.matches(repo) && a.actions.iter().any(|x| x == action || x == "*"))
    }

    /// The claims for a token limited to `requested` (repository, actions) pairs, valid until
    /// `min(self.exp, now + ttl)`.
    pub fn narrow(&self, requested: &[(String, Vec<String>)], now: u64, ttl: u64) -> Claims {
        let mut access = Vec::new();
        for (repo, actions) in requested {
            let granted: Vec<String> = actions
                .iter()
                .filter(|a| self.allows(repo, a))
                .cloned()
                .collect();
            if !granted.is_empty() {
                access.push(Access {
                    repository: repo.clone(),
                    actions: granted,
                });
            }
        }
        Claims {
            sub: self.sub.clone(),
            iat: now,
            exp: self.exp.min(now + ttl),
            admin: false,
            access,
            refresh: false,
        }
    }
}

/// Credentials presented with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Bearer(String),
    Basic { user: String, password: String },
}

/// Parse an `Authorization` header value.
pub fn parse_authorization(value: &str) -> Option<Presented> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Presented::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    None
}

/// Parse a token-request scope `repository:<name>:<a>,<b>` into (name, actions).
pub fn parse_scope(scope: &str) -> Option<(String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    if kind != "repository" {
        return None;
    }
    let (name, actions) = rest.rsplit_once(':')?;
    let actions = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| a.to_string())
        .collect();
    Some((name.to_string(), actions))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        let h = sha2::Sha256::digest(key);
        k[..32].copy_from_slice(&h);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = sha2::Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Issues and checks credentials.
#[derive(Clone)]
pub struct Authority {
    key: Vec<u8>,
    admin_password: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority { .. }")
    }
}

const PREFIX: &str = "nlr1.";

impl Authority {
    /// An authority with the given key and admin password (tests).
    pub fn new(key: Vec<u8>, admin_password: String) -> Authority {
        Authority {
            key,
            admin_password,
        }
    }

    /// Load `dir/signing-key` and `dir/admin-password`, creating them (0600) on first use.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Authority> {
        std::fs::create_dir_all(dir)?;
        let read_or_make = |name: &str| -> std::io::Result<String> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                Ok(_) | Err(_) => {
                    let mut raw = [0u8; 32];
                    rand::rng().fill_bytes(&mut raw);
                    let s = crate::digest::to_hex(&raw);
                    write_private(&path, s.as_bytes())?;
                    Ok(s)
                }
            }
        };
        let key = read_or_make("signing-key")?;
        let admin_password = read_or_make("admin-password")?;
        Ok(Authority {
            key: key.into_bytes(),
            admin_password,
        })
    }

    /// Load `dir/signing-key` and `dir/admin-password`; fails if either is missing.
    pub fn load(dir: &Path) -> std::io::Result<Authority> {
        let key = std::fs::read_to_string(dir.join("signing-key"))?;
        let admin_password = std::fs::read_to_string(dir.join("admin-password"))?;
        Ok(Authority {
            key: key.trim().as_bytes().to_vec(),
            admin_password: admin_password.trim().to_string(),
        })
    }

    /// The admin password (what the CLI presents).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Sign `claims` into a token.
    pub fn issue(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let payload = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let mac = hmac_sha256(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str, now: u64) -> Option<Claims> {
        let (payload, mac) = token.rsplit_once('.')?;
        let body = payload.strip_prefix(PREFIX)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !constant_time_eq(&mac, &hmac_sha256(&self.key, payload.as_bytes())) {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (claims.exp > now).then_some(claims)
    }

    /// Claims for a password: the admin password, or a token used as password.
    pub fn check_password(&self, password: &str, now: u64) -> Option<Claims> {
        if constant_time_eq(password.as_bytes(), self.admin_password.as_bytes()) {
            return Some(Claims {
                sub: "admin".into(),
                iat: now,
                exp: now + LOGIN_TTL_SECS,
                admin: true,
                access: vec![],
                refresh: false,
            });
        }
        self.verify(password, now).filter(|c| !c.refresh)
    }

    /// A refresh token for the holder of `claims` (same grants, same expiry): what `POST /token`
    /// with `access_type=offline` returns.
    pub fn refresh_token(&self, claims: &Claims, now: u64) -> String {
        self.issue(&Claims {
            iat: now,
            refresh: true,
            ..claims.clone()
        })
    }

    /// The claims of a valid refresh token, as access claims (`refresh` cleared).
    pub fn check_refresh(&self, token: &str, now: u64) -> Option<Claims> {
        let c = self.verify(token, now)?;
        c.refresh.then_some(Claims {
            refresh: false,
            ..c
        })
    }

    /// Claims for presented credentials.
    pub fn check(&self, presented: &Presented, now: u64) -> Option<Claims> {
        match presented {
            Presented::Bearer(t) => self.check_password(t, now),
            Presented::Basic { password, .. } => self.check_password(password, now),
        }
    }

    /// A login password as `get-login-password` prints: valid 12 hours, for `access`.
    pub fn login_token(&self, sub: &str, access: Vec<Access>, now: u64) -> String {
        self.issue(&Claims {
            sub: sub.to_string(),
            iat: now,
            exp: now + LOGIN_TTL_SECS,
            admin: false,
            access,
            refresh: false,
        })
    }
}

/// Write a file readable only by its owner, durably.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority::new(b"k".to_vec(), "adminpw".into())
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::digest::to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let a = authority();
        let t = a.login_token(
            "u",
            vec![Access {
                repository: "app/*".into(),
                actions: vec!["pull".into()],
            }],
            1000,
        );
        let c = a.verify(&t, 1001).unwrap();
        assert!(c.allows("app/web", "pull"));
        assert!(!c.allows("app/web", "push"));
        assert!(!c.allows("app", "pull"));
        assert!(!c.allows("other", "pull"));
        assert!(a.verify(&t, 1000 + LOGIN_TTL_SECS).is_none());
        let mut forged = t.clone();
        forged.insert(7, 'A');
        assert!(a.verify(&forged, 1001).is_none());
        assert!(
            Authority::new(b"other".to_vec(), "x".into())
                .verify(&t, 1001)
                .is_none()
        );
    }

    #[test]
    fn refresh_tokens_are_not_credentials() {
        let a = authority();
        let admin = a.check_password("adminpw", 10).unwrap();
        let r = a.refresh_token(&admin, 10);
        assert!(a.check_password(&r, 11).is_none());
        assert!(a.check(&Presented::Bearer(r.clone()), 11).is_none());
        let back = a.check_refresh(&r, 11).unwrap();
        assert!(back.admin && !back.refresh);
        assert_eq!(back.exp, admin.exp);
        // an access token is not a refresh token
        let t = a.login_token("u", vec![], 10);
        assert!(a.check_refresh(&t, 11).is_none());
        assert!(a.check_refresh(&r, admin.exp).is_none());
    }

    #[test]
    fn narrowing_grants_only_the_intersection() {
        let a = authority();
        let c = a.check_password("adminpw", 10).unwrap();
        assert!(c.admin && c.allows("anything", "delete"));
        let n = Claims {
            sub: "u".into(),
            iat: 0,
            exp: 100,
            admin: false,
            access: vec![Access {
                repository: "a".into(),
                actions: vec!["pull".into()],
            }],
            refresh: false,
        }
        .narrow(
            &[
                ("a".into(), vec!["pull".into(), "push".into()]),
                ("b".into(), vec!["pull".into()]),
            ],
            10,
            3600,
        );
        assert_eq!(n.exp, 100);
        assert_eq!(
            n.access,
            vec![Access {
                repository: "a".into(),
                actions: vec!["pull".into()]
            }]
        );
    }

    #[test]
    fn headers_and_scopes() {
        assert_eq!(
            parse_authorization("Basic bm9kZWxlc3M6cHc="),
            Some(Presented::Basic {
                user: "nodeless".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            parse_authorization("Bearer abc"),
            Some(Presented::Bearer("abc".into()))
        );
        assert_eq!(parse_authorization("Digest x"), None);
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some(("a/b".into(), vec!["pull".into(), "push".into()]))
        );
        assert_eq!(parse_scope("registry:catalog:*"), None);
    }
}
