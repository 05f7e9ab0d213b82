//! A TCP proxy that can cut every connection through it, for the fault
//! tests and `canotify chaos`: put it in front of RabbitMQ or PostgreSQL and
//! the processes behind it see the peer vanish, without disturbing anyone
//! else who shares that broker or database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    cuts: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    cut_count: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let refusing = Arc::new(AtomicBool::new(false));

        let accept = tokio::spawn({
            let cuts = cuts.clone();
            let refusing = refusing.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    tokio::spawn(forward(inbound, target, cuts.subscribe()));
                }
            }
        });
        Ok(Self {
            addr,
            cuts,
            refusing,
            cut_count: Arc::new(AtomicU64::new(0)),
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection open through the proxy now.
    pub fn cut(&self) {
        self.cut_count.fetch_add(1, Ordering::SeqCst);
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// While refusing, new connections are closed at once, as when the
    /// peer is down.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    /// How many times `cut` was called.
    pub fn cuts(&self) -> u64 {
        self.cut_count.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut cuts: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    cuts.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cuts.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn bytes_pass_through_until_the_connection_is_cut() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        proxy.cut();
        let mut rest = Vec::new();
        let after_cut = client.read_to_end(&mut rest).await;

        assert_eq!(&buf, b"ping");
        assert!(after_cut.is_err() || rest.is_empty());
        assert_eq!(proxy.cuts(), 1);
    }

    #[tokio::test]
    async fn a_refusing_proxy_closes_new_connections() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        proxy.set_refusing(true);
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

        let _ = client.write_all(b"ping").await;
        let mut buf = Vec::new();
        let read = client.read_to_end(&mut buf).await;

        assert!(read.is_err() || buf.is_empty());
    }
}
