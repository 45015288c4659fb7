//! Access control: optional bearer API keys, each bound to an agent-id glob and scopes.
//!
//! Keys are configured as SHA-256 digests, so a leaked configuration does not leak the
//! keys. The middleware resolves the key to a [`Principal`] that handlers consult: the
//! scope a route needs, and the agents the key may act as. With auth off, every request
//! is the all-powerful anonymous principal.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::AuthSettings;
use crate::domain::AgentPattern;
use crate::error::ApiError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Acquire, refresh and release as the key's agents.
    Lock,
    /// Status, listing and events.
    Read,
    /// Force-release any lock.
    Admin,
}

impl Scope {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "lock" => Some(Self::Lock),
            "read" => Some(Self::Read),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// Who is calling, as far as lockd is concerned.
#[derive(Debug)]
pub struct Principal {
    /// The key's name (`anonymous` with auth off).
    pub name: Arc<str>,
    /// The agents the key may act as.
    pub agents: AgentPattern,
    scopes: Vec<Scope>,
}

impl Principal {
    fn anonymous() -> Self {
        Self {
            name: Arc::from("anonymous"),
            agents: AgentPattern::any(),
            scopes: vec![Scope::Lock, Scope::Read, Scope::Admin],
        }
    }

    /// Checks that the key has `scope`.
    ///
    /// # Errors
    /// 403 `forbidden` naming the missing scope.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "API key {} lacks the {} scope",
                self.name,
                scope.as_str()
            )))
        }
    }

    /// Checks that the key may act as `agent`.
    ///
    /// # Errors
    /// 403 `forbidden` naming the agent.
    pub fn may_act_as(&self, agent: &str) -> Result<(), ApiError> {
        if self.agents.matches(agent) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "API key {} may not act as agent {agent} (it covers {})",
                self.name, self.agents
            )))
        }
    }
}

/// Resolves bearer keys to principals. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    anonymous: Arc<Principal>,
    /// By hex SHA-256 of the key.
    keys: HashMap<String, Arc<Principal>>,
}

impl Authenticator {
    /// Builds the key table from validated settings.
    #[must_use]
    pub fn new(settings: &AuthSettings) -> Self {
        let keys = settings
            .keys
            .iter()
            .map(|key| {
                let principal = Principal {
                    name: Arc::from(key.name.as_str()),
                    agents: AgentPattern::parse(&key.agents)
                        .unwrap_or_else(|_| AgentPattern::any()),
                    scopes: key.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                };
                (key.sha256.to_ascii_lowercase(), Arc::new(principal))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                enabled: settings.enabled,
                anonymous: Arc::new(Principal::anonymous()),
                keys,
            }),
        }
    }

    /// Whether keys are required.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    fn resolve(&self, request: &Request) -> Result<Arc<Principal>, ApiError> {
        if !self.inner.enabled {
            return Ok(Arc::clone(&self.inner.anonymous));
        }
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("this API needs Authorization: Bearer <key>".into())
            })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, key) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be Bearer <key>".into())
            })?;
        self.inner
            .keys
            .get(&hex_sha256(key))
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))
    }
}

/// The hex SHA-256 of a key, as `[[auth.keys]]` stores it.
#[must_use]
pub fn hex_sha256(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Routes that stay open with auth on: probes, metrics and the API description.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Middleware: attaches the caller's [`Principal`] or answers 401.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    match auth.resolve(&request) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            crate::metrics::rejected("unauthorized");
            let mut response = error.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lockd\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeySettings;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthSettings {
            enabled: true,
            keys: vec![ApiKeySettings {
                name: "ci".into(),
                sha256: hex_sha256("s3cret"),
                agents: "ci-*".into(),
                scopes: vec!["lock".into(), "read".into()],
            }],
        })
    }

    fn request(authorization: Option<&str>) -> Request {
        let mut builder = Request::builder().uri("/locks/r");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn keys_resolve_to_their_principal() {
        let auth = authenticator();
        let principal = auth.resolve(&request(Some("Bearer s3cret"))).unwrap();
        assert_eq!(&*principal.name, "ci");
        assert!(principal.require(Scope::Lock).is_ok());
        assert!(principal.require(Scope::Admin).is_err());
        assert!(principal.may_act_as("ci-7").is_ok());
        assert!(principal.may_act_as("prod-7").is_err());
        assert!(auth.resolve(&request(Some("bearer  s3cret "))).is_ok());
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let auth = authenticator();
        for value in [
            None,
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer "),
            Some("Bearer nope"),
        ] {
            assert!(
                matches!(
                    auth.resolve(&request(value)),
                    Err(ApiError::Unauthorized(_))
                ),
                "{value:?}"
            );
        }
    }
}
