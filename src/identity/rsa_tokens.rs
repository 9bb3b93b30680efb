//! RS256…PS512 tokens: the signature checked with the `rsa` crate, everything else the way
//! jwt-simple checks it.
//!
//! Why not jwt-simple's own RSA: its pure-Rust backend (superboring → `rsa` 0.9 →
//! `num-bigint-dig`, whose 64-bit digits wasm32 emulates, plus a DER round trip of the key per
//! token) takes about 660 µs per 2048-bit signature in V8; `rsa` 0.10 (crypto-bigint, built with
//! 32-bit limbs on wasm32 by `.cargo/config.toml`) about a third of that, and a fresh token's
//! CONNECT is mostly this signature.
//!
//! What stays jwt-simple's: which keys are accepted (its key policy runs on every JWK), the
//! header and claims decoding (its own types), and the order and errors of its checks
//! (`Token::verify` and `JWTClaims::validate` of 0.15, which are crate-private, so they are
//! followed here step by step). The tests hold both to the same answer for every row of a table
//! of well-formed, malformed, stale and forged tokens.

use std::fmt;

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use jwt_simple::JWTError;
use rsa::sha2::{Sha256, Sha384, Sha512};
use rsa::signature::Verifier;
use rsa::{pkcs1v15, pss, BoxedUint};
use serde::Deserialize;

use super::config::JwtAlgorithm;

/// jwt-simple's limit on the encoded header when the options set none.
const MAX_HEADER_LENGTH: usize = 8192;

/// A public RSA key ready to verify the signatures of one algorithm.
#[derive(Clone)]
pub(crate) enum RsaKey {
    RS256(pkcs1v15::VerifyingKey<Sha256>),
    RS384(pkcs1v15::VerifyingKey<Sha384>),
    RS512(pkcs1v15::VerifyingKey<Sha512>),
    // PSS with a salt as long as the digest, as RFC 7518 §3.5 and jwt-simple require.
    PS256(pss::VerifyingKey<Sha256>),
    PS384(pss::VerifyingKey<Sha384>),
    PS512(pss::VerifyingKey<Sha512>),
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaKey({})", self.algorithm().as_str())
    }
}

impl RsaKey {
    /// The key of modulus `n` and exponent `e` (big-endian) for `algorithm`, if jwt-simple
    /// would accept it (2048 to 4096 bits, exponent 65537).
    pub(crate) fn new(
        algorithm: JwtAlgorithm,
        n: &[u8],
        e: &[u8],
    ) -> Result<RsaKey, jwt_simple::Error> {
        match algorithm {
            JwtAlgorithm::RS256 => RS256PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::RS384 => RS384PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::RS512 => RS512PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::PS256 => PS256PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::PS384 => PS384PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::PS512 => PS512PublicKey::from_components(n, e).map(drop),
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 | JwtAlgorithm::EdDSA => {
                return Err(JWTError::InvalidPublicKey.into())
            }
        }?;
        let key = rsa::PublicKey::new(
            BoxedUint::from_be_slice_vartime(n),
            BoxedUint::from_be_slice_vartime(e),
        )
        .map_err(|error| JWTError::InternalError(error.to_string()))?;
        Ok(match algorithm {
            JwtAlgorithm::RS256 => RsaKey::RS256(pkcs1v15::VerifyingKey::new(key)),
            JwtAlgorithm::RS384 => RsaKey::RS384(pkcs1v15::VerifyingKey::new(key)),
            JwtAlgorithm::RS512 => RsaKey::RS512(pkcs1v15::VerifyingKey::new(key)),
            JwtAlgorithm::PS256 => RsaKey::PS256(pss::VerifyingKey::new(key)),
            JwtAlgorithm::PS384 => RsaKey::PS384(pss::VerifyingKey::new(key)),
            _ => RsaKey::PS512(pss::VerifyingKey::new(key)),
        })
    }

    pub(crate) fn algorithm(&self) -> JwtAlgorithm {
        match self {
            RsaKey::RS256(_) => JwtAlgorithm::RS256,
            RsaKey::RS384(_) => JwtAlgorithm::RS384,
            RsaKey::RS512(_) => JwtAlgorithm::RS512,
            RsaKey::PS256(_) => JwtAlgorithm::PS256,
            RsaKey::PS384(_) => JwtAlgorithm::PS384,
            RsaKey::PS512(_) => JwtAlgorithm::PS512,
        }
    }

