//! A real headless Chromium (Debian's `chromium`, driven over WebDriver by `chromedriver`,
//! both installed by `scripts/install-deps.sh`) for the admin page tests, and the few
//! page actions they share. Screenshots land in the target dir (and in `docs/` with
//! `UPDATE_SCREENSHOTS=1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::free_port;
use super::http::until;

/// How long a page action may take to show its result.
pub const WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, killed on drop.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (installed by scripts/install-deps.sh: apt chromium-driver)");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    until("chromedriver listens", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    driver
}

/// A headless Chromium with no network beyond loopback and a fresh profile.
pub async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

pub async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

pub async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `css` matches at least one element whose text contains `want`.
pub async fn wait_for_text(c: &Client, css: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for e in c.find_all(Locator::Css(css)).await.unwrap() {
            let t = e.text().await.unwrap_or_default();
            if t.contains(want) {
                return;
            }
            seen.push(t);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {css} containing {want:?}; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn save_screenshot(png: &[u8], name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), png).unwrap();
    }
    path
}

/// Opens the page of the admin API at `admin` and signs in with `token`; returns once the
/// connectors are listed.
pub async fn sign_in(c: &Client, admin: std::net::SocketAddr, token: &str) {
    c.goto(&format!("http://{admin}/")).await.unwrap();
    type_into(c, "#token", token).await;
    click(c, "#login").await;
    wait_for_text(c, "#connectors tbody tr", "").await;
}

/// The input of the editor's field for `key`.
pub fn field(key: &str) -> String {
    format!("#editor .field[data-key='{key}'] .field-input")
}

/// The `value` property of the element `css` (what an input holds now).
pub async fn value(c: &Client, css: &str) -> String {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.prop("value").await.unwrap().unwrap_or_default()
}

/// Waits until the button `css` is enabled (the editor enables Save once the form as it is
/// has been checked by the relay).
pub async fn wait_enabled(c: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = c.find(Locator::Css(css)).await.unwrap();
        if e.attr("disabled").await.unwrap().is_none() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} stays disabled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no element matches `css`.
pub async fn wait_gone(c: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !c.find_all(Locator::Css(css)).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
