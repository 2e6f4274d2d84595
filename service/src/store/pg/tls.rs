//! TLS to PostgreSQL on rustls with the ring provider (decision 0001), through tokio-rustls:
//! the server's certificate is always verified (chain and host name), against the
//! `sslrootcert=FILE` of the URL or the system's roots.
//!
//! Channel binding (SCRAM-SHA-256-PLUS) is not offered: plain SCRAM over the verified TLS
//! session.

use crate::store::{Result, StoreError};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the system's CA certificates are (Debian, Ubuntu; Fedora, RHEL).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Makes a TLS connection per database connection.
#[derive(Clone)]
pub struct Rustls(Arc<ClientConfig>);

impl Rustls {
    /// Trusts the CA certificates in `root_file` (PEM), or the system's when `None`.
    pub fn new(root_file: Option<&Path>) -> Result<Rustls> {
        let (path, pem) = match root_file {
            Some(p) => (
                p.to_path_buf(),
                std::fs::read_to_string(p).map_err(|e| {
                    StoreError::Backend(format!("cannot read sslrootcert {}: {e}", p.display()))
                })?,
            ),
            None => SYSTEM_ROOTS
                .iter()
                .find_map(|p| Some((p.into(), std::fs::read_to_string(p).ok()?)))
                .ok_or_else(|| {
                    StoreError::Backend(
                        "no system CA certificates to verify the database's certificate with: add sslrootcert=FILE (the CA's PEM) to the --database URL"
                            .into(),
                    )
                })?,
        };
        let config = hammer_certs::tls::client_config_no_auth(&pem).map_err(|e| {
            StoreError::Backend(format!(
                "the CA certificates in {} do not load: {e}",
                path.display()
            ))
        })?;
        Ok(Rustls(Arc::new(config)))
    }
}

impl<S> MakeTlsConnect<S> for Rustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One TLS handshake to `name`.
pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(Stream(tls))
        })
    }
}

/// A TLS session to the database.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
