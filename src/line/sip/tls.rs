//! The trust anchors for SIP over TLS: the PBX's certificate must chain to the CA file the
//! configuration names (`sip.tls_ca`), else to the system's CA bundle. Verification is never
//! skipped: a file without a usable certificate stops the user agent from starting.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Where Debian keeps the system's CA bundle, used when the config names no `sip.tls_ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the SIP TLS CA file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the SIP TLS CA file {} holds no usable PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
}

/// The usable CA certificates of `ca` (the system bundle when `None`), as PEM for rsipstack.
pub fn trust_anchors(ca: Option<&Path>) -> Result<Vec<u8>, TlsError> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let read_error = |e: std::io::Error| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    let mut pem = Vec::new();
    for cert in certs {
        // A bundle may hold certificates rustls cannot use as anchors; rsipstack would refuse
        // the whole bundle for one of them, so only the usable ones are passed on.
        if RootCertStore::empty().add(cert.clone()).is_err() {
            continue;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    if pem.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// Longest wait for a diagnostic handshake.
const HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to `host:port` and shakes hands with `roots_pem` as the trust anchors; the TLS
/// error when the handshake fails (`None` when it succeeds or no connection could be made).
pub async fn handshake_failure(host: &str, port: u16, roots_pem: &[u8]) -> Option<String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &roots_pem[..]).flatten() {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        connector.connect(name, stream).await.err()
    };
    let error = tokio::time::timeout(HANDSHAKE_WAIT, attempt).await.ok()??;
    Some(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = trust_anchors(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = trust_anchors(Some(&garbage)).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert!(error.to_string().contains("no usable PEM certificate"));
    }
}
