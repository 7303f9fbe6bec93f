//! Outbound federation TLS per MSC1711: the certificate must be valid for
//! the TLS name discovery chose (never the SRV target), SNI is that name
//! (none for IP literals), TLS 1.2 or later. The escapes Synapse has —
//! `federation_verify_certificates: false` and
//! `federation_certificate_verification_whitelist` — exist here too, under
//! names that say what they do.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName as TlsServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use homeport_core::Host;

/// How outbound certificates are checked.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    /// Trusted roots: the system store, or `federation_custom_ca_list`
    /// (which replaces it, as in Synapse).
    pub roots: Arc<RootCertStore>,
    /// `federation_verify_certificates`. When false, no certificate is
    /// checked at all (SNI is still sent). Loudly unsafe.
    pub verify_certificates: bool,
    /// `federation_certificate_verification_whitelist`: TLS names matching
    /// one of these globs (`*` any run of characters, `?` one) are not
    /// checked.
    pub verification_whitelist: Vec<String>,
    /// ALPN offered: h2 and http/1.1 by default.
    pub alpn: Vec<Vec<u8>>,
}

impl TlsPolicy {
    /// Verify everything against `roots`.
    pub fn new(roots: RootCertStore) -> Self {
        TlsPolicy {
            roots: Arc::new(roots),
            verify_certificates: true,
            verification_whitelist: Vec::new(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }

    /// Whether `name` is checked under this policy.
    pub fn verifies(&self, name: &Host) -> bool {
        if !self.verify_certificates {
            return false;
        }
        let text = match name {
            Host::Dns(d) => d.as_str().to_ascii_lowercase(),
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
        };
        !self
            .verification_whitelist
            .iter()
            .any(|g| glob_match(&g.to_ascii_lowercase(), &text))
    }
}

/// `*` matches any run (including dots, as Synapse's glob_to_regex does),
/// `?` one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the verifier saw, for reports.
#[derive(Clone, Debug, Default)]
pub struct CertCapture {
    /// The chain as the server sent it, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The verification verdict against the TLS name (None: not checked).
    pub verdict: Option<Result<(), String>>,
    /// When the verdict is a failure: which kind, for reports.
    pub problem: Option<CertProblem>,
}

/// What kind of certificate failure a verdict is, for the check's findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertProblem {
    /// Not valid for the name checked.
    NotValidForName,
    /// A certificate of the chain is past its notAfter.
    Expired,
    /// A certificate of the chain is before its notBefore.
    NotValidYet,
    /// The chain does not lead to a trusted root.
    UnknownIssuer,
    /// A signature in the chain does not verify.
    BadSignature,
    /// Revoked.
    Revoked,
    /// Anything else.
    Other,
}

/// The kind of `e` (a verifier error).
pub fn cert_problem(e: &rustls::Error) -> CertProblem {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::NotValidForName,
            C::Expired | C::ExpiredContext { .. } => CertProblem::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => CertProblem::NotValidYet,
            C::UnknownIssuer => CertProblem::UnknownIssuer,
            C::BadSignature => CertProblem::BadSignature,
            C::Revoked => CertProblem::Revoked,
            _ => CertProblem::Other,
        },
        _ => CertProblem::Other,
    }
}

/// A verifier that runs WebPKI verification and records the chain and the
/// verdict; when `enforce` is false it lets the handshake go on whatever the
/// verdict (the tester uses this to inspect bad certificates).
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    enforce: bool,
    check: bool,
    seen: Arc<Mutex<CertCapture>>,
}

