//! Credentials at rest: AES-256-GCM under a key the operator provides
//! (`COLLECT_SECRET_KEY`, 32 bytes in base64). Stored as nonce (12 bytes) then ciphertext.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 32 bytes of base64.
    #[error("the secret key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    /// The stored value was not sealed with this key, or was altered.
    #[error("stored credentials cannot be decrypted with this key")]
    Unreadable,
}

/// Seals and opens credentials. Never printed.
pub struct Sealer {
    key: SecretBox<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    /// A sealer from a base64 key.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            key: SecretBox::new(Box::new(key)),
        })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.key.expose_secret().into())
    }

    /// Encrypts `plain` with a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        out.extend(
            self.cipher()
                .encrypt(Nonce::from_slice(&nonce), plain)
                .unwrap_or_default(),
        );
        out
    }

    /// Decrypts what [`Sealer::seal`] produced.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 12 + 16 {
            return Err(CryptoError::Unreadable);
        }
        let (nonce, data) = sealed.split_at(12);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), data)
            .map_err(|_| CryptoError::Unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let key = STANDARD.encode([7u8; 32]);
        let s = Sealer::from_base64(&key).unwrap();
        let sealed = s.seal(b"refresh-token-123");
        assert!(
            !sealed.windows(7).any(|w| w == b"refresh"),
            "plaintext must not appear"
        );
        assert_eq!(s.open(&sealed).unwrap(), b"refresh-token-123");
        assert_ne!(s.seal(b"x"), s.seal(b"x"), "fresh nonce each time");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(&bad).is_err());
        let other = Sealer::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(Sealer::from_base64("short").is_err());
        assert!(!format!("{s:?}").contains('7'));
    }
}
