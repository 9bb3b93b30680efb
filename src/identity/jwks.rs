//! JSON Web Key Sets (RFC 7517) compiled into verification keys for the algorithms a provider allows.

use std::fmt;

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use serde_json::{Map, Value};

use super::config::JwtAlgorithm;
use super::rsa_tokens::RsaKey;

/// Most keys accepted in one key set: tokens without `kid` are tried against every key, so the
/// set size bounds the work an unauthenticated client can cause.
const MAX_KEYS: usize = 64;

/// Why a key set was refused: the JSON path inside the key set document and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksError {
    /// Path inside the JWKS document, e.g. `keys[1].n` (empty for the whole document).
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
}

impl JwksError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        JwksError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unknown_provider(provider: &str) -> Self {
        JwksError::new(
            "",
            format!("no provider named `{provider}` uses remote_jwks"),
        )
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for JwksError {}

/// A public key ready to verify tokens of exactly one algorithm.
#[derive(Clone)]
pub(crate) enum AlgorithmKey {
    /// RS256 to PS512, whose signatures `rsa_tokens` checks.
    Rsa(RsaKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

impl AlgorithmKey {
    fn algorithm(&self) -> JwtAlgorithm {
        match self {
            AlgorithmKey::Rsa(key) => key.algorithm(),
            AlgorithmKey::ES256(_) => JwtAlgorithm::ES256,
            AlgorithmKey::ES384(_) => JwtAlgorithm::ES384,
            AlgorithmKey::EdDSA(_) => JwtAlgorithm::EdDSA,
        }
    }

    /// Verifies signature, then time, issuer and audience per `options`.
    pub(crate) fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        match self {
            AlgorithmKey::Rsa(key) => key.verify_token(token, &options),
            AlgorithmKey::ES256(key) => key.verify_token(token, Some(options)),
            AlgorithmKey::ES384(key) => key.verify_token(token, Some(options)),
            AlgorithmKey::EdDSA(key) => key.verify_token(token, Some(options)),
        }
    }
}

/// One usable (key id, algorithm, key) triple of a key set.
#[derive(Clone)]
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: AlgorithmKey,
}

impl VerificationKey {
    pub(crate) fn algorithm(&self) -> JwtAlgorithm {
        self.key.algorithm()
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.algorithm().as_str())
            .finish()
    }
}

/// The verification keys of one JWKS document, restricted to a provider's algorithms.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerificationKey>,
}

impl KeySet {
    /// Compiles a JWKS document. Keys whose `use` is not `sig`, whose `alg` is not one of
    /// `algorithms`, or whose type or curve natsguard does not verify with (e.g. `oct`,
    /// `X25519`, `P-521`) are skipped; a malformed key of a supported type is an error.
    /// Private members (`d`, ...) are ignored.
    pub(crate) fn parse(
        document: &Value,
        algorithms: &[JwtAlgorithm],
    ) -> Result<KeySet, JwksError> {
        let object = document
            .as_object()
            .ok_or_else(|| JwksError::new("", "must be a JSON object"))?;
        let entries = object
            .get("keys")
            .ok_or_else(|| JwksError::new("keys", "is missing"))?
            .as_array()
            .ok_or_else(|| JwksError::new("keys", "must be an array"))?;
        if entries.len() > MAX_KEYS {
            return Err(JwksError::new(
                "keys",
                format!("has more than {MAX_KEYS} keys"),
            ));
        }
        let mut keys = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let path = format!("keys[{index}]");
            let jwk = entry
                .as_object()
                .ok_or_else(|| JwksError::new(path.clone(), "must be a JSON object"))?;
            keys.extend(parse_jwk(jwk, &path, algorithms)?);
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }
}

fn optional_string<'a>(
    jwk: &'a Map<String, Value>,
    member: &str,
    path: &str,
) -> Result<Option<&'a str>, JwksError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(JwksError::new(
            format!("{path}.{member}"),
            "must be a string",
        )),
    }
}

fn required_string<'a>(
    jwk: &'a Map<String, Value>,
    member: &str,
    path: &str,
) -> Result<&'a str, JwksError> {
    optional_string(jwk, member, path)?
        .ok_or_else(|| JwksError::new(format!("{path}.{member}"), "is missing"))
}