impl RecordingVerifier {
    /// A verifier over `roots`; `check` false skips verification entirely.
    pub fn new(
        roots: Arc<RootCertStore>,
        check: bool,
        enforce: bool,
    ) -> Result<(Self, Arc<Mutex<CertCapture>>), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let seen = Arc::new(Mutex::new(CertCapture::default()));
        Ok((
            RecordingVerifier {
                inner,
                enforce,
                check,
                seen: seen.clone(),
            },
            seen,
        ))
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &TlsServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = if self.check {
            Some(
                self.inner
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                    .map(|_| ()),
            )
        } else {
            None
        };
        if let Ok(mut s) = self.seen.lock() {
            s.chain = std::iter::once(end_entity.clone().into_owned())
                .chain(intermediates.iter().map(|c| c.clone().into_owned()))
                .collect();
            s.verdict = result
                .as_ref()
                .map(|r| r.clone().map_err(|e| describe_cert_error(&e)));
            s.problem = match &result {
                Some(Err(e)) => Some(cert_problem(e)),
                _ => None,
            };
        }
        match result {
            Some(Err(e)) if self.enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A human description of a certificate error.
pub fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName => "the certificate is not valid for this name".into(),
            C::NotValidForNameContext { expected, presented } => format!(
                "the certificate is not valid for {expected:?}; it is valid for {}",
                if presented.is_empty() { "no name (no subjectAltName)".to_owned() } else { presented.join(", ") }
            ),
            C::Expired => "the certificate has expired".into(),
            C::ExpiredContext { time, not_after } => format!(
                "the certificate expired (not after {}, now {})",
                not_after.as_secs(),
                time.as_secs()
            ),
            C::NotValidYet => "the certificate is not valid yet".into(),
            C::NotValidYetContext { time, not_before } => format!(
                "the certificate is not valid yet (not before {}, now {})",
                not_before.as_secs(),
                time.as_secs()
            ),
            C::UnknownIssuer => "the certificate is not signed by a trusted authority (unknown issuer: self-signed, a private CA, or a missing intermediate)".into(),
            C::BadSignature => "the certificate's signature is invalid".into(),
            C::Revoked => "the certificate is revoked".into(),
            other => format!("invalid certificate: {other:?}"),
        },
        other => other.to_string(),
    }
}

/// A client config for one connection to `name` under `policy`. When
/// `enforce` is false, verification is recorded but not enforced.
pub fn client_config(
    policy: &TlsPolicy,
    name: &Host,
    enforce: bool,
) -> Result<(Arc<rustls::ClientConfig>, Arc<Mutex<CertCapture>>), rustls::Error> {
    let check = policy.verifies(name);
    let (verifier, seen) = RecordingVerifier::new(policy.roots.clone(), check, enforce)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = policy.alpn.clone();
    Ok((Arc::new(cfg), seen))
}

/// The rustls name for `host`: a DNS name (sent as SNI and checked) or an
/// IP address (no SNI; checked against iPAddress SANs).
pub fn tls_server_name(host: &Host) -> Result<TlsServerName<'static>, String> {
    match host {
        Host::Ipv4(a) => Ok(TlsServerName::IpAddress(std::net::IpAddr::V4(*a).into())),
        Host::Ipv6(a) => Ok(TlsServerName::IpAddress(std::net::IpAddr::V6(*a).into())),
        Host::Dns(d) => TlsServerName::try_from(d.as_str().to_ascii_lowercase())
            .map_err(|e| format!("{d} is not a valid TLS name: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.example.org", "matrix.example.org"));
        assert!(glob_match("*.example.org", "a.b.example.org"));
        assert!(!glob_match("*.example.org", "example.org"));
        assert!(glob_match("example.?rg", "example.org"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*b", "acd"));
        assert!(glob_match("a*b*c", "aXbYc"));
    }

    #[test]
    fn whitelist_and_global_switch() {
        let mut p = TlsPolicy::new(RootCertStore::empty());
        let h = Host::Dns(homeport_core::DnsName::parse("Matrix.Example.org").unwrap());
        assert!(p.verifies(&h));
        p.verification_whitelist.push("*.EXAMPLE.org".into());
        assert!(!p.verifies(&h));
        p.verification_whitelist.clear();
        p.verify_certificates = false;
        assert!(!p.verifies(&h));
    }
}
