//! Which certificate authorities outbound TLS trusts.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Trust settings: the system store (read with rustls-native-certs, with
/// the webpki roots as a fallback when the system has none), plus extra CA
/// files, or only the extra ones.
#[derive(Clone, Debug, Default)]
pub struct TrustConfig {
    /// Trust the system's roots.
    pub system_roots: bool,
    /// PEM files whose certificates are trusted too.
    pub ca_files: Vec<PathBuf>,
    /// DER certificates trusted too (for embedding callers and tests).
    pub ca_certs: Vec<CertificateDer<'static>>,
}

impl TrustConfig {
    /// The system roots only.
    pub fn system() -> Self {
        TrustConfig {
            system_roots: true,
            ..Self::default()
        }
    }

    /// Only the given certificates.
    pub fn only(certs: Vec<CertificateDer<'static>>) -> Self {
        TrustConfig {
            system_roots: false,
            ca_files: Vec::new(),
            ca_certs: certs,
        }
    }
}

/// Building the trust store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No root at all would be trusted.
    #[error("no trusted certificate authorities (system roots disabled and no CA file given)")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The root store for `cfg`.
pub fn root_store(cfg: &TrustConfig) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if cfg.system_roots {
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    for path in &cfg.ca_files {
        let p = path.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::CaFile {
                path: p.clone(),
                reason: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError::CaFile {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFile {
                path: p,
                reason: "no PEM certificate in the file".into(),
            });
        }
        for c in certs {
            roots.add(c).map_err(|e| TlsSetupError::CaFile {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    for c in &cfg.ca_certs {
        roots
            .add(c.clone())
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(roots)
}

/// A rustls client configuration (ring, TLS 1.2+, http/1.1) trusting `cfg`.
pub fn client_config(cfg: &TrustConfig) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let roots = root_store(cfg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}
