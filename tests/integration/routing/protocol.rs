//! Protocols: h2c with prior knowledge, and an HTTP/1.0 backend answered in the client's protocol.

use tokio::net::TcpStream;

use crate::common::servers::echoed_header;
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn h2c_prior_knowledge() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let r = Req::post("/ai/v2/completions", "{\"a\":1}")
        .token(&t)
        .send_h2(fx.gw.addr)
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(v["server"], "echo");
    assert_eq!(v["path"], "/v2/completions");
    assert_eq!(v["body_len"], 7);
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
    assert!(r.header("x-request-id").is_some());
    // Errors over h2 too.
    let r = Req::get("/ai/v2/completions").send_h2(fx.gw.addr).await;
    assert_error(&r, 401, "missing_token");
}

/// Reads one response with a Content-Length body off `s`: (status line, lower-case headers,
/// body). Panics when the connection ends first.
async fn read_response(s: &mut TcpStream, what: &str) -> (String, Vec<(String, String)>, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no content-length in {head}"));
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status, headers, body);
            }
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: no response within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            n > 0,
            "{what}: the gateway closed the connection after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_http10_backend_is_answered_in_the_clients_protocol_with_keep_alive() {
    use tokio::io::AsyncWriteExt;
    let old = crate::common::servers::Http10::start().await;
    let extra = format!(
        "\n[[routes]]\nname = \"old\"\npath_prefix = \"/old/\"\nupstream = \"old\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"old\"\nendpoints = [\"{}\"]\n",
        old.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;

    // HTTP/1.1 client: HTTP/1.1 answers, and the connection stays open for the next request
    let mut c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    for path in ["/old/first", "/old/second"] {
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (status, headers, body) = read_response(&mut c, path).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {headers:?}");
        assert!(
            !headers
                .iter()
                .any(|(k, v)| k == "connection" && v == "close"),
            "{path}: the gateway closes the connection: {headers:?}"
        );
        assert_eq!(body, path);
    }
    assert_eq!(old.served(), 2, "both requests reached the backend");

    // HTTP/2 client: answered in HTTP/2
    let r = Req::get("/old/h2").send_h2(fx.gw.addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "/old/h2");
}

/// `server.header_read_timeout`, the slow-client defence: a head that is not complete in time,
/// a keep-alive connection left idle after its answer and a connection that never brings a
/// request are closed without a response; a head that arrives in pieces inside the timeout is
/// answered.
#[tokio::test]
async fn a_slow_or_idle_http1_client_is_closed_at_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::with(Opts {
        server_extra: "header_read_timeout = \"1s\"".into(),
        ..Opts::default()
    })
    .await;
    // the gateway ends the connection without sending a byte
    async fn closed_silently(mut c: TcpStream, what: &str) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(DEADLINE, c.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after {DEADLINE:?}"));
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "{what}: got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    // in pieces, well inside the timeout: answered, and the connection kept
    let mut c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    c.write_all(b"GET /nothing-here HTTP/1.1\r\n")
        .await
        .expect("write");
    // the pause is the slow client under test, not a wait for the gateway
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    c.write_all(b"Host: gw\r\n\r\n").await.expect("write");
    let (status, _, body) = read_response(&mut c, "pieces").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    assert!(body.contains("no_route"), "{body}");
    // then idle: the keep-alive connection is closed by the same timer
    closed_silently(c, "idle keep-alive").await;

    // a head that never completes (slowloris)
    let mut c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    c.write_all(b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\nX-Slow: 1\r\n")
        .await
        .expect("write");
    closed_silently(c, "incomplete head").await;

    // nothing at all after connecting, or half of the HTTP/2 preface (the connection is
    // still being told apart as HTTP/1.1 or h2c: hyper's own timer has not started)
    let c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    closed_silently(c, "silent client").await;
    let mut c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    c.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    closed_silently(c, "half an h2 preface").await;
}

/// `server.max_connections`: a worker with its share open stops accepting — the next
/// connection waits in the kernel's queue, unanswered and uncounted — until one ends; the open
/// ones keep being served.
#[tokio::test]
async fn at_max_connections_a_worker_accepts_again_only_when_one_ends() {
    use tokio::io::AsyncWriteExt;
    let fx = Fixture::with(Opts {
        threads: 1,
        server_extra: "max_connections = 2".into(),
        extra: "\n[[routes]]\nname = \"open\"\npath_prefix = \"/open/\"\nupstream = \"echo\"\nauth = \"public\"\n".into(),
        ..Opts::default()
    })
    .await;
    const REQ: &[u8] = b"GET /open/x HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let connect = || async {
        TcpStream::connect(fx.gw.addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    };
    let mut a = connect().await;
    let mut b = connect().await;
    for (s, what) in [(&mut a, "first"), (&mut b, "second")] {
        s.write_all(REQ).await.expect("write");
        let (status, _, _) = read_response(s, what).await;
        assert!(status.contains(" 200 "), "{what}: {status}");
    }
    // the worker has its two: it stopped accepting, once (no spinning)
    crate::common::wait::wait_metric(&fx.gw, "cc_gateway_connections_limited_total", &[], 1.0)
        .await;

    // a third connects (the kernel queues it) and asks: it is not taken while both are open
    let mut c = connect().await;
    c.write_all(REQ).await.expect("write");
    let text = fx.metrics().await;
    assert_eq!(
        crate::common::metrics::metric(&text, "cc_gateway_connections", &[]),
        2.0,
        "{text}"
    );
    // the open ones are still served
    b.write_all(REQ).await.expect("write");
    let (status, _, _) = read_response(&mut b, "second again").await;
    assert!(status.contains(" 200 "), "{status}");

    // one ends: the third is accepted and answered
    drop(a);
    let (status, _, _) = read_response(&mut c, "third").await;
    assert!(status.contains(" 200 "), "{status}");
    crate::common::wait::wait_metric(&fx.gw, "cc_gateway_connections_limited_total", &[], 2.0)
        .await;
}
