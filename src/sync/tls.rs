//! The TLS client configuration for `mqtts://` brokers: rustls with the `ring` provider, the
//! configured CA (else the system's CA bundle) and, when configured, the unit's client
//! certificate and key.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttConfig;

/// Where Debian keeps the system's CA bundle, used when the config names no `mqtt.ca_file`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {} holds no PEM certificate", path.display())]
    NoCertificate {
        key: &'static str,
        path: std::path::PathBuf,
    },
    #[error("mqtt.key_file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(std::path::PathBuf),
    #[error("the client certificate and key are unusable together: {0}")]
    ClientAuth(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |source| TlsError::Read {
        key: "mqtt.key_file",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(read_err)?
        .ok_or_else(|| TlsError::NoKey(path.to_path_buf()))
}

/// Builds the rustls client configuration the MQTT connection uses.
pub fn client_config(mqtt: &MqttConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (key, ca) = match &mqtt.ca_file {
        Some(p) => ("mqtt.ca_file", p.as_path()),
        None => ("the system CA bundle", Path::new(SYSTEM_CA_BUNDLE)),
    };
    for cert in read_certs(key, ca)? {
        // A bundle may hold certificates rustls cannot use; the ones it can are enough.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let config = match (&mqtt.cert_file, &mqtt.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs("mqtt.cert_file", cert)?, read_key(key)?)
            .map_err(TlsError::ClientAuth)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
