//! TLS plaintext capture, end to end as root: a Go HTTPS server (`tests/peers/go/tlspeer`, built
//! here with Debian's Go toolchain, normal and stripped; HTTP/1.1 and HTTP/2) and the vLLM stand-in under uvicorn with
//! TLS (OpenSSL), traced by the real agent; spans must come from the decrypted bytes.
//!
//! The site-finding tests (symbols, `.gopclntab`, RET offsets) need only `go`, not root.
//!
//! Run: `cargo test --release -p infertap-tests --test tls -- --test-threads=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use infertap::probes::uprobe::golang::{self, GoTlsSites};
use infertap_tests::harness::{
    self, attr, client, one_span_for, poll, Agent, Proc, StandIn, StandInOpts, TestCtx,
};
use serde_json::Value;

const SPANS_WAIT: Duration = Duration::from_secs(20);

fn peers_go() -> PathBuf {
    harness::paths().peers.join("go")
}

/// Builds tlspeer into `dir` (`-ldflags=-s -w` when `stripped`) and returns the binary's path.
fn build_tlspeer(dir: &Path, stripped: bool) -> PathBuf {
    let out = dir.join(if stripped {
        "tlspeer-stripped"
    } else {
        "tlspeer"
    });
    let mut cmd = Command::new("go");
    cmd.current_dir(peers_go())
        .env("GOCACHE", std::env::temp_dir().join("infertap-gocache"))
        .env("GOPATH", std::env::temp_dir().join("infertap-gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg("./tlspeer");
    let result = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?} failed ({e}): install Go with `cargo xtask setup` (Debian's golang-go)")
    });
    assert!(
        result.status.success(),
        "go build of tlspeer failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn analyze(path: &Path) -> GoTlsSites {
    let data = fs::read(path).unwrap();
    golang::analyze(&data[..])
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{}: no crypto/tls found", path.display()))
}

/// `go tool objdump -s REGEX binary`: the addresses of RET instructions Go's own disassembler
/// lists for one function.
fn objdump_rets(binary: &Path, func: &str) -> Vec<u64> {
    let re = format!("^{}$", regex_escape(func));
    let out = Command::new("go")
        .args(["tool", "objdump", "-s", &re])
        .arg(binary)
        .output()
        .expect("go tool objdump");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "RET"))
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?;
            u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "()*.[]".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Symbols from the symbol table and from `.gopclntab` (stripped build) give the same sites, and
