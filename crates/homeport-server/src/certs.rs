//! The served certificate: loaded from `tls_certificate_path` and
//! `tls_private_key_path`, validated (parses, key matches leaf, not
//! expired), and swapped atomically on reload so new handshakes use the new
//! certificate while open connections go on. A bad file keeps the old
//! certificate and says exactly why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest as _;

/// Certificate files larger than this are refused.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a certificate pair cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No certificate in the PEM file.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// No or an unsupported private key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The key is not the leaf certificate's.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
    },
    /// The leaf does not parse as X.509.
    #[error("{path}: the certificate does not parse: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The leaf has expired.
    #[error("{path}: the certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// The file.
        path: String,
        /// notAfter.
        not_after: u64,
    },
    /// The leaf is not valid yet.
    #[error("{path}: the certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// The file.
        path: String,
        /// notBefore.
        not_before: u64,
    },
}

/// A validated certificate with what homeport reports about it.
#[derive(Debug)]
pub struct LoadedCert {
    /// For rustls.
    pub certified: Arc<CertifiedKey>,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// notAfter (unix seconds).
    pub not_after: u64,
    /// subjectAltName DNS names and IPs.
    pub names: Vec<String>,
    /// SHA-256 of the leaf DER.
    pub leaf_sha256: [u8; 32],
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

pub(crate) fn read_capped(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read as _;
    let err = |reason: String| CertError::Read {
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(buf)
}

/// Load and validate a certificate chain and key at time `now`.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let cert_pem = read_capped(cert_path)?;
    let key_pem = read_capped(key_path)?;
    load_pem(
        &cert_pem,
        &key_pem,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
        now,
    )
}

/// Validate a PEM chain and key held in memory (ACME checks what it was
/// issued before writing anything); `cp` and `kp` name them in errors.
pub fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cp: &str,
    kp: &str,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let cp = cp.to_owned();
    let kp = kp.to_owned();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Parse {
            path: cp.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate { path: cp });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key {
        path: kp.clone(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let (not_before, not_after, names) = leaf_facts(leaf).map_err(|reason| CertError::Parse {
        path: cp.clone(),
        reason,
    })?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if not_after <= now_s {
        return Err(CertError::Expired {
            path: cp,
            not_after,
        });
    }
    if not_before > now_s {
        return Err(CertError::NotYetValid {
            path: cp,
            not_before,
        });
    }
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
            cert: cp.clone(),
            key: kp.clone(),
        },
        other => CertError::Key {
            path: kp.clone(),
            reason: other.to_string(),
        },
    })?;
    let leaf_sha256: [u8; 32] = sha2::Sha256::digest(leaf.as_ref()).into();
    Ok(LoadedCert {
        certified: Arc::new(certified),
        chain,
        not_after,
        names,
        leaf_sha256,
        loaded_at: now,
    })
}

/// notBefore, notAfter (unix seconds) and SAN names of a DER certificate.
pub fn leaf_facts(der: &CertificateDer<'_>) -> Result<(u64, u64, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let nb = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
    let na = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok((nb, na, names))
}

/// The result of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new certificate is being served.
    Swapped {
        /// Its SHA-256.
        sha256: String,
    },
    /// The files hold the certificate already served.
    Unchanged,
}

/// A certificate that can be replaced while serving.
///
/// It can also start *pending* ([`ReloadableCert::pending`]): ACME is
/// enabled and no usable certificate exists yet. A pending certificate
/// refuses ordinary TLS handshakes (the resolver has nothing to offer) until
/// the first [`swap`](ReloadableCert::swap) or successful reload; the
/// placeholder behind [`current`](ReloadableCert::current) has an empty
/// chain, so nothing publishes its fingerprint.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<LoadedCert>>,
    /// (mtime, len) of the files at the last load, for change polling.
    stamp: RwLock<Option<(SystemTime, SystemTime, u64, u64)>>,
    /// No certificate yet (ACME will bring one).
    pending: AtomicBool,
    /// Held while someone (ACME) replaces the files, so the change poller
    /// does not read a half-replaced pair.
    writing: Mutex<()>,
}

fn stamp_of(a: &Path, b: &Path) -> Option<(SystemTime, SystemTime, u64, u64)> {
    let ma = std::fs::metadata(a).ok()?;
    let mb = std::fs::metadata(b).ok()?;
    Some((ma.modified().ok()?, mb.modified().ok()?, ma.len(), mb.len()))
}

