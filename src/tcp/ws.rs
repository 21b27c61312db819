//! A byte stream over a WebSocket (TCP over WebSocket), used on both ends: the gateway's side
//! of a `connect` route and the `cc-gateway connect` client.
//!
//! Bytes travel as binary messages. WebSocket has no half-close, so one is added by
//! convention: an *empty* binary message means "the sender has finished writing" (a TCP FIN),
//! and the other direction may go on — `psql`'s `COPY … FROM STDIN` and any protocol that
//! shuts down its write half keep working end to end. A close frame ends both directions.
//! Text messages have no place on a byte stream and are an error.
//!
//! [`WsStream`] makes the WebSocket an `AsyncRead + AsyncWrite`, so the L4 routes' bounded copy
//! ([`super::copy::splice`]) carries it unchanged: back pressure (a send waits until the
//! previous one is written to the socket), half-close, byte counts and the idle timeout.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream, StreamExt};
use http::{HeaderMap, Method, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The largest message either end sends: one copy buffer's worth.
const MAX_CHUNK: usize = 64 * 1024;
/// The largest message or frame accepted: bounds what one peer can make the other buffer
/// (tungstenite's default is 64 MiB).
const MAX_MESSAGE: usize = 1024 * 1024;
/// How long a closing handshake may take before the connection is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits for both ends: small messages, a write buffer that is flushed rather than grown.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(MAX_CHUNK)
        .max_write_buffer_size(4 * MAX_MESSAGE)
}

/// Why a request cannot become a WebSocket (the refusal's message).
pub type NotWebSocket = &'static str;

/// Checks that a request is a WebSocket opening handshake (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value for its key.
pub fn accept_key(
    method: &Method,
    version: Version,
    h: &HeaderMap,
) -> Result<String, NotWebSocket> {
    use base64::Engine as _;
    let has_token = |name: http::header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version != Version::HTTP_11 {
        return Err("a connect route takes a WebSocket upgrade over HTTP/1.1");
    }
    if method != Method::GET {
        return Err("a WebSocket upgrade is a GET request");
    }
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        return Err("this route carries a byte stream over a WebSocket: send Upgrade: websocket");
    }
    if h.get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = h
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or("Sec-WebSocket-Key is missing")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| "Sec-WebSocket-Key is not base64")?;
    if decoded.len() != 16 {
        return Err("Sec-WebSocket-Key must encode 16 bytes");
    }
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The server end of a connection switching to WebSocket (our `101`), as a byte stream once
/// the switch is complete.
pub async fn server(
    upgrade: hyper::upgrade::OnUpgrade,
) -> Result<WsStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>, hyper::Error> {
    let io = hyper_util::rt::TokioIo::new(upgrade.await?);
    let socket = WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(config()),
    )
    .await;
    Ok(WsStream::new(socket))
}

/// A WebSocket as a byte stream (see the module docs for the framing).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// the unread rest of the last message
    pending: Bytes,
    /// the peer finished writing (an empty message, a close frame, or the connection ended)
    read_done: bool,
    /// we sent our end-of-stream message
    write_done: bool,
    /// the peer sent a close frame: nothing more can be written
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            read_done: false,
            write_done: false,
            closed: false,
        }
    }

    /// Ends the WebSocket with a closing handshake, bounded: the peer may be gone.
    pub async fn close(mut self) {
        let handshake = async {
            if !self.closed {
                let _ = self.ws.close(None).await;
            }
            // read until the peer's close frame (or the end), so the connection ends cleanly
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) if b.is_empty() => this.read_done = true,
                Some(Ok(Message::Binary(b))) => this.pending = b,
                // answered by tungstenite itself (pongs go out with the next write or flush)
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message on a byte stream",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => {
                    this.read_done = true;
                    this.closed = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_done || this.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket's write side is closed",
            )));
        }
        if data.is_empty() {
            // an empty message would mean end-of-stream
            return Poll::Ready(Ok(0));
        }
        // waits until the previous message has left for the socket: back pressure, never a
        // growing buffer
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
        let n = data.len().min(MAX_CHUNK);
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(io_error)
    }

    /// Half-close: the empty end-of-stream message; reading goes on.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if !this.write_done {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            Pin::new(&mut this.ws)
                .start_send(Message::Binary(Bytes::new()))
                .map_err(io_error)?;
            this.write_done = true;
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn handshake(version: &str, key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            http::header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_str(version).expect("value"),
        );
        h.insert(
            http::header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(key).expect("value"),
        );
        h
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // the example of RFC 6455 §1.3
        let h = handshake("13", "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(
            accept_key(&Method::GET, Version::HTTP_11, &h).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    #[test]
    fn what_is_not_a_websocket_handshake_is_refused() {
        let good = handshake("13", "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(accept_key(&Method::POST, Version::HTTP_11, &good).is_err());
        assert!(accept_key(&Method::GET, Version::HTTP_2, &good).is_err());
        assert!(accept_key(&Method::GET, Version::HTTP_10, &good).is_err());
        let mut no_upgrade = good.clone();
        no_upgrade.remove(http::header::UPGRADE);
        assert!(accept_key(&Method::GET, Version::HTTP_11, &no_upgrade).is_err());
        let mut h2c = good.clone();
        h2c.insert(http::header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(accept_key(&Method::GET, Version::HTTP_11, &h2c).is_err());
        for (v, k) in [
            ("8", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("13", "not base64!"),
            ("13", "c2hvcnQ="),
        ] {
            assert!(
                accept_key(&Method::GET, Version::HTTP_11, &handshake(v, k)).is_err(),
                "{v} {k}"
            );
        }
    }

    /// A connected pair of byte streams over a real WebSocket on an in-memory duplex.
    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WsStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        (WsStream::new(client), WsStream::new(server))
    }

    #[tokio::test]
    async fn bytes_cross_in_order_and_half_close_keeps_the_other_way_open() {
        let (mut c, mut s) = pair().await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&send).await.expect("write");
            c.shutdown().await.expect("half-close");
            // the other direction still flows after our FIN
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read to the FIN");
        assert_eq!(got, data);
        s.write_all(b"after the client's FIN").await.expect("write");
        s.shutdown().await.expect("half-close");
        assert_eq!(
            writer.await.expect("task"),
            b"after the client's FIN".to_vec()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any sequence of writes (empty ones included: they must not read as end-of-stream),
        /// then a half-close, arrives as exactly the concatenation, in order, then EOF.
        #[test]
        fn any_writes_arrive_whole_and_in_order(
            writes in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100_000), 0..12)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let (got, want) = rt.block_on(async move {
                let (mut c, mut s) = pair().await;
                let want: Vec<u8> = writes.concat();
                let writer = tokio::spawn(async move {
                    for w in &writes {
                        c.write_all(w).await.expect("write");
                    }
                    c.shutdown().await.expect("half-close");
                    c
                });
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.expect("read");
                drop(writer.await.expect("writer"));
                (got, want)
            });
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn a_text_message_is_an_error_and_a_close_an_end() {
        let (a, b) = tokio::io::duplex(1024);
        let mut raw = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut s = WsStream::new(WebSocketStream::from_raw_socket(b, Role::Server, None).await);
        futures_util::SinkExt::send(&mut raw, Message::text("hello"))
            .await
            .expect("send");
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).await.expect_err("text refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        futures_util::SinkExt::send(&mut raw, Message::Close(None))
            .await
            .expect("close");
        assert_eq!(s.read(&mut buf).await.expect("eof"), 0);
        assert!(
            s.write(b"x").await.is_err(),
            "nothing is written after a close"
        );
    }
}