/// the RET sites are exactly the RETs Go's own disassembler lists.
#[test]
fn go_tls_sites_from_symtab_and_gopclntab_agree_with_go_objdump() {
    let dir = std::env::temp_dir().join(format!("infertap-tls-sites-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let normal = build_tlspeer(&dir, false);
    let stripped = build_tlspeer(&dir, true);
    let a = analyze(&normal);
    let b = analyze(&stripped);
    assert_eq!(a.symbols, "symtab");
    assert_eq!(
        b.symbols, "gopclntab",
        "the stripped build has no symbol table"
    );
    assert!(a.version.starts_with("go1."), "{}", a.version);
    assert_eq!(a.version, b.version);
    // The two builds differ in layout (no DWARF, no symtab) but not in code: the functions' sizes
    // and their RETs' offsets from the entry are the same.
    let rel = |s: &golang::FuncSites| s.rets.iter().map(|r| r - s.entry).collect::<Vec<_>>();
    assert_eq!(rel(&a.read), rel(&b.read));
    assert_eq!(rel(&a.write), rel(&b.write));
    assert!(!a.read.rets.is_empty() && !a.write.rets.is_empty());

    // Cross-check against `go tool objdump` (virtual addresses; the text segment of a non-PIE Go
    // binary maps file offset 0 at 0x400000).
    let text_base = 0x400000;
    for (name, sites) in [(golang::READ, &a.read), (golang::WRITE, &a.write)] {
        let want = objdump_rets(&normal, name);
        assert!(!want.is_empty(), "go tool objdump listed no RET in {name}");
        let got: Vec<u64> = sites.rets.iter().map(|o| o + text_base).collect();
        assert_eq!(got, want, "{name}");
    }

    // What the agent reports for binaries it cannot probe: a non-Go binary is simply not Go; a Go
    // binary too old for the function-table layout says so with its version.
    let me = fs::read("/proc/self/exe").unwrap();
    assert_eq!(golang::analyze(&me[..]), Ok(None));
    let mut old = fs::read(&stripped).unwrap();
    let v = a.version.as_bytes();
    let at: Vec<usize> = old
        .windows(v.len())
        .enumerate()
        .filter(|(_, w)| *w == v)
        .map(|(i, _)| i)
        .collect();
    assert!(!at.is_empty(), "the version string is in the binary");
    for i in at {
        old[i..i + 6].copy_from_slice(b"go1.17");
    }
    let err = golang::analyze(&old[..]).unwrap_err().to_string();
    assert!(
        err.contains("go1.17") && err.contains("not supported") && err.contains("go1.18"),
        "{err}"
    );
    // A Go binary whose crypto/tls functions were renamed away has nothing to probe.
    let mut renamed = fs::read(&stripped).unwrap();
    let name = golang::READ.as_bytes();
    let at = renamed
        .windows(name.len() + 1)
        .position(|w| &w[..name.len()] == name && w[name.len()] == 0)
        .expect("the function name in .gopclntab");
    renamed[at] = b'X';
    assert_eq!(golang::analyze(&renamed[..]), Ok(None));
    let _ = fs::remove_dir_all(&dir);
}

/// The Go HTTPS server, listening on a free port of 127.0.0.1.
struct GoServer {
    proc: Proc,
    port: u16,
}

impl GoServer {
    fn start(ctx: &TestCtx, bin: &Path) -> GoServer {
        let ready = ctx.file("tlspeer.ready");
        let mut cmd = Command::new(bin);
        cmd.args(["-mode", "server", "-ready-file"]).arg(&ready);
        let mut proc = Proc::spawn("tlspeer-server", cmd, ctx.file("tlspeer-server.log"));
        let port = poll(Duration::from_secs(15), || {
            if let Some(s) = proc.exited() {
                panic!("the Go server exited ({s}):\n{}", proc.log_text());
            }
            fs::read_to_string(&ready).ok()?.trim().parse::<u16>().ok()
        })
        .expect("the Go server wrote no ready file within 15 s");
        GoServer { proc, port }
    }
}

/// Runs the Go client against `port`; one JSON record per request.
fn go_client(ctx: &TestCtx, bin: &Path, port: u16, args: &[&str]) -> Vec<Value> {
    let out = Command::new(bin)
        .args([
            "-mode",
            "client",
            "-url",
            &format!("https://127.0.0.1:{port}"),
        ])
        .args(args)
        .output()
        .expect("running the Go client");
    assert!(
        out.status.success(),
        "{}: the Go client failed:\n{}",
        ctx.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("client output is JSON lines"))
        .collect()
}

/// Waits until `/status` shows the TLS probes of `library` attached for `pid`; returns the entry.
fn wait_tls_attached(agent: &Agent, pid: u32, library: &str) -> Value {
    poll(Duration::from_secs(15), || {
        agent.status()["tls"]["attachments"]
            .as_array()?
            .iter()
            .find(|a| a["pid"].as_u64() == Some(u64::from(pid)) && a["library"] == library)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "/status did not list {library} TLS probes for pid {pid} within 15 s: {:#}",
            agent.status()["tls"]
        )
    })
}

/// The spans of `records` (by `x-request-id`), waiting for all of them.
fn spans_by_request_id(agent: &Agent, records: &[Value]) -> Vec<Value> {
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    poll(SPANS_WAIT, || {
        let spans = agent.spans();
        let found: Vec<Value> = ids
            .iter()
            .filter_map(|id| {
                spans
                    .iter()
                    .find(|s| attr(s, "gen_ai.request.id").as_str() == Some(id))
                    .cloned()
            })
            .collect();
        (found.len() == ids.len()).then_some(found)
    })
    .unwrap_or_else(|| {
        panic!(
            "waited {SPANS_WAIT:?} for spans of {ids:?}; /spans has {:#?}\n/status: {:#}",
            agent.spans(),
            agent.status()
        )
    })
}

/// Each span matches what the client saw: method, path, status, model, stream, content chunks,
/// and a TTFT between the server's configured delay and what the client measured.
fn check_spans(records: &[Value], spans: &[Value]) {
    for (rec, span) in records.iter().zip(spans) {
        let ctx = format!("{rec}\n{span:#}");
        assert_eq!(rec["status"], 200, "{ctx}");
        assert_eq!(attr(span, "http.request.method"), "POST", "{ctx}");
        assert_eq!(attr(span, "url.path"), "/v1/chat/completions", "{ctx}");
        assert_eq!(attr(span, "http.response.status_code"), 200, "{ctx}");
        assert_eq!(attr(span, "gen_ai.request.model"), &rec["model"], "{ctx}");
        assert_eq!(attr(span, "gen_ai.request.stream"), &rec["stream"], "{ctx}");
        assert_eq!(attr(span, "gen_ai.usage.output_tokens"), 8, "{ctx}");
        assert!(attr(span, "infertap.incomplete").is_null(), "{ctx}");
        if rec["stream"] == true {
            assert_eq!(
                attr(span, "infertap.content_chunks"),
                &rec["content_chunks"],
                "{ctx}"
            );
            let ttft = attr(span, "gen_ai.latency.time_to_first_token")
                .as_f64()
                .unwrap_or_else(|| panic!("no TTFT: {ctx}"));
            let client_ttft = rec["ttft_ms"].as_f64().unwrap() / 1000.0;
            // The server waits 80 ms before the first token; the client sees it a little later.
            assert!(
                (0.075..=client_ttft + 0.005).contains(&ttft),
                "TTFT {ttft} s, client saw {client_ttft} s: {ctx}"
            );
        }
    }
}

fn go_https_spans(name: &str, stripped: bool) {
    let Some(ctx) = harness::begin(name) else {
        return;
    };
    let bin = build_tlspeer(ctx.dir(), stripped);
    let server = GoServer::start(&ctx, &bin);
    let port = server.port.to_string();
    // `--bpf-stats`: the uprobe programs' run counts are checked below (statistics are off by
    // default).
    let agent = Agent::start_with(
        &ctx,
        &["--target-port", &port, "--bpf-stats"],
        &[],
        Some(server.proc.pid()),
    );
    let tls = wait_tls_attached(&agent, server.proc.pid(), "go");
    assert_eq!(tls["attached"], true, "{tls:#}");
    let want = if stripped { "gopclntab" } else { "symtab" };
    assert!(tls["detail"].as_str().unwrap().contains(want), "{tls:#}");

    // HTTP/1.1 over TLS: three streaming requests on one connection, one non-streaming on another,
    // then two connections at once (each TLS object keeps its own socket and positions).
    let mut records = go_client(&ctx, &bin, server.port, &["-n", "3", "-stream=true"]);
    records.extend(go_client(
        &ctx,
        &bin,
        server.port,
        &["-n", "1", "-stream=false"],
    ));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| go_client(&ctx, &bin, server.port, &["-n", "2", "-stream=true"]));
        let b = s.spawn(|| go_client(&ctx, &bin, server.port, &["-n", "2", "-stream=true"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    records.extend(a);
    records.extend(b);
    assert!(
        records.iter().all(|r| r["proto"] == "HTTP/1.1"),
        "{records:?}"
    );
    let spans = spans_by_request_id(&agent, &records);
    check_spans(&records, &spans);
    for span in &spans {
        assert_eq!(attr(span, "server.port"), server.port, "{span:#}");
    }

    // HTTP/2 over TLS (ALPN "h2", Go's default): the plaintext goes through the HTTP/2 decoder.
    let mut h2 = go_client(
        &ctx,
        &bin,
        server.port,
        &["-n", "3", "-stream=true", "-http2"],
    );
    h2.extend(go_client(
        &ctx,
        &bin,
        server.port,
        &["-n", "1", "-stream=false", "-http2"],
    ));
    assert!(h2.iter().all(|r| r["proto"] == "HTTP/2.0"), "{h2:?}");
    let spans = spans_by_request_id(&agent, &h2);
    check_spans(&h2, &spans);
    for span in &spans {
        assert_eq!(attr(span, "server.port"), server.port, "{span:#}");
    }

    let status = agent.status();
    let tls = &status["tls"];
    assert!(tls["records"].as_u64().unwrap() >= 8, "{tls:#}");
    assert_eq!(tls["streams"], 6, "six client connections: {tls:#}");
    assert_eq!(status["http2"]["connections"], 2, "{status:#}");
    assert_eq!(status["http2"]["frame_errors"], 0, "{status:#}");
    // The uprobe programs are listed with the kernel's run statistics.
    for name in ["go_tls_read_enter", "go_tls_write_enter", "go_tls_ret"] {
        let p = poll(Duration::from_secs(5), || {
            agent.status()["probes"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name && p["run_count"].as_u64() > Some(0))
                .cloned()
        });
        assert!(
            p.is_some(),
            "{name} not in /status probes with runs: {status:#}"
        );
    }
    // The ciphertext was never parsed as HTTP.
    assert_eq!(status["http"]["not_http_streams"], 0, "{status:#}");
    assert_eq!(status["http"]["parse_failures"], 0, "{status:#}");
    assert_eq!(
        status["records"]["kernel_dropped"]["tls_unmatched"], 0,
        "{status:#}"
    );
}

#[test]
fn go_https_spans_from_plaintext() {
    go_https_spans("go_https_spans_from_plaintext", false);
}

#[test]
fn go_https_spans_from_plaintext_of_a_stripped_binary() {
    go_https_spans("go_https_spans_from_plaintext_of_a_stripped_binary", true);
}

/// A self-signed certificate for 127.0.0.1 with its key, made by the openssl CLI: (key, cert).
fn self_signed_pem(ctx: &TestCtx) -> (PathBuf, PathBuf) {
    let key = ctx.file("key.pem");
    let cert = ctx.file("cert.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running the openssl CLI");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

/// The vLLM stand-in under uvicorn with `--ssl-keyfile/--ssl-certfile` (Python's ssl module over
/// OpenSSL, through uvloop's memory BIO), the openai SDK verifying against the certificate: the
/// spans come from the plaintext that `SSL_read_ex`/`SSL_write_ex` moved.
#[test]
fn openssl_uvicorn_spans_from_plaintext() {
    let Some(ctx) = harness::begin("openssl_uvicorn_spans_from_plaintext") else {
        return;
    };
    let (key, cert) = self_signed_pem(&ctx);
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            tls: Some((key, cert.clone())),
            ..StandInOpts::default()
        },
    );
    let agent = Agent::start(&ctx, &server, &[], &[]);
    let tls = wait_tls_attached(&agent, server.pid(), "openssl");
    assert_eq!(tls["attached"], true, "{tls:#}");
    assert!(
        tls["path"].as_str().unwrap().contains("libssl.so"),
        "{tls:#}"
    );

    let cert = cert.to_str().unwrap();
    let mut records = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "3",
            "--ca-file",
            cert,
        ],
    );
    records.extend(client(
        &ctx,
        &server,
        &["--scenario", "chat", "--count", "1", "--ca-file", cert],
    ));
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    for rec in &records {
        let span = one_span_for(&spans, rec);
        let ctx_msg = format!("span {span:#}\nclient {rec}");
        assert_eq!(attr(span, "http.request.method"), "POST", "{ctx_msg}");
        assert_eq!(attr(span, "url.path"), "/v1/chat/completions", "{ctx_msg}");
        assert_eq!(attr(span, "http.response.status_code"), 200, "{ctx_msg}");
        assert_eq!(
            attr(span, "gen_ai.request.model"),
            &rec["model"],
            "{ctx_msg}"
        );
        assert_eq!(
            attr(span, "gen_ai.request.id"),
            &rec["request_id"],
            "{ctx_msg}"
        );
        assert_eq!(
            attr(span, "gen_ai.usage.output_tokens"),
            &rec["usage"]["completion_tokens"],
            "{ctx_msg}"
        );
        assert!(attr(span, "infertap.incomplete").is_null(), "{ctx_msg}");
        if rec["stream"] == true {
            assert_eq!(
                attr(span, "infertap.content_chunks"),
                &rec["chunks"],
                "{ctx_msg}"
            );
            let ttft = attr(span, "gen_ai.latency.time_to_first_token")
                .as_f64()
                .unwrap_or_else(|| panic!("no TTFT: {ctx_msg}"));
            // The stand-in's prefill is 50 ms.
            assert!((0.045..1.0).contains(&ttft), "TTFT {ttft}: {ctx_msg}");
        }
    }
    let status = agent.status();
    assert!(
        status["tls"]["records"].as_u64().unwrap() >= 8,
        "{:#}",
        status["tls"]
    );
    assert_eq!(status["http"]["not_http_streams"], 0, "{status:#}");
    assert_eq!(status["http"]["parse_failures"], 0, "{status:#}");
}
