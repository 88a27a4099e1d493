//! Signed script manifests: {script name, version, sha256, expiry, key id} as JSON, with an
//! ed25519 signature over the manifest's exact bytes. Keys are kept as hex: the secret key file
//! holds 64 hex digits, the config's `fleet.keys.<id>` the 64-hex-digit public key.

use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::Digest;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The script's name (`[script] name`).
    pub script: String,
    /// The script's version (`[script] version`), x.y.z.
    pub version: String,
    /// sha256 of the script file's exact bytes, hex.
    pub sha256: String,
    /// After this instant the manifest is refused.
    pub expires_at: DateTime<Utc>,
    /// Which fleet key signed it (`fleet.keys.<key_id>` in the box's config).
    pub key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("key file {} does not hold a 64-hex-digit ed25519 secret key", .0.display())]
    Malformed(std::path::PathBuf),
    #[error("cannot write key file {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system gave no random bytes for a key: {0}")]
    Random(String),
}

/// sha256 of a script's exact bytes, as manifests carry it.
pub fn script_sha256(body: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(body))
}

/// A new signing key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, KeyError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes the secret key as hex, readable by its owner only; refuses to overwrite a file.
pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    writeln!(file, "{}", hex::encode(key.to_bytes())).map_err(write_err)
}

pub fn read_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| KeyError::Malformed(path.to_path_buf()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// The detached signature of a manifest's exact bytes, base64 (standard alphabet).
pub fn sign(key: &SigningKey, manifest_bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(manifest_bytes).to_bytes())
}

/// Whether `signature_b64` is `key`'s signature of exactly `manifest_bytes`.
pub fn verify(key: &VerifyingKey, manifest_bytes: &[u8], signature_b64: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
        return false;
    };
    key.verify(manifest_bytes, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Compares x.y.z versions numerically; `None` when either is not of that form.
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parts(v: &str) -> Option<Vec<u64>> {
        let p: Option<Vec<u64>> = v.split('.').map(|n| n.parse().ok()).collect();
        p.filter(|p| p.len() == 3)
    }
    Some(parts(a)?.cmp(&parts(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_exact_bytes() {
        let key = generate_key().unwrap();
        let manifest = br#"{"script":"clinic","version":"1.0.1"}"#;
        let sig = sign(&key, manifest);
        assert!(verify(&key.verifying_key(), manifest, &sig));
        assert!(!verify(
            &key.verifying_key(),
            br#"{"script":"clinic","version":"1.0.2"}"#,
            &sig
        ));
        let other = generate_key().unwrap();
        assert!(!verify(&other.verifying_key(), manifest, &sig));
        assert!(!verify(&key.verifying_key(), manifest, "not base64!"));
    }

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Some(Greater));
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Some(Equal));
        assert_eq!(compare_versions("1.0", "1.0.0"), None);
    }

    #[test]
    fn secret_keys_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let key = generate_key().unwrap();
        write_secret_key(&path, &key).unwrap();
        assert_eq!(read_secret_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(
            write_secret_key(&path, &key).is_err(),
            "never overwrites a key"
        );
        std::fs::write(&path, "abc").unwrap();
        assert!(matches!(
            read_secret_key(&path),
            Err(KeyError::Malformed(_))
        ));
    }
}
