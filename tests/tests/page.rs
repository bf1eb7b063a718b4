//! The flight-recorder page in a real browser, as root: headless Chromium (Debian's `chromium`,
//! which `cargo xtask test` installs when missing) driven over the Chrome DevTools Protocol
//! against the real agent tracing the vLLM stand-in on a fake GPU (gpu/fake-nvml). The table must
//! fill with the requests made, a filter must narrow it, a request's waterfall must put its
//! first-token tick where the span's TTFT says, the GPU series must be drawn, and a loss the test
//! causes must show as a warning. Screenshots land in `target/page-artifacts/`.
//!
//! Positions are read from the DOM (`getBoundingClientRect`) with a device scale factor of 1:
//! the first-token tick must sit within [`PIXEL_TOLERANCE`] of where the bar's own extent (span
//! start → end) and the span's TTFT put it.
//!
//! Run: `cargo xtask build && cargo test --release -p infertap-tests --test page` (as root).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use infertap_tests::fake_nvml::{Device, FakeNvml, Process, Series, Timeline};
use infertap_tests::harness::{
    attr, begin, client, one_span_for, poll, Agent, Proc, StandIn, StandInOpts, TestCtx,
};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Where the first-token tick may sit from where the span says, in CSS pixels (the line is 2 px
/// wide and coordinates are rounded to 0.1 px).
const PIXEL_TOLERANCE: f64 = 2.0;
const WAIT: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/bin/chromium";

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One Hopper GPU running `pid`: utilisation changing every 0.25 s, power stepping each second.
fn timeline(pid: u32) -> Timeline {
    let util: Vec<(f64, f64)> = (0..2_400u64)
        .map(|k| (k as f64 * 0.25 - 30.0, 10.0 + ((k * 37) % 86) as f64))
        .collect();
    let power: Vec<(f64, f64)> = (0..600u64)
        .map(|k| {
            (
                k as f64 - 30.0,
                if k % 2 == 0 { 200_000.0 } else { 300_000.0 },
            )
        })
        .collect();
    let gpu = Device {
        gpu_util: Series::steps(&util),
        mem_util: Series::constant(35.0),
        power_mw: Series::steps(&power),
        energy_start_mj: 5_000_000,
        dram_bw_util: Series::constant(55.0),
        processes: vec![Process {
            pid,
            used_memory_bytes: Series::constant((20u64 << 30) as f64),
            ..Process::default()
        }],
        ..Device::default()
    };
    let mut t = Timeline::new(vec![gpu]);
    t.sample_period_us = 166_667;
    t.anchor_unix_us = Some(now_us());
    t
}

/// A minimal CDP client: one page target, commands answered in order over its WebSocket.
struct Browser {
    proc: Proc,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The page's session: commands carry it once attached.
    session: Option<String>,
}

impl Browser {
    fn start(ctx: &TestCtx) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: `cargo xtask test` installs Debian's chromium (or apt-get install chromium)"
        );
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1400,1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            ctx.file("chromium").display()
        ))
        .arg("about:blank");
        let proc = Proc::spawn("chromium", cmd, ctx.file("chromium.log"));
        // The browser's own endpoint; a page target is created and attached to as a flat session.
        let url = poll(Duration::from_secs(30), || {
            let log = proc.log_text();
            let rest = log.split("DevTools listening on ").nth(1)?;
            Some(rest.lines().next()?.trim().to_string())
        })
        .unwrap_or_else(|| panic!("chromium did not listen for CDP:\n{}", proc.log_text()));
        let (ws, _) = tungstenite::connect(url.as_str()).expect("CDP WebSocket");
        let mut b = Browser {
            proc,
            ws,
            next_id: 1,
            session: None,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let session = b.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = Some(
            session["sessionId"]
                .as_str()
                .expect("a session")
                .to_string(),
        );
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends a command and returns its `result` (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let msg = msg.to_string();
        self.ws.send(Message::text(msg)).expect("CDP send");
        loop {
            let m = self.ws.read().expect("CDP read");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("CDP JSON");
            if v["id"] == id {
                if !v["error"].is_null() {
                    panic!("CDP {method}: {}", v["error"]);
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value as JSON.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if !r["exceptionDetails"].is_null() {
            panic!("{expr}: {:#}", r["exceptionDetails"]);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; panics after `timeout` with `what`.
    fn wait_for(&mut self, expr: &str, timeout: Duration, what: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if started.elapsed() > timeout {
                panic!("waited {timeout:?} for {what} ({expr})");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let id = self.next_id;
        let _ = self.ws.send(Message::text(
            json!({"id": id, "method": "Browser.close"}).to_string(),
        ));
        let _ = poll(Duration::from_secs(5), || self.proc.exited());
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/page-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One 1 MB chat request over a raw connection, through a 64 KiB ring buffer: the kernel drops
/// records of its body, which the agent counts as lost bytes.
fn big_request(port: u16) {
    let body = json!({
        "model": "standin-model",
        "messages": [{"role": "user", "content": "word ".repeat(200_000)}],
        "max_tokens": 2,
    })
    .to_string();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
}

#[test]
fn the_page_shows_requests_over_the_gpu_timeline_and_warns_of_loss() {
    let Some(ctx) = begin("the_page_shows_requests_over_the_gpu_timeline_and_warns_of_loss") else {
        return;
    };
    let started = Instant::now();
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: 150,
            token_interval_ms: 30,
            // vLLM's per-request metrics in each stream's final chunk: the server's phases.
            env: vec![("STANDIN_PER_REQUEST_METRICS".into(), "1".into())],
            ..StandInOpts::default()
        },
    );
    let fake = FakeNvml::install(&ctx.file("nvml"), timeline(server.pid()));
    let lib = fake.lib.display().to_string();
    let agent = Agent::start(
        &ctx,
        &server,
        &["--nvml-lib", &lib, "--ring-buffer-size", "65536"],
        &[],
    );

    let streamed = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "4",
            "--max-tokens",
            "12",
        ],
    );
    let cancelled = client(&ctx, &server, &["--scenario", "cancel", "--count", "1"]);
    let errored = client(
        &ctx,
        &server,
        &["--scenario", "stream-error", "--count", "1"],
    );
    let records: Vec<Value> = [&streamed[..], &cancelled[..], &errored[..]].concat();
    let spans = agent.wait_spans_for(&records, WAIT);

    // A loss for the health panel to warn of.
    let big: Vec<_> = (0..3)
        .map(|_| {
            let port = server.port;
            thread::spawn(move || big_request(port))
        })
        .collect();
    for b in big {
        b.join().unwrap();
    }
    poll(WAIT, || {
        (agent.status()["records"]["lost_bytes"].as_u64() > Some(0)).then_some(())
    })
    .unwrap_or_else(|| panic!("no bytes lost through a 64 KiB ring: {:#}", agent.status()));

    let mut browser = Browser::start(&ctx);
    let url = format!("http://{}/", agent.debug_addr);
    browser.call("Page.navigate", json!({ "url": url }));

    // The table fills with every request made.
    let ids: Vec<String> = records
        .iter()
        .map(|r| {
            one_span_for(&spans, r)["span_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let ids_json = serde_json::to_string(&ids).unwrap();
    browser.wait_for(
        &format!(
            "(() => {{ const shown = new Set([...document.querySelectorAll('#requests tbody tr')].map(r => r.dataset.spanId));
                 return {ids_json}.every(id => shown.has(id)); }})()"
        ),
        WAIT,
        "every request in the table",
    );
    let rows = browser.eval("document.querySelectorAll('#requests tbody tr').length");
    assert!(rows.as_u64().unwrap() >= ids.len() as u64, "{rows}");

    // Loss is shown as a warning, and on its counter.
    let warning = browser.wait_for(
        "(() => { const w = document.getElementById('loss-warning');
                  return !w.hidden && w.offsetHeight > 0 && w.textContent; })()",
        WAIT,
        "the loss warning",
    );
    assert!(
        warning.as_str().unwrap().contains("bytes lost"),
        "{warning}"
    );
    assert_eq!(
        browser.eval("document.querySelector('[data-key=lost_bytes]').classList.contains('warn')"),
        true
    );
    browser.screenshot(&artifacts().join("table.png"));

    // A filter narrows the table: "cancelled" leaves exactly the cancelled request.
    let cancelled_id = &ids[streamed.len()];
    browser.eval(
        "(() => { const c = document.getElementById('f-cancelled'); c.checked = true;
                  c.dispatchEvent(new Event('change', {bubbles: true})); })()",
    );
    let shown = browser
        .eval("[...document.querySelectorAll('#requests tbody tr')].map(r => r.dataset.spanId)");
    assert_eq!(shown, json!([cancelled_id]), "the cancelled filter");
    browser.eval(
        "(() => { const c = document.getElementById('f-cancelled'); c.checked = false;
                  c.dispatchEvent(new Event('change', {bubbles: true})); })()",
    );

    // A request's view: the waterfall's first-token tick where the span's TTFT says.
    let record = &streamed[0];
    let span = one_span_for(&spans, record);
    let id = span["span_id"].as_str().unwrap();
    let start = span["start_time_unix_nano"].as_u64().unwrap();
    let end = span["end_time_unix_nano"].as_u64().unwrap();
    let ttft = attr(span, "gen_ai.latency.time_to_first_token")
        .as_f64()
        .unwrap();
    let chunks = attr(span, "infertap.content_chunks").as_u64().unwrap();
    browser.eval(&format!(
        "document.querySelector('#requests tbody tr[data-span-id=\"{id}\"]').click()"
    ));
    browser.wait_for(
        "!document.getElementById('request-view').hidden && !!document.getElementById('wf-first-token')",
        WAIT,
        "the request view",
    );
    let geometry = browser.eval(
        "(() => { const r = (e) => e.getBoundingClientRect();
                  const bar = r(document.getElementById('wf-bar'));
                  const ft = r(document.getElementById('wf-first-token'));
                  const ticks = [...document.querySelectorAll('.wf-tick')].map(t => { const b = r(t); return b.left + b.width / 2; });
                  const series = [...document.querySelectorAll('path.gpu-series')].map(p => ({
                      figure: p.dataset.figure, points: Number(p.dataset.points), d: p.getAttribute('d').length }));
                  const phase = (n) => { const e = document.getElementById('wf-phase-' + n); if (!e) return null; const b = r(e); return { left: b.left, right: b.right }; };
                  return { barLeft: bar.left, barWidth: bar.width, ft: ft.left + ft.width / 2, ticks, series,
                           prefill: phase('prefill'), queue: phase('queue'), decode: phase('decode') }; })()",
    );
    let f = |k: &str| geometry[k].as_f64().unwrap();
    let duration = (end - start) as f64 / 1e9;
    let expected = f("barLeft") + ttft / duration * f("barWidth");
    assert!(
        (f("ft") - expected).abs() <= PIXEL_TOLERANCE,
        "first-token tick at {} px, the span's TTFT {ttft} s of {duration} s puts it at {expected} px: {geometry:#}",
        f("ft")
    );
    let ticks = geometry["ticks"].as_array().unwrap();
    assert_eq!(ticks.len() as u64, chunks, "one tick per content chunk");
    let first_tick = ticks[0].as_f64().unwrap();
    assert!(
        (first_tick - expected).abs() <= PIXEL_TOLERANCE,
        "the first chunk is the first token: {first_tick} vs {expected}"
    );
    // Ticks in time order, inside the bar.
    let xs: Vec<f64> = ticks.iter().map(|t| t.as_f64().unwrap()).collect();
    assert!(xs.windows(2).all(|w| w[0] <= w[1] + 0.01), "{xs:?}");
    assert!(*xs.last().unwrap() <= f("barLeft") + f("barWidth") + PIXEL_TOLERANCE);

    // The server's phases: prefill ends at the first token, the queue before it, decode after.
    let secs = |k: &str| {
        attr(span, k)
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {span:#}"))
    };
    let px_per_s = f("barWidth") / duration;
    let phase = |n: &str, edge: &str| {
        geometry[n][edge]
            .as_f64()
            .unwrap_or_else(|| panic!("no {n} phase drawn: {geometry:#}"))
    };
    assert!(
        (phase("prefill", "right") - expected).abs() <= PIXEL_TOLERANCE,
        "prefill ends at the first token: {geometry:#}"
    );
    let prefill_px = secs("gen_ai.latency.time_in_model_prefill") * px_per_s;
    assert!(
        (phase("prefill", "right") - phase("prefill", "left") - prefill_px).abs()
            <= PIXEL_TOLERANCE,
        "prefill {prefill_px} px wide: {geometry:#}"
    );
    assert!((phase("queue", "right") - phase("prefill", "left")).abs() <= PIXEL_TOLERANCE);
    assert!((phase("decode", "left") - expected).abs() <= PIXEL_TOLERANCE);

    // The GPU series are drawn over the same window.
    let series = geometry["series"].as_array().unwrap();
    for figure in ["gpu_utilization", "power"] {
        let s = series
            .iter()
            .find(|s| s["figure"] == figure)
            .unwrap_or_else(|| panic!("no {figure} series drawn: {geometry:#}"));
        assert!(
            s["points"].as_u64().unwrap() >= 2 && s["d"].as_u64().unwrap() > 20,
            "{s}"
        );
    }
    browser.eval("document.getElementById('request-view').scrollIntoView()");
    browser.screenshot(&artifacts().join("request.png"));
    eprintln!("page test took {:?}", started.elapsed());
}
