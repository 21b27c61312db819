//! L4 routes across a reload (new settings for new connections; a moved listen address is
//! `restart_needed`) and a binary upgrade (the new process takes the L4 sockets over).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::common::wait::DEADLINE;

async fn tagged(tag: &'static str) -> SocketAddr {
    target(move |mut s| async move {
        let _ = s.write_all(tag.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

async fn read_tag(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut buf))
        .await
        .expect("EOF within the deadline")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

fn routes(target: SocketAddr, listen: &str) -> String {
    format!("[[tcp_routes]]\nname = \"r\"\nlisten = [{listen}]\ntarget = \"{target}\"\n")
}

#[tokio::test]
async fn reloads_apply_to_new_connections_and_an_upgrade_takes_the_l4_sockets_over() {
    let (one, two) = (tagged("1").await, tagged("2").await);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = "upgrade_socket = \"upgrade.sock\"";
    let path = write(&dir, server, &routes(one, "\"127.0.0.1:0\""));
    let mut old = Gateway::spawn(&path).await;
    let addr = tcp_addr(&old, "r");
    assert_eq!(read_tag(addr).await, "1");

    // a new target applies to the next connection, on the same socket
    write(&dir, server, &routes(two, "\"127.0.0.1:0\""));
    let r = old.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(body["restart_needed"], serde_json::json!([]), "{body}");
    assert_eq!(read_tag(addr).await, "2");

    // another listen address needs a restart (or an upgrade); the running one stays
    write(
        &dir,
        server,
        &routes(two, "\"127.0.0.1:0\", \"127.0.0.2:0\""),
    );
    let r = old.admin_post("/reload").await;
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(
        body["restart_needed"],
        serde_json::json!(["tcp_routes.listen"]),
        "{body}"
    );
    assert_eq!(read_tag(addr).await, "2");

    // the upgrade: the same L4 socket, served by the new process once the old one is gone
    write(&dir, server, &routes(two, "\"127.0.0.1:0\""));
    let args = vec![
        std::ffi::OsString::from("run"),
        "--config".into(),
        path.as_os_str().to_owned(),
        "--upgrade".into(),
    ];
    let new = Gateway::spawn_with(args, &path).await;
    assert_eq!(tcp_addr(&new, "r"), addr, "the same L4 socket");
    crate::common::process::wait_exit(&mut old, Duration::from_secs(20)).await;
    assert_eq!(read_tag(addr).await, "2");
    crate::common::wait_metric(
        &new,
        "cc_gateway_tcp_connections_total",
        &[("route", "r"), ("result", "ok")],
        1.0,
    )
    .await;
}
