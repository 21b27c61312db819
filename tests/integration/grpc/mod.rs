//! gRPC through the gateway to an HTTP/2 (h2c) upstream: a real tonic client (h2c to the
//! gateway here, TLS h2 in `tls.rs`) and a real tonic server (hand-written prost messages, no
//! protoc), all four call kinds, with request/response metadata (ASCII and binary),
//! `te: trailers` reaching the server, and trailers (`grpc-status`, `grpc-message`, custom
//! metadata) after streamed data. The server and the checks of each call kind are shared with
//! `tls.rs` and with the long-silence test in `streams.rs`.

pub(crate) mod ping_policy;
mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tokio::sync::Notify;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::common::*;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Msg {
    #[prost(string, tag = "1")]
    pub(crate) text: String,
}

pub(crate) fn msg(t: &str) -> Msg {
    Msg { text: t.into() }
}

pub(crate) type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
pub(crate) type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// Response metadata every handler sets: what the server saw of the request's `te` and
/// `x-req-bin` (binary) metadata.
fn echo_metadata(req: &MetadataMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    let te = req
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    md.insert(
        "x-saw-te",
        te.parse().unwrap_or(MetadataValue::from_static("bad")),
    );
    if let Some(b) = req.get_bin("x-req-bin") {
        md.insert_bin("x-echo-bin", b.clone());
    }
    md
}

/// The final status of the streaming calls: an error with a message that needs
/// percent-encoding and custom metadata, so all of it must travel as real trailers.
fn final_status() -> Status {
    let mut md = MetadataMap::new();
    md.insert("x-trailer", MetadataValue::from_static("custom"));
    md.insert_bin("x-trailer-bin", MetadataValue::from_bytes(&[0, 1, 2, 255]));
    Status::with_metadata(Code::Aborted, "done: é 100%", md)
}

struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFut<Result<Response<Msg>, Status>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let md = echo_metadata(req.metadata());
            let text = req.into_inner().text;
            if text == "fail" {
                let mut md = MetadataMap::new();
                md.insert("x-why", MetadataValue::from_static("asked"));
                return Err(Status::with_metadata(
                    Code::InvalidArgument,
                    "you asked",
                    md,
                ));
            }
            let mut r = Response::new(msg(&format!("unary:{text}")));
            *r.metadata_mut() = md;
            Ok(r)
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let md = echo_metadata(req.metadata());
            let text = req.into_inner().text;
            let items: Vec<Result<Msg, Status>> = vec![
                Ok(msg(&format!("{text}-1"))),
                Ok(msg(&format!("{text}-2"))),
                Ok(msg(&format!("{text}-3"))),
                Err(final_status()),
            ];
            let mut r = Response::new(Box::pin(tokio_stream::iter(items)) as MsgStream);
            *r.metadata_mut() = md;
            Ok(r)
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFut<Result<Response<Msg>, Status>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let md = echo_metadata(req.metadata());
            let mut s = req.into_inner();
            let mut all = Vec::new();
            while let Some(m) = s.message().await? {
                all.push(m.text);
            }
            let mut r = Response::new(msg(&all.join(",")));
            *r.metadata_mut() = md;
            Ok(r)
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let md = echo_metadata(req.metadata());
            let s = req.into_inner();
            // echo each message as it comes, then end with the final status
            let out = s
                .map(|m| m.map(|m| msg(&format!("echo:{}", m.text))))
                .chain(tokio_stream::once(Err(final_status())));
            let mut r = Response::new(Box::pin(out) as MsgStream);
            *r.metadata_mut() = md;
            Ok(r)
        })
    }
}

/// A server stream that sends `<text>-1`, then nothing until the test's `proceed` fires, then
/// `<text>-2` and OK: a stream that stays silent as long as the test wants.
struct Held(Arc<Notify>);
impl tonic::server::ServerStreamingService<Msg> for Held {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let proceed = self.0.clone();
        Box::pin(async move {
            let text = req.into_inner().text;
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(msg(&format!("{text}-1")))).await;
                proceed.notified().await;
                let _ = tx.send(Ok(msg(&format!("{text}-2")))).await;
            });
            Ok(Response::new(
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as MsgStream,
            ))
        })
    }
}

