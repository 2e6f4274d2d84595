//! The web dashboard in a real browser: headless Chromium driven over WebDriver (plain JSON
//! through reqwest) against a service in this process with two simulated devices of one user.
//! Signs in, sees both devices, starts a deployment from the form, watches it reach
//! succeeded without a reload, opens a device's history, and checks that a second user sees
//! none of it. Screenshots go to `target/web-ui-artifacts/` (set `HAMMER_UPDATE_SCREENSHOT=1`
//! to refresh `docs/dashboard.png`). Skips, with a message, when Chromium or chromedriver is
//! not installed (`apt-get install chromium chromium-driver`; CI installs them). Every page
//! is checked with axe-core (no serious or critical violation) and at phone size (390×844:
//! nothing scrolls sideways); axe-core comes from the npm registry on first use
//! ([`axe_source`]).

mod common;

use base64::Engine;
use common::{Behavior, Harness, SimDevice};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, now_ms, Channel, LogBatch, Phase, PROTOCOL_VERSION};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
/// Patience for anything the browser shows (a noisy 2-core CI machine is slow).
const WAIT: Duration = Duration::from_secs(60);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver runs in its own process group: take the browsers it started along
        // (a failed test never quits its session cleanly).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` available) and returns its value.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    /// Clicks the element `css`; finds it again when a live refresh replaced it meanwhile.
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            let id = self.find(css).await;
            let resp = self
                .http
                .post(format!("{}/element/{id}/click", self.base))
                .json(&json!({}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("WebDriver click {css}: {e}"));
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return;
            }
            assert_eq!(
                v["value"]["error"], "stale element reference",
                "WebDriver click {css}: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{css} kept being replaced by live refreshes; cannot click it");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    async fn text(&self) -> String {
        self.js(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// Waits until `script` returns true; fails with `what` and the page's text.
    async fn wait_for(&self, what: &str, script: &str, args: Value) {
        let start = Instant::now();
        loop {
            let v = self
                .post("/execute/sync", json!({ "script": script, "args": args }))
                .await;
            if v == Value::Bool(true) {
                return;
            }
            if start.elapsed() > WAIT {
                let url = self.cmd(reqwest::Method::GET, "/url", None).await;
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\nURL: {url}\npage text:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    async fn close(self) {
        let _ = self
            .http
            .delete(&self.base)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
    }
}

/// axe-core's `axe.min.js`: `HAMMER_AXE_JS`, else `target/axe-core/`, where it is installed
/// from the npm registry on first use (`npm install --prefix target/axe-core axe-core@4`).
/// None, with a message, when it cannot be had; under `CI=true` that fails the test.
fn axe_source() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/axe-core");
    let candidates = |dir: &Path| {
        let mut c = Vec::new();
        if let Some(p) = std::env::var_os("HAMMER_AXE_JS") {
            c.push(PathBuf::from(p));
        }
        c.push(dir.join("axe.min.js"));
        c.push(dir.join("node_modules/axe-core/axe.min.js"));
        c
    };
    let found = |dir: &Path| {
        candidates(dir)
            .into_iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
    };
    if let Some(src) = found(&dir) {
        return Some(src);
    }
    let _ = std::fs::create_dir_all(&dir);
    let installed = Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir)
        .arg("axe-core@4")
        .status();
    if let Some(src) = found(&dir) {
        return Some(src);
    }
    let why = format!(
        "axe-core is not in {} and `npm install --prefix … axe-core@4` did not get it ({installed:?}); set HAMMER_AXE_JS to an axe.min.js",
        dir.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the accessibility checks cannot run: {why} (CI=true: a skipped check fails CI)"
    );
    eprintln!("SKIPPED accessibility checks: {why}");
    None
}

/// Runs axe-core on the page shown and fails on any violation of serious or critical impact.
async fn assert_accessible(b: &Browser, axe: Option<&str>, what: &str) {
    let Some(axe) = axe else { return };
    let loaded = b
        .js(&format!("{axe}\n;return typeof window.axe;"), json!([]))
        .await;
    assert_eq!(loaded, "object", "axe-core did not load on {what}");
    let v = b
        .post(
            "/execute/async",
            json!({"script": "var done = arguments[arguments.length - 1]; \
                window.axe.run(document, {resultTypes: ['violations']}).then(function (r) { \
                  done(r.violations.filter(function (v) { return v.impact === 'serious' || v.impact === 'critical'; }) \
                    .map(function (v) { return { id: v.id, impact: v.impact, help: v.help, \
                      nodes: v.nodes.slice(0, 5).map(function (n) { return n.target.join(' ') + ': ' + n.failureSummary; }) }; })); \
                }, function (e) { done('axe failed: ' + e); });",
                "args": []}),
        )
        .await;
    assert_eq!(
        v,
        json!([]),
        "serious or critical accessibility violations on {what}:\n{}",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    );
}

/// Phone size: the browser window at 390×844.
async fn phone(b: &Browser) {
    b.post("/window/rect", json!({"width": 390, "height": 844}))
        .await;
    let w = b.js("return window.innerWidth;", json!([])).await;
    if w.as_u64().is_some_and(|w| w > 400) {
        // The window could not shrink that far: emulate the phone's viewport instead.
        b.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}}),
        )
        .await;
    }
}

