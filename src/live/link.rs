//! One MQTT connection to the broker, below ingest and egress: TCP with TCP_NODELAY, TLS when
//! configured, CONNECT and CONNACK on rumqttc's codec. Ingest and the publisher then each run
//! their own loop over the stream, so that a read or a write serves every packet buffered.
//!
//! The helper connections (`record`, the demo simulator) keep rumqttc's event loop: see
//! [`crate::clients`].

use crate::message::MAX_OUTGOING_PACKET;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login, Packet};
use rumqttc::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::settings::MqttConn;

/// A connected byte stream: TCP or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The TLS settings of `conn`, read once from the configured files (None: plain TCP).
pub fn tls_connector(conn: &MqttConn) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some(tls) = &conn.tls else {
        return Ok(None);
    };
    let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read certificates from {}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&tls.ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", tls.ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match &tls.client {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs(cert)?, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// A connection the broker accepted.
pub struct Connected {
    /// The stream, after CONNACK.
    pub stream: Box<dyn Stream>,
    /// The broker kept the session of the last connection (persistent sessions only).
    pub session_present: bool,
}

/// Connects as `{client_id}-{suffix}` and waits for the broker's CONNACK (10 s at most for each
/// step).
pub async fn connect(
    conn: &MqttConn,
    suffix: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Connected, String> {
    let timeout = Duration::from_secs(10);
    let addr = (conn.host.as_str(), conn.port);
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("cannot connect to {}:{}: {e}", conn.host, conn.port))?;
    // Acknowledgements and commands are small packets: Nagle's algorithm with delayed ACKs
    // would hold them for up to 40 ms.
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Stream> = match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(conn.host.clone())
                .map_err(|e| format!("`{}` is not a TLS server name: {e}", conn.host))?;
            Box::new(
                tokio::time::timeout(timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS: {e}"))?,
            )
        }
        None => Box::new(tcp),
    };
    let mut c = Connect::new(format!("{}-{suffix}", conn.client_id));
    c.keep_alive = conn.keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16;
    c.clean_session = !conn.persistent_session;
    if let Some(u) = &conn.username {
        c.login = Some(Login::new(
            u.clone(),
            conn.password.clone().unwrap_or_default(),
        ));
    }
    let mut buf = BytesMut::new();
    Packet::Connect(c)
        .write(&mut buf, MAX_OUTGOING_PACKET)
        .map_err(|e| format!("cannot encode CONNECT: {e:?}"))?;
    stream
        .write_all(&buf)
        .await
        .map_err(|e| format!("write: {e}"))?;
    // Read the CONNACK alone: whatever the broker sends after it belongs to the session.
    let mut ack = [0u8; 4];
    tokio::time::timeout(timeout, stream.read_exact(&mut ack))
        .await
        .map_err(|_| "no CONNACK within 10 s".to_string())?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the broker closed the connection".to_string(),
            _ => format!("read: {e}"),
        })?;
    let mut rbuf = BytesMut::from(&ack[..]);
    let ack = match Packet::read(&mut rbuf, 16) {
        Ok(Packet::ConnAck(a)) => a,
        Ok(other) => return Err(format!("expected CONNACK, got {other:?}")),
        Err(CodecError::InsufficientBytes(_)) => return Err("a short CONNACK".into()),
        Err(e) => return Err(format!("bad CONNACK: {e:?}")),
    };
    if ack.code != ConnectReturnCode::Success {
        return Err(format!("the broker refused the connection: {:?}", ack.code));
    }
    Ok(Connected {
        stream,
        session_present: ack.session_present,
    })
}

/// Writes what `out` holds and empties it. A broker that stops reading for twice the
/// keep-alive is taken as gone.
pub async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    keep_alive: Duration,
) -> Result<(), String> {
    tokio::time::timeout(keep_alive * 2, wr.write_all(out))
        .await
        .map_err(|_| "the broker stopped reading".to_string())?
        .map_err(|e| format!("write: {e}"))?;
    out.clear();
    Ok(())
}

/// Ends a connection cleanly: DISCONNECT, then the stream's shutdown (best effort: the
/// connection is being left either way).
pub async fn disconnect<W: AsyncWrite + Unpin>(wr: &mut W) {
    let mut b = BytesMut::new();
    let _ = Packet::Disconnect.write(&mut b, 16);
    let _ = wr.write_all(&b).await;
    let _ = wr.shutdown().await;
}