/// The hand-written service: what tonic's codegen would produce for
/// `service Echo { rpc Unary; rpc ServerStream; rpc ClientStream; rpc Bidi; rpc Held }`.
#[derive(Clone)]
struct EchoService {
    proceed: Arc<Notify>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFut<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let proceed = self.proceed.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            let resp = match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, req).await,
                "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, req).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                "/test.Echo/Held" => grpc.server_streaming(Held(proceed), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

pub(crate) struct GrpcUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<AtomicUsize>,
    /// releases the second message of every open `Held` call
    pub(crate) proceed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn start_upstream() -> GrpcUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let proceed = Arc::new(Notify::new());
    let service = EchoService {
        proceed: proceed.clone(),
    };
    let n = connections.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |c| {
        n.fetch_add(1, Ordering::SeqCst);
        c
    });
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(service, incoming)
            .await;
    });
    GrpcUpstream {
        addr,
        connections,
        proceed,
        task,
    }
}

/// The gRPC route and its h2c upstream at `up` (`/test.Echo/`, public), as config text.
pub(crate) fn grpc_route(up: SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "grpc"
path_prefix = "/test.Echo/"
upstream = "grpc"
auth = "public"

[[upstreams]]
name = "grpc"
endpoints = ["{up}"]
protocol = "h2c"
"#
    )
}

async fn gateway(up: SocketAddr) -> Fixture {
    Fixture::with(Opts {
        extra: grpc_route(up),
        ..Opts::default()
    })
    .await
}

pub(crate) type Client = tonic::client::Grpc<tonic::transport::Channel>;

/// A tonic client speaking h2c (prior knowledge) to the plaintext listener at `addr`.
pub(crate) async fn h2c_client(addr: SocketAddr) -> Client {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("URI")
        .connect()
        .await
        .expect("h2c to the gateway");
    tonic::client::Grpc::new(ch)
}

async fn client(fx: &Fixture) -> Client {
    h2c_client(fx.gw.addr).await
}

pub(crate) fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

fn with_bin<T>(mut r: Request<T>) -> Request<T> {
    r.metadata_mut().insert_bin(
        "x-req-bin",
        MetadataValue::from_bytes(&[0xde, 0xad, 0, 0xff]),
    );
    r
}

fn assert_echoed_metadata(md: &MetadataMap) {
    assert_eq!(
        md.get("x-saw-te").and_then(|v| v.to_str().ok()),
        Some("trailers")
    );
    assert_eq!(
        md.get_bin("x-echo-bin")
            .and_then(|v| v.to_bytes().ok())
            .as_deref(),
        Some(&[0xde, 0xad, 0, 0xff][..])
    );
}

fn assert_final_status(s: &Status) {
    assert_eq!(s.code(), Code::Aborted, "{s:?}");
    assert_eq!(s.message(), "done: é 100%");
    assert_eq!(
        s.metadata().get("x-trailer").and_then(|v| v.to_str().ok()),
        Some("custom")
    );
    assert_eq!(
        s.metadata()
            .get_bin("x-trailer-bin")
            .and_then(|v| v.to_bytes().ok())
            .as_deref(),
        Some(&[0, 1, 2, 255][..])
    );
}

/// A unary call with binary metadata, then one the server fails with its own status and
/// trailing metadata.
async fn check_unary(g: &mut Client) {
    g.ready().await.unwrap();
    let r = g
        .unary(
            with_bin(Request::new(msg("hi"))),
            PathAndQuery::from_static("/test.Echo/Unary"),
            codec(),
        )
        .await
        .expect("unary call");
    assert_echoed_metadata(r.metadata());
    assert_eq!(r.into_inner().text, "unary:hi");

    g.ready().await.unwrap();
    let e = g
        .unary(
            Request::new(msg("fail")),
            PathAndQuery::from_static("/test.Echo/Unary"),
            codec(),
        )
        .await
        .expect_err("the server's error status");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "you asked");
    assert_eq!(
        e.metadata().get("x-why").and_then(|v| v.to_str().ok()),
        Some("asked")
    );
}

