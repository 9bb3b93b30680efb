//! JWT verification: provider selection by `iss`, key selection by `alg`/`kid`, then signature,
//! time, issuer and audience checks by jwt-simple with the host's time as input.

use std::collections::HashSet;

use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use super::config::{ConfigIssue, JwtAlgorithm, JwtConfig, JwtProviderConfig, RemoteJwksConfig};
use super::jwks::{JwksError, KeySet, VerificationKey};
use super::{Rejection, VerifiedJwt};

/// Largest token accepted; real access tokens are a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest remote JWKS document accepted.
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// The result of verifying one token.
#[derive(Debug)]
pub(crate) enum JwtVerification {
    Verified(VerifiedJwt),
    AwaitingKeys { provider: String },
    Rejected(Rejection),
}

/// All configured providers.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    providers: Vec<Provider>,
}

#[derive(Debug)]
struct Provider {
    name: String,
    issuer: String,
    algorithms: Vec<JwtAlgorithm>,
    clock_skew_seconds: u64,
    /// Issuer and audiences as jwt-simple checks them; the time is set per verification.
    options: VerificationOptions,
    static_keys: KeySet,
    remote: Option<RemoteKeys>,
}

#[derive(Debug)]
struct RemoteKeys {
    config: RemoteJwksConfig,
    /// The last key set accepted by `update_remote_jwks`, and when it was fetched.
    fetched: Option<(KeySet, u64)>,
}

/// Header and payload of a token, decoded but not yet trusted.
struct UnverifiedToken {
    algorithm: String,
    kid: Option<String>,
    claims: Map<String, Value>,
}

impl JwtVerifier {
    pub(crate) fn new(config: &JwtConfig) -> Result<JwtVerifier, ConfigIssue> {
        let providers = config
            .providers
            .iter()
            .enumerate()
            .map(|(index, provider)| Provider::new(provider, &format!("jwt.providers[{index}]")))
            .collect::<Result<_, _>>()?;
        Ok(JwtVerifier { providers })
    }

    pub(crate) fn verify(&self, token: &str, now: u64) -> JwtVerification {
        match self.try_verify(token, now) {
            Ok(verification) => verification,
            Err(rejection) => JwtVerification::Rejected(rejection),
        }
    }

    fn try_verify(&self, token: &str, now: u64) -> Result<JwtVerification, Rejection> {
        let unverified = decode_unverified(token)?;
        let issuer = match unverified.claims.get("iss") {
            Some(Value::String(issuer)) => issuer,
            _ => return Err(Rejection::JwtIssuer),
        };
        let provider = self
            .providers
            .iter()
            .find(|provider| provider.issuer == *issuer)
            .ok_or(Rejection::JwtUnknownProvider)?;
        provider.verify(token, unverified, now)
    }

    pub(crate) fn update_remote_jwks(
        &mut self,
        name: &str,
        jwks_json: &[u8],
        now: u64,
    ) -> Result<(), JwksError> {
        let provider = self
            .providers
            .iter_mut()
            .find(|provider| provider.name == name && provider.remote.is_some())
            .ok_or_else(|| JwksError::unknown_provider(name))?;
        if jwks_json.len() > MAX_JWKS_BYTES {
            return Err(JwksError::new(
                "",
                format!("larger than {MAX_JWKS_BYTES} bytes"),
            ));
        }
        let document: Value = serde_json::from_slice(jwks_json)
            .map_err(|error| JwksError::new("", format!("not JSON: {error}")))?;
        let keys = KeySet::parse(&document, &provider.algorithms)?;
        if keys.is_empty() {
            return Err(JwksError::new(
                "keys",
                "no key usable with the provider's algorithms",
            ));
        }
        if let Some(remote) = &mut provider.remote {
            remote.fetched = Some((keys, now));
        }
        Ok(())
    }

    pub(crate) fn remote_jwks_sources(&self) -> Vec<(&str, &RemoteJwksConfig)> {
        self.providers
            .iter()
            .filter_map(|provider| {
                Some((provider.name.as_str(), &provider.remote.as_ref()?.config))
            })
            .collect()
    }

