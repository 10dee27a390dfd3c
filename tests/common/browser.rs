//! A real browser for the console's tests: Debian's `chromium`, headless, driven by
//! `chromedriver` over WebDriver (scripts/setup installs both). Synchronous wrappers
//! over the `fantoccini` client, so tests read top to bottom; screenshots are saved as
//! test artefacts in target/test-artifacts/console.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use super::lab::free_port;

/// A headless chromium with its own profile, and the chromedriver driving it.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where screenshots go.
pub fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup installs chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let attempt = rt.block_on(
                ClientBuilder::new(connector)
                    .capabilities(caps.clone())
                    .connect(&url),
            );
            match attempt {
                Ok(c) => break c,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("chromium did not start under chromedriver: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        Browser {
            rt,
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).unwrap();
    }

    pub fn url(&self) -> String {
        self.rt
            .block_on(self.c().current_url())
            .unwrap()
            .to_string()
    }

    /// The element's text, waiting up to 20 s for it to exist.
    pub fn text(&self, css: &str) -> String {
        let e = self.wait(css);
        self.rt.block_on(e.text()).unwrap()
    }

    pub fn exists(&self, css: &str) -> bool {
        self.rt.block_on(self.c().find(Locator::Css(css))).is_ok()
    }

    fn wait(&self, css: &str) -> fantoccini::elements::Element {
        let start = Instant::now();
        loop {
            if let Ok(e) = self.rt.block_on(self.c().find(Locator::Css(css))) {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {css} on {}: {}",
                self.url(),
                self.body()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn click(&self, css: &str) {
        let e = self.wait(css);
        self.rt.block_on(e.click()).unwrap();
    }

    /// Clicks the link whose text is `text`.
    pub fn click_link(&self, text: &str) {
        let e = self
            .rt
            .block_on(self.c().find(Locator::LinkText(text)))
            .unwrap_or_else(|e| panic!("no link {text:?} on {}: {e}", self.url()));
        self.rt.block_on(e.click()).unwrap();
    }

    /// Types `keys` into the element (for a file input: the file's path).
    pub fn fill(&self, css: &str, keys: &str) {
        let e = self.wait(css);
        self.rt.block_on(e.send_keys(keys)).unwrap();
    }

    pub fn body(&self) -> String {
        self.rt
            .block_on(async { self.c().find(Locator::Css("body")).await?.text().await })
            .unwrap_or_default()
    }

    /// Waits up to `within` for `css`'s text to contain `needle`; returns the text.
    pub fn wait_text(&self, css: &str, needle: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self
                .rt
                .block_on(async { self.c().find(Locator::Css(css)).await?.text().await })
                .unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < within,
                "{needle:?} never appeared in {css} on {}: {text:?}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` in the page and returns its value.
    pub fn run(&self, script: &str) -> serde_json::Value {
        self.rt.block_on(self.c().execute(script, vec![])).unwrap()
    }

    /// Saves a screenshot as `NAME.png` among the artefacts; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.c().screenshot()).unwrap();
        let path = artefacts().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Forgets every cookie of the current page's host.
    pub fn clear_cookies(&self) {
        self.rt.block_on(self.c().delete_all_cookies()).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