/// Three messages, then the final status and trailing metadata as trailers.
async fn check_server_streaming(g: &mut Client) {
    g.ready().await.unwrap();
    let r = g
        .server_streaming(
            with_bin(Request::new(msg("s"))),
            PathAndQuery::from_static("/test.Echo/ServerStream"),
            codec(),
        )
        .await
        .expect("server streaming call");
    assert_echoed_metadata(r.metadata());
    let mut s = r.into_inner();
    let mut got = Vec::new();
    let status = loop {
        match s.message().await {
            Ok(Some(m)) => got.push(m.text),
            Ok(None) => panic!("stream ended with OK, expected the final status; got {got:?}"),
            Err(st) => break st,
        }
    };
    assert_eq!(got, ["s-1", "s-2", "s-3"]);
    assert_final_status(&status);
}

async fn check_client_streaming(g: &mut Client) {
    g.ready().await.unwrap();
    let out = tokio_stream::iter(vec![msg("a"), msg("b"), msg("c")]);
    let r = g
        .client_streaming(
            with_bin(Request::new(out)),
            PathAndQuery::from_static("/test.Echo/ClientStream"),
            codec(),
        )
        .await
        .expect("client streaming call");
    assert_echoed_metadata(r.metadata());
    assert_eq!(r.into_inner().text, "a,b,c");
}

/// A bidi stream answered message by message, with unary calls completing while it is open
/// (not blocked behind it), then the final status as trailers.
async fn check_bidi_beside_unary_calls(g: &mut Client) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
    g.ready().await.unwrap();
    let r = {
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        tx.send(msg("one")).await.unwrap();
        g.streaming(
            with_bin(Request::new(out)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            codec(),
        )
        .await
        .expect("bidi call")
    };
    assert_echoed_metadata(r.metadata());
    let mut s = r.into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().text, "echo:one");

    // while the bidi stream stays open, unary calls on the same client connection complete:
    // their streams are not blocked behind it
    for i in 0..3 {
        let mut u = g.clone();
        u.ready().await.unwrap();
        let r = u
            .unary(
                Request::new(msg(&format!("u{i}"))),
                PathAndQuery::from_static("/test.Echo/Unary"),
                codec(),
            )
            .await
            .expect("unary beside the open stream");
        assert_eq!(r.into_inner().text, format!("unary:u{i}"));
    }

    tx.send(msg("two")).await.unwrap();
    assert_eq!(s.message().await.unwrap().unwrap().text, "echo:two");
    drop(tx);
    let status = s.message().await.expect_err("the final status");
    assert_final_status(&status);
}

#[tokio::test]
async fn unary_with_metadata_and_an_error_status() {
    let up = start_upstream().await;
    let fx = gateway(up.addr).await;
    check_unary(&mut client(&fx).await).await;
}

#[tokio::test]
async fn server_streaming_then_trailers() {
    let up = start_upstream().await;
    let fx = gateway(up.addr).await;
    check_server_streaming(&mut client(&fx).await).await;
}

#[tokio::test]
async fn client_streaming() {
    let up = start_upstream().await;
    let fx = gateway(up.addr).await;
    check_client_streaming(&mut client(&fx).await).await;
}

#[tokio::test]
async fn bidi_interleaved_with_unary_calls_on_one_upstream_connection() {
    let up = start_upstream().await;
    let fx = gateway(up.addr).await;
    check_bidi_beside_unary_calls(&mut client(&fx).await).await;
    // one client connection lands on one worker: its calls shared one upstream connection
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}