    pub(crate) fn remote_jwks_due(&self, now: u64) -> Vec<&str> {
        self.providers
            .iter()
            .filter(|provider| {
                provider
                    .remote
                    .as_ref()
                    .is_some_and(|remote| match &remote.fetched {
                        None => true,
                        Some((_, fetched_at)) => {
                            now.saturating_sub(*fetched_at) >= remote.config.refresh_seconds
                        }
                    })
            })
            .map(|provider| provider.name.as_str())
            .collect()
    }
}

impl Provider {
    fn new(config: &JwtProviderConfig, path: &str) -> Result<Provider, ConfigIssue> {
        let algorithms = config.parsed_algorithms();
        let static_keys = match &config.jwks {
            Some(document) => KeySet::parse(document, &algorithms).map_err(|error| {
                let jwks_path = if error.path.is_empty() {
                    format!("{path}.jwks")
                } else {
                    format!("{path}.jwks.{}", error.path)
                };
                ConfigIssue::new(jwks_path, error.reason)
            })?,
            None => KeySet::default(),
        };
        if static_keys.is_empty() && config.remote_jwks.is_none() {
            return Err(ConfigIssue::new(
                format!("{path}.jwks"),
                "has no key usable with the provider's algorithms, and there is no remote_jwks",
            ));
        }
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([config.issuer.clone()])),
            allowed_audiences: Some(config.audiences.iter().cloned().collect()),
            time_tolerance: Some(Duration::from_secs(config.clock_skew_seconds)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..VerificationOptions::default()
        };
        Ok(Provider {
            name: config.name.clone(),
            issuer: config.issuer.clone(),
            algorithms,
            clock_skew_seconds: config.clock_skew_seconds,
            options,
            static_keys,
            remote: config.remote_jwks.clone().map(|config| RemoteKeys {
                config,
                fetched: None,
            }),
        })
    }

    fn verify(
        &self,
        token: &str,
        unverified: UnverifiedToken,
        now: u64,
    ) -> Result<JwtVerification, Rejection> {
        let algorithm = JwtAlgorithm::parse(&unverified.algorithm)
            .filter(|alg| self.algorithms.contains(alg))
            .ok_or(Rejection::JwtAlgNotAllowed)?;
        let remote_keys = self
            .remote
            .as_ref()
            .and_then(|remote| remote.fetched.as_ref())
            .map(|(keys, _)| keys);
        let all_keys = self
            .static_keys
            .keys()
            .iter()
            .chain(remote_keys.into_iter().flat_map(KeySet::keys));
        let candidates: Vec<&VerificationKey> = all_keys
            .filter(|key| key.algorithm() == algorithm)
            .filter(|key| unverified.kid.is_none() || key.kid == unverified.kid)
            .collect();
        if candidates.is_empty() {
            let awaiting_keys = self
                .remote
                .as_ref()
                .is_some_and(|remote| remote.fetched.is_none());
            if awaiting_keys {
                return Ok(JwtVerification::AwaitingKeys {
                    provider: self.name.clone(),
                });
            }
            return Err(if unverified.kid.is_some() {
                Rejection::JwtUnknownKid
            } else {
                Rejection::JwtNoKey
            });
        }
        let mut options = self.options.clone();
        options.artificial_time = Some(UnixTimeStamp::from_secs(now));
        for candidate in candidates {
            match candidate.key.verify(token, options.clone()) {
                Ok(verified) => {
                    return self.accept(
                        unverified.claims,
                        verified.expires_at,
                        verified.invalid_before,
                    )
                }
                Err(error) => match error.downcast_ref::<JWTError>() {
                    // Without `kid` several keys may be tried; only a signature mismatch moves on.
                    Some(JWTError::InvalidSignature) => continue,
                    Some(JWTError::TokenHasExpired) => return Err(Rejection::JwtExpired),
                    Some(JWTError::TokenNotValidYet) => return Err(Rejection::JwtNotYetValid),
                    Some(JWTError::ClockDrift) => return Err(Rejection::JwtIssuedInFuture),
                    Some(
                        JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing,
                    ) => return Err(Rejection::JwtAudience),
                    Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
                        return Err(Rejection::JwtIssuer)
                    }
                    Some(JWTError::UnknownCriticalExtension) => return Err(Rejection::JwtCritical),
                    Some(JWTError::TokenTooLong) => return Err(Rejection::JwtTooLarge),
                    // Anything else (a header member or claim jwt-simple cannot decode) is a
                    // token that cannot be verified as sent.
                    _ => return Err(Rejection::JwtMalformed),
                },
            }
        }
        Err(Rejection::JwtBadSignature)
    }

    /// Builds the verified identity once jwt-simple accepted the token.
    fn accept(
        &self,
        claims: Map<String, Value>,
        expires_at: Option<UnixTimeStamp>,
        not_before: Option<UnixTimeStamp>,
    ) -> Result<JwtVerification, Rejection> {
        let subject = match claims.get("sub") {
            Some(Value::String(subject)) if !subject.is_empty() => subject.clone(),
            _ => return Err(Rejection::JwtSubject),
        };
        let audiences = audiences(&claims);
        Ok(JwtVerification::Verified(VerifiedJwt {
            issuer: self.issuer.clone(),
            subject,
            audiences,
            expires_at: expires_at.map(|time| time.as_secs()),
            not_before: not_before.map(|time| time.as_secs()),
            clock_skew_seconds: self.clock_skew_seconds,
            provider: self.name.clone(),
            claims,
        }))
    }
}

