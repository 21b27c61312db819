//! Client certificates (`client_auth`) and route `client_cert` rules: SPIFFE exact and `/*`
//! patterns, DNS SANs, both refusal reasons, a token route needing both, `require` mode.

use super::*;
use crate::common::servers::echoed_header;
use crate::common::wait::DEADLINE;

const SNI: &str = "gw.test";
const RUNNER: &str = "spiffe://example.org/ns/ci/sa/runner";

/// The gateway's certificate (from `server_ca`) and client CA file, with `client_auth = mode`,
/// and routes `/mtls/` (public + rule) and `/both/` (token + rule).
async fn mtls_fixture(server_ca: &Ca, client_ca: &Ca, mode: &str) -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = server_ca
        .leaf("edge", &[SNI], &[])
        .write(dir.path(), "edge");
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, client_ca.issuer_pem()).expect("writing client CA");
    let tls = tls_line(
        &[(&c, &k, &[])],
        &format!(", client_auth = {}, client_ca = {}", q(mode), tp(&ca_file)),
    );
    let routes = format!(
        r#"
[[routes]]
name = "mtls"
path_prefix = "/mtls/"
upstream = "echo"
auth = "public"
client_cert = {{ uris = [{RUNNER:?}, "spiffe://example.org/ns/ops/*"], dns = ["lb.internal"] }}

[[routes]]
name = "both"
path_prefix = "/both/"
upstream = "echo"
audience = "{AUD}"
scopes = ["code_suggestions"]
client_cert = {{ uris = [{RUNNER:?}] }}
"#
    );
    (tls_fixture(tls, &routes).await, dir)
}

/// A client certificate (EKU clientAuth) with these SANs.
fn client_leaf(ca: &Ca, dns: &[&str], uris: &[&str]) -> Leaf {
    ca.leaf_with("client", dns, uris, |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    })
}

/// True when no request gets through: the handshake fails, or (TLS 1.3: the server's verdict
/// on the client certificate comes after the client's handshake is done) the first request.
async fn refused(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let Ok(s) = connect(addr, SNI, cfg).await else {
        return true;
    };
    let io = TokioIo::new(s);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return true;
    };
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/public/x")
        .header("host", SNI)
        .body(Full::new(Bytes::new()))
        .expect("request");
    tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .expect("an answer or an error")
        .is_err()
}