async fn desktop(b: &Browser) {
    b.post(
        "/goog/cdp/execute",
        json!({"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}}),
    )
    .await;
    b.post("/window/rect", json!({"width": 1280, "height": 900}))
        .await;
}

/// The page shown fits the phone's width: nothing scrolls sideways.
async fn assert_fits_phone(b: &Browser, what: &str) {
    let v = b
        .js(
            "var d = document.documentElement; var wide = []; \
             document.querySelectorAll('body *').forEach(function (e) { var r = e.getBoundingClientRect(); \
               if (r.width > 0 && r.right > d.clientWidth + 1 && wide.length < 5) wide.push(e.tagName + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '') + ' right=' + Math.round(r.right)); }); \
             return {inner: window.innerWidth, client: d.clientWidth, scroll: d.scrollWidth, wide: wide};",
            json!([]),
        )
        .await;
    assert!(
        v["inner"].as_u64().unwrap_or(0) <= 400,
        "not a phone-sized window on {what}: {v}"
    );
    assert!(
        v["scroll"].as_u64() <= v["client"].as_u64() && v["wide"] == json!([]),
        "{what} scrolls sideways at 390 px: {v}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver(http: &reqwest::Client, exe: &str) -> Driver {
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["value"]["ready"] == true {
                    return driver;
                }
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "chromedriver did not become ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn new_browser(http: &reqwest::Client, driver: &Driver) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
    }}});
    let resp = http
        .post(format!("{}/session", driver.url))
        .json(&caps)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("WebDriver new session");
    let v: Value = resp.json().await.unwrap();
    let sid = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
        .to_owned();
    Browser {
        http: http.clone(),
        base: format!("{}/session/{sid}", driver.url),
        _profile: profile,
    }
}

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-ui-artifacts")
}

/// The subject the simulated devices report for the deployed commit (markup in it must show
/// as text).
const SUBJECT: &str = "Close the kiosk menu with <Esc> & dim screens at night";

