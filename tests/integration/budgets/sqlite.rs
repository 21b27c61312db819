//! SQLite-only budget behaviour: counters persisted across a restart.

use crate::common::budgets::*;
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn sqlite_counters_survive_a_restart() {
    let db = tempfile::tempdir().expect("temp dir");
    let path = db.path().join("budgets.db");
    let budgets = format!(
        "\n[budgets]\nstore = \"sqlite://{}\"\nflush_interval = \"1h\"\n\n[[budgets.rules]]\nname = \"hourly\"\nkey = [\"claim:sub\"]\nquota = \"100/1h\"\n",
        path.display()
    );
    let mut fx = Fixture::with(Opts {
        budgets,
        ..Opts::default()
    })
    .await;
    let token = fx.token();
    clear_of_window_end(HOUR).await;
    let rs = burst(&fx, || Fixture::ai_req(&token), 60).await;
    assert_split(&rs, 60, "hourly", "first life");
    // graceful stop: the final flush writes the counters (the 1 h interval never fires here)
    let st = std::process::Command::new("kill")
        .args(["-TERM", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    wait_until("the first gateway to exit", DEADLINE, || {
        let running = fx.gw.is_running();
        async move {
            if running {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert!(path.exists(), "no database at {}", path.display());
    // a second life on the same file: 40 left of the hour's 100
    let gw = Gateway::start(&fx.config_path).await;
    let mut admitted = 0;
    let mut conn = H1Conn::connect(gw.addr).await;
    for _ in 0..60 {
        let r = conn.send(Fixture::ai_req(&token)).await;
        match r.status {
            200 => admitted += 1,
            429 => assert_eq!(r.reason(), "hourly", "{}", r.describe()),
            _ => panic!("unexpected {}", r.describe()),
        }
    }
    assert_eq!(admitted, 40, "the count did not survive the restart");
}
