//! Trusted-proxy signing for nats-server ≥ 2.12 (`proxies { trusted: [{ key: "<public nkey>" }] }`).
//!
//! natsguard adds `"proxy_sig"` to the CONNECT it forwards: the ed25519 signature of the INFO
//! `nonce` (its ASCII bytes) by the proxy's nkey, base64url without padding — the only encoding
//! nats-server's `proxyCheck` decodes (`base64.RawURLEncoding`).
//!
//! An nkey seed is base32 (RFC 4648, no padding) of: two prefix bytes (`S` seed marker and the
//! key type), the 32-byte ed25519 seed, and a CRC16-XMODEM checksum (little-endian). A public
//! nkey is base32 of: the key-type byte, the 32-byte public key, and the checksum.

use std::fmt;

use ed25519_compact::{KeyPair, Seed};
use jwt_simple::reexports::ct_codecs::{Base32NoPadding, Base64UrlSafeNoPadding, Decoder, Encoder};

/// Seed marker byte (`S` once base32-encoded).
const SEED_PREFIX: u8 = 18 << 3;
/// Key types nats-server accepts as trusted proxy keys (`nkeys.IsValidPublicKey`) that can sign:
/// operator `O`, server `N`, cluster `C`, account `A`, user `U`. Curve keys (`X`) are X25519 and
/// cannot produce ed25519 signatures.
const SIGNING_KEY_TYPES: [u8; 5] = [14 << 3, 13 << 3, 2 << 3, 0, 20 << 3];
const SEED_BYTES: usize = 32;
/// Two prefix bytes, the seed, two checksum bytes.
const ENCODED_SEED_BYTES: usize = 2 + SEED_BYTES + 2;

/// Why an nkey seed was refused. [`NkeyError::reason`] is stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NkeyError {
    /// Not RFC 4648 base32.
    NotBase32,
    /// Decodes to the wrong number of bytes.
    WrongLength,
    /// The CRC16 checksum does not match.
    BadChecksum,
    /// Not a seed (does not start with `S`).
    NotASeed,
    /// A key type that cannot sign or that nats-server does not accept for proxies.
    UnsupportedKeyType,
}

impl NkeyError {
    /// A stable snake_case reason.
    pub fn reason(self) -> &'static str {
        match self {
            NkeyError::NotBase32 => "nkey_not_base32",
            NkeyError::WrongLength => "nkey_wrong_length",
            NkeyError::BadChecksum => "nkey_bad_checksum",
            NkeyError::NotASeed => "nkey_not_a_seed",
            NkeyError::UnsupportedKeyType => "nkey_unsupported_key_type",
        }
    }
}

impl fmt::Display for NkeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for NkeyError {}

/// Signs nats-server nonces with a trusted proxy nkey.
pub struct ProxySigner {
    key_type: u8,
    key_pair: KeyPair,
}

impl fmt::Debug for ProxySigner {
    // Never print the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySigner")
            .field("public_key", &self.public_key())
            .finish()
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as nkeys computes it.
fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(*byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

impl ProxySigner {
    /// Decodes an nkey seed (`SN…`, `SO…`, `SA…`, `SU…` or `SC…`). Surrounding whitespace, such as
    /// the newline of a mounted secret, is ignored.
    pub fn from_seed(seed: &str) -> Result<ProxySigner, NkeyError> {
        let raw =
            Base32NoPadding::decode_to_vec(seed.trim(), None).map_err(|_| NkeyError::NotBase32)?;
        if raw.len() != ENCODED_SEED_BYTES {
            return Err(NkeyError::WrongLength);
        }
        let (body, checksum) = raw.split_at(ENCODED_SEED_BYTES - 2);
        if crc16_xmodem(body) != u16::from_le_bytes([checksum[0], checksum[1]]) {
            return Err(NkeyError::BadChecksum);
        }
        // The two prefix bytes pack 5 bits of seed marker and 8 bits of key type so that both
        // show as letters once base32-encoded.
        if body[0] & 0b1111_1000 != SEED_PREFIX {
            return Err(NkeyError::NotASeed);
        }
        let key_type = ((body[0] & 0b0000_0111) << 5) | ((body[1] & 0b1111_1000) >> 3);
        if !SIGNING_KEY_TYPES.contains(&key_type) {
            return Err(NkeyError::UnsupportedKeyType);
        }
        let seed = Seed::from_slice(&body[2..]).map_err(|_| NkeyError::WrongLength)?;
        Ok(ProxySigner {
            key_type,
            key_pair: KeyPair::from_seed(seed),
        })
    }

    /// The public nkey to list in nats-server's `proxies { trusted: [{ key: ... }] }`.
    pub fn public_key(&self) -> String {
        let mut raw = Vec::with_capacity(1 + self.key_pair.pk.len() + 2);
        raw.push(self.key_type);
        raw.extend_from_slice(self.key_pair.pk.as_ref());
        raw.extend_from_slice(&crc16_xmodem(&raw).to_le_bytes());
        // Encoding into a buffer sized by the encoder itself cannot fail.
        Base32NoPadding::encode_to_string(&raw).unwrap_or_default()
    }

    /// The `proxy_sig` for an INFO nonce: ed25519 over the nonce's bytes, base64url, no padding.
    /// Deterministic signing (no noise), so no random number generator is needed at runtime.
    pub fn sign_nonce(&self, nonce: &str) -> String {
        let signature = self.key_pair.sk.sign(nonce.as_bytes(), None);
        Base64UrlSafeNoPadding::encode_to_string(signature.as_ref()).unwrap_or_default()
    }
}
