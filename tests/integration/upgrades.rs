//! Upgrades only where the route allows them (`upgrades`, default `["websocket"]`): any other
//! `Upgrade` — `h2c` above all — loses its upgrade headers and is proxied as an ordinary
//! request, and the client's connection stays HTTP/1.1: what it sends next is parsed, routed
//! and authenticated as a new request, never tunnelled to a backend.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::client::REQUEST_TIMEOUT;
use crate::common::servers::{self, echoed_header, WsEcho};
use crate::common::*;

/// One HTTP/1.1 response read off a kept-alive connection (Content-Length bodies only, which
/// is what the gateway's refusals and the echo upstream send).
struct H1Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl H1Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> H1Reply {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("no status line: {head}"));
                    return H1Reply { status, head, body };
                }
            }
            let n = s.read(&mut chunk).await.expect("reading a reply");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a reply in time")
}

const H2C_UPGRADE: &str = "GET /public/up HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

#[tokio::test]
async fn h2c_upgrade_is_proxied_as_a_plain_request_and_the_connection_stays_http1() {
    let fx = Fixture::start().await;
    let mut s = TcpStream::connect(fx.gw.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(H2C_UPGRADE.as_bytes()).await.expect("write");
    let r = read_reply(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
    let echo = r.json();
    assert_eq!(echo["path"], "/public/up");
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(
            echoed_header(&echo, h).is_empty(),
            "upstream saw {h}: {echo}"
        );
    }
    let head = r.head.to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "{}", r.head);
    assert_eq!(fx.echo.count(), 1);

    // what follows on the connection is a new HTTP request: routed and authenticated (refused
    // here, so it never reaches the echo upstream), not tunnelled
    s.write_all(b"GET /ai/v2/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let r = read_reply(&mut s, &mut buf).await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(r.json()["reason"], "missing_token");
    // an HTTP/2 preface is not HTTP/1.1: the gateway refuses it rather than relaying it
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, s.read_to_end(&mut rest)).await;
    assert_eq!(
        fx.echo.count(),
        1,
        "bytes after the upgrade request reached the upstream"
    );
}

#[tokio::test]
async fn an_upstream_switching_protocols_unasked_is_a_502() {
    // an upstream that answers 101 to anything, as if it took the h2c upgrade the gateway removed
    let (addr, task) = servers::canned(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        true,
    )
    .await;
    let fx = Fixture::with(Opts {
        extra: format!(
            "\n[[routes]]\nname = \"sw\"\npath_prefix = \"/sw/\"\nupstream = \"sw\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"sw\"\nendpoints = [\"{addr}\"]\n"
        ),
        ..Opts::default()
    })
    .await;
    let r = raw_request(
        fx.gw.addr,
        H2C_UPGRADE.replace("/public/", "/sw/").as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 502, "{}", r.describe());
    assert_eq!(r.reason(), "upstream_unavailable");
    task.abort();
}

fn ws_routes(ws: SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "ws"
path_prefix = "/ws/"
upstream = "ws"
auth = "public"

[[routes]]
name = "nows"
path_prefix = "/nows/"
upstream = "ws"
auth = "public"
upgrades = []

[[routes]]
name = "nows-echo"
path_prefix = "/nows-echo/"
upstream = "echo"
auth = "public"
upgrades = []

[[upstreams]]
name = "ws"
endpoints = ["{ws}"]
"#
    )
}

#[tokio::test]
async fn websockets_tunnel_by_default_and_not_where_upgrades_is_empty() {
    let ws = WsEcho::start().await;
    let fx = Fixture::with(Opts {
        extra: ws_routes(ws.addr),
        ..Opts::default()
    })
    .await;

    // default: tunnelled
    let req = format!("ws://{}/ws/echo", fx.gw.addr)
        .into_client_request()
        .expect("ws request");
    let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
    let (mut client, resp) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket through the default route");
    assert_eq!(resp.status(), 101);
    client.send(Message::text("hi")).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(20), client.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("a message");
    assert_eq!(echoed, Message::text("hi"));

    // upgrades = []: the WebSocket backend gets a plain GET (which it cannot serve)
    *ws.last_request.lock().expect("lock") = None;
    let req = format!("ws://{}/nows/echo", fx.gw.addr)
        .into_client_request()
        .expect("ws request");
    let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("an answer in time")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_ne!(resp.status(), 101, "{resp:?}")
        }
        Err(e) => panic!("unexpected WebSocket error: {e}"),
        Ok(_) => panic!("a WebSocket was tunnelled on a route with upgrades = []"),
    }
    assert!(
        ws.last_request.lock().expect("lock").is_none(),
        "the backend saw an upgrade"
    );

    // and what the backend gets is the request without its upgrade headers
    let r = raw_request(
        fx.gw.addr,
        b"GET /nows-echo/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.describe());
    let echo = r.json();
    assert!(echoed_header(&echo, "upgrade").is_empty(), "{echo}");
    assert!(echoed_header(&echo, "connection").is_empty(), "{echo}");
}
