//! A minimal W3C WebDriver client: chromedriver driving headless Chromium (Debian packages
//! chromium and chromium-driver, which .ci/run installs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::free_port;

const PATIENCE: Duration = Duration::from_secs(30);

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    shots: PathBuf,
}

impl Browser {
    pub fn start(shots: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1366,900", "--no-first-run", "--disable-extensions"],
            },
        }}});
        let resp: Value = agent
            .post(&format!("{base}/session"))
            .send_json(caps)
            .unwrap_or_else(|e| panic!("new WebDriver session: {}", describe(e)))
            .into_json()
            .unwrap();
        let session = resp["value"]["sessionId"].as_str().expect("a session id").to_string();
        std::fs::create_dir_all(shots).unwrap();
        Browser { driver, base, session, agent, shots: shots.to_path_buf() }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = self.agent.request(method, &url);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let v: Value = resp.unwrap_or_else(|e| panic!("{method} {path}: {}", describe(e))).into_json().unwrap();
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs a script in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` (an expression) is truthy in the page.
    pub fn wait(&self, what: &str, expr: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(&format!("return !!({expr});"));
            if v == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText;");
                panic!("timed out waiting for {what} ({expr}); the page says: {text}");
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn element(&self, css: &str) -> String {
        self.wait(&format!("element {css}"), &format!("document.querySelector({})", json!(css)));
        let v = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        // The W3C element reference is the object's only value.
        v.as_object().and_then(|o| o.values().next()).and_then(|x| x.as_str()).expect("an element").to_string()
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    pub fn fill(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    pub fn text(&self, css: &str) -> String {
        let id = self.element(css);
        self.call("GET", &format!("/element/{id}/text"), None).as_str().unwrap_or_default().to_string()
    }

    /// Logs in through the console's login page and waits for the dashboard.
    pub fn login(&self, console: &str, name: &str, password: &str) {
        self.goto(console);
        self.fill("#login-name", name);
        self.fill("#login-password", password);
        self.click("#login-submit");
        self.wait("the dashboard", "document.querySelector('#card-nodes')");
    }

    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{name}: not a real screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => format!("{code}: {}", r.into_string().unwrap_or_default()),
        e => e.to_string(),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
