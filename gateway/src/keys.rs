//! API keys: high-entropy, shown once, stored as a digest, compared in constant time.
//!
//! A key reads `kpk_<key_id>_<secret>`: the key id is public (it finds the record and may appear
//! in logs), the secret is 32 random bytes in hex of which only the SHA-256 digest is stored.

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "kpk_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// A cash register: checkouts, customer registration and lookup.
    Terminal,
    /// A merchant's administrator: stores, terminals, keys, tiers, programs.
    Admin,
    /// The platform operator: creating merchants.
    Platform,
}

impl KeyScope {
    /// The value stored in `api_keys.scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Terminal => "terminal",
            KeyScope::Admin => "admin",
            KeyScope::Platform => "platform",
        }
    }

    /// The `KeyScope` enum value name of the contract (what error metadata names).
    pub fn proto_name(self) -> &'static str {
        match self {
            KeyScope::Terminal => "KEY_SCOPE_TERMINAL",
            KeyScope::Admin => "KEY_SCOPE_ADMIN",
            KeyScope::Platform => "KEY_SCOPE_PLATFORM",
        }
    }

    /// Parses the stored value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "terminal" => Some(KeyScope::Terminal),
            "admin" => Some(KeyScope::Admin),
            "platform" => Some(KeyScope::Platform),
            _ => None,
        }
    }
}

/// A freshly generated key: the plaintext goes to the caller once, the digest to the database.
pub struct GeneratedKey {
    pub key_id: String,
    pub secret_digest: Vec<u8>,
    pub plaintext: SecretString,
}

/// Generates a new key from the operating system's CSPRNG.
pub fn generate() -> GeneratedKey {
    let mut rng = rand::rng();
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = hex::encode(id);
    let secret = hex::encode(secret);
    GeneratedKey {
        secret_digest: digest(&secret),
        plaintext: SecretString::from(format!("{PREFIX}{key_id}_{secret}")),
        key_id,
    }
}

/// A key as presented by a caller, split into its parts.
pub struct PresentedKey {
    pub key_id: String,
    secret: SecretString,
}

impl PresentedKey {
    /// Splits `kpk_<key_id>_<secret>`; `None` when the shape is wrong.
    pub fn parse(presented: &str) -> Option<Self> {
        let rest = presented.strip_prefix(PREFIX)?;
        let (key_id, secret) = rest.split_once('_')?;
        let well_formed = |s: &str, bytes: usize| {
            s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !well_formed(key_id, KEY_ID_BYTES) || !well_formed(secret, SECRET_BYTES) {
            return None;
        }
        Some(Self {
            key_id: key_id.to_owned(),
            secret: SecretString::from(secret.to_owned()),
        })
    }

    /// Whether the secret matches a stored digest, in constant time.
    pub fn matches(&self, stored_digest: &[u8]) -> bool {
        digest(self.secret.expose_secret())
            .ct_eq(stored_digest)
            .into()
    }
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_and_matches_its_digest() {
        let key = generate();
        let presented = PresentedKey::parse(key.plaintext.expose_secret()).expect("well formed");
        assert_eq!(presented.key_id, key.key_id);
        assert!(presented.matches(&key.secret_digest));
    }

    #[test]
    fn another_keys_digest_does_not_match() {
        let a = generate();
        let b = generate();
        let presented = PresentedKey::parse(a.plaintext.expose_secret()).unwrap();
        assert!(!presented.matches(&b.secret_digest));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "kpk_",
            "kpk_abc_def",
            "xyz_0011223344556677_00",
            "kpk_00112233445566zz_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(PresentedKey::parse(bad).is_none(), "{bad}");
        }
    }
}
