//! Who is calling: an HS256 JWT with `role: operator`, or `role: tenant` plus `tenant`, and an expiry.
//! The secret comes from the platform's configuration only; there is no default.
//!
//! A tenant's token reaches its own tenant and nothing else: [`Caller::scope`] answers a request for
//! another tenant's resources exactly as it answers one for a tenant that does not exist.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::problem::Problem;
use crate::tenant::TenantId;

/// Shortest secret accepted: HS256's key should be at least as long as its 256-bit output.
pub use crate::config::MIN_SECRET_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Tenant,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Claims {
    /// Who the token was minted for (free text, shown in logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    /// Not valid before (seconds since the epoch), if the minter set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Clock difference tolerated between the minter and the platform.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the JWT secret is {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    TooShort(usize),
}

impl Keys {
    pub fn new(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        // Only HS256: a token naming any other algorithm (`none` included) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Ok(Keys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation })
    }

    pub fn mint(
        &self,
        role: Role,
        tenant: Option<&TenantId>,
        sub: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(role == Role::Operator || tenant.is_some(), "a tenant token needs a tenant");
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: sub.map(str::to_owned),
            role,
            tenant: tenant.map(|t| t.to_string()),
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: None,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, Problem> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            Problem::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (its `nbf` lies in the future)".to_owned(),
                ErrorKind::InvalidSignature => "the token's signature does not match".to_owned(),
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256".to_owned(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                ErrorKind::Json(e) => format!("the token's claims are not valid: {e}"),
                _ => format!("the token is not a valid JWT: {e}"),
            })
        })?;
        let c = data.claims;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if c.iat > now + LEEWAY_SECONDS {
            return Err(Problem::unauthorized("the token claims to be issued in the future (`iat`)"));
        }
        let sub = c.sub.unwrap_or_default();
        match (c.role, c.tenant) {
            (Role::Operator, _) => Ok(Caller::Operator { sub }),
            (Role::Tenant, Some(t)) => match TenantId::parse(&t) {
                Ok(tenant) => Ok(Caller::Tenant { tenant, sub }),
                Err(e) => Err(Problem::unauthorized(format!("the token's `tenant` claim is not a tenant name: {e}"))),
            },
            (Role::Tenant, None) => Err(Problem::unauthorized("a tenant token has no `tenant` claim")),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub enum Caller {
    Operator { sub: String },
    Tenant { tenant: TenantId, sub: String },
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Operator { .. })
    }

    /// The tenant a request names in its path, if this caller may see it. A tenant asking for another
    /// tenant gets the same answer as for a tenant that does not exist.
    pub fn scope(&self, tenant: &str) -> Result<TenantId, Problem> {
        let missing = || Problem::not_found(format!("there is no tenant `{tenant}`"));
        let asked = TenantId::parse(tenant).map_err(|_| missing())?;
        match self {
            Caller::Operator { .. } => Ok(asked),
            Caller::Tenant { tenant: own, .. } if *own == asked => Ok(asked),
            Caller::Tenant { .. } => Err(missing()),
        }
    }

    pub fn require_operator(&self) -> Result<(), Problem> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(Problem::forbidden("this needs an operator's token"))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Keys: axum::extract::FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = <Keys as axum::extract::FromRef<S>>::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("no `Authorization: Bearer <token>` header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| Problem::unauthorized("the `Authorization` header must be `Bearer <token>`"))?;
        let caller = keys.verify(token.trim())?;
        let span = tracing::Span::current();
        match &caller {
            Caller::Operator { sub } => span.record("caller", format!("operator:{sub}")),
            Caller::Tenant { tenant, sub } => span.record("caller", format!("tenant:{tenant}:{sub}")),
        };
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn minted_tokens_verify_with_their_role() {
        let k = keys();
        let t = TenantId::parse("zoo").unwrap();
        let tok = k.mint(Role::Tenant, Some(&t), Some("ci"), Duration::from_secs(60)).unwrap();
        assert!(matches!(k.verify(&tok).unwrap(), Caller::Tenant { tenant, .. } if tenant == t));
        let op = k.mint(Role::Operator, None, None, Duration::from_secs(60)).unwrap();
        assert!(k.verify(&op).unwrap().is_operator());
    }

    #[test]
    fn forged_expired_unsigned_and_incomplete_tokens_are_refused() {
        let k = keys();
        let other = Keys::new(b"another-secret-another-secret-00").unwrap();
        let forged = other.mint(Role::Operator, None, None, Duration::from_secs(60)).unwrap();
        assert!(k.verify(&forged).unwrap_err().detail.contains("signature"));

        let past = chrono::Utc::now().timestamp() - 3600;
        let claims = serde_json::json!({"role": "operator", "exp": past});
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(k.verify(&expired).unwrap_err().detail.contains("expired"));

        let future = chrono::Utc::now().timestamp() + 3600;
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&serde_json::json!({"role": "operator", "exp": future}))
        );
        assert_eq!(k.verify(&none).unwrap_err().status, 401);

        let no_exp =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &serde_json::json!({"role": "operator"}), &k.encoding)
                .unwrap();
        assert!(k.verify(&no_exp).unwrap_err().detail.contains("exp"), "{:?}", k.verify(&no_exp).unwrap_err());
        let no_tenant = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"role": "tenant", "exp": future}),
            &k.encoding,
        )
        .unwrap();
        assert!(k.verify(&no_tenant).unwrap_err().detail.contains("tenant"));
        let no_role =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &serde_json::json!({"exp": future}), &k.encoding)
                .unwrap();
        assert!(k.verify(&no_role).unwrap_err().detail.contains("role"));
        assert!(Keys::new(b"short").is_err());

        // Not yet valid, or issued in the future, beyond the leeway: refused; within it: accepted.
        let now = chrono::Utc::now().timestamp();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap()
        };
        let early = sign(serde_json::json!({"role": "operator", "exp": future, "nbf": now + 3600}));
        assert!(k.verify(&early).unwrap_err().detail.contains("not valid yet"), "{:?}", k.verify(&early).unwrap_err());
        let later = sign(serde_json::json!({"role": "operator", "exp": future, "iat": now + 3600}));
        assert!(k.verify(&later).unwrap_err().detail.contains("issued in the future"));
        let skewed = sign(serde_json::json!({"role": "operator", "exp": future, "iat": now + 2, "nbf": now + 2}));
        assert!(k.verify(&skewed).is_ok(), "a clock a little ahead is tolerated");
    }

    #[test]
    fn a_tenant_sees_only_itself_and_others_look_absent() {
        let zoo = Caller::Tenant { tenant: TenantId::parse("zoo").unwrap(), sub: String::new() };
        assert!(zoo.scope("zoo").is_ok());
        let other = zoo.scope("food").unwrap_err();
        let absent = zoo.scope("nobody").unwrap_err();
        assert_eq!((other.status, other.kind.clone()), (absent.status, absent.kind.clone()));
        assert_eq!(other.detail.replace("food", "X"), absent.detail.replace("nobody", "X"));
    }
}