    fn signature_matches(&self, signed: &[u8], signature: &[u8]) -> bool {
        fn check<S, V>(key: &V, signed: &[u8], signature: &[u8]) -> bool
        where
            S: for<'a> TryFrom<&'a [u8]>,
            V: Verifier<S>,
        {
            S::try_from(signature).is_ok_and(|signature| key.verify(signed, &signature).is_ok())
        }
        match self {
            RsaKey::RS256(key) => check::<pkcs1v15::Signature, _>(key, signed, signature),
            RsaKey::RS384(key) => check::<pkcs1v15::Signature, _>(key, signed, signature),
            RsaKey::RS512(key) => check::<pkcs1v15::Signature, _>(key, signed, signature),
            RsaKey::PS256(key) => check::<pss::Signature, _>(key, signed, signature),
            RsaKey::PS384(key) => check::<pss::Signature, _>(key, signed, signature),
            RsaKey::PS512(key) => check::<pss::Signature, _>(key, signed, signature),
        }
    }

    /// Verifies `token` as jwt-simple's `verify_token` would with this key and `options`, and
    /// gives the same claims or the same error.
    ///
    /// Only the options natsguard sets are honoured (time, skew, issuers, audiences, token
    /// length); the providers build them in one place.
    pub(crate) fn verify_token(
        &self,
        token: &str,
        options: &VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        if let Some(max_token_length) = options.max_token_length {
            if token.len() > max_token_length {
                return Err(JWTError::TokenTooLong.into());
            }
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JWTError::CompactEncodingError.into());
        };
        if header_b64.len() > MAX_HEADER_LENGTH {
            return Err(JWTError::HeaderTooLarge.into());
        }
        let header_json = Base64UrlSafeNoPadding::decode_to_vec(header_b64, None)?;
        // jwt-simple's header type, through the one door it opens to it.
        let header = Token::decode_metadata(header_b64)?;
        if header
            .critical()
            .is_some_and(|critical| !critical.is_empty())
        {
            return Err(JWTError::UnknownCriticalExtension.into());
        }
        if let Some(typ) = header.signature_type() {
            let typ = typ.to_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(JWTError::NotJWT.into());
            }
        }
        if header.algorithm() != self.algorithm().as_str() {
            return Err(JWTError::AlgorithmMismatch.into());
        }
        // A salt must decode, though RSA uses none (the metadata hides a malformed one).
        #[derive(Deserialize)]
        struct Salt {
            salt: Option<String>,
        }
        let salt: Salt = serde_json::from_slice(&header_json)?;
        if let Some(salt) = salt.salt {
            Base64UrlSafeNoPadding::decode_to_vec(salt, None)?;
        }
        let signature = Base64UrlSafeNoPadding::decode_to_vec(signature_b64, None)?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        if !self.signature_matches(signed, &signature) {
            return Err(JWTError::InvalidSignature.into());
        }
        let claims: JWTClaims<NoCustomClaims> =
            serde_json::from_slice(&Base64UrlSafeNoPadding::decode_to_vec(claims_b64, None)?)?;
        validate(&claims, options)?;
        Ok(claims)
    }
}

