//! Ed25519 nkeys: natsguard's signatures, and checking them.
//!
//! Trusted-proxy signing for nats-server ≥ 2.12 (`proxies { trusted: [{ key: "<public nkey>" }] }`):
//! natsguard adds `"proxy_sig"` to the CONNECT it forwards: the ed25519 signature of the INFO
//! `nonce` (its ASCII bytes) by the proxy's nkey, base64url without padding — the only encoding
//! nats-server's `proxyCheck` decodes (`base64.RawURLEncoding`). Provenance signatures
//! (`Nats-Publisher-Sig`, docs/provenance.md) are made the same way over their canonical
//! encoding, and checked with [`PublicNkey`].
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
/// The type byte, the 32-byte public key, two checksum bytes.
const ENCODED_PUBLIC_KEY_BYTES: usize = 1 + 32 + 2;

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
    /// Not a public key (a seed, or a type byte no public nkey has).
    NotAPublicKey,
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
            NkeyError::NotAPublicKey => "nkey_not_a_public_key",
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

/// An nkey that signs: nats-server nonces as a trusted proxy, provenance headers.
pub struct NkeySigner {
    key_type: u8,
    key_pair: KeyPair,
}

impl fmt::Debug for NkeySigner {
    // Never print the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NkeySigner")
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

impl NkeySigner {
    /// Decodes an nkey seed (`SN…`, `SO…`, `SA…`, `SU…` or `SC…`). Surrounding whitespace, such as
    /// the newline of a mounted secret, is ignored.
    pub fn from_seed(seed: &str) -> Result<NkeySigner, NkeyError> {
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
        Ok(NkeySigner {
            key_type,
            key_pair: KeyPair::from_seed(seed),
        })
    }

    /// The public nkey to list in nats-server's `proxies { trusted: [{ key: ... }] }`, and the
    /// key id of provenance signatures.
    pub fn public_key(&self) -> String {
        encode_public_key(self.key_type, self.key_pair.pk.as_ref())
    }

    /// The `proxy_sig` for an INFO nonce: ed25519 over the nonce's bytes, base64url, no padding.
    /// Deterministic signing (no noise), so no random number generator is needed at runtime.
    pub fn sign_nonce(&self, nonce: &str) -> String {
        self.sign(nonce.as_bytes())
    }

    /// The ed25519 signature of `message`, base64url without padding (deterministic).
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.key_pair.sk.sign(message, None);
        Base64UrlSafeNoPadding::encode_to_string(signature.as_ref()).unwrap_or_default()
    }
}

fn encode_public_key(key_type: u8, public_key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(ENCODED_PUBLIC_KEY_BYTES);
    raw.push(key_type);
    raw.extend_from_slice(public_key);
    raw.extend_from_slice(&crc16_xmodem(&raw).to_le_bytes());
    // Encoding into a buffer sized by the encoder itself cannot fail.
    Base32NoPadding::encode_to_string(&raw).unwrap_or_default()
}

/// A public nkey (`N…`, `O…`, `A…`, `U…`, `C…`): checks the signatures of its seed.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicNkey {
    key_type: u8,
    key: ed25519_compact::PublicKey,
}

impl fmt::Debug for PublicNkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicNkey({self})")
    }
}

impl fmt::Display for PublicNkey {
    /// The encoded public nkey.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_public_key(self.key_type, self.key.as_ref()))
    }
}

impl PublicNkey {
    /// Decodes a public nkey of a type that signs. Surrounding whitespace is ignored.
    pub fn parse(encoded: &str) -> Result<PublicNkey, NkeyError> {
        let raw = Base32NoPadding::decode_to_vec(encoded.trim(), None)
            .map_err(|_| NkeyError::NotBase32)?;
        if raw.len() != ENCODED_PUBLIC_KEY_BYTES {
            return Err(NkeyError::WrongLength);
        }
        let (body, checksum) = raw.split_at(ENCODED_PUBLIC_KEY_BYTES - 2);
        if crc16_xmodem(body) != u16::from_le_bytes([checksum[0], checksum[1]]) {
            return Err(NkeyError::BadChecksum);
        }
        if !SIGNING_KEY_TYPES.contains(&body[0]) {
            return Err(NkeyError::NotAPublicKey);
        }
        let key = ed25519_compact::PublicKey::from_slice(&body[1..])
            .map_err(|_| NkeyError::WrongLength)?;
        Ok(PublicNkey {
            key_type: body[0],
            key,
        })
    }

    /// Whether `signature` (base64url, no padding, as [`NkeySigner::sign`] writes it) is this
    /// key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let Ok(raw) = Base64UrlSafeNoPadding::decode_to_vec(signature, None) else {
            return false;
        };
        let Ok(signature) = ed25519_compact::Signature::from_slice(&raw) else {
            return false;
        };
        self.key.verify(message, &signature).is_ok()
    }
}
