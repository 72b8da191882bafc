//! Who may open which document: the [`Authorizer`] hook every request for a document goes
//! through before it reaches the document (a WebSocket upgrade, an HTTP API request, an SSE
//! stream or a poll), and [`JwtAuthorizer`], the JSON Web Token implementation the binary's
//! `--auth-secret-file` and `--auth-public-key` flags use.
//!
//! An embedding backend with its own sessions implements [`Authorizer`] (it sees the document
//! name, the request headers and the query string) and sets it in
//! [`Config::authorizer`](crate::Config::authorizer). Without one, the server is open: anyone
//! who can reach it reads and writes every document.
//!
//! # Tokens
//!
//! [`JwtAuthorizer`] verifies a token signed with HS256 (a shared secret), EdDSA (Ed25519) or
//! ES256 (P-256), with these claims:
//!
//! - `exp` (required): expiry, seconds since the Unix epoch. No leeway: a token is refused from
//!   that second on, and a connection opened with it is closed then (close code 4401).
//! - `sub` (optional): who the token is for; used in logs.
//! - `docs`: what the token grants, an object mapping a document name, or a prefix pattern
//!   ending in `*`, to `"read"` or `"write"`, e.g.
//!   `{"team-a/*": "write", "handbook": "read"}`. An exact name wins over patterns; among
//!   patterns, the longest prefix wins; `"*"` matches every document.
//!
//! The token is read from the `Authorization: Bearer <token>` header or, because browsers
//! cannot set headers on a WebSocket, from the `token` query parameter
//! (`ws://host/doc?token=...`). When both are present the header is used. A Hocuspocus
//! provider sends its `token` in the protocol, per document; that token wins over both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use concord_core::{Access, DocName};
use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What an [`Authorizer`] is asked about: one connection attempt to one document.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The document the client wants to open.
    pub doc: &'a DocName,
    /// The HTTP headers of the upgrade request.
    pub headers: &'a HeaderMap,
    /// The raw query string of the request, if any (without the `?`).
    pub query: Option<&'a str>,
    /// The client's address, when the server knows it.
    pub peer: Option<SocketAddr>,
    /// A token the client sent inside its protocol rather than in the request: the
    /// Hocuspocus provider's `token`, from its Auth message (`None` on every other edge).
    pub protocol_token: Option<&'a str>,
}

impl AuthRequest<'_> {
    /// The bearer token of the request: the token the protocol carried
    /// ([`AuthRequest::protocol_token`], when not empty), else the `Authorization: Bearer`
    /// header, else the `token` query parameter (percent-decoded).
    pub fn token(&self) -> Option<String> {
        if let Some(token) = self.protocol_token.filter(|t| !t.is_empty()) {
            return Some(token.to_owned());
        }
        if let Some(value) = self.headers.get(axum::http::header::AUTHORIZATION) {
            let value = value.to_str().ok()?.trim();
            let (scheme, token) = value.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned());
        }
        form_urlencoded::parse(self.query?.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned())
    }
}

/// What an [`Authorizer`] grants a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Read and write, or read only.
    pub access: Access,
    /// Who the connection belongs to, for logs.
    pub subject: Option<String>,
    /// When the grant ends: the connection is closed with code 4401 at that moment. `None`,
    /// or a moment more than a year away: never during this connection's life.
    pub expires_at: Option<SystemTime>,
}

/// Why a connection attempt was refused. Answered before the upgrade with 401 or 403 and the
/// message as the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials that are not valid (bad signature, expired, malformed):
    /// HTTP 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not grant this document: HTTP 403.
    #[error("{0}")]
    Forbidden(String),
}

/// Decides whether a connection may open a document, and with which access. Called once per
/// connection attempt, before the WebSocket upgrade; a panic inside it is caught and answered
/// with HTTP 500.
pub trait Authorizer: Send + Sync + 'static {
    /// Authorizes one connection attempt.
    fn authorize<'a>(&'a self, request: AuthRequest<'a>)
    -> BoxFuture<'a, Result<Grant, AuthError>>;
}

/// Why a key or secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The HS256 secret is empty.
    #[error("the secret is empty")]
    EmptySecret,
    /// The PEM holds no Ed25519 or P-256 key of the expected kind.
    #[error("not an Ed25519 or P-256 (ES256) key in PEM form: {0}")]
    UnsupportedKey(String),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Reads an HS256 secret file: its content with surrounding whitespace trimmed.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    Ok(match (start, end) {
        (Some(start), Some(end)) => bytes[start..=end].to_vec(),
        _ => Vec::new(),
    })
}

/// What a document grant in a token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read the document and awareness, send awareness.
    Read,
    /// Read and write.
    Write,
}

impl From<Permission> for Access {
    fn from(permission: Permission) -> Access {
        match permission {
            Permission::Read => Access::ReadOnly,
            Permission::Write => Access::ReadWrite,
        }
    }
}

/// The claims of a Concord token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Who the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Document names or prefix patterns (ending in `*`) and what they grant.
    #[serde(default)]
    pub docs: BTreeMap<String, Permission>,
}

