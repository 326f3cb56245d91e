//! Tenants' secrets (a source database's URL and password, an API key), sealed at rest with the
//! platform's key: the store holds only ciphertext, and a row copied to another tenant or name does
//! not open (the tenant and the name are the cipher's associated data). Opened only by the stream
//! manager, for the tenant's own connectors that the agreement names.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::tenant::TenantId;

/// The platform's key for tenants' secrets: 32 bytes, given as 64 hex digits.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

/// A secret as the store keeps it.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// What binds a sealed value to its owner and name.
fn associated(tenant: &TenantId, name: &str) -> Vec<u8> {
    format!("mysimbdp secret v1\0{tenant}\0{name}").into_bytes()
}

impl SecretsKey {
    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| anyhow::anyhow!("the secrets key must be 64 hex digits (e.g. `openssl rand -hex 32`)"))?;
        anyhow::ensure!(bytes.len() == 32, "the secrets key is {} bytes; it must be 32 (64 hex digits)", bytes.len());
        Ok(SecretsKey(XChaCha20Poly1305::new_from_slice(&bytes).expect("32 bytes")))
    }

    pub fn seal(&self, tenant: &TenantId, name: &str, value: &[u8]) -> Sealed {
        let nonce: [u8; 24] = rand::random();
        let aad = associated(tenant, name);
        let ciphertext = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .expect("encryption of a bounded value cannot fail");
        Sealed { nonce: nonce.to_vec(), ciphertext }
    }

    /// The value, or an error if the row was not sealed with this key for this tenant and name.
    pub fn open(&self, tenant: &TenantId, name: &str, sealed: &Sealed) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.nonce.len() == 24, "secret `{name}` of tenant `{tenant}` has a damaged nonce");
        let aad = associated(tenant, name);
        self.0
            .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
            .map_err(|_| anyhow::anyhow!("secret `{name}` of tenant `{tenant}` does not open with this platform's key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_hex(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_tenant_name_and_key() {
        let (zoo, food) = (TenantId::parse("zoo").unwrap(), TenantId::parse("food").unwrap());
        let sealed = key(1).seal(&zoo, "db", b"postgres://u:p@h/d");
        assert_eq!(key(1).open(&zoo, "db", &sealed).unwrap(), b"postgres://u:p@h/d");
        assert!(!sealed.ciphertext.windows(4).any(|w| w == b"u:p@"), "the value is not stored in the clear");
        let moved = key(1).open(&food, "db", &sealed).unwrap_err().to_string();
        assert_eq!(moved, "secret `db` of tenant `food` does not open with this platform's key");
        assert!(key(1).open(&zoo, "other", &sealed).is_err());
        assert!(key(2).open(&zoo, "db", &sealed).is_err());
        let again = key(1).seal(&zoo, "db", b"postgres://u:p@h/d");
        assert_ne!(again.nonce, sealed.nonce, "each sealing takes a fresh nonce");
    }

    #[test]
    fn a_key_is_32_bytes_of_hex() {
        assert!(SecretsKey::from_hex("abcd").unwrap_err().to_string().contains("it must be 32"));
        assert!(SecretsKey::from_hex("zz").is_err());
    }
}
