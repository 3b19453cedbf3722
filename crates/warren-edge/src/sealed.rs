//! The master key that seals private keys before they reach the store (AES-256-GCM, a fresh
//! random nonce per seal, the row's name as associated data so a sealed key cannot be moved
//! to another row). It comes from `WARREN_MASTER_KEY` (base64 of 32 bytes) or a file
//! (`master.key` in the data directory by default, created on first start, owner-only).
//! Every edge node sharing a database needs the same key.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

const VERSION: u8 = 1;

/// The label the cluster CA's key is sealed under.
pub const CLUSTER_CA_LABEL: &str = "cluster-ca";
/// Why the master key could not be loaded or a value opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key is not 32 bytes of base64.
    #[error("the master key must be 32 bytes, base64-encoded ({0})")]
    BadKey(String),
    /// A sealed value did not open: wrong key, or tampered.
    #[error("a sealed value could not be opened: wrong master key or damaged data")]
    Open,
}

/// The edge's master key, and the secret derived from it for `openid-connect` session
/// cookies (so cookies made by one node open on every node). `Debug` never shows either.
pub struct MasterKey(LessSafeKey, [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(********)")
    }
}

impl MasterKey {
    /// From `WARREN_MASTER_KEY` when set, else from `file`, created with a new random key
    /// (mode 0600) when missing.
    pub fn load(file: &Path) -> Result<MasterKey, SealError> {
        if let Ok(b64) = std::env::var("WARREN_MASTER_KEY") {
            return MasterKey::from_base64(b64.trim());
        }
        match std::fs::read_to_string(file) {
            Ok(text) => MasterKey::from_base64(text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new().fill(&mut key).map_err(|_| SealError::BadKey("no randomness".into()))?;
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                crate::tls::write_private(file, text.as_bytes()).map_err(|e| SealError::Io {
                    path: file.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                MasterKey::from_bytes(&key)
            }
            Err(source) => Err(SealError::Io { path: file.to_owned(), source }),
        }
    }

    /// From base64 text.
    pub fn from_base64(b64: &str) -> Result<MasterKey, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| SealError::BadKey(e.to_string()))?;
        MasterKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<MasterKey, SealError> {
        if bytes.len() != 32 {
            return Err(SealError::BadKey(format!("{} bytes", bytes.len())));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKey("rejected".into()))?;
        // A separate key, so a cookie can never be opened as a sealed row or the reverse.
        let prk =
            aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"warren master key").extract(bytes);
        let mut cookie = [0u8; 32];
        prk.expand(&[b"session cookies"], CookieLen)
            .and_then(|okm| okm.fill(&mut cookie))
            .map_err(|_| SealError::BadKey("key derivation failed".into()))?;
        Ok(MasterKey(LessSafeKey::new(key), cookie))
    }

    /// The secret `openid-connect` seals its cookies under.
    pub(crate) fn cookie_secret(&self) -> warren_policy::oidc::CookieSecret {
        warren_policy::oidc::CookieSecret(self.1)
    }

    /// Seals `plaintext` for the row named `label`: version, nonce, ciphertext and tag.
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("system randomness");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM seals any length we store");
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`MasterKey::seal`] made for `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SealError::Open);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| SealError::Open)?;
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(label.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

/// HKDF output length for the cookie secret.
struct CookieLen;

impl aws_lc_rs::hkdf::KeyType for CookieLen {
    fn len(&self) -> usize {
        32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_label() {
        let dir = tempfile_dir();
        let file = dir.join("master.key");
        let key = MasterKey::load(&file).unwrap();
        let again = MasterKey::load(&file).unwrap();
        let sealed = key.seal("shop.example.com", b"-----BEGIN PRIVATE KEY-----secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plaintext in the sealed bytes");
        assert_eq!(again.open("shop.example.com", &sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----secret");
        assert!(key.open("other.example.com", &sealed).is_err(), "bound to its row");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("shop.example.com", &tampered).is_err());
        let other =
            MasterKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        assert!(other.open("shop.example.com", &sealed).is_err());
        assert_eq!(format!("{key:?}"), "MasterKey(********)");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("warren-seal-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
