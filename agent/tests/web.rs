//! The live cluster view in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) opens an agent's `--web-addr`, and a service created and scaled from the CLI
//! shows up with one card per running task. Saves a screenshot (`web-view.png` in Cargo's
//! test scratch directory; the README shows one taken this way).
//!
//! Needs `chromium` and `chromium-driver` from Debian (`.ci/run` installs them). Without them
//! the test says it is skipped; with `SHOAL_REQUIRE_BROWSER=1` (set by `.ci/run`) it fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_tcp_port_number, serial, Cluster, DEADLINE};
use fantoccini::{ClientBuilder, Locator};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_available() -> bool {
    let found =
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists();
    if !found {
        assert!(
            std::env::var("SHOAL_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "SHOAL_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: {CHROMEDRIVER} or {CHROMIUM} missing (apt-get install chromium chromium-driver)");
    }
    found
}

/// Polls `f` until it is `Some`, failing after [`DEADLINE`].
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_web_view_shows_a_scaled_service_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let _g = serial();
    let web_port = free_tcp_port_number();
    let c = Cluster::start_with_args(3, move |i| {
        if i == 0 {
            vec!["--web-addr".into(), format!("127.0.0.1:{web_port}")]
        } else {
            Vec::new()
        }
    });
    c.form(1);

    let driver_port = free_tcp_port_number();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"],
            }),
        );
        let url = format!("http://127.0.0.1:{driver_port}");
        let browser = until("chromedriver to start a session", || {
            let caps = caps.clone();
            let url = url.clone();
            async move {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;

        browser
            .goto(&format!("http://127.0.0.1:{web_port}/"))
            .await
            .expect("open the page");
        // The page shows the three nodes, the leader among them, before any service.
        until("three node columns", || async {
            let n = browser.find_all(Locator::Css(".node")).await.ok()?.len();
            (n == 3).then_some(())
        })
        .await;
        let leader = browser
            .find(Locator::Css(".node .badge.leader"))
            .await
            .expect("a leader badge");
        assert_eq!(leader.text().await.unwrap(), "leader");

        let cards = |n: usize| {
            let browser = browser.clone();
            async move {
                let running = browser
                    .find_all(Locator::Css(
                        ".task[data-service='web'][data-state='running']",
                    ))
                    .await
                    .ok()?;
                (running.len() == n).then_some(())
            }
        };
        c.shoal(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--replicas",
                "3",
                "--runtime",
                "process",
                "sleep",
                "1000",
            ],
        )
        .ok();
        until("3 running web cards", || cards(3)).await;
        c.shoal(0, &["service", "scale", "-d", "web=5"]).ok();
        until("5 running web cards", || cards(5)).await;
        let row = until("the service row at 5/5", || {
            let browser = browser.clone();
            async move {
                let text = browser
                    .find(Locator::Css("tr.service[data-service='web'] .conv"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (text == "5/5").then_some(text)
            }
        })
        .await;
        assert_eq!(row, "5/5");
        // The cards are spread over the three nodes' columns.
        let columns = browser.find_all(Locator::Css(".node")).await.unwrap();
        let mut with_web = 0;
        for col in columns {
            if !col
                .find_all(Locator::Css(".task[data-service='web']"))
                .await
                .unwrap()
                .is_empty()
            {
                with_web += 1;
            }
        }
        assert_eq!(with_web, 3);

        let png = browser.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(&screenshot, png).unwrap();
        eprintln!("screenshot: {}", screenshot.display());
        let _ = browser.close().await;
    });
    for n in &c.nodes {
        common::kill_tasks(&n.dir);
    }
}