/// `aud` as a list, whether the token carries one string or an array.
pub fn audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(audience)) => vec![audience.clone()],
        Some(Value::Array(audiences)) => audiences
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The claims of a token with every check that needs no key passed (structure, `alg: none`,
/// `typ`), its signature not verified: for `natsguard explain --no-verify`.
pub fn unverified_claims(token: &str) -> Result<Map<String, Value>, Rejection> {
    decode_unverified(token).map(|token| token.claims)
}

fn decode_json_object(part: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes =
        Base64UrlSafeNoPadding::decode_to_vec(part, None).map_err(|_| Rejection::JwtMalformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::JwtMalformed)
}

/// Decodes the header and payload and checks everything that does not need a key: structure,
/// `alg: none`, `typ`, and the types of the standard claims (so that jwt-simple only fails on
/// them for a reason natsguard names).
fn decode_unverified(token: &str) -> Result<UnverifiedToken, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::JwtTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::JwtMalformed);
    };
    let header = decode_json_object(header)?;
    // `alg: none` is named before the signature is looked at: unsigned tokens end with `.`.
    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) if alg.eq_ignore_ascii_case("none") => {
            return Err(Rejection::JwtAlgNone)
        }
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(Rejection::JwtMalformed),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if is_accepted_type(typ) => {}
        Some(_) => return Err(Rejection::JwtType),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Rejection::JwtMalformed),
    };
    let claims = decode_json_object(payload)?;
    match Base64UrlSafeNoPadding::decode_to_vec(signature, None) {
        Ok(signature) if !signature.is_empty() => {}
        _ => return Err(Rejection::JwtMalformed),
    }
    check_claim_types(&claims)?;
    Ok(UnverifiedToken {
        algorithm,
        kid,
        claims,
    })
}

/// `typ` values of ID tokens and access tokens (RFC 7519 `JWT`, RFC 9068 `at+jwt`), compared
/// case-insensitively as RFC 7515 §4.1.9 recommends.
fn is_accepted_type(typ: &str) -> bool {
    ["JWT", "at+jwt", "application/at+jwt"]
        .iter()
        .any(|accepted| typ.eq_ignore_ascii_case(accepted))
}

fn check_claim_types(claims: &Map<String, Value>) -> Result<(), Rejection> {
    if claims
        .iter()
        .all(|(name, value)| is_well_typed_claim(name, value))
    {
        Ok(())
    } else {
        Err(Rejection::JwtMalformed)
    }
}

/// RFC 7519 types of the registered claims natsguard reads (other claims may be anything).
fn is_well_typed_claim(name: &str, value: &Value) -> bool {
    match name {
        "iss" | "sub" | "jti" | "nonce" => value.is_string(),
        "aud" => match value {
            Value::String(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            _ => false,
        },
        "exp" | "nbf" | "iat" => value.as_f64().is_some_and(|time| time >= 0.0),
        _ => true,
    }
}
