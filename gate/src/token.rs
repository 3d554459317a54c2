//! Who is asking: a JWT, verified with the one key the server was given (HS256
//! secret or RS256 public key), becomes an [`Identity`]. Every way a token can be
//! wrong has its own [`Refusal`], so a client learns which, and never a session.

use std::fmt;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The four roles of the platform's tokens (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Learner,
    Trainer,
    OrgAdmin,
    Analyst,
}

impl Role {
    pub const NAMES: &'static str = "learner, trainer, org_admin, analyst";

    fn parse(name: &str) -> Option<Role> {
        match name {
            "learner" => Some(Role::Learner),
            "trainer" => Some(Role::Trainer),
            "org_admin" => Some(Role::OrgAdmin),
            "analyst" => Some(Role::Analyst),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Learner => "learner",
            Role::Trainer => "trainer",
            Role::OrgAdmin => "org_admin",
            Role::Analyst => "analyst",
        }
    }
}

/// A verified caller: the token's `sub` and `role`. Only [`Verifier::verify`]
/// makes one, and a session keeps it where SQL cannot reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

/// Why a token was not accepted. The messages name the problem, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed(String),
    AlgNone,
    WrongAlgorithm { got: String, expected: Algorithm },
    BadSignature,
    Expired,
    MissingClaim(&'static str),
    UnknownRole(String),
    UserMismatch { user: String },
    Unencrypted,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Refusal::Missing => write!(f, "missing token: send the JWT as the password (Postgres) or as `Authorization: Bearer <token>` (HTTP)"),
            Refusal::Malformed(why) => write!(f, "malformed token: {why}"),
            Refusal::AlgNone => write!(f, "token algorithm `none` is refused: tokens must be signed"),
            Refusal::WrongAlgorithm { got, expected } => {
                let got: String = got.chars().take(16).flat_map(char::escape_debug).collect();
                write!(f, "token algorithm `{got}` is refused: this server verifies {expected:?}")
            }
            Refusal::BadSignature => write!(f, "token signature does not verify with this server's key"),
            Refusal::Expired => write!(f, "token expired (its `exp` is in the past)"),
            Refusal::MissingClaim(claim) => write!(f, "token has no `{claim}` claim (sub, role and exp are required)"),
            Refusal::UnknownRole(role) => write!(f, "token role `{role}` is unknown (roles: {})", Role::NAMES),
            Refusal::UserMismatch { user } => write!(f, "user name `{user}` is not the token's sub: connect as the user the token names"),
            Refusal::Unencrypted => write!(f, "a token over an unencrypted connection is refused: use TLS (sslmode=require), or connect over loopback"),
        }
    }
}

/// Verifies tokens with the server's key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Verifier({:?})", self.algorithm)
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

/// No real token comes near this; a longer one is not decoded at all.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Tolerated clock skew for `exp`.
const LEEWAY_SECS: u64 = 30;

impl Verifier {
    /// A verifier of HS256 tokens; the error says what is wrong with the secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err("JWT secret: too short (use at least 16 bytes)".into());
        }
        let key = DecodingKey::from_secret(secret).map_err(|e| format!("JWT secret: {e}"))?;
        Ok(Verifier { key, algorithm: Algorithm::HS256 })
    }

    /// A verifier of RS256 tokens; the error says what is wrong with the key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, String> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| format!("not an RSA public key in PEM ({e})"))?;
        Ok(Verifier { key, algorithm: Algorithm::RS256 })
    }

    /// The caller a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = token.split('.').next().unwrap_or_default();
        let header: RawHeader = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|bytes: Vec<u8>| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| Refusal::Malformed("not a JWT (header.payload.signature, base64url JSON)".into()))?;
        match header.alg.as_deref() {
            None => return Err(Refusal::Malformed("the header has no `alg`".into())),
            Some(alg) if alg.eq_ignore_ascii_case("none") => return Err(Refusal::AlgNone),
            Some(alg) if alg != format!("{:?}", self.algorithm) => {
                return Err(Refusal::WrongAlgorithm { got: alg.to_string(), expected: self.algorithm })
            }
            Some(_) => {}
        }
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => Refusal::MissingClaim("exp"),
            ErrorKind::MissingRequiredClaim(_) => Refusal::MissingClaim("sub"),
            ErrorKind::InvalidClaimFormat(claim) => Refusal::Malformed(format!("claim `{claim}` has the wrong type")),
            ErrorKind::InvalidAlgorithm => Refusal::WrongAlgorithm { got: "?".into(), expected: self.algorithm },
            _ => Refusal::Malformed(e.to_string()),
        })?;
        let user = claims.claims.sub.filter(|s| !s.is_empty()).ok_or(Refusal::MissingClaim("sub"))?;
        let role = claims.claims.role.ok_or(Refusal::MissingClaim("role"))?;
        let role = Role::parse(&role).ok_or(Refusal::UnknownRole(role))?;
        Ok(Identity { user, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    pub const SECRET: &[u8] = b"a test secret of enough bytes";

    pub fn token(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap()
    }

    fn exp(from_now: i64) -> i64 {
        chrono::Utc::now().timestamp() + from_now
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let v = Verifier::hs256(SECRET).unwrap();
        let ok = v.verify(&token(serde_json::json!({"sub": "u1", "role": "learner", "exp": exp(600)})));
        assert_eq!(ok, Ok(Identity { user: "u1".into(), role: Role::Learner }));

        let refused = |t: &str| v.verify(t).unwrap_err();
        assert_eq!(refused(""), Refusal::Missing);
        assert!(matches!(refused("garbage"), Refusal::Malformed(_)));
        assert_eq!(refused(&token(serde_json::json!({"sub": "u1", "role": "learner", "exp": exp(-3600)}))), Refusal::Expired);
        assert_eq!(refused(&token(serde_json::json!({"sub": "u1", "role": "learner"}))), Refusal::MissingClaim("exp"));
        assert_eq!(refused(&token(serde_json::json!({"role": "learner", "exp": exp(600)}))), Refusal::MissingClaim("sub"));
        assert_eq!(refused(&token(serde_json::json!({"sub": "u1", "exp": exp(600)}))), Refusal::MissingClaim("role"));
        assert_eq!(refused(&token(serde_json::json!({"sub": "u1", "role": "root", "exp": exp(600)}))), Refusal::UnknownRole("root".into()));

        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "u1", "role": "analyst", "exp": exp(600)}),
            &EncodingKey::from_secret(b"another secret, just as long").unwrap(),
        )
        .unwrap();
        assert_eq!(refused(&other), Refusal::BadSignature);

        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&format!(r#"{{"sub":"u1","role":"analyst","exp":{}}}"#, exp(600))));
        assert_eq!(refused(&unsigned), Refusal::AlgNone);
        let hs512 = encode(&Header::new(Algorithm::HS512), &serde_json::json!({"sub": "u1", "role": "analyst", "exp": exp(600)}), &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert!(matches!(refused(&hs512), Refusal::WrongAlgorithm { .. }));
        assert!(!refused(&other).to_string().contains(&other), "a refusal never repeats the token");
    }
}
