//! TLS for `mandate serve` (rustls), and agents attested by X.509-SVID over mutual TLS.
//!
//! A client certificate is asked for, never required: agents that attest with assertions and
//! DPoP connect as before. A certificate that is presented must satisfy the SPIFFE X.509-SVID
//! rules, or the handshake fails: its chain verifies to the bundle of a configured trust domain
//! (expiry, client-auth usage, no CA leaf), it holds exactly one URI SAN, a SPIFFE ID with a
//! path, and the trust domain of that ID is the one whose bundle anchors the chain (a bundle
//! vouches only for its own domain). Handlers see the verified certificate as a
//! [`mandate_broker::ClientCert`] request extension: its SPIFFE ID and its RFC 8705 thumbprint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use base64::Engine as _;
use mandate_core::spiffe::SpiffeId;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Where the server's certificate and the trust bundles are.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain of the server, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// SPIFFE trust domains whose X.509-SVIDs attest agents: name → PEM bundle of CAs.
    pub trust_domains: Vec<(String, PathBuf)>,
}

/// Builds the rustls configuration: TLS 1.3 and 1.2, HTTP/1.1, the SPIFFE client verifier
/// when trust domains are configured.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(&s.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read `{}`: {e}", s.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no certificate", s.cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&s.key_file)
        .map_err(|e| format!("cannot read `{}`: {e}", s.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if s.trust_domains.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut union = RootCertStore::empty();
        let mut domains: HashMap<String, Vec<TrustAnchor<'static>>> = HashMap::new();
        for (name, bundle) in &s.trust_domains {
            SpiffeId::parse(&format!("spiffe://{name}/x"))
                .map_err(|e| format!("trust domain `{name}`: {e}"))?;
            let mut store = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(bundle)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read bundle `{}`: {e}", bundle.display()))?;
            for c in certs {
                union
                    .add(c.clone())
                    .and_then(|()| store.add(c))
                    .map_err(|e| format!("bundle `{}`: {e}", bundle.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "the bundle of trust domain `{name}` holds no certificate"
                ));
            }
            if domains.insert(name.clone(), store.roots).is_some() {
                return Err(format!("trust domain `{name}` is configured twice"));
            }
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(union), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(Arc::new(SvidVerifier {
            inner,
            domains,
            algs: provider.signature_verification_algorithms.all,
        }))
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the server certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The SPIFFE ID a certificate's URI SANs name: exactly one, a workload ID.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("unreadable: {e}"))?;
    let mut uris = ee.valid_uri_names();
    let uri = uris.next().ok_or("an X.509-SVID holds a URI SAN")?;
    if uris.next().is_some() {
        return Err("an X.509-SVID holds exactly one URI SAN".into());
    }
    SpiffeId::parse(uri)
}

/// RFC 8705 section 3.1: base64url (no padding) SHA-256 of the certificate's DER.
pub fn x5t_s256(leaf: &CertificateDer<'_>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(leaf.as_ref()))
}

#[derive(Debug)]
struct SvidVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    domains: HashMap<String, Vec<TrustAnchor<'static>>>,
    algs: &'static [&'static dyn SignatureVerificationAlgorithm],
}

fn refuse(msg: String) -> rustls::Error {
    tracing::info!(reason = %msg, "client certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(msg),
    ))))
}

impl ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain, times, usage and CA flag, against every configured bundle.
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| tracing::info!(error = %e, "client certificate refused"))?;
        // Then the SVID rules, and the chain again against its own trust domain's bundle only.
        let id = spiffe_id_of(end_entity).map_err(refuse)?;
        let roots = self.domains.get(id.trust_domain()).ok_or_else(|| {
            refuse(format!(
                "no trust bundle is configured for `{}`",
                id.trust_domain()
            ))
        })?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        ee.verify_for_usage(
            self.algs,
            roots,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|_| {
            refuse(format!(
                "`{}` is not issued by the bundle of its trust domain",
                id.as_str()
            ))
        })?;
        Ok(ClientCertVerified::assertion())
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

/// A TCP listener that completes TLS handshakes concurrently, each within a time limit.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, cfg: Arc<ServerConfig>) -> Self {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(cfg),
            handshakes: JoinSet::new(),
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                r = self.tcp.accept(), if self.handshakes.len() < MAX_PENDING_HANDSHAKES => match r {
                    Ok((tcp, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => Some((tls, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%addr, "TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What is known of a connection's peer.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// Its verified client certificate.
    pub cert: Option<mandate_broker::ClientCert>,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = s.io().get_ref();
        // The verifier accepted the certificate (or there is none).
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| {
                let id = spiffe_id_of(leaf).ok()?;
                Some(mandate_broker::ClientCert {
                    spiffe_id: id.as_str().to_string(),
                    x5t_s256: x5t_s256(leaf),
                })
            });
        Peer { cert }
    }
}

/// Puts the connection's verified client certificate on each request, where the handlers (and
/// the gateway's) find it.
pub(crate) async fn attach_client_cert(
    peer: Option<axum::Extension<axum::extract::ConnectInfo<Peer>>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // A certificate from anywhere but the TLS layer is never believed.
    req.extensions_mut().remove::<mandate_broker::ClientCert>();
    if let Some(cert) = peer.and_then(|axum::Extension(axum::extract::ConnectInfo(p))| p.cert) {
        req.extensions_mut().insert(cert);
    }
    next.run(req).await
}
