//! Test certificates: a CA, intermediates and leaf certificates from rcgen,
//! and rustls configurations built from them (always with the ring
//! provider, never a process default).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn rcgen_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("rcgen: {e}"))
}

fn rustls_err(e: rustls::Error) -> io::Error {
    io::Error::other(format!("rustls: {e}"))
}

fn now_plus(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_add(d)
        .unwrap_or(SystemTime::now())
}

fn now_minus(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The ring crypto provider, shared by every config this crate builds.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Options for [`TestCa::issue_with`]: validity window and subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueOpts {
    /// Start of validity. Default: now − 1 day.
    pub not_before: SystemTime,
    /// End of validity. Default: now + 30 days.
    pub not_after: SystemTime,
    /// Subject common name. Default: the first SAN (or "homeport test
    /// leaf" when there is none). With no SANs at all this makes a CN-only
    /// certificate, which a correct client rejects (no CN fallback).
    pub common_name: Option<String>,
}

impl Default for IssueOpts {
    fn default() -> Self {
        Self::valid()
    }
}

impl IssueOpts {
    /// Valid from now − 1 day to now + 30 days.
    pub fn valid() -> Self {
        Self {
            not_before: now_minus(DAY),
            not_after: now_plus(30 * DAY),
            common_name: None,
        }
    }

    /// Expired: valid from now − 30 days to now − 1 day.
    pub fn expired() -> Self {
        Self {
            not_before: now_minus(30 * DAY),
            not_after: now_minus(DAY),
            common_name: None,
        }
    }

    /// Not yet valid: valid from now + 1 day to now + 30 days.
    pub fn not_yet_valid() -> Self {
        Self {
            not_before: now_plus(DAY),
            not_after: now_plus(30 * DAY),
            common_name: None,
        }
    }

    /// Valid from `now − since` to `now + until`.
    pub fn valid_around_now(since: Duration, until: Duration) -> Self {
        Self {
            not_before: now_minus(since),
            not_after: now_plus(until),
            common_name: None,
        }
    }

    /// Sets the subject common name.
    pub fn common_name(mut self, cn: &str) -> Self {
        self.common_name = Some(cn.to_owned());
        self
    }
}

/// A certificate authority for tests (a root, or an intermediate made with
/// [`TestCa::intermediate`]).
pub struct TestCa {
    name: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// Certificates a server must send above a leaf issued by this CA: this
    /// CA's own certificate first, then its parents, excluding the root.
    /// Empty for a root.
    above: Vec<(CertificateDer<'static>, String)>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .field("intermediates_above", &self.above.len())
            .finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> io::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now_minus(DAY).into();
    params.not_after = now_plus(3650 * DAY).into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parses one SAN: an IP literal (IPv6 with or without brackets) becomes an
/// iPAddress SAN, anything else a dNSName (wildcards allowed).
fn san(s: &str) -> io::Result<SanType> {
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = s.to_owned().try_into().map_err(rcgen_err)?;
    Ok(SanType::DnsName(name))
}

fn leaf_params(sans: &[&str], opts: &IssueOpts) -> io::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<io::Result<_>>()?;
    let cn = opts
        .common_name
        .clone()
        .or_else(|| sans.first().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "homeport test leaf".to_owned());
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = opts.not_before.into();
    params.not_after = opts.not_after.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl TestCa {
    /// A new self-signed root CA with the given subject common name, valid
    /// from yesterday for ten years.
    pub fn new(common_name: &str) -> io::Result<TestCa> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let params = ca_params(common_name)?;
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        Ok(TestCa {
            name: common_name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            above: Vec::new(),
        })
    }

    /// An intermediate CA signed by this one. Leaves it issues carry the
    /// intermediate chain (up to, not including, the root) in
    /// [`TestCert::chain`]; use [`TestCert::without_intermediates`] to serve
    /// an incomplete chain.
    pub fn intermediate(&self, common_name: &str) -> io::Result<TestCa> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let params = ca_params(common_name)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        let mut above = vec![(cert.der().clone(), cert.pem())];
        above.extend(self.above.iter().cloned());
        Ok(TestCa {
            name: common_name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            above,
        })
    }

    /// The common name this CA was created with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// This CA's certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// Writes this CA's certificate to `dir/ca.crt` and returns the path
    /// (for `--ca-file` or `federation_custom_ca_list`).
    pub fn write_pem(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.cert_pem.as_bytes())?;
        Ok(path)
    }

    /// A leaf certificate for `sans`, valid now − 1 day .. now + 30 days.
    /// Each SAN that parses as an IP address (IPv6 with or without
    /// brackets) becomes an iPAddress SAN, anything else a dNSName
    /// (`*.example.org` allowed).
    pub fn issue(&self, sans: &[&str]) -> io::Result<TestCert> {
        self.issue_with(sans, IssueOpts::valid())
    }

    /// A leaf certificate for `sans` with the given validity and subject.
    pub fn issue_with(&self, sans: &[&str], opts: IssueOpts) -> io::Result<TestCert> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let params = leaf_params(sans, &opts)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        let mut chain = vec![cert.der().clone()];
        let mut chain_pem = vec![cert.pem()];
        for (der, pem) in &self.above {
            chain.push(der.clone());
            chain_pem.push(pem.clone());
        }
        Ok(TestCert {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed leaf certificate for `sans` (no CA; a validating client
/// rejects it), valid now − 1 day .. now + 30 days.
pub fn self_signed(sans: &[&str]) -> io::Result<TestCert> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let params = leaf_params(sans, &IssueOpts::valid())?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    Ok(TestCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        chain_pem: vec![cert.pem()],
        key_pem: key.serialize_pem(),
    })
}

/// A certificate chain (leaf first, then intermediates, never the root) and
/// its private key.
pub struct TestCert {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, ECDSA P-256).
    pub key: PrivateKeyDer<'static>,
    chain_pem: Vec<String>,
    key_pem: String,
}

impl Clone for TestCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl fmt::Debug for TestCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCert")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TestCert {
    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `chain` is never empty for values built by this crate; fall back to
        // an empty DER rather than panic if a caller emptied it.
        static EMPTY: CertificateDer<'static> = CertificateDer::from_slice(&[]);
        self.chain.first().unwrap_or(&EMPTY)
    }

    /// A copy of the private key.
    pub fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The chain as concatenated PEM blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain_pem.concat()
    }

    /// The private key as PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// The same leaf and key without the intermediates, for "incomplete
    /// chain" tests.
    pub fn without_intermediates(&self) -> TestCert {
        TestCert {
            chain: self.chain.iter().take(1).cloned().collect(),
            key: self.key.clone_key(),
            chain_pem: self.chain_pem.iter().take(1).cloned().collect(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// Writes `dir/<stem>.crt` (the chain) and `dir/<stem>.key` and returns
    /// both paths.
    pub fn write_pem(&self, dir: &Path, stem: &str) -> io::Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, self.chain_pem().as_bytes())?;
        std::fs::write(&key_path, self.key_pem.as_bytes())?;
        Ok((cert_path, key_path))
    }

    /// A rustls server config serving this chain, ALPN `h2` and `http/1.1`,
    /// TLS 1.2 and 1.3, no client authentication.
    pub fn server_config(&self) -> io::Result<Arc<ServerConfig>> {
        self.server_config_alpn(&[b"h2", b"http/1.1"])
    }

    /// Like [`TestCert::server_config`] with the given ALPN protocols (an
    /// empty list disables ALPN).
    pub fn server_config_alpn(&self, alpn: &[&[u8]]) -> io::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(rustls_err)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A root store trusting only `ca`.
pub fn client_roots(ca: &TestCa) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates([ca.cert_der()]);
    roots
}

/// A rustls client config trusting only `ca`, ALPN `http/1.1`.
pub fn client_config(ca: &TestCa) -> io::Result<Arc<ClientConfig>> {
    client_config_with(client_roots(ca), &[b"http/1.1"])
}

/// A rustls client config (ring provider) with the given roots and ALPN
/// protocols.
pub fn client_config_with(roots: RootCertStore, alpn: &[&[u8]]) -> io::Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