/// Decodes a base64url member. Trailing `=` padding is tolerated: some IdPs emit it.
fn base64url_member(
    jwk: &Map<String, Value>,
    member: &str,
    path: &str,
) -> Result<Vec<u8>, JwksError> {
    let encoded = required_string(jwk, member, path)?;
    match Base64UrlSafeNoPadding::decode_to_vec(encoded.trim_end_matches('='), None) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(JwksError::new(
            format!("{path}.{member}"),
            "is not non-empty base64url",
        )),
    }
}

/// Decodes a fixed-size EC coordinate.
fn coordinate(
    jwk: &Map<String, Value>,
    member: &str,
    path: &str,
    size: usize,
) -> Result<Vec<u8>, JwksError> {
    let bytes = base64url_member(jwk, member, path)?;
    if bytes.len() != size {
        return Err(JwksError::new(
            format!("{path}.{member}"),
            format!("must be {size} bytes, got {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn invalid_key(path: &str, error: jwt_simple::Error) -> JwksError {
    JwksError::new(path.to_string(), format!("invalid public key: {error}"))
}

/// The verification keys one JWK yields (none when it is skipped).
fn parse_jwk(
    jwk: &Map<String, Value>,
    path: &str,
    algorithms: &[JwtAlgorithm],
) -> Result<Vec<VerificationKey>, JwksError> {
    let kty = required_string(jwk, "kty", path)?;
    let kid = optional_string(jwk, "kid", path)?.map(str::to_string);
    if optional_string(jwk, "use", path)?.is_some_and(|key_use| key_use != "sig") {
        return Ok(Vec::new());
    }
    // A JWK `alg` restricts the key to that algorithm; an algorithm natsguard does not verify
    // with (e.g. RSA-OAEP) means the key is meant for something else.
    let key_alg = match optional_string(jwk, "alg", path)? {
        Some(name) => match JwtAlgorithm::parse(name) {
            Some(alg) => Some(alg),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let usable =
        |alg: JwtAlgorithm| algorithms.contains(&alg) && key_alg.is_none_or(|only| only == alg);
    let mut keys = Vec::new();
    let mut push = |key: AlgorithmKey| {
        keys.push(VerificationKey {
            kid: kid.clone(),
            key,
        })
    };
    match kty {
        "RSA" => {
            let n = base64url_member(jwk, "n", path)?;
            let e = base64url_member(jwk, "e", path)?;
            for alg in algorithms.iter().copied().filter(|alg| usable(*alg)) {
                if matches!(
                    alg,
                    JwtAlgorithm::ES256 | JwtAlgorithm::ES384 | JwtAlgorithm::EdDSA
                ) {
                    continue;
                }
                push(
                    RsaKey::new(alg, &n, &e)
                        .map(AlgorithmKey::Rsa)
                        .map_err(|error| invalid_key(path, error))?,
                );
            }
        }
        "EC" => {
            let (alg, size) = match required_string(jwk, "crv", path)? {
                "P-256" => (JwtAlgorithm::ES256, 32),
                "P-384" => (JwtAlgorithm::ES384, 48),
                _ => return Ok(Vec::new()),
            };
            if !usable(alg) {
                return Ok(Vec::new());
            }
            // SEC1 uncompressed point: 0x04 || x || y.
            let mut point = vec![0x04];
            point.extend(coordinate(jwk, "x", path, size)?);
            point.extend(coordinate(jwk, "y", path, size)?);
            let key = match alg {
                JwtAlgorithm::ES256 => ES256PublicKey::from_bytes(&point).map(AlgorithmKey::ES256),
                _ => ES384PublicKey::from_bytes(&point).map(AlgorithmKey::ES384),
            };
            push(key.map_err(|error| invalid_key(path, error))?);
        }
        "OKP" => {
            if required_string(jwk, "crv", path)? != "Ed25519" || !usable(JwtAlgorithm::EdDSA) {
                return Ok(Vec::new());
            }
            let x = coordinate(jwk, "x", path, 32)?;
            push(
                Ed25519PublicKey::from_bytes(&x)
                    .map(AlgorithmKey::EdDSA)
                    .map_err(|error| invalid_key(path, error))?,
            );
        }
        _ => {}
    }
    Ok(keys)
}
