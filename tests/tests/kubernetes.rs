//! Kubernetes mode end to end, as root: the real agent (`--mode kubernetes`) against a Kubernetes
//! API stand-in on loopback (`infertap_tests::kube_standin`: namespace and pod lists and watch
//! streams in the real JSON shapes), with the vLLM stand-in running in real cgroups named as the
//! kubelet names them (`infertap_tests::pod_cgroup`), the real `openai` client, and a real OTLP
//! receiver.
//!
//! The agent reaches the stand-in through a kubeconfig (`KUBECONFIG`) naming `http://127.0.0.1:…`:
//! `kube::Config::infer` reads a kubeconfig first, and its client speaks plain HTTP to such a
//! server; the in-cluster path (service host and port, token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount/`) would need HTTPS and those fixed files.
//!
//! Run: `cargo test --release -p infertap-tests --test kubernetes -- --nocapture` (as root).

use std::time::{Duration, Instant};

use infertap_tests::harness::{
    self, attr, client, free_port, one_span_for, random_hex, Agent, Receiver, StandIn, StandInOpts,
    TestCtx,
};
use infertap_tests::kube_standin::{KubeApi, PodSpec};
use infertap_tests::pod_cgroup::{Layout, PodCgroup};
use serde_json::Value;

const NODE: &str = "gpu-node-7";
const LABEL: &str = "infertap.io/enabled";
const SPANS_WAIT: Duration = Duration::from_secs(20);

/// A random pod UID.
fn uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The agent in Kubernetes mode, pointed at `api` through a kubeconfig, on node [`NODE`].
fn start_agent(ctx: &TestCtx, api: &KubeApi, env: &[(&str, String)]) -> Agent {
    let kubeconfig = ctx.file("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let mut all: Vec<(&str, String)> = vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("NODE_NAME", NODE.to_string()),
    ];
    all.extend(env.iter().cloned());
    let agent = Agent::start_in_mode(ctx, "kubernetes", &[], &all, None);
    // Both watches have listed once.
    let synced = harness::poll(Duration::from_secs(15), || {
        (agent.status()["kubernetes"]["synced"] == Value::Bool(true)).then_some(())
    });
    assert!(
        synced.is_some(),
        "the agent did not sync with the API stand-in within 15 s: {:#}",
        agent.status()["kubernetes"]
    );
    agent
}

fn targeted(agent: &Agent, pid: u32) -> Option<Value> {
    agent.status()["targets"]
        .as_array()?
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
}

/// Polls until `pid` is (or is no longer) a target; gives the time it took.
fn wait_targeted(agent: &Agent, pid: u32, want: bool, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    harness::poll(timeout, || {
        (targeted(agent, pid).is_some() == want).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "pid {pid} was {}a target after {timeout:?}: {:#}",
            if want { "not " } else { "still " },
            agent.status()
        )
    });
    t0.elapsed()
}

fn k8s_status(agent: &Agent) -> Value {
    agent.status()["kubernetes"].clone()
}

