//! Reload, binary upgrade and shutdown under load (`server.drain_delay`,
//! `server.upgrade_socket`, `run --upgrade`, sd_notify): every request of a constant load is
//! answered or provably never sent, and streams in flight complete.

mod load;
mod notify;
mod reload;
mod shutdown;
mod upgrade;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::client::REQUEST_TIMEOUT;
use crate::common::process::wait_exit;
use crate::common::servers::{SSE_FIRST, SSE_SECOND};
use crate::common::wait::{wait_until, DEADLINE};
use crate::common::Gateway;

/// Sends signal `sig` (`HUP`, `TERM`, `KILL`) to `pid`.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// A public route `/NAME/` to upstream NAME at `addr`.
fn route(name: &str, addr: SocketAddr) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nread_timeout = \"60s\"\n"
    )
}

/// An SSE response in flight through the gateway: the head and the first event have arrived.
struct SseClient(TcpStream, Vec<u8>);

impl SseClient {
    async fn open(addr: SocketAddr, path: &str) -> SseClient {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut got = Vec::new();
        let first = SSE_FIRST.lines().nth(1).expect("a data line");
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(first) {
                let n = s.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "stream ended early: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the first event in time");
        SseClient(s, got)
    }

    /// Reads to the end of the (chunked) body; asserts the second event and a clean end.
    async fn finish(mut self) {
        let SseClient(s, got) = &mut self;
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"0\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "stream cut before its end: {}",
                    String::from_utf8_lossy(got)
                );
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the stream's end in time");
        let second = SSE_SECOND.lines().nth(1).expect("a data line");
        assert!(String::from_utf8_lossy(got).contains(second));
    }
}

/// An open WebSocket through the gateway (route `/ws/`), checked by one echo.
struct WsClient(tokio_tungstenite::WebSocketStream<TcpStream>);

impl WsClient {
    async fn open(addr: SocketAddr) -> WsClient {
        let req = format!("ws://{addr}/ws/echo")
            .into_client_request()
            .expect("ws request");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (client, resp) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            tokio_tungstenite::client_async(req, stream),
        )
        .await
        .expect("handshake in time")
        .expect("WebSocket through the gateway");
        assert_eq!(resp.status(), 101);
        let mut ws = WsClient(client);
        ws.echo("open").await;
        ws
    }

    async fn echo(&mut self, text: &str) {
        self.0.send(Message::text(text)).await.expect("send");
        let echoed = tokio::time::timeout(REQUEST_TIMEOUT, self.0.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("a message");
        assert_eq!(echoed, Message::text(text));
    }
}

/// The WebSocket route's config.
fn ws_route(addr: SocketAddr) -> String {
    format!(
        "\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws/\"\nupstream = \"ws\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"ws\"\nendpoints = [\"{addr}\"]\n"
    )
}

/// `/readyz` answers `status` (the admin listener is still up).
async fn wait_readyz(gw: &Gateway, status: u16) {
    wait_until(&format!("/readyz == {status}"), DEADLINE, || async {
        let r = gw.admin_get("/readyz").await;
        if r.status == status {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await;
}