#[tokio::test]
async fn optional_client_certificates_and_spiffe_rules() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("clients CA"));
    let (fx, _dir) = mtls_fixture(&server_ca, &client_ca, "optional").await;
    let addr = tls_addr(&fx.gw);
    let with = |l: &Leaf| client(&server_ca, Some(l));

    // no certificate: TLS without one, and plaintext
    let r = send_tls(addr, SNI, client(&server_ca, None), Req::get("/mtls/x")).await;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.reason(), "client_cert_required");
    let body = r.json();
    for k in ["error", "reason", "message", "request_id"] {
        assert!(body[k].is_string(), "{k} in {body}");
    }
    assert_eq!(r.header("www-authenticate"), None, "no bearer challenge");
    let r = fx.send(Req::get("/mtls/x")).await;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.reason(), "client_cert_required");
    assert!(r.json()["message"].as_str().unwrap_or("").contains("TLS"));
    // routes without a rule need none
    let r = send_tls(addr, SNI, client(&server_ca, None), Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());

    // exact SPIFFE id; the client's own Client-Uri header never gets through
    let runner = client_leaf(&client_ca, &[], &[RUNNER]);
    let r = send_tls(
        addr,
        SNI,
        with(&runner),
        Req::get("/mtls/x").header("X-Cc-Client-Uri", "spiffe://example.org/forged"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(echoed_header(&r.json(), "x-cc-client-uri"), vec![RUNNER]);
    // a resumed session still carries the certificate's identities
    let runner_client = with(&runner);
    let _ = send_tls(addr, SNI, runner_client.clone(), Req::get("/public/x")).await;
    let s = connect(addr, SNI, runner_client).await.expect("handshake");
    assert_eq!(
        s.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let r = send_over(s, Req::get("/mtls/x")).await;
    assert_eq!(r.status, 200, "resumed: {}", r.describe());
    assert_eq!(echoed_header(&r.json(), "x-cc-client-uri"), vec![RUNNER]);

    // `/*`: one or more segments under the prefix
    let deployer = client_leaf(
        &client_ca,
        &[],
        &[
            "spiffe://other.org/x",
            "spiffe://example.org/ns/ops/sa/deployer",
        ],
    );
    let r = send_tls(addr, SNI, with(&deployer), Req::get("/mtls/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        echoed_header(&r.json(), "x-cc-client-uri"),
        vec!["spiffe://example.org/ns/ops/sa/deployer"]
    );
    let bare = client_leaf(&client_ca, &[], &["spiffe://example.org/ns/ops"]);
    let r = send_tls(addr, SNI, with(&bare), Req::get("/mtls/x")).await;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.reason(), "client_cert_not_allowed");

    // a DNS SAN: admitted, no URI to forward
    let lb = client_leaf(&client_ca, &["lb.internal"], &[]);
    let r = send_tls(addr, SNI, with(&lb), Req::get("/mtls/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(echoed_header(&r.json(), "x-cc-client-uri").is_empty());

    // "optional" still verifies a certificate that is presented
    let stranger = client_leaf(&Ca::new("unknown CA"), &[], &[RUNNER]);
    assert!(
        refused(addr, with(&stranger)).await,
        "untrusted client certificate"
    );

    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "client_cert_required")],
        2.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "client_cert_not_allowed")],
        1.0,
    )
    .await;
    wait_until("the refusals in the access log", DEADLINE, || async {
        let log = std::fs::read_to_string(&fx.access_log).unwrap_or_default();
        if log.contains("\"client_cert_not_allowed\"") && log.contains("\"client_cert_required\"") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}

#[tokio::test]
async fn a_token_route_with_a_client_cert_rule_needs_both() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("clients CA"));
    let (fx, _dir) = mtls_fixture(&server_ca, &client_ca, "optional").await;
    let addr = tls_addr(&fx.gw);
    let runner = client(&server_ca, Some(&client_leaf(&client_ca, &[], &[RUNNER])));
    let ops = client(
        &server_ca,
        Some(&client_leaf(
            &client_ca,
            &[],
            &["spiffe://example.org/ns/ops/a"],
        )),
    );
    let req = |token: Option<String>| {
        let r = Req::get("/both/x");
        match token {
            Some(t) => r.token(&t),
            None => r,
        }
    };

    let r = send_tls(addr, SNI, runner.clone(), req(None)).await;
    assert_eq!(r.status, 401, "certificate alone: {}", r.describe());
    assert_eq!(r.reason(), "missing_token");
    let r = send_tls(addr, SNI, client(&server_ca, None), req(Some(fx.token()))).await;
    assert_eq!(r.status, 403, "token alone: {}", r.describe());
    assert_eq!(r.reason(), "client_cert_required");
    let r = send_tls(addr, SNI, ops, req(Some(fx.token()))).await;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.reason(), "client_cert_not_allowed");
    let r = send_tls(addr, SNI, runner, req(Some(fx.token()))).await;
    assert_eq!(r.status, 200, "both: {}", r.describe());
    let body = r.json();
    assert_eq!(echoed_header(&body, "x-cc-subject"), vec![SUB]);
    assert_eq!(echoed_header(&body, "x-cc-client-uri"), vec![RUNNER]);
}

#[tokio::test]
async fn require_refuses_a_handshake_without_a_trusted_client_certificate() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("clients CA"));
    let (fx, _dir) = mtls_fixture(&server_ca, &client_ca, "require").await;
    let addr = tls_addr(&fx.gw);
    assert!(
        refused(addr, client(&server_ca, None)).await,
        "no certificate"
    );
    let stranger = client_leaf(&Ca::new("unknown CA"), &[], &[RUNNER]);
    assert!(
        refused(addr, client(&server_ca, Some(&stranger))).await,
        "untrusted certificate"
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "error")],
        2.0,
    )
    .await;
    let lb = client_leaf(&client_ca, &["lb.internal"], &[]);
    let r = send_tls(
        addr,
        SNI,
        client(&server_ca, Some(&lb)),
        Req::get("/public/x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = send_tls(
        addr,
        SNI,
        client(&server_ca, Some(&lb)),
        Req::get("/mtls/x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
}