#[test]
fn namespace_label_opts_in_spans_carry_the_pod_and_an_api_outage_keeps_tracing() {
    let Some(ctx) = harness::begin("kubernetes_opt_in") else {
        return;
    };
    let receiver = Receiver::start();
    let api = KubeApi::start_new();
    let mut api = api;
    api.add_namespace("llm", &[("team", "inference")]);
    api.add_namespace("batch", &[(LABEL, "true")]);

    // A vLLM stand-in in the cgroup of container "vllm" of a Deployment's pod (systemd driver,
    // cgroup v2), in a namespace that has not opted in.
    let server = StandIn::start(&ctx, StandInOpts::default());
    let pod_uid = uid();
    let container_id = random_hex(32);
    let cgroup = PodCgroup::create(Layout::SystemdV2, &pod_uid, &container_id)
        .expect("this machine has no cgroup v2 hierarchy");
    cgroup.add(server.pid());
    let pod = PodSpec::deployment(
        "llm",
        "vllm-llama",
        "7c9d8f6b5",
        "x2kq9",
        &pod_uid,
        NODE,
        &[("vllm", &container_id), ("sidecar", &random_hex(32))],
    );
    api.add_pod(&pod);
    // Another node's pod with the same container: the field selector keeps it away.
    let mut elsewhere = pod.clone();
    elsewhere.name = "vllm-llama-7c9d8f6b5-other".into();
    elsewhere.uid = uid();
    elsewhere.node = "gpu-node-8".into();
    api.add_pod(&elsewhere);

    let agent = start_agent(&ctx, &api, &receiver.agent_env());
    let st = k8s_status(&agent);
    assert_eq!(st["connected"], Value::Bool(true), "{st:#}");
    assert_eq!(st["node"], NODE);
    assert_eq!(st["watched_namespaces"], serde_json::json!(["batch"]));
    assert_eq!(st["pods_on_node"], 1, "{st:#}");
    assert_eq!(st["opted_in_pods"], serde_json::json!([]));
    // Not opted in: not traced, no spans.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        targeted(&agent, server.pid()).is_none(),
        "{:#}",
        agent.status()
    );
    client(&ctx, &server, &["--scenario", "chat-stream"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.spans().is_empty(), "{:#?}", agent.spans());

    // Opt in: traced within two seconds.
    let t0 = Instant::now();
    api.label_namespace("llm", LABEL, Some("true"));
    wait_targeted(&agent, server.pid(), true, Duration::from_secs(5));
    let took = t0.elapsed();
    println!(
        "labelling the namespace → pid {} traced in {took:?}",
        server.pid()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let target = targeted(&agent, server.pid()).unwrap();
    assert_eq!(
        target["reason"],
        format!("pod llm/{} container vllm: cmdline", pod.name),
        "{target:#}"
    );

    // Spans carry the pod, on /spans and over OTLP; metrics get namespace and pod labels only.
    let records = client(
        &ctx,
        &server,
        &["--scenario", "chat-stream", "--count", "2"],
    );
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    let want = [
        ("k8s.namespace.name", "llm".to_string()),
        ("k8s.pod.name", pod.name.clone()),
        ("k8s.pod.uid", pod_uid.clone()),
        ("k8s.container.name", "vllm".to_string()),
        ("k8s.node.name", NODE.to_string()),
        ("k8s.deployment.name", "vllm-llama".to_string()),
        ("k8s.replicaset.name", "vllm-llama-7c9d8f6b5".to_string()),
    ];
    let mut ids = Vec::new();
    for rec in &records {
        let span = one_span_for(&spans, rec);
        for (k, v) in &want {
            assert_eq!(attr(span, k), v, "{k} on {span:#}");
        }
        ids.push(span["span_id"].as_str().unwrap().to_string());
    }
    for s in receiver.wait_for_ids(&ids, SPANS_WAIT) {
        if ids.contains(&s.span_id) {
            for (k, v) in &want {
                assert_eq!(s.attributes[*k], *v, "{k} over OTLP: {s:#?}");
            }
        }
    }
    let metrics = agent.metrics();
    let labelled = format!("k8s_namespace_name=\"llm\",k8s_pod_name=\"{}\"", pod.name);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("gen_ai_server_request_duration_seconds_count")
                && l.contains(&labelled)
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(&pod_uid), "the pod uid is never a label");
    let st = k8s_status(&agent);
    assert_eq!(
        st["watched_namespaces"],
        serde_json::json!(["batch", "llm"])
    );
    assert_eq!(
        st["opted_in_pods"],
        serde_json::json!([format!("llm/{}", pod.name)])
    );

    // The API server goes away: the agent says so and keeps tracing.
    api.stop();
    let lost = harness::poll(Duration::from_secs(15), || {
        (k8s_status(&agent)["connected"] == Value::Bool(false)).then_some(())
    });
    assert!(lost.is_some(), "{:#}", k8s_status(&agent));
    let st = k8s_status(&agent);
    assert!(st["last_error"].as_str().is_some(), "{st:#}");
    println!("while the API is away: {}", st["last_error"]);
    let during = client(&ctx, &server, &["--scenario", "chat-stream"]);
    let spans = agent.wait_spans_for(&during, SPANS_WAIT);
    assert_eq!(
        attr(one_span_for(&spans, &during[0]), "k8s.pod.name"),
        &pod.name
    );
    assert!(targeted(&agent, server.pid()).is_some());
    std::thread::sleep(Duration::from_secs(3));

    // It comes back: the agent says so, and both watchers resume by themselves (after their
    // backoff: 0.8 s doubling, jittered, at most 30 s) and follow changes again.
    let (_, watches_before) = api.requests();
    let t0 = Instant::now();
    api.start();
    let back = harness::poll(Duration::from_secs(45), || {
        (k8s_status(&agent)["connected"] == Value::Bool(true)).then_some(())
    });
    assert!(
        back.is_some(),
        "not reconnected after 45 s: {:#}",
        k8s_status(&agent)
    );
    println!("API back → /status connected again in {:?}", t0.elapsed());
    let resumed = harness::poll(Duration::from_secs(45), || {
        (api.requests().1 >= watches_before + 2).then_some(())
    });
    assert!(resumed.is_some(), "the watches did not resume within 45 s");
    println!("API back → both watches resumed in {:?}", t0.elapsed());

    // Unlabelling stops tracing: no longer a target, no new spans, not in /status.
    let t0 = Instant::now();
    api.label_namespace("llm", LABEL, None);
    wait_targeted(&agent, server.pid(), false, Duration::from_secs(5));
    let took = t0.elapsed();
    println!(
        "unlabelling → pid {} no longer traced in {took:?}",
        server.pid()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let before = agent.spans().len();
    client(
        &ctx,
        &server,
        &["--scenario", "chat-stream", "--count", "2"],
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(agent.spans().len(), before, "spans after unlabelling");
    let st = k8s_status(&agent);
    assert_eq!(st["watched_namespaces"], serde_json::json!(["batch"]));
    assert_eq!(st["opted_in_pods"], serde_json::json!([]));
    drop(cgroup);
}

#[test]
fn new_pods_are_traced_within_two_seconds_annotations_override_and_deletion_stops() {
    let Some(ctx) = harness::begin("kubernetes_pods") else {
        return;
    };
    let api = KubeApi::start_new();
    api.add_namespace("llm", &[(LABEL, "true")]);
    let agent = start_agent(&ctx, &api, &[]);

    // Pod A: a StatefulSet's pod, cgroupfs driver on cgroup v1 where this machine has that
    // hierarchy (else the systemd driver on v2).
    let layout = if infertap_tests::pod_cgroup::mount_point(Layout::CgroupfsV1).is_some() {
        Layout::CgroupfsV1
    } else {
        Layout::SystemdV2
    };
    let a_uid = uid();
    let a_cid = random_hex(32);
    let a = PodSpec {
        namespace: "llm".into(),
        name: "sglang-0".into(),
        uid: a_uid.clone(),
        node: NODE.into(),
        labels: vec![("app".into(), "sglang".into())],
        annotations: Vec::new(),
        owner: Some(("StatefulSet".into(), "sglang".into())),
        containers: vec![("server".into(), a_cid.clone())],
    };
    api.add_pod(&a);
    let a_cg = PodCgroup::create(layout, &a_uid, &a_cid).expect("cgroup hierarchy");
    let server_a = StandIn::start(&ctx, StandInOpts::default());
    let t0 = Instant::now();
    a_cg.add(server_a.pid());
    wait_targeted(&agent, server_a.pid(), true, Duration::from_secs(5));
    let took = t0.elapsed();
    println!("{layout:?}: a new pod's process (moved into its cgroup) traced in {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Pod B says `infertap.io/target: "false"`: its vLLM is left alone.
    let b_uid = uid();
    let b_cid = random_hex(32);
    let server_b = StandIn::start(&ctx, StandInOpts::default());
    let mut b = PodSpec::deployment(
        "llm",
        "vllm",
        "5d4f7",
        "abcde",
        &b_uid,
        NODE,
        &[("vllm", &b_cid)],
    );
    b.annotations = vec![("infertap.io/target".into(), "false".into())];
    api.add_pod(&b);
    let b_cg = PodCgroup::create(Layout::SystemdV2, &b_uid, &b_cid).expect("cgroup v2");
    b_cg.add(server_b.pid());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        targeted(&agent, server_b.pid()).is_none(),
        "{:#}",
        agent.status()
    );
    // Changed to name its port instead: traced, by port.
    b.annotations = vec![(
        "infertap.io/ports".into(),
        format!("{},{}", free_port(), server_b.port),
    )];
    api.add_pod(&b);
    wait_targeted(&agent, server_b.pid(), true, Duration::from_secs(2));
    let reason = targeted(&agent, server_b.pid()).unwrap()["reason"].clone();
    assert_eq!(
        reason,
        format!(
            "pod llm/{} container vllm: annotation port {}",
            b.name, server_b.port
        )
    );

    let records = client(&ctx, &server_a, &["--scenario", "chat-stream"]);
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    let span = one_span_for(&spans, &records[0]);
    assert_eq!(attr(span, "k8s.pod.name"), "sglang-0");
    assert_eq!(attr(span, "k8s.statefulset.name"), "sglang");
    assert_eq!(attr(span, "k8s.container.name"), "server");
    assert_eq!(attr(span, "k8s.pod.uid"), a_uid.as_str());
    assert!(attr(span, "k8s.deployment.name").is_null());

    // Pod A deleted: no longer traced, no new spans.
    let t0 = Instant::now();
    api.delete_pod("llm", "sglang-0");
    wait_targeted(&agent, server_a.pid(), false, Duration::from_secs(5));
    let took = t0.elapsed();
    println!("pod deleted → no longer traced in {took:?}");
    assert!(took < Duration::from_secs(2));
    let before = agent.spans().len();
    client(&ctx, &server_a, &["--scenario", "chat-stream"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        agent.spans().len(),
        before,
        "spans after the pod was deleted"
    );

    // Pod B's process exits: forgotten.
    let pid_b = server_b.pid();
    drop(server_b);
    wait_targeted(&agent, pid_b, false, Duration::from_secs(2));
    assert!(agent.status()["targets"].as_array().unwrap().is_empty());
    drop((a_cg, b_cg));
}

/// CPU seconds (user + system) and RSS of a process, from /proc.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime) of stat(5), counted from the state (field 3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = clock_ticks_per_second();
    (ticks as f64 / hz, harness::rss_kib(pid) * 1024)
}

/// `sysconf(_SC_CLK_TCK)`, through `getconf CLK_TCK`.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[test]
fn idle_cost_with_a_hundred_pods_on_the_node() {
    let Some(ctx) = harness::begin("kubernetes_idle_cost") else {
        return;
    };
    let api = KubeApi::start_new();
    // 100 pods of this node in 10 opted-in namespaces (and 50 of another node, kept away by the
    // field selector); two of them run a real vLLM stand-in.
    let mut pods = Vec::new();
    for n in 0..10 {
        let ns = format!("team-{n}");
        api.add_namespace(&ns, &[(LABEL, "true")]);
        for p in 0..15 {
            let node = if p < 10 { NODE } else { "gpu-node-8" };
            let spec = PodSpec::deployment(
                &ns,
                &format!("model-{p}"),
                "6b8d9c7f4",
                &random_hex(3),
                &uid(),
                node,
                &[("vllm", &random_hex(32))],
            );
            api.add_pod(&spec);
            if node == NODE {
                pods.push(spec);
            }
        }
    }
    let mut servers = Vec::new();
    let mut cgroups = Vec::new();
    for spec in pods.iter().take(2) {
        let server = StandIn::start(&ctx, StandInOpts::default());
        let cg = PodCgroup::create(Layout::SystemdV2, &spec.uid, &spec.containers[0].1)
            .expect("cgroup v2");
        cg.add(server.pid());
        servers.push(server);
        cgroups.push(cg);
    }
    let agent = start_agent(&ctx, &api, &[]);
    for s in &servers {
        wait_targeted(&agent, s.pid(), true, Duration::from_secs(5));
    }
    let st = k8s_status(&agent);
    assert_eq!(st["pods_on_node"], 100, "{st:#}");
    assert_eq!(st["opted_in_pods"].as_array().unwrap().len(), 100);

    // Settle, then measure 30 s of idling.
    std::thread::sleep(Duration::from_secs(3));
    let pid = agent.proc.pid();
    let requests_before = api.requests();
    let (cpu0, _) = cpu_and_rss(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let (cpu1, rss) = cpu_and_rss(pid);
    let wall = t0.elapsed().as_secs_f64();
    let share = (cpu1 - cpu0) / wall * 100.0;
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    println!(
        "idle with 100 pods on the node (2 traced processes, {processes} processes on the machine): \
         CPU {share:.2}% of one core ({:.3} s over {wall:.1} s), RSS {:.1} MiB",
        cpu1 - cpu0,
        rss as f64 / (1024.0 * 1024.0)
    );
    // The watches stayed open: no relist, no new watch, while idle.
    assert_eq!(api.requests(), requests_before, "re-listed while idle");
    // What an operator would notice: more than a few percent of a core, or more memory than the
    // DaemonSet requests (128 MiB).
    assert!(share < 3.0, "idle CPU {share:.2}%");
    assert!(rss < 128 * 1024 * 1024, "RSS {rss}");
    drop(agent);

    // For comparison: the same agent in standalone mode, tracing the same two servers by command
    // line, over the same 30 s.
    let agent = Agent::start_in_mode(&ctx, "standalone", &[], &[], Some(servers[0].pid()));
    wait_targeted(&agent, servers[1].pid(), true, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    let pid = agent.proc.pid();
    let (cpu0, _) = cpu_and_rss(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let (cpu1, rss) = cpu_and_rss(pid);
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "standalone, same two servers: CPU {:.2}% of one core ({:.3} s over {wall:.1} s), RSS {:.1} MiB",
        (cpu1 - cpu0) / wall * 100.0,
        cpu1 - cpu0,
        rss as f64 / (1024.0 * 1024.0)
    );
    drop(servers);
    drop(cgroups);
}
