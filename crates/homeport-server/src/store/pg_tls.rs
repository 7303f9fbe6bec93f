//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring).
//!
//! | `sslmode` | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` | when the server offers it | checked as `verify-ca` when `sslrootcert` is given, else not |
//! | `require` | always | checked as `verify-ca` when `sslrootcert` is given, else not |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names `host` |
//!
//! An unchecked certificate still has to prove its key (the handshake
//! signature is verified), and SCRAM authentication is bound to it
//! (`tls-server-end-point`, SCRAM-SHA-256-PLUS) whenever the server offers
//! that, so a relay in the middle cannot reuse the login. Over a Unix
//! socket no TLS is used, as with libpq.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::{PostgresArgs, SslMode};

/// The `tokio_postgres` TLS connector for one store: cloned into every
/// pooled connection attempt.
#[derive(Clone)]
pub(super) struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

/// What the certificate is checked against.
enum Check {
    /// Only that the handshake is signed by the certificate's key.
    KeyOnly,
    /// The chain, not the name.
    Chain(RootCertStore),
    /// The chain and the name.
    Full(RootCertStore),
}

/// The tokio-postgres mode for `args`, and the connector (used only when
/// the mode asks for TLS). Reads `sslrootcert`, `sslcert` and `sslkey`;
/// the error names the file and what is wrong with it.
pub(super) fn setup(
    args: &PostgresArgs,
) -> Result<(tokio_postgres::config::SslMode, PgTls), String> {
    use tokio_postgres::config::SslMode as Pg;
    let mode = args.ssl_mode();
    let pg_mode = match mode {
        _ if args.is_socket() => Pg::Disable,
        SslMode::Disable => Pg::Disable,
        SslMode::Allow | SslMode::Prefer => Pg::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
    };
    let roots = || -> Result<RootCertStore, String> {
        // Config validation makes verify-ca/verify-full name a root; a
        // caller building PostgresArgs by hand may not have.
        let trust = match &args.sslrootcert {
            _ if args.root_is_system() => homeport_resolve::tls::TrustConfig::system(),
            Some(p) => homeport_resolve::tls::TrustConfig {
                ca_files: vec![p.clone()],
                ..Default::default()
            },
            None => {
                return Err(format!(
                    "sslmode {} needs sslrootcert (a CA file, PEM, or `system`)",
                    mode.as_str()
                ));
            }
        };
        homeport_resolve::tls::root_store(&trust).map_err(|e| format!("sslrootcert: {e}"))
    };
    // Only read files a connection will use (a socket never does TLS).
    let check = match mode {
        _ if pg_mode == Pg::Disable => Check::KeyOnly,
        SslMode::VerifyFull => Check::Full(roots()?),
        SslMode::VerifyCa => Check::Chain(roots()?),
        // As libpq: a root given makes every TLS mode check the chain.
        SslMode::Allow | SslMode::Prefer | SslMode::Require if args.sslrootcert.is_some() => {
            Check::Chain(roots()?)
        }
        _ => Check::KeyOnly,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = match check {
        Check::Full(roots) => builder.with_root_certificates(roots),
        Check::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: Some(roots),
                algs: provider.signature_verification_algorithms,
            })),
        Check::KeyOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: None,
                algs: provider.signature_verification_algorithms,
            })),
    };
    let mut config = match (&args.sslcert, &args.sslkey) {
        (Some(cert), Some(key)) if pg_mode != Pg::Disable => {
            let (chain, key) = client_identity(cert, key, &provider)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    // PostgreSQL 17 accepts ALPN "postgresql" (and requires it for direct
    // TLS); older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((
        pg_mode,
        PgTls {
            config: Arc::new(config),
        },
    ))
}

fn client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let cert_pem = crate::certs::read_capped(cert).map_err(|e| format!("sslcert: {e}"))?;
    let key_pem = crate::certs::read_capped(key).map_err(|e| format!("sslkey: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "sslkey {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.display()
        )
    })?;
    // The same consistency check serve's own certificate gets.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "sslkey {} is not the key of sslcert {}",
                key.display(),
                cert.display()
            ),
            other => format!("sslkey {}: {other}", key.display()),
        },
    )?;
    Ok((chain, key_der))
}

/// `require`/`prefer` without roots (`roots: None`), and `verify-ca`.
#[derive(Debug)]
struct Verifier {
    roots: Option<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algs.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        // tokio-postgres asks for a connector on every connection, Unix
        // sockets (domain "") and `sslmode: disable` included, and uses it
        // only when TLS is negotiated: a name that cannot be a TLS name is
        // an error only then.
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| format!("{domain:?} is not a host name or address for TLS: {e}"));
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's handshake.
pub(super) struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let name = self
                .name
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            let end_point = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| tls_server_end_point(leaf.as_ref()));
            Ok(PgTlsStream { tls, end_point })
        })
    }
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with its
/// signature's hash (the one in the parameters for RSASSA-PSS), SHA-256
/// for MD5 and SHA-1, as PostgreSQL's server computes it
/// (`X509_get_signature_info`). `None` where no hash is defined (Ed25519,
/// an unknown algorithm); SCRAM then runs without channel binding, which
/// `channel_binding: require` refuses.
fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let alg = &cert.signature_algorithm;
    let hash = match alg.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.10" => match SignatureAlgorithm::try_from(alg).ok()? {
            SignatureAlgorithm::RSASSA_PSS(p) => {
                match p.hash_algorithm_oid().to_id_string().as_str() {
                    "1.3.14.3.2.26" | "2.16.840.1.101.3.4.2.1" => Hash::Sha256,
                    "2.16.840.1.101.3.4.2.4" => Hash::Sha224,
                    "2.16.840.1.101.3.4.2.2" => Hash::Sha384,
                    "2.16.840.1.101.3.4.2.3" => Hash::Sha512,
                    _ => return None,
                }
            }
            _ => return None,
        },
        // md5WithRSA, sha1WithRSA (both OIDs), sha256WithRSA,
        // ecdsa-with-SHA1, ecdsa-with-SHA256, dsa-with-SHA1/-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.3.14.3.2.29"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => Hash::Sha256,
        // sha224WithRSA, ecdsa-with-SHA224
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" => Hash::Sha224,
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Hash::Sha384,
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Hash::Sha512,
        _ => return None,
    };
    Some(match hash {
        Hash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// A TLS connection to PostgreSQL.
pub(super) struct PgTlsStream {
    tls: tokio_rustls::client::TlsStream<Socket>,
    end_point: Option<Vec<u8>>,
}

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(h) => ChannelBinding::tls_server_end_point(h.clone()),
            None => ChannelBinding::none(),
        }
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384 = rcgen::CertificateParams::new(vec!["db.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let h = tls_server_end_point(p384.der()).unwrap();
        assert_eq!(h, sha2::Sha384::digest(p384.der().as_ref()).to_vec());

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p256 = rcgen::CertificateParams::new(vec!["db.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            tls_server_end_point(p256.der()).unwrap(),
            sha2::Sha256::digest(p256.der().as_ref()).to_vec()
        );

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed = rcgen::CertificateParams::new(vec!["db.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(tls_server_end_point(ed.der()), None);

        // RSASSA-PSS with SHA-384 in its parameters (made with
        // `openssl req -x509 -sha384 -sigopt rsa_padding_mode:pss`).
        let pem = include_str!("../../tests/data/rsa-pss-sha384.crt");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            tls_server_end_point(der.as_ref()).unwrap(),
            sha2::Sha384::digest(der.as_ref()).to_vec()
        );
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