impl Claims {
    /// What these claims grant on `doc`: an exact name first, else the longest matching
    /// prefix pattern.
    pub fn permission_for(&self, doc: &DocName) -> Option<Permission> {
        if let Some(&exact) = self.docs.get(doc.as_str())
            && !doc.as_str().ends_with('*')
        {
            return Some(exact);
        }
        self.docs
            .iter()
            .filter_map(|(pattern, &permission)| {
                let prefix = pattern.strip_suffix('*')?;
                doc.as_str()
                    .starts_with(prefix)
                    .then_some((prefix.len(), permission))
            })
            .max_by_key(|&(len, _)| len)
            .map(|(_, permission)| permission)
    }
}

/// Verifies Concord JWTs: see the [module documentation](self).
pub struct JwtAuthorizer {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtAuthorizer {
    /// Tokens signed with HS256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Result<JwtAuthorizer, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| KeyError::UnsupportedKey(e.to_string()))?;
        Ok(Self::with(key, Algorithm::HS256))
    }

    /// Tokens signed with the private half of `pem`: an Ed25519 public key (EdDSA) or a P-256
    /// public key (ES256), in PEM form.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<JwtAuthorizer, KeyError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self::with(key, Algorithm::EdDSA));
        }
        DecodingKey::from_ec_pem(pem)
            .map(|key| Self::with(key, Algorithm::ES256))
            .map_err(|e| KeyError::UnsupportedKey(e.to_string()))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> JwtAuthorizer {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        JwtAuthorizer { key, validation }
    }

    /// Verifies `token` for `doc`.
    pub fn verify(&self, token: &str, doc: &DocName) -> Result<Grant, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| {
                AuthError::Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_owned(),
                    ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                    ErrorKind::InvalidAlgorithm => {
                        "token is signed with another algorithm".to_owned()
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("token has no {claim:?} claim")
                    }
                    _ => format!("token is not valid: {e}"),
                })
            })?
            .claims;
        // jsonwebtoken accepts a token during its `exp` second; the contract here is that a
        // token is refused from that second on (and a session is closed at it).
        if claims.exp <= unix_now() {
            return Err(AuthError::Unauthenticated("token expired".to_owned()));
        }
        let permission = claims.permission_for(doc).ok_or_else(|| {
            AuthError::Forbidden(format!("token does not grant access to document {doc:?}"))
        })?;
        Ok(Grant {
            access: permission.into(),
            subject: claims.sub,
            // An `exp` too far away to be a time (u64::MAX, say) never expires in practice.
            expires_at: UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp)),
        })
    }
}

impl Authorizer for JwtAuthorizer {
    fn authorize<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Grant, AuthError>> {
        Box::pin(async move {
            let token = request.token().ok_or_else(|| {
                AuthError::Unauthenticated(
                    "a token is required: pass it as ?token= or an Authorization: Bearer header"
                        .to_owned(),
                )
            })?;
            self.verify(&token, request.doc)
        })
    }
}

/// Signs Concord tokens, for development and tests (`concord-server token`): production
/// tokens come from the application's own backend, signed with the same key.
pub struct TokenSigner {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl TokenSigner {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Result<TokenSigner, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(TokenSigner {
            key: EncodingKey::from_secret(secret)
                .map_err(|e| KeyError::UnsupportedKey(e.to_string()))?,
            algorithm: Algorithm::HS256,
        })
    }