/// Plays a device's part of a deployment: received, fetched (with the commit's subject),
/// starting, running.
async fn play_deployment(dev: &SimDevice, deployment: &str, commit: &str) {
    let start = Instant::now();
    let desired = loop {
        if let Some(d) = dev.last_desired().filter(|d| d.deployment_id == deployment) {
            break d;
        }
        assert!(
            start.elapsed() < WAIT,
            "device {} got no desired state for deployment {deployment}",
            dev.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for phase in [
        Phase::Received,
        Phase::Fetched,
        Phase::Starting,
        Phase::Running,
    ] {
        if phase == Phase::Fetched {
            dev.report_subject(dev.next_seq(), Some(&desired), phase, Some(commit), SUBJECT)
                .await;
        } else {
            dev.report(dev.next_seq(), Some(&desired), phase, Some(commit))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Plays a device failing a deployment: received, then failed.
async fn play_failure(dev: &SimDevice, deployment: &str) {
    let start = Instant::now();
    let desired = loop {
        if let Some(d) = dev.last_desired().filter(|d| d.deployment_id == deployment) {
            break d;
        }
        assert!(
            start.elapsed() < WAIT,
            "device {} got no desired state for deployment {deployment}",
            dev.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for phase in [Phase::Received, Phase::Failed] {
        dev.report(dev.next_seq(), Some(&desired), phase, None)
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/devices")).await;
    b.wait_for(
        "the sign-in page",
        "return location.pathname === '/login' && !!document.getElementById('token');",
        json!([]),
    )
    .await;
    b.type_into("#token", token).await;
    b.click("#login-form button[type=submit]").await;
    b.wait_for(
        "the devices page after signing in",
        "return location.pathname === '/devices' && !!document.getElementById('devices');",
        json!([]),
    )
    .await;
}

/// A test that cannot run here says why; under `CI=true` a skip is a failure (`.ci/run`
/// installs Chromium and chromedriver, so CI never has a reason to skip).
fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the browser test cannot run: {why} (CI=true: a skipped test fails CI)"
    );
    eprintln!("SKIPPED: {why}");
}

const LIVE: &str =
    "var l = document.getElementById('live'); return !!l && l.textContent === 'live';";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_in_headless_chromium() {
    let Some(driver_exe) = CHROMEDRIVER.iter().find(|p| Path::new(p).exists()) else {
        skip("chromedriver is not installed (apt-get install chromium-driver)");
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        skip(&format!(
            "{CHROMIUM} is not installed (apt-get install chromium)"
        ));
        return;
    }
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let mut devs = Vec::new();
    for name in ["kiosk-1", "kiosk-2"] {
        devs.push(
            h.ready_device(
                "alice",
                &alice,
                name,
                json!({"site": "lobby"}),
                Behavior::Silent,
            )
            .await,
        );
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let axe = axe_source();
    let axe = axe.as_deref();
    let driver = start_driver(&http, driver_exe).await;
    let b = new_browser(&http, &driver).await;
    b.post("/timeouts", json!({"script": 120_000})).await;
    let base = h.base.clone();

    b.goto(&format!("{base}/login")).await;
    assert_accessible(&b, axe, "the sign-in page").await;

    // Sign in: the token becomes an HttpOnly session cookie, nowhere in the page.
    sign_in(&b, &base, &alice).await;
    b.wait_for(
        "two device rows",
        "return document.querySelectorAll('#devices tr[data-device]').length === 2;",
        json!([]),
    )
    .await;
    let leaked = b
        .js(
            "var t = arguments[0]; return document.cookie.indexOf('hammer_session') >= 0 \
             || location.href.indexOf(t) >= 0 || document.documentElement.outerHTML.indexOf(t) >= 0 \
             || JSON.stringify(localStorage).indexOf(t) >= 0 || JSON.stringify(sessionStorage).indexOf(t) >= 0;",
            json!([alice]),
        )
        .await;
    assert_eq!(
        leaked,
        Value::Bool(false),
        "the token or session is visible to the page"
    );
    // Back on the sign-in page while signed in (a bookmark, the back button): no form with
    // a restored token, straight home instead.
    b.goto(&format!("{base}/login")).await;
    b.wait_for(
        "the devices page instead of the sign-in form",
        "return location.pathname === '/devices' && !document.getElementById('token');",
        json!([]),
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("kiosk-1") && text.contains("kiosk-2"),
        "{text}"
    );
    assert!(
        text.contains("site=lobby") && text.contains("online"),
        "{text}"
    );
    b.wait_for("the live stream", LIVE, json!([])).await;
    b.screenshot(&artifacts().join("devices.png")).await;
    assert_accessible(&b, axe, "the devices page").await;

    // The fleet overview counts by connection, app state and commit.
    let overview = b
        .js(
            "return document.getElementById('overview').innerText;",
            json!([]),
        )
        .await;
    let overview = overview.as_str().unwrap();
    assert!(overview.contains("2 devices in all"), "{overview}");
    let online = b
        .js(
            "var dts = document.querySelectorAll('#ov-connection-list dt'); for (var i = 0; i < dts.length; i++) { if (dts[i].textContent === 'online') return dts[i].nextElementSibling.textContent; } return null;",
            json!([]),
        )
        .await;
    assert_eq!(online, json!("2"), "{overview}");
    assert!(
        b.js(
            "return !!document.querySelector('#overview h3');",
            json!([])
        )
        .await
            == Value::Bool(true)
    );

    // Search by name (any case) keeps the tag filter; the table sorts by column.
    b.goto(&format!("{base}/devices?tag=site%3Dlobby")).await;
    b.type_into("#q", "KIOSK-2").await;
    b.click("form[role=search] button[type=submit]").await;
    b.wait_for(
        "only kiosk-2, still filtered by tag",
        "return location.search.indexOf('q=KIOSK-2') >= 0 && location.search.indexOf('tag=site') >= 0 && document.querySelectorAll('#devices tr[data-device]').length === 1 && !!document.querySelector(\"#devices tr[data-device='kiosk-2']\") && document.getElementById('tag').value === 'site=lobby';",
        json!([]),
    )
    .await;
    b.goto(&format!("{base}/devices")).await;
    b.click("#sort-last_seen").await;
    b.wait_for(
        "the list sorted by last seen",
        "var th = document.getElementById('sort-last_seen').parentNode; return location.search.indexOf('sort=last_seen') >= 0 && th.getAttribute('aria-sort') === 'descending' && !document.getElementById('sort-name').parentNode.hasAttribute('aria-sort') && document.querySelectorAll('#devices tr[data-device]').length === 2;",
        json!([]),
    )
    .await;
    let seen = b
        .js(
            "var t = document.querySelector('#devices tr[data-device] td[data-label=\"Last seen\"] time'); return t ? [t.textContent, t.getAttribute('title')] : null;",
            json!([]),
        )
        .await;
    assert!(
        seen[0].as_str().unwrap().ends_with("ago") || seen[0] == "just now",
        "{seen}"
    );
    assert!(seen[1].as_str().unwrap().ends_with(" UTC"), "{seen}");

    // Start a deployment from the form.
    b.goto(&format!("{base}/deployments/new")).await;
    b.wait_for(
        "the deployment form",
        "return !!document.getElementById('deploy-form');",
        json!([]),
    )
    .await;
    b.click("input[name=names][value='kiosk-1']").await;
    b.click("input[name=names][value='kiosk-2']").await;
    b.type_into("#dep-ref", "main").await;
    // Before sending: the preview names the devices and what the ref will do.
    b.wait_for(
        "the preview of both devices",
        "var p = document.getElementById('preview-body'); return !!p && p.innerText.indexOf('2 devices selected') >= 0 && p.innerText.indexOf('kiosk-2') >= 0 && p.innerText.indexOf('main resolves') >= 0;",
        json!([]),
    )
    .await;
    // The strategy is behind "Advanced".
    let hidden = b
        .js(
            "var m = document.getElementById('dep-max'); return !document.getElementById('dep-advanced').open && m.closest('details') !== null && !m.checkVisibility();",
            json!([]),
        )
        .await;
    assert_eq!(
        hidden,
        Value::Bool(true),
        "strategy fields shown before Advanced is opened"
    );
    b.click("#dep-advanced summary").await;
    b.type_into("#dep-max", "1").await;
    // Two phases, promoted by hand: kiosk-1, then kiosk-2. The preview reads them as the
    // service will.
    b.type_into("#dep-phases", "1").await;
    b.wait_for(
        "the preview's reading of the phases",
        "var p = document.querySelector('#preview-body .preview-phases'); return !!p && p.textContent.indexOf('Phases: 1, then 1 devices') >= 0;",
        json!([]),
    )
    .await;
    assert_accessible(&b, axe, "the new-deployment form").await;
    phone(&b).await;
    assert_fits_phone(&b, "the new-deployment form").await;
    desktop(&b).await;
    b.click("#deploy-submit").await;
    b.wait_for(
        "the new deployment's page",
        "return /^\\/deployments\\/[0-9a-z]{26}$/.test(location.pathname);",
        json!([]),
    )
    .await;
    let path = b.js("return location.pathname;", json!([])).await;
    let id = path
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    b.js("window.__sameDocument = true;", json!([])).await;
    b.wait_for("the deployment's live stream", LIVE, json!([]))
        .await;
    let state = b
        .js(
            "return document.getElementById('dep-state').dataset.state;",
            json!([]),
        )
        .await;
    assert_eq!(state, "running");
    // A readable heading (ref, deployer; the id small below), a bar and the time so far.
    let head = b
        .js(
            "return [document.getElementById('dep-title').innerText, document.getElementById('dep-id').textContent, document.querySelector('[role=progressbar]').getAttribute('aria-valuemax'), document.getElementById('dep-duration').innerText];",
            json!([]),
        )
        .await;
    assert!(
        head[0].as_str().unwrap().starts_with("Deploy main")
            && head[0].as_str().unwrap().contains("by alice"),
        "{head}"
    );
    assert_eq!(head[1], json!(id), "{head}");
    assert_eq!(head[2], "2", "{head}");
    assert!(
        head[3].as_str().unwrap().starts_with("running for"),
        "{head}"
    );

    // Pause and resume from the page: the buttons swap and a badge says paused (live).
    b.js("window.confirm = function () { return true; };", json!([]))
        .await;
    b.click("#pause").await;
    b.wait_for(
        "the paused badge and the resume button",
        "return window.__sameDocument === true && !!document.querySelector('#dep-state .dep-paused') && !!document.getElementById('resume');",
        json!([]),
    )
    .await;
    b.click("#resume").await;
    b.wait_for(
        "the pause button again, without the badge",
        "return window.__sameDocument === true && !document.querySelector('#dep-state .dep-paused') && !!document.getElementById('pause');",
        json!([]),
    )
    .await;

    // The devices report progress; the page follows without a reload.
    let commit = "1111111111111111111111111111111111111111";
    play_deployment(&devs[0], &id, commit).await;
    b.wait_for(
        "kiosk-1 succeeded on the deployment page (live)",
        "return window.__sameDocument === true && !!document.querySelector(\"tr[data-target='kiosk-1'] td[data-state='succeeded']\");",
        json!([]),
    )
    .await;
    // Phase 1 is done: it waits for a promotion by hand; kiosk-2 is not started before.
    b.wait_for(
        "phase 1 done and waiting for its promotion, with a Promote button (live)",
        "var p = document.getElementById('dep-phase'); return window.__sameDocument === true && !!p && p.dataset.phase === '1' && p.dataset.gate === 'awaiting_promotion' && !!document.getElementById('promote');",
        json!([]),
    )
    .await;
    assert!(
        devs[1].last_desired().is_none_or(|d| d.deployment_id != id),
        "kiosk-2 was started before phase 2 was promoted"
    );
    assert_accessible(&b, axe, "a phased deployment waiting for its promotion").await;
    b.click("#promote").await;
    b.wait_for(
        "phase 2 of 2 open, no Promote button left (live)",
        "var p = document.getElementById('dep-phase'); return window.__sameDocument === true && !!p && p.dataset.phase === '2' && !document.getElementById('promote') && p.textContent.indexOf('phase 1 promoted') >= 0 && p.textContent.indexOf('by alice') >= 0;",
        json!([]),
    )
    .await;
    play_deployment(&devs[1], &id, commit).await;
    b.wait_for(
        "the deployment to show succeeded (live, same document)",
        "var s = document.getElementById('dep-state'); return window.__sameDocument === true && !!s && s.dataset.state === 'succeeded';",
        json!([]),
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("2/2 succeeded") && text.contains("1111111"),
        "{text}"
    );
    let done = b
        .js(
            "return [document.querySelector('[role=progressbar]').getAttribute('aria-valuenow'), document.getElementById('dep-duration').innerText, !!document.querySelector('#targets th:nth-child(6)') && document.querySelector('#targets th:nth-child(6)').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(done[0], "2", "{done}");
    assert!(done[1].as_str().unwrap().starts_with("took "), "{done}");
    assert_eq!(
        done[2], "Updated",
        "no Detail column without details: {done}"
    );
    b.screenshot(&artifacts().join("deployment.png")).await;
    if std::env::var_os("HAMMER_UPDATE_SCREENSHOT").is_some() {
        // Without the notices of the actions above.
        b.goto(&format!("{base}/deployments/{id}")).await;
        b.wait_for("the deployment's live stream", LIVE, json!([]))
            .await;
        b.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.png"))
            .await;
    }
    assert_accessible(&b, axe, "the deployment page").await;
    phone(&b).await;
    assert_fits_phone(&b, "the deployment page").await;
    b.screenshot(&artifacts().join("deployment-phone.png"))
        .await;
    desktop(&b).await;
    b.goto(&format!("{base}/deployments")).await;
    assert_accessible(&b, axe, "the deployments list").await;
    phone(&b).await;
    assert_fits_phone(&b, "the deployments list").await;
    desktop(&b).await;

    // The devices page shows the new commit; a phone-sized layout renders too.
    b.goto(&format!("{base}/devices")).await;
    b.wait_for(
        "the deployed commit on the devices page",
        "return document.querySelectorAll('#devices td.commit').length === 2 && Array.prototype.every.call(document.querySelectorAll('#devices td.commit'), function (c) { return c.textContent.indexOf('1111111') >= 0; });",
        json!([]),
    )
    .await;
    b.wait_for("the live stream", LIVE, json!([])).await;
    // The commit's subject, as the devices reported it, beside the commit, as text.
    let subjects = b
        .js(
            "return Array.prototype.map.call(document.querySelectorAll('#devices td.commit .subject'), function (s) { return [s.textContent, s.children.length]; });",
            json!([]),
        )
        .await;
    assert_eq!(
        subjects,
        json!([[SUBJECT, 0], [SUBJECT, 0]]),
        "commit subjects on the devices page"
    );
    b.screenshot(&artifacts().join("devices-deployed.png"))
        .await;
    if std::env::var_os("HAMMER_UPDATE_SCREENSHOT").is_some() {
        b.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png"))
            .await;
    }
    phone(&b).await;
    assert_fits_phone(&b, "the devices list").await;
    // The sort links stay reachable on a phone (the table's head becomes a row of links).
    let sort = b
        .js(
            "return ['sort-name', 'sort-state', 'sort-last_seen'].map(function (id) { var r = document.getElementById(id).getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.right <= window.innerWidth; });",
            json!([]),
        )
        .await;
    assert_eq!(sort, json!([true, true, true]), "sort links on a phone");
    b.screenshot(&artifacts().join("devices-phone.png")).await;
    desktop(&b).await;

    // A device's page: state and its history with who deployed what.
    b.click("#devices tr[data-device='kiosk-1'] a").await;
    // The history: one line per release, opening into its phases.
    b.wait_for(
        "kiosk-1's history",
        "return location.pathname === '/devices/kiosk-1' && document.querySelectorAll('#history > li > details').length >= 1;",
        json!([]),
    )
    .await;
    let hist = b
        .js(
            "return document.querySelector('#history > li > details > summary').innerText;",
            json!([]),
        )
        .await;
    let hist = hist.as_str().unwrap();
    assert!(
        hist.contains("running")
            && hist.contains("alice")
            && hist.contains("1111111")
            && hist.contains(SUBJECT),
        "{hist}"
    );
    assert!(
        hist.contains(&id[..8]),
        "history lacks the deployment: {hist}"
    );
    b.click("#history > li > details > summary").await;
    b.wait_for(
        "the release's phases, kept open across live refreshes",
        "var d = document.querySelector('#history > li > details'); return d.open && d.querySelectorAll('tbody tr').length >= 4 && d.innerText.indexOf('fetched') >= 0;",
        json!([]),
    )
    .await;
    assert_accessible(&b, axe, "the device page").await;
    phone(&b).await;
    assert_fits_phone(&b, "the device page").await;
    b.screenshot(&artifacts().join("device-phone.png")).await;
    desktop(&b).await;
    // The app runs: it reads running, Start is off, Stop on (and styled as a warning).
    let buttons = b
        .js(
            "return [document.getElementById('device-phase').textContent, document.getElementById('action-start').disabled, document.getElementById('action-stop').disabled, document.getElementById('action-stop').className];",
            json!([]),
        )
        .await;
    assert_eq!(buttons, json!(["running", true, false, "warning"]));

    // Logs: a line printed while the page is open shows live; on opening the page again
    // the kept lines show at once.
    b.wait_for("the device's live stream", LIVE, json!([]))
        .await;
    let batch = LogBatch {
        v: PROTOCOL_VERSION,
        time: now_ms(),
        lines: vec!["hello from kiosk-1".into()],
    };
    devs[0]
        .client
        .publish(
            topic(&devs[0].id, Channel::Logs),
            rumqttc::QoS::AtLeastOnce,
            false,
            encode(&batch).unwrap(),
        )
        .await
        .unwrap();
    b.wait_for(
        "the live log line",
        "return document.getElementById('logs').textContent.indexOf('hello from kiosk-1') >= 0;",
        json!([]),
    )
    .await;
    b.goto(&format!("{base}/devices/kiosk-1")).await;
    let logs = b
        .js(
            "return document.getElementById('logs').textContent;",
            json!([]),
        )
        .await;
    assert!(
        logs.as_str().unwrap().contains("hello from kiosk-1"),
        "the kept lines are not in the page at once: {logs}"
    );
    b.screenshot(&artifacts().join("device.png")).await;

    // An API error shows in the page: restart is accepted, a bad tag filter is explained.
    b.js("window.confirm = function () { return true; };", json!([]))
        .await;
    b.click("#action-restart").await;
    b.wait_for(
        "the restart notice",
        "var n = document.getElementById('notice'); return !n.hidden && n.textContent.indexOf('accepted') >= 0;",
        json!([]),
    )
    .await;
    // Stop, then Start: which button is enabled follows the run state without a reload.
    b.js("window.__sameDocument = true;", json!([])).await;
    b.click("#action-stop").await;
    b.wait_for(
        "Stop disabled and Start enabled after stopping (live)",
        "var s = document.getElementById('action-stop'), t = document.getElementById('action-start'); return window.__sameDocument === true && s.disabled && !t.disabled;",
        json!([]),
    )
    .await;
    b.click("#action-start").await;
    b.wait_for(
        "Start disabled and Stop enabled after starting (live)",
        "var s = document.getElementById('action-stop'), t = document.getElementById('action-start'); return window.__sameDocument === true && !s.disabled && t.disabled;",
        json!([]),
    )
    .await;
    b.goto(&format!("{base}/devices?tag=nonsense")).await;
    let text = b.text().await;
    assert!(text.contains("must look like key=value"), "{text}");
    assert_accessible(&b, axe, "an error page").await;

    // A failed deployment: the bar shows it, Retry is offered, the history says failed.
    b.goto(&format!("{base}/deployments/new")).await;
    b.click("input[name=names][value='kiosk-2']").await;
    b.type_into("#dep-ref", "broken").await;
    b.click("#deploy-submit").await;
    b.wait_for(
        "the failing deployment's page",
        "return /^\\/deployments\\/[0-9a-z]{26}$/.test(location.pathname) && location.pathname.indexOf(arguments[0]) < 0;",
        json!([id]),
    )
    .await;
    let path = b.js("return location.pathname;", json!([])).await;
    let failing = path
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    b.wait_for("the deployment's live stream", LIVE, json!([]))
        .await;
    play_failure(&devs[1], &failing).await;
    b.wait_for(
        "the deployment failed, with a red bar and Retry (live)",
        "var s = document.getElementById('dep-state'); return !!s && s.dataset.state === 'failed' && !!document.querySelector('.bar .bad') && !!document.getElementById('retry');",
        json!([]),
    )
    .await;
    let words = b
        .js(
            "return document.getElementById('dep-progress-words').textContent;",
            json!([]),
        )
        .await;
    assert!(words.as_str().unwrap().contains("1 failed"), "{words}");
    b.screenshot(&artifacts().join("deployment-failed.png"))
        .await;
    assert_accessible(&b, axe, "a failed deployment's page").await;
    b.goto(&format!("{base}/devices/kiosk-2")).await;
    let last = b
        .js(
            "return document.querySelector('#history > li > details > summary').innerText;",
            json!([]),
        )
        .await;
    assert!(
        last.as_str().unwrap().contains("failed") && last.as_str().unwrap().contains(&failing[..8]),
        "{last}"
    );
    assert_accessible(&b, axe, "a device page after a failure").await;

    // The audit log (linked from the navigation) lists the deployment made with the form.
    b.click("nav a[href='/audit']").await;
    b.wait_for(
        "the audit log",
        "return location.pathname === '/audit';",
        json!([]),
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("Audit log") && text.contains("deployment created") && text.contains(&id),
        "{text}"
    );
    assert_accessible(&b, axe, "the audit log").await;

    // The kill switch: the deployment page links to the form with its commit filled in;
    // marking it bad lists it, and "Mark good" takes it off again.
    b.goto(&format!("{base}/deployments/{id}")).await;
    b.click("a.mark-bad").await;
    b.wait_for(
        "the bad-commit form with the deployment's commit",
        "return location.pathname === '/commits' && document.getElementById('bad-commit').value === arguments[0];",
        json!([commit]),
    )
    .await;
    assert_accessible(&b, axe, "the bad commits page").await;
    b.js("window.confirm = function () { return true; };", json!([]))
        .await;
    b.type_into("#bad-reason", "boot loop <b>").await;
    b.click("#bad-submit").await;
    b.wait_for(
        "the commit listed as bad, its reason as text",
        "var r = document.querySelector(\"#bad-commits tr[data-commit='\" + arguments[0] + \"']\"); return !!r && r.textContent.indexOf('boot loop <b>') >= 0;",
        json!([commit]),
    )
    .await;
    let (s, v) = h.get("/api/v1/commits/bad", &alice).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["commits"][0]["commit"], commit, "{v}");
    b.js("window.confirm = function () { return true; };", json!([]))
        .await;
    b.click("#bad-commits button[data-delete]").await;
    b.wait_for(
        "no commit marked bad any more",
        "return location.pathname === '/commits' && !document.querySelector('#bad-commits tr[data-commit]');",
        json!([]),
    )
    .await;

    // The maintenance windows and webhooks pages, from the navigation, pass axe-core and fit
    // a phone (the navigation has seven links now).
    for (href, title) in [
        ("/windows", "Maintenance windows"),
        ("/webhooks", "Webhooks"),
    ] {
        b.click(&format!("nav a[href='{href}']")).await;
        b.wait_for(
            title,
            "return location.pathname === arguments[0];",
            json!([href]),
        )
        .await;
        let text = b.text().await;
        assert!(text.contains(title), "{text}");
        assert_accessible(&b, axe, title).await;
        phone(&b).await;
        assert_fits_phone(&b, title).await;
        desktop(&b).await;
    }
    // A window added with the form is listed; its Remove button takes it off again.
    b.goto(&format!("{base}/windows")).await;
    b.type_into("#win-device", "kiosk-1").await;
    b.type_into("#win-text", "daily 01:00-02:00").await;
    b.click("#window-submit").await;
    b.wait_for(
        "the new window listed",
        "return !!document.querySelector('#windows button[data-delete]') && document.getElementById('windows').textContent.indexOf('daily 01:00-02:00') >= 0;",
        json!([]),
    )
    .await;
    b.js("window.confirm = function () { return true; };", json!([]))
        .await;
    b.click("#windows button[data-delete]").await;
    b.wait_for(
        "no window listed any more",
        "return document.readyState === 'complete' && !!document.getElementById('windows') && !document.querySelector('#windows button[data-delete]');",
        json!([]),
    )
    .await;

    // Sign out ends the session; a second user sees none of alice's fleet.
    b.goto(&format!("{base}/devices")).await;
    b.click("header form button[type=submit]").await;
    b.wait_for(
        "the sign-in page after signing out",
        "return location.pathname === '/login';",
        json!([]),
    )
    .await;
    b.goto(&format!("{base}/devices")).await;
    b.wait_for(
        "a redirect to sign in",
        "return location.pathname === '/login';",
        json!([]),
    )
    .await;
    sign_in(&b, &base, &bob).await;
    let text = b.text().await;
    assert!(text.contains("No devices"), "{text}");
    assert!(!text.contains("kiosk"), "bob sees alice's devices: {text}");
    b.goto(&format!("{base}/deployments")).await;
    let text = b.text().await;
    assert!(
        text.contains("No deployments") && !text.contains(&id[..8]),
        "{text}"
    );
    b.goto(&format!("{base}/deployments/{id}")).await;
    let text = b.text().await;
    assert!(
        text.contains("Error 404") && !text.contains("kiosk"),
        "{text}"
    );
    b.goto(&format!("{base}/audit")).await;
    let text = b.text().await;
    // Only bob's own sign-in, nothing of alice's.
    assert!(
        text.contains("signed in") && !text.contains(&id) && !text.contains("alice"),
        "bob sees alice's audit log: {text}"
    );
    b.goto(&format!("{base}/devices/kiosk-1")).await;
    let text = b.text().await;
    assert!(
        text.contains("Error 404") && text.contains("no device named"),
        "{text}"
    );

    b.close().await;
    drop(driver);
    drop(devs);
}

/// Session cookies without a browser: flags, Origin checks, sign-out and page redirects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_cookie_rules() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", h.base);
    let origin = h.base.clone();

    let r = http
        .post(url("/api/v1/session"))
        .json(&json!({"token": "hmr_wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(url("/api/v1/session"))
        .header("origin", "http://evil.example")
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a session from another site's page");
    let r = http
        .post(url("/api/v1/session"))
        .header("origin", &origin)
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(
        !cookie.contains(&alice),
        "the cookie must not carry the token"
    );

    let me = http
        .get(url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let r = http
        .post(url("/api/v1/tokens"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "state change by cookie without Origin");
    let r = http
        .post(url("/api/v1/tokens"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "state change by cookie from another site");
    let r = http
        .post(url("/api/v1/tokens"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(url("/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = http
        .delete(url("/api/v1/session"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let me = http
        .get(url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "signed out");
    let r = http
        .get(url("/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/login");
}
