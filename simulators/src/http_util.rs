//! Plumbing both simulators share: serving an axum router on a socket and
//! stopping it again, cutting one connection without an answer, the RFC
//! 1123 dates the verification server speaks, and the base64 used for
//! Basic auth and for response padding.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A router being served on a bound socket until `shutdown` is called or
/// the value is dropped.
pub(crate) struct Running {
    local: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Binds `addr` and serves `router` on it in a background task.
///
/// Binding happens before this returns, so a caller that asked for port 0
/// can read the real port from `url` at once and no request is refused
/// for arriving too early.
pub(crate) async fn serve(
    router: Router,
    addr: SocketAddr,
    name: &'static str,
) -> io::Result<Running> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = SeverableListener(listener);

    // Dropping the sender also resolves the receiver, so a handle that is
    // dropped without `shutdown` still stops its server.
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        let service = router.into_make_service_with_connect_info::<Connection>();
        if let Err(error) = axum::serve(listener, service)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(simulator = name, %error, "simulator stopped serving");
        }
    });

    tracing::info!(simulator = name, %local, "simulator listening");
    Ok(Running { local, stop, task })
}

impl Running {
    /// The base URL a client on this machine should use.
    ///
    /// A server bound to the unspecified address (`0.0.0.0`, `[::]`) is
    /// reachable on loopback, and a URL naming the unspecified address
    /// would not work everywhere, so loopback is named instead.
    pub(crate) fn url(&self) -> String {
        let ip = match self.local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.local.port()))
    }

    /// Stops accepting connections and waits for the requests in flight.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// One client connection, as a handler sees it (`ConnectInfo<Connection>`):
/// a way to cut it, as a server that dies mid-request does.
#[derive(Clone, Debug, Default)]
pub(crate) struct Connection {
    severed: Arc<AtomicBool>,
}

impl Connection {
    /// Makes every later read and write on the connection fail. The
    /// answer the handler then returns is never written, so the client
    /// sees the connection close with no response at all.
    pub(crate) fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
    }

    fn is_severed(&self) -> bool {
        self.severed.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, SeverableListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, SeverableListener>) -> Self {
        stream.io().connection.clone()
    }
}

/// A TCP listener whose connections can be severed from inside a handler.
///
/// axum gives a handler no hold on its socket, and a response body that
/// fails would need traits axum does not re-export, so the cut is made
/// below hyper instead: the stream refuses to carry any more bytes, hyper
/// gives up on the connection and drops the socket.
pub(crate) struct SeverableListener(TcpListener);

impl Listener for SeverableListener {
    type Io = SeverableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        let stream = SeverableStream {
            stream,
            connection: Connection::default(),
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream that fails every read and write once its [`Connection`]
/// is severed.
pub(crate) struct SeverableStream {
    stream: TcpStream,
    connection: Connection,
}

impl SeverableStream {
    fn check(&self) -> io::Result<()> {
        if self.connection.is_severed() {
            Err(io::ErrorKind::ConnectionAborted.into())
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for SeverableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SeverableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    // Passed through so that hyper writes as it would to a plain socket,
    // and the benchmarks measure the same server.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Formats an instant the way Go's `time.RFC1123` prints a UTC time, which
/// is what the verification server puts in its headers and expiry fields:
/// `Thu, 03 Dec 2026 12:00:00 UTC`.
pub(crate) fn rfc1123(at: Timestamp) -> String {
    at.strftime("%a, %d %b %Y %H:%M:%S UTC").to_string()
}

/// Standard base64 with `=` padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        // Three bytes make 24 bits, read out as four 6-bit letters; a short
        // final chunk is filled with zero bits and marked with `=`.
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let bits = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (bits >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Random base64 of varying length, like the padding the verification
/// server adds so that answer sizes say nothing about their content.
pub(crate) fn random_padding(rng: &mut fastrand::Rng) -> String {
    let len = rng.usize(16..=64);
    let bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
    base64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "encoding {plain:?}");
        }
    }

    #[test]
    fn rfc1123_prints_utc_with_a_zone_name() {
        let at: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();

        assert_eq!(rfc1123(at), "Thu, 03 Dec 2026 12:00:00 UTC");
    }
}
