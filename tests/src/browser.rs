//! A real Chromium, headless, driven over the Chrome DevTools Protocol (a WebSocket of
//! JSON messages): navigate, evaluate JavaScript in the page, type and press keys as a
//! user would, and resize the viewport. Just the few CDP methods the UI tests use, on the
//! WebSocket client the other tests use.
//!
//! The browser trusts no test CA: it runs with `--ignore-certificate-errors`, so the
//! TLS is real but its chain is not checked (the API's own tests check that).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary: `$CAUSEWAY_CHROMIUM`, else `chromium` on the PATH.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("CAUSEWAY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// One headless Chromium with one page; killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium with a `width` x `height` window and connects to its page.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let port = crate::free_addr().port();
        let child = Command::new(chromium_bin())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--ignore-certificate-errors",
                &format!("--remote-debugging-port={port}"),
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (apt-get install chromium)",
                    chromium_bin().display()
                )
            })?;
        let mut guard = KillOnDrop(Some(child));
        let http = crate::plain_http();
        let ws_url = crate::eventually("Chromium's DevTools", Duration::from_secs(30), || async {
            let list: Value = http
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_string)
        })
        .await?;
        let (page, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
        let mut b = Browser {
            child: guard.0.take().expect("the child"),
            _profile: profile,
            page,
            next_id: 0,
        };
        b.call("Page.enable", json!({})).await?;
        b.call("Runtime.enable", json!({})).await?;
        Ok(b)
    }

    /// Calls a CDP method of the page and returns its result (events are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Message::text(msg)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.page.next())
                .await
                .with_context(|| format!("no answer to {method} within 30 s"))?;
            let Some(msg) = next else {
                bail!("Chromium closed the DevTools connection");
            };
            let Message::Text(text) = msg? else { continue };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"] != id {
                continue;
            }
            if let Some(e) = v.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(v["result"].clone());
        }
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText") {
            bail!("navigating to {url}: {e}");
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (for up to 20 s); its value.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> anyhow::Result<Value> {
        self.wait_within(what, expression, Duration::from_secs(20))
            .await
    }

    /// [`Browser::wait_for`] for up to `timeout`.
    pub async fn wait_within(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression).await.unwrap_or(Value::Null);
            if !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what} ({expression})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the focused element, as a keyboard would.
    pub async fn type_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Presses and releases a key: `Enter`, `Tab`.
    pub async fn press(&mut self, key: &str) -> anyhow::Result<()> {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            other => bail!("no key code for {other}"),
        };
        for kind in ["keyDown", "keyUp"] {
            let mut p =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p).await?;
        }
        Ok(())
    }

    /// Saves a PNG of the viewport at `path` (its directory is created).
    pub async fn screenshot(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("no screenshot data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Gives the page a viewport `width` CSS pixels wide (a phone at 390).
    pub async fn set_width(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child that never became a [`Browser`].
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