impl ReloadableCert {
    /// Load the pair now; fails when it cannot be served.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let loaded = load_pair(cert_path, key_path, SystemTime::now())?;
        Ok(Self::from_loaded(cert_path, key_path, loaded))
    }

    /// A pair served from memory (ACME, tests).
    pub fn from_loaded(cert_path: &Path, key_path: &Path, loaded: LoadedCert) -> Self {
        ReloadableCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            stamp: RwLock::new(stamp_of(cert_path, key_path)),
            pending: AtomicBool::new(false),
            writing: Mutex::new(()),
        }
    }

    /// No certificate yet: refuses ordinary handshakes until one is
    /// swapped in or the files become loadable (see the type's docs).
    pub fn pending(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let key = rcgen::KeyPair::generate().map_err(|e| CertError::Key {
            path: "(placeholder)".into(),
            reason: e.to_string(),
        })?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| CertError::Key {
                path: "(placeholder)".into(),
                reason: e.to_string(),
            })?;
        let placeholder = LoadedCert {
            certified: Arc::new(CertifiedKey::new(Vec::new(), signer)),
            chain: Vec::new(),
            not_after: 0,
            names: Vec::new(),
            leaf_sha256: [0; 32],
            loaded_at: SystemTime::now(),
        };
        let me = Self::from_loaded(cert_path, key_path, placeholder);
        me.pending.store(true, Ordering::SeqCst);
        // Files that appear later (ACME, an admin) are picked up by the poller.
        if let Ok(mut s) = me.stamp.write() {
            *s = None;
        }
        Ok(me)
    }

    /// True while there is no certificate to serve.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Hold this while replacing the files: the change poller skips its
    /// turn instead of reading a half-replaced pair.
    pub fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember the files' current stamp (after writing them and swapping
    /// in what they hold), so the poller does not reload them again.
    pub fn refresh_stamp(&self) {
        if let Ok(mut s) = self.stamp.write() {
            *s = stamp_of(&self.cert_path, &self.key_path);
        }
    }

    /// The certificate being served.
    pub fn current(&self) -> Arc<LoadedCert> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Re-read the files; on success swap, on failure keep the old one and
    /// return why.
    pub fn reload(&self) -> Result<ReloadOutcome, CertError> {
        // Wait for a writer (ACME) to finish replacing the pair.
        let _writing = self.writing();
        self.reload_unlocked()
    }

    fn reload_unlocked(&self) -> Result<ReloadOutcome, CertError> {
        let stamp = stamp_of(&self.cert_path, &self.key_path);
        let loaded = load_pair(&self.cert_path, &self.key_path, SystemTime::now())?;
        if let Ok(mut s) = self.stamp.write() {
            *s = stamp;
        }
        if loaded.leaf_sha256 == self.current().leaf_sha256 {
            return Ok(ReloadOutcome::Unchanged);
        }
        let sha = homeport_core::base64::encode(loaded.leaf_sha256);
        self.swap(loaded);
        Ok(ReloadOutcome::Swapped { sha256: sha })
    }

    /// Serve `loaded` from now on.
    pub fn swap(&self, loaded: LoadedCert) {
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(loaded),
            Err(e) => *e.into_inner() = Arc::new(loaded),
        }
        self.pending.store(false, Ordering::SeqCst);
    }

    /// True when the files changed since the last (attempted) load.
    pub fn files_changed(&self) -> bool {
        let now = stamp_of(&self.cert_path, &self.key_path);
        let last = self.stamp.read().map(|s| *s).unwrap_or(None);
        now.is_some() && now != last
    }

    /// Seconds until the served certificate expires (negative if expired).
    pub fn expires_in(&self) -> i64 {
        if self.is_pending() {
            return 0;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        i64::try_from(self.current().not_after).unwrap_or(i64::MAX)
            - i64::try_from(now).unwrap_or(0)
    }

    /// Poll the files every `every` and reload when they change; each
    /// outcome is passed to `report`.
    pub fn watch(
        self: &Arc<Self>,
        every: Duration,
        report: impl Fn(&Result<ReloadOutcome, CertError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Someone is replacing the files: look again next tick.
                let Ok(_writing) = me.writing.try_lock() else {
                    continue;
                };
                if me.files_changed() {
                    let r = me.reload_unlocked();
                    report(&r);
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.is_pending() {
            return None;
        }
        Some(self.current().certified.clone())
    }
}

/// A rustls server config (ring, TLS 1.2+, ALPN h2 and http/1.1) serving
/// whatever `resolver` currently holds.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    server_config_alpn(resolver, &[])
}

/// [`server_config`] that also accepts the ALPN protocols in `extra`, after
/// h2 and http/1.1 (so a client offering those never gets an extra one):
/// `acme-tls/1` for tls-alpn-01.
pub fn server_config_alpn(
    resolver: Arc<dyn ResolvesServerCert>,
    extra: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.alpn_protocols.extend(extra.iter().map(|p| p.to_vec()));
    Ok(Arc::new(cfg))
}