/// The checks of jwt-simple's `JWTClaims::validate` for the options natsguard sets, in its order.
fn validate(
    claims: &JWTClaims<NoCustomClaims>,
    options: &VerificationOptions,
) -> Result<(), JWTError> {
    debug_assert!(
        options.reject_before.is_none()
            && !options.accept_future
            && options.max_validity.is_none()
            && options.required_subject.is_none()
            && options.required_nonce.is_none()
            && options.required_key_id.is_none()
            && options.required_signature_type.is_none()
            && options.required_content_type.is_none()
            && options.max_header_length.is_none(),
        "an option the RSA path does not check"
    );
    // Without a time every token is expired, not valid forever.
    let now = options.artificial_time.unwrap_or_default();
    let tolerance = options.time_tolerance.unwrap_or_default();
    if claims
        .issued_at
        .is_some_and(|issued| issued > now + tolerance)
    {
        return Err(JWTError::ClockDrift);
    }
    if claims
        .invalid_before
        .is_some_and(|not_before| now + tolerance < not_before)
    {
        return Err(JWTError::TokenNotValidYet);
    }
    if claims
        .expires_at
        .is_some_and(|expires| now < tolerance || now - tolerance > expires)
    {
        return Err(JWTError::TokenHasExpired);
    }
    if let Some(allowed) = &options.allowed_issuers {
        match &claims.issuer {
            Some(issuer) if allowed.contains(issuer) => {}
            Some(_) => return Err(JWTError::RequiredIssuerMismatch),
            None => return Err(JWTError::RequiredIssuerMissing),
        }
    }
    if let Some(allowed) = &options.allowed_audiences {
        match &claims.audiences {
            Some(audiences) if audiences.contains(allowed) => {}
            Some(_) => return Err(JWTError::RequiredAudienceMismatch),
            None => return Err(JWTError::RequiredAudienceMissing),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The oracle is jwt-simple's own `verify_token` with the same key and options.

    use std::collections::{BTreeSet, HashSet};
    use std::sync::OnceLock;

    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const SKEW: u64 = 60;
    const ISSUER: &str = "https://idp.example";

    struct Keys {
        der: Vec<u8>,
        other: RS256KeyPair,
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| Keys {
            der: RS256KeyPair::generate(2048).unwrap().to_der().unwrap(),
            other: RS256KeyPair::generate(2048).unwrap(),
        })
    }

    fn options(max_token_length: usize) -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from([ISSUER.to_string()])),
            allowed_audiences: Some(HashSet::from(["nats".to_string()])),
            time_tolerance: Some(Duration::from_secs(SKEW)),
            max_token_length: Some(max_token_length),
            artificial_time: Some(UnixTimeStamp::from_secs(NOW)),
            ..VerificationOptions::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    /// `header.claims.signature` with an RS256 signature over exactly these bytes.
    fn rs256(header: &str, claims: &str) -> String {
        let private = rsa::PrivateKey::from_pkcs8_der(&keys().der).unwrap();
        let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = pkcs1v15::SigningKey::<Sha256>::new(private).sign(signed.as_bytes());
        format!("{signed}.{}", b64(&signature.to_bytes()))
    }

    fn claims(members: &str) -> String {
        format!(
            r#"{{"iss":"{ISSUER}","aud":"nats","sub":"alice","iat":{},"nbf":{},"exp":{}{members}}}"#,
            NOW - 10,
            NOW - 10,
            NOW + 600
        )
    }

    fn claims_without(member: &str) -> String {
        let mut value: serde_json::Value = serde_json::from_str(&claims("")).unwrap();
        value.as_object_mut().unwrap().remove(member);
        value.to_string()
    }

    fn claims_with(member: &str, raw: &str) -> String {
        let mut value: serde_json::Value = serde_json::from_str(&claims_without(member)).unwrap();
        value[member] = serde_json::from_str(raw).unwrap();
        value.to_string()
    }

    const HEADER: &str = r#"{"alg":"RS256","typ":"JWT"}"#;

    fn replace_signature(token: &str, signature: &str) -> String {
        let (signed, _) = token.rsplit_once('.').unwrap();
        format!("{signed}.{signature}")
    }

    fn signature_bytes(token: &str) -> Vec<u8> {
        Base64UrlSafeNoPadding::decode_to_vec(token.rsplit_once('.').unwrap().1, None).unwrap()
    }

    /// The outcome as a comparable word: the claims jwt-simple returns, or the jwt-simple
    /// error, or `undecodable` for the errors jwt-simple passes through from base64 or serde.
    fn outcome(result: Result<JWTClaims<NoCustomClaims>, jwt_simple::Error>) -> String {
        match result {
            Ok(claims) => format!(
                "ok iss={:?} sub={:?} aud={:?} iat={:?} nbf={:?} exp={:?}",
                claims.issuer,
                claims.subject,
                claims
                    .audiences
                    .map(|audiences| audiences.into_set().into_iter().collect::<BTreeSet<_>>()),
                claims.issued_at.map(|t| t.as_secs()),
                claims.invalid_before.map(|t| t.as_secs()),
                claims.expires_at.map(|t| t.as_secs()),
            ),
            Err(error) => match error.downcast_ref::<JWTError>() {
                Some(error) => format!("{error:?}"),
                None => "undecodable".to_string(),
            },
        }
    }

    fn oracle(
        algorithm: JwtAlgorithm,
        token: &str,
        options: &VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        let public = RS256KeyPair::from_der(&keys().der).unwrap().public_key();
        let components = public.to_components();
        let (n, e) = (&components.n, &components.e);
        let options = Some(options.clone());
        match algorithm {
            JwtAlgorithm::RS256 => {
                RS256PublicKey::from_components(n, e)?.verify_token(token, options)
            }
            JwtAlgorithm::RS384 => {
                RS384PublicKey::from_components(n, e)?.verify_token(token, options)
            }
            JwtAlgorithm::RS512 => {
                RS512PublicKey::from_components(n, e)?.verify_token(token, options)
            }
            JwtAlgorithm::PS256 => {
                PS256PublicKey::from_components(n, e)?.verify_token(token, options)
            }
            JwtAlgorithm::PS384 => {
                PS384PublicKey::from_components(n, e)?.verify_token(token, options)
            }
            _ => PS512PublicKey::from_components(n, e)?.verify_token(token, options),
        }
    }

    fn ours(algorithm: JwtAlgorithm) -> RsaKey {
        let public = RS256KeyPair::from_der(&keys().der).unwrap().public_key();
        let components = public.to_components();
        RsaKey::new(algorithm, &components.n, &components.e).unwrap()
    }

    #[test]
    fn every_token_gets_the_answer_jwt_simple_gives() {
        let valid = rs256(HEADER, &claims(""));
        let mut flipped = signature_bytes(&valid);
        flipped[100] ^= 1;
        let other_key = keys()
            .other
            .sign(JWTClaims {
                issued_at: Some(UnixTimeStamp::from_secs(NOW - 10)),
                invalid_before: Some(UnixTimeStamp::from_secs(NOW - 10)),
                expires_at: Some(UnixTimeStamp::from_secs(NOW + 600)),
                ..Claims::create(Duration::from_secs(600))
                    .with_issuer(ISSUER)
                    .with_audience("nats")
                    .with_subject("alice")
            })
            .unwrap();
        let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(7000));
        let ok = format!(
            "ok iss=Some({ISSUER:?}) sub=Some(\"alice\") aud=Some({{\"nats\"}}) iat=Some({}) nbf=Some({}) exp=Some({})",
            NOW - 10,
            NOW - 10,
            NOW + 600
        );
        let rows: Vec<(&str, String, usize, &str)> = vec![
            ("well-formed", valid.clone(), 16384, &ok),
            (
                "aud array with ours",
                rs256(HEADER, &claims_with("aud", r#"["x","nats"]"#)),
                16384,
                "ok*",
            ),
            (
                "aud array without ours",
                rs256(HEADER, &claims_with("aud", r#"["x"]"#)),
                16384,
                "RequiredAudienceMismatch",
            ),
            (
                "aud other",
                rs256(HEADER, &claims_with("aud", r#""x""#)),
                16384,
                "RequiredAudienceMismatch",
            ),
            (
                "aud missing",
                rs256(HEADER, &claims_without("aud")),
                16384,
                "RequiredAudienceMissing",
            ),
            (
                "aud a number",
                rs256(HEADER, &claims_with("aud", "7")),
                16384,
                "undecodable",
            ),
            (
                "iss other",
                rs256(HEADER, &claims_with("iss", r#""https://evil""#)),
                16384,
                "RequiredIssuerMismatch",
            ),
            (
                "iss missing",
                rs256(HEADER, &claims_without("iss")),
                16384,
                "RequiredIssuerMissing",
            ),
            (
                "sub missing",
                rs256(HEADER, &claims_without("sub")),
                16384,
                "ok*",
            ),
            (
                "exp at the skew's edge",
                rs256(HEADER, &claims_with("exp", &(NOW - SKEW).to_string())),
                16384,
                "ok*",
            ),
            (
                "exp a second past it",
                rs256(HEADER, &claims_with("exp", &(NOW - SKEW - 1).to_string())),
                16384,
                "TokenHasExpired",
            ),
            (
                "exp missing",
                rs256(HEADER, &claims_without("exp")),
                16384,
                "ok*",
            ),
            (
                "exp a float (its seconds taken)",
                rs256(HEADER, &claims_with("exp", "1700000600.5")),
                16384,
                "ok*",
            ),
            (
                "exp a string",
                rs256(HEADER, &claims_with("exp", r#""1700000600""#)),
                16384,
                "undecodable",
            ),
            (
                "exp negative",
                rs256(HEADER, &claims_with("exp", "-1")),
                16384,
                "undecodable",
            ),
            (
                "exp twice",
                rs256(HEADER, &claims(&format!(r#","exp":{}"#, NOW + 600))),
                16384,
                "undecodable",
            ),
            (
                "nbf at the skew's edge",
                rs256(HEADER, &claims_with("nbf", &(NOW + SKEW).to_string())),
                16384,
                "ok*",
            ),
            (
                "nbf a second past it",
                rs256(HEADER, &claims_with("nbf", &(NOW + SKEW + 1).to_string())),
                16384,
                "TokenNotValidYet",
            ),
            (
                "nbf huge",
                rs256(HEADER, &claims_with("nbf", "18446744073709551615")),
                16384,
                "TokenNotValidYet",
            ),
            (
                "iat at the skew's edge",
                rs256(HEADER, &claims_with("iat", &(NOW + SKEW).to_string())),
                16384,
                "ok*",
            ),
            (
                "iat a second past it",
                rs256(HEADER, &claims_with("iat", &(NOW + SKEW + 1).to_string())),
                16384,
                "ClockDrift",
            ),
            (
                "claims not JSON",
                rs256(HEADER, "{\"iss\":"),
                16384,
                "undecodable",
            ),
            ("claims an array", rs256(HEADER, "[]"), 16384, "undecodable"),
            (
                "typ at+jwt",
                rs256(r#"{"alg":"RS256","typ":"at+jwt"}"#, &claims("")),
                16384,
                &ok,
            ),
            (
                "typ JOSE",
                rs256(r#"{"alg":"RS256","typ":"JOSE"}"#, &claims("")),
                16384,
                "NotJWT",
            ),
            (
                "no typ, a kid",
                rs256(r#"{"alg":"RS256","kid":"k1"}"#, &claims("")),
                16384,
                &ok,
            ),
            (
                "crit empty",
                rs256(r#"{"alg":"RS256","crit":[]}"#, &claims("")),
                16384,
                &ok,
            ),
            (
                "crit set",
                rs256(r#"{"alg":"RS256","crit":["exp"]}"#, &claims("")),
                16384,
                "UnknownCriticalExtension",
            ),
            (
                "alg RS384",
                rs256(r#"{"alg":"RS384"}"#, &claims("")),
                16384,
                "AlgorithmMismatch",
            ),
            (
                "alg none",
                rs256(r#"{"alg":"none"}"#, &claims("")),
                16384,
                "AlgorithmMismatch",
            ),
            (
                "alg lower case",
                rs256(r#"{"alg":"rs256"}"#, &claims("")),
                16384,
                "AlgorithmMismatch",
            ),
            (
                "alg missing",
                rs256(r#"{"typ":"JWT"}"#, &claims("")),
                16384,
                "undecodable",
            ),
            (
                "alg twice",
                rs256(r#"{"alg":"RS256","alg":"RS256"}"#, &claims("")),
                16384,
                "undecodable",
            ),
            (
                "header not JSON",
                rs256("{alg", &claims("")),
                16384,
                "undecodable",
            ),
            (
                "salt well-formed",
                rs256(r#"{"alg":"RS256","salt":"AAEC"}"#, &claims("")),
                16384,
                &ok,
            ),
            (
                "salt not base64",
                rs256(r#"{"alg":"RS256","salt":"!!"}"#, &claims("")),
                16384,
                "undecodable",
            ),
            (
                "header too large",
                rs256(&long_kid, &claims("")),
                65536,
                "HeaderTooLarge",
            ),
            (
                "token too long",
                valid.clone(),
                valid.len() - 1,
                "TokenTooLong",
            ),
            (
                "signature flipped",
                replace_signature(&valid, &b64(&flipped)),
                16384,
                "InvalidSignature",
            ),
            (
                "signature a byte short",
                replace_signature(&valid, &b64(&signature_bytes(&valid)[1..])),
                16384,
                "InvalidSignature",
            ),
            (
                "signature a zero longer",
                replace_signature(
                    &valid,
                    &b64(&[&[0u8][..], &signature_bytes(&valid)].concat()),
                ),
                16384,
                "InvalidSignature",
            ),
            (
                "signature empty",
                replace_signature(&valid, ""),
                16384,
                "InvalidSignature",
            ),
            (
                "signature not base64",
                replace_signature(&valid, "!!"),
                16384,
                "undecodable",
            ),
            (
                "signature padded",
                format!("{valid}="),
                16384,
                "undecodable",
            ),
            ("another key", other_key, 16384, "InvalidSignature"),
            (
                "two parts",
                valid.rsplit_once('.').unwrap().0.to_string(),
                16384,
                "CompactEncodingError",
            ),
            (
                "four parts",
                format!("{valid}.x"),
                16384,
                "CompactEncodingError",
            ),
            (
                "claims tampered",
                {
                    let mut parts: Vec<&str> = valid.split('.').collect();
                    let forged = b64(claims_with("sub", r#""root""#).as_bytes());
                    parts[1] = &forged;
                    parts.join(".")
                },
                16384,
                "InvalidSignature",
            ),
        ];
        let key = ours(JwtAlgorithm::RS256);
        let mut accepted = 0;
        for (name, token, max_token_length, expected) in rows {
            let options = options(max_token_length);
            let theirs = outcome(oracle(JwtAlgorithm::RS256, &token, &options));
            let mine = outcome(key.verify_token(&token, &options));
            assert_eq!(
                mine, theirs,
                "{name}: natsguard's RSA path and jwt-simple differ"
            );
            let as_expected = match expected {
                "ok*" => theirs.starts_with("ok "),
                _ => theirs == expected,
            };
            assert!(
                as_expected,
                "{name}: expected {expected}, both gave {theirs}"
            );
            accepted += usize::from(theirs.starts_with("ok "));
        }
        assert!(
            accepted >= 10,
            "the table accepts too few tokens to mean much"
        );
    }

    #[test]
    fn every_rsa_algorithm_verifies_what_jwt_simple_verifies() {
        let der = &keys().der;
        let make = |valid_for: i64, audience: &str| JWTClaims {
            issued_at: Some(UnixTimeStamp::from_secs(NOW - 10)),
            invalid_before: Some(UnixTimeStamp::from_secs(NOW - 10)),
            expires_at: Some(UnixTimeStamp::from_secs(
                NOW.saturating_add_signed(valid_for),
            )),
            ..Claims::create(Duration::from_secs(600))
                .with_issuer(ISSUER)
                .with_audience(audience)
                .with_subject("alice")
        };
        let sign = |algorithm: JwtAlgorithm, claims: JWTClaims<NoCustomClaims>| {
            match algorithm {
                JwtAlgorithm::RS256 => RS256KeyPair::from_der(der).unwrap().sign(claims),
                JwtAlgorithm::RS384 => RS384KeyPair::from_der(der).unwrap().sign(claims),
                JwtAlgorithm::RS512 => RS512KeyPair::from_der(der).unwrap().sign(claims),
                JwtAlgorithm::PS256 => PS256KeyPair::from_der(der).unwrap().sign(claims),
                JwtAlgorithm::PS384 => PS384KeyPair::from_der(der).unwrap().sign(claims),
                _ => PS512KeyPair::from_der(der).unwrap().sign(claims),
            }
            .unwrap()
        };
        let algorithms = <[JwtAlgorithm; 6]>::try_from(&JwtAlgorithm::ALL[..6]).unwrap();
        let options = options(16384);
        for signed_with in algorithms {
            let valid = sign(signed_with, make(600, "nats"));
            let mut flipped = signature_bytes(&valid);
            flipped[7] ^= 0x80;
            let tokens = [
                ("valid", valid.clone(), true),
                ("expired", sign(signed_with, make(-61, "nats")), false),
                ("other audience", sign(signed_with, make(600, "x")), false),
                ("flipped", replace_signature(&valid, &b64(&flipped)), false),
            ];
            for verified_as in algorithms {
                let key = ours(verified_as);
                for (name, token, accepted) in &tokens {
                    let theirs = outcome(oracle(verified_as, token, &options));
                    let mine = outcome(key.verify_token(token, &options));
                    assert_eq!(
                        mine,
                        theirs,
                        "{name} {} token under a {} key",
                        signed_with.as_str(),
                        verified_as.as_str()
                    );
                    assert_eq!(
                        theirs.starts_with("ok "),
                        *accepted && signed_with == verified_as,
                        "{name} {} token under a {} key: {theirs}",
                        signed_with.as_str(),
                        verified_as.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn keys_jwt_simple_refuses_are_refused() {
        let public = RS256KeyPair::from_der(&keys().der).unwrap().public_key();
        let components = public.to_components();
        let (n, e) = (&components.n, &components.e);
        assert!(
            RsaKey::new(JwtAlgorithm::RS256, n, &[3]).is_err(),
            "exponent 3"
        );
        assert!(
            RsaKey::new(JwtAlgorithm::RS256, &n[..128], e).is_err(),
            "1024 bits"
        );
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(
            RsaKey::new(JwtAlgorithm::PS256, &even, e).is_err(),
            "even modulus"
        );
        assert!(
            RsaKey::new(JwtAlgorithm::ES256, n, e).is_err(),
            "not an RSA algorithm"
        );
    }
}