    /// EdDSA or ES256 with an Ed25519 or P-256 private key in PEM form (PKCS#8).
    pub fn from_private_key_pem(pem: &[u8]) -> Result<TokenSigner, KeyError> {
        if let Ok(key) = EncodingKey::from_ed_pem(pem) {
            return Ok(TokenSigner {
                key,
                algorithm: Algorithm::EdDSA,
            });
        }
        EncodingKey::from_ec_pem(pem)
            .map(|key| TokenSigner {
                key,
                algorithm: Algorithm::ES256,
            })
            .map_err(|e| KeyError::UnsupportedKey(e.to_string()))
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Seconds since the Unix epoch, for `exp` claims.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DocName {
        DocName::new(s).unwrap()
    }

    fn claims(docs: &[(&str, Permission)]) -> Claims {
        Claims {
            exp: unix_now() + 3600,
            sub: Some("alice".into()),
            docs: docs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn exact_names_win_then_the_longest_prefix() {
        use Permission::*;
        let c = claims(&[
            ("team-a/*", Write),
            ("team-a/archive/*", Read),
            ("handbook", Read),
            ("team-a/archive/open", Write),
        ]);
        assert_eq!(c.permission_for(&name("team-a/notes")), Some(Write));
        assert_eq!(c.permission_for(&name("team-a/archive/2020")), Some(Read));
        assert_eq!(c.permission_for(&name("team-a/archive/open")), Some(Write));
        assert_eq!(c.permission_for(&name("handbook")), Some(Read));
        assert_eq!(c.permission_for(&name("handbook2")), None);
        assert_eq!(c.permission_for(&name("team-b/x")), None);
        let all = claims(&[("*", Read)]);
        assert_eq!(all.permission_for(&name("anything/at/all")), Some(Read));
        // A document literally named with a star is matched as a pattern, not as a name.
        let star = claims(&[("a*", Read)]);
        assert_eq!(star.permission_for(&name("a*")), Some(Read));
        assert_eq!(star.permission_for(&name("abc")), Some(Read));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let doc = name("d");
        let mut headers = HeaderMap::new();
        let request = |headers: &HeaderMap, query: Option<&'static str>| {
            AuthRequest {
                doc: &doc,
                headers,
                query,
                peer: None,
                protocol_token: None,
            }
            .token()
        };
        assert_eq!(request(&headers, None), None);
        assert_eq!(
            request(&headers, Some("a=1&token=abc%2Edef")),
            Some("abc.def".into())
        );
        headers.insert("authorization", "Bearer hdr".parse().unwrap());
        assert_eq!(request(&headers, Some("token=q")), Some("hdr".into()));
        headers.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(request(&headers, Some("token=q")), None);
    }

    #[test]
    fn hs256_tokens_verify_and_grant_what_they_say() {
        let signer = TokenSigner::hs256(b"secret").unwrap();
        let verifier = JwtAuthorizer::hs256(b"secret").unwrap();
        let token = signer
            .sign(&claims(&[
                ("team-a/*", Permission::Write),
                ("h", Permission::Read),
            ]))
            .unwrap();
        let grant = verifier.verify(&token, &name("team-a/x")).unwrap();
        assert_eq!(grant.access, Access::ReadWrite);
        assert_eq!(grant.subject.as_deref(), Some("alice"));
        assert_eq!(
            verifier.verify(&token, &name("h")).unwrap().access,
            Access::ReadOnly
        );
        assert!(matches!(
            verifier.verify(&token, &name("other")),
            Err(AuthError::Forbidden(_))
        ));
        let wrong = JwtAuthorizer::hs256(b"other secret").unwrap();
        assert_eq!(
            wrong.verify(&token, &name("h")),
            Err(AuthError::Unauthenticated(
                "token signature is invalid".into()
            ))
        );
        let mut expired = claims(&[("h", Permission::Read)]);
        expired.exp = unix_now();
        let expired = signer.sign(&expired).unwrap();
        assert_eq!(
            verifier.verify(&expired, &name("h")),
            Err(AuthError::Unauthenticated("token expired".into()))
        );
        assert!(matches!(
            verifier.verify("not.a.token", &name("h")),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(JwtAuthorizer::hs256(b"").is_err());
    }

    #[test]
    fn eddsa_and_es256_tokens_verify_with_the_public_key() {
        let pairs: [(&[u8], &[u8], Algorithm); 2] = [
            (
                include_bytes!("../../tests/data/ed25519-private.pem"),
                include_bytes!("../../tests/data/ed25519-public.pem"),
                Algorithm::EdDSA,
            ),
            (
                include_bytes!("../../tests/data/p256-private.pem"),
                include_bytes!("../../tests/data/p256-public.pem"),
                Algorithm::ES256,
            ),
        ];
        for (private, public, algorithm) in pairs {
            let signer = TokenSigner::from_private_key_pem(private).unwrap();
            assert_eq!(signer.algorithm(), algorithm);
            let token = signer.sign(&claims(&[("d", Permission::Write)])).unwrap();
            let verifier = JwtAuthorizer::from_public_key_pem(public).unwrap();
            assert_eq!(
                verifier.verify(&token, &name("d")).unwrap().access,
                Access::ReadWrite,
                "{algorithm:?}"
            );
            // An HS256 token made with the public key's bytes as a secret (the classic
            // algorithm-confusion attack) is refused.
            let forged = TokenSigner::hs256(public)
                .unwrap()
                .sign(&claims(&[("d", Permission::Write)]))
                .unwrap();
            assert!(verifier.verify(&forged, &name("d")).is_err());
        }
        assert!(JwtAuthorizer::from_public_key_pem(b"not a key").is_err());
    }

    #[test]
    fn an_exp_far_in_the_future_is_not_an_error() {
        let mut far = claims(&[("d", Permission::Write)]);
        far.exp = u64::MAX;
        let token = TokenSigner::hs256(b"s").unwrap().sign(&far).unwrap();
        let grant = JwtAuthorizer::hs256(b"s")
            .unwrap()
            .verify(&token, &name("d"))
            .unwrap();
        assert_eq!(grant.access, Access::ReadWrite);
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        #[derive(Serialize)]
        struct NoExp {
            docs: BTreeMap<String, Permission>,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                docs: [("*".to_owned(), Permission::Write)].into(),
            },
            &EncodingKey::from_secret(b"s").unwrap(),
        )
        .unwrap();
        let verifier = JwtAuthorizer::hs256(b"s").unwrap();
        assert!(matches!(
            verifier.verify(&token, &name("d")),
            Err(AuthError::Unauthenticated(why)) if why.contains("exp")
        ));
    }

    #[test]
    fn secret_files_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, b"  s3cret\n\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), b"s3cret");
        std::fs::write(&path, b" \n").unwrap();
        assert!(read_secret_file(&path).unwrap().is_empty());
    }
}
