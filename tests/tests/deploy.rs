//! The Kubernetes manifests, as a cluster would receive them: `kubectl kustomize deploy/kubernetes`
//! (and the `privileged` fallback overlay) rendered, every object read into its k8s-openapi type
//! strictly (a field the API type does not have is an error: k8s-openapi itself ignores unknown
//! fields, so each object is round-tripped and compared), and the security-relevant fields checked
//! against what docs/kubernetes.md promises. The checker is also shown to reject mutated copies.
//!
//! Not root-only. Skipped, with the reason printed, where `kubectl` is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Added to an otherwise empty set; each one's reason is in docs/kubernetes.md. Not
/// `SYS_RESOURCE`: on the kernels the agent needs (≥ 5.12) BPF memory is charged to the cgroup,
/// not to `RLIMIT_MEMLOCK`.
const CAPABILITIES: [&str; 4] = ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"];
/// The metrics listener's port (`/metrics` only), the one port the pod declares.
const METRICS_PORT: u16 = 9465;
const KINDS: [&str; 6] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "DaemonSet",
    "Namespace",
    "ServiceAccount",
];
/// hostPath → (mount path in the container, name). Nothing else of the host is mounted.
const HOST_PATHS: [(&str, &str, &str); 4] = [
    ("/sys/kernel/tracing", "/sys/kernel/tracing", "tracefs"),
    ("/sys/kernel/btf", "/sys/kernel/btf", "btf"),
    ("/sys/fs/cgroup", "/host/sys/fs/cgroup", "cgroup"),
    (
        "/usr/lib/x86_64-linux-gnu",
        "/host/nvidia/lib",
        "nvidia-lib",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl_missing() -> Option<String> {
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`kubectl version --client` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("kubectl is not on PATH ({e})")),
    }
}

macro_rules! need_kubectl {
    () => {
        if let Some(why) = kubectl_missing() {
            eprintln!("SKIPPED: {why}; the manifests in deploy/kubernetes were not checked");
            return Ok(());
        }
    };
}

/// The YAML documents of `kubectl kustomize <dir>`, as JSON values.
fn render(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("YAML from {dir}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    ensure!(!docs.is_empty(), "{dir} rendered no objects");
    Ok(docs)
}

/// The first place where `typed` (the value after a trip through the API type) lacks or changes
/// something of `raw`: a misspelled or misplaced field, or a value of the wrong shape.
fn first_loss(raw: &Value, typed: &Value, path: &str) -> Option<String> {
    match (raw, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}.{k}: not a field of the API type")),
            Some(w) => first_loss(v, w, &format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_loss(v, w, &format!("{path}[{i}]"))),
        _ if raw == typed => None,
        _ => Some(format!("{path}: {raw} became {typed}")),
    }
}

fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T> {
    let t: T = serde_json::from_value(v.clone())?;
    if let Some(loss) = first_loss(v, &serde_json::to_value(&t)?, "") {
        bail!("{loss}");
    }
    Ok(t)
}

#[derive(Default)]
struct Objects {
    kinds: Vec<String>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn parse(docs: &[Value]) -> Result<Objects> {
    let mut o = Objects::default();
    for d in docs {
        let kind = d["kind"].as_str().context("an object without kind")?;
        let name = d["metadata"]["name"].as_str().unwrap_or("?");
        let ctx = || format!("{kind} {name}");
        match kind {
            "Namespace" => o.namespaces.push(strict(d).with_context(ctx)?),
            "ServiceAccount" => o.service_accounts.push(strict(d).with_context(ctx)?),
            "ClusterRole" => o.cluster_roles.push(strict(d).with_context(ctx)?),
            "ClusterRoleBinding" => o.bindings.push(strict(d).with_context(ctx)?),
            "ConfigMap" => o.config_maps.push(strict(d).with_context(ctx)?),
            "DaemonSet" => o.daemon_sets.push(strict(d).with_context(ctx)?),
            other => bail!("unexpected kind {other} ({name})"),
        }
        o.kinds.push(kind.to_string());
    }
    Ok(o)
}

fn one<'a, T>(v: &'a [T], what: &str) -> Result<&'a T> {
    ensure!(
        v.len() == 1,
        "expected exactly one {what}, found {}",
        v.len()
    );
    Ok(&v[0])
}

fn strs(v: &Option<Vec<String>>) -> BTreeSet<&str> {
    v.iter().flatten().map(String::as_str).collect()
}

fn check_rbac(o: &Objects) -> Result<()> {
    let sa = one(&o.service_accounts, "ServiceAccount")?;
    let role = one(&o.cluster_roles, "ClusterRole")?;
    let binding = one(&o.bindings, "ClusterRoleBinding")?;
    ensure!(
        role.aggregation_rule.is_none(),
        "the ClusterRole aggregates others"
    );
    let rules = role.rules.as_deref().unwrap_or_default();
    ensure!(rules.len() == 1, "ClusterRole rules: {rules:?}");
    let r = &rules[0];
    ensure!(
        strs(&r.api_groups) == BTreeSet::from([""]),
        "apiGroups {:?}",
        r.api_groups
    );
    ensure!(
        strs(&r.resources) == BTreeSet::from(["namespaces", "pods"]),
        "resources {:?}",
        r.resources
    );
    let verbs: BTreeSet<&str> = r.verbs.iter().map(String::as_str).collect();
    let read = BTreeSet::from(["get", "list", "watch"]);
    ensure!(
        verbs.is_subset(&read),
        "verbs beyond get/list/watch: {verbs:?}"
    );
    ensure!(verbs == read, "verbs {verbs:?}");
    ensure!(
        r.resource_names.is_none() && r.non_resource_urls.is_none(),
        "rule {r:?}"
    );

    ensure!(
        binding.role_ref.kind == "ClusterRole"
            && binding.role_ref.api_group == "rbac.authorization.k8s.io"
            && Some(&binding.role_ref.name) == role.metadata.name.as_ref(),
        "roleRef {:?}",
        binding.role_ref
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    ensure!(subjects.len() == 1, "subjects {subjects:?}");
    let s = &subjects[0];
    ensure!(
        s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace,
        "the binding's subject {s:?} is not the ServiceAccount {:?}/{:?}",
        sa.metadata.namespace,
        sa.metadata.name
    );
    let ns = one(&o.namespaces, "Namespace")?;
    ensure!(
        sa.metadata.namespace == ns.metadata.name,
        "ServiceAccount outside the namespace"
    );
    Ok(())
}

fn env<'a>(c: &'a Container, name: &str) -> Result<&'a k8s_openapi::api::core::v1::EnvVar> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .with_context(|| format!("no env {name}"))
}

fn env_value<'a>(c: &'a Container, name: &str) -> Result<&'a str> {
    env(c, name)?
        .value
        .as_deref()
        .with_context(|| format!("env {name} has no value"))
}

fn check_pod(pod: &PodSpec, o: &Objects, privileged: bool) -> Result<()> {
    let sa = one(&o.service_accounts, "ServiceAccount")?;
    ensure!(pod.host_pid == Some(true), "hostPID must be true");
    ensure!(pod.host_ipc != Some(true), "hostIPC");
    // The pod's own network namespace: the debug endpoint on its loopback is reachable only
    // through `kubectl port-forward`.
    ensure!(
        pod.host_network != Some(true),
        "hostNetwork must not be set"
    );
    ensure!(
        pod.dns_policy.as_deref() != Some("ClusterFirstWithHostNet"),
        "dnsPolicy for hostNetwork"
    );
    ensure!(
        pod.service_account_name == sa.metadata.name,
        "serviceAccountName"
    );
    ensure!(
        pod.automount_service_account_token == Some(true),
        "automountServiceAccountToken"
    );
    ensure!(
        pod.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName"
    );
    ensure!(
        pod.termination_grace_period_seconds == Some(10),
        "terminationGracePeriodSeconds"
    );
    let selector: BTreeMap<&str, &str> = pod
        .node_selector
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ensure!(
        selector == BTreeMap::from([("nvidia.com/gpu.present", "true")]),
        "nodeSelector {selector:?}"
    );
    ensure!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                && t.effect.as_deref() == Some("NoSchedule")
                && t.operator.as_deref() == Some("Exists")),
        "no toleration for nvidia.com/gpu:NoSchedule"
    );

    ensure!(pod.containers.len() == 1, "one container");
    ensure!(pod.init_containers.is_none(), "init containers");
    let c = &pod.containers[0];

    // Security context.
    let sc = c.security_context.as_ref().context("no securityContext")?;
    if privileged {
        ensure!(
            sc.privileged == Some(true),
            "the overlay must be privileged"
        );
    } else {
        ensure!(sc.privileged == Some(false), "privileged must be false");
        ensure!(
            sc.allow_privilege_escalation == Some(false),
            "allowPrivilegeEscalation"
        );
        let caps = sc.capabilities.as_ref().context("no capabilities")?;
        ensure!(
            strs(&caps.drop) == BTreeSet::from(["ALL"]),
            "drop {:?}",
            caps.drop
        );
        ensure!(
            strs(&caps.add) == BTreeSet::from(CAPABILITIES),
            "capabilities added {:?}, documented {CAPABILITIES:?}",
            caps.add
        );
        ensure!(
            caps.add.as_ref().map(Vec::len) == Some(CAPABILITIES.len()),
            "a capability added twice"
        );
        ensure!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"),
            "seccompProfile"
        );
    }
    ensure!(
        sc.read_only_root_filesystem == Some(true),
        "readOnlyRootFilesystem"
    );
    ensure!(
        pod.security_context
            .as_ref()
            .and_then(|p| p.sysctls.as_ref())
            .is_none(),
        "sysctls"
    );

    // Volumes: exactly the documented host paths, each mounted where documented; read-only in
    // the base (the privileged overlay may mount tracefs itself over a writable tracefs mount).
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host: BTreeMap<&str, &str> = volumes
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let want: BTreeMap<&str, &str> = HOST_PATHS.iter().map(|(p, _, n)| (*n, *p)).collect();
    ensure!(
        host == want,
        "hostPath volumes {host:?}, documented {want:?}"
    );
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    for (path, at, name) in HOST_PATHS {
        let m = mounts
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("volume {name} ({path}) is not mounted"))?;
        ensure!(
            m.mount_path == at,
            "{name} mounted at {}, not {at}",
            m.mount_path
        );
        let may_write = privileged && name == "tracefs";
        ensure!(
            may_write || m.read_only == Some(true),
            "{name} must be read-only"
        );
        ensure!(
            m.mount_propagation.as_deref() != Some("Bidirectional"),
            "{name}: Bidirectional propagation"
        );
    }

    // Environment.
    let node = env(c, "NODE_NAME")?;
    let field = node
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .context("NODE_NAME is not from the downward API")?;
    ensure!(
        field.field_path == "spec.nodeName",
        "NODE_NAME from {}",
        field.field_path
    );
    ensure!(
        env_value(c, "INFERTAP_MODE")? == "kubernetes",
        "INFERTAP_MODE"
    );
    let debug: SocketAddr = env_value(c, "INFERTAP_DEBUG_ADDR")?.parse()?;
    ensure!(
        debug.ip().is_loopback(),
        "the debug endpoint {debug} is not on loopback"
    );
    ensure!(debug.port() == 9464, "debug port {debug}");
    let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n);
    ensure!(
        env_value(c, "OTEL_RESOURCE_ATTRIBUTES")?.contains("k8s.node.name=$(NODE_NAME)")
            && pos("NODE_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"),
        "OTEL_RESOURCE_ATTRIBUTES must carry k8s.node.name=$(NODE_NAME), after NODE_NAME"
    );
    ensure!(
        pos("LD_LIBRARY_PATH").is_none(),
        "LD_LIBRARY_PATH would shadow the image's libc"
    );
    let nvml = env_value(c, "INFERTAP_NVML_LIB")?;
    ensure!(
        nvml.starts_with("/host/nvidia/lib/") && nvml.ends_with("libnvidia-ml.so.1"),
        "INFERTAP_NVML_LIB {nvml}"
    );
    let cm_name = c
        .env_from
        .iter()
        .flatten()
        .find_map(|e| e.config_map_ref.as_ref().map(|r| r.name.clone()))
        .context("no envFrom ConfigMap")?;
    let cm = o
        .config_maps
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(cm_name.as_str()))
        .with_context(|| format!("envFrom names {cm_name}, which is not rendered"))?;
    let data = cm.data.clone().unwrap_or_default();
    ensure!(
        data.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str)
            == Some("http://otel-collector.observability:4317"),
        "OTLP endpoint {data:?}"
    );
    ensure!(
        data.get("OTEL_SERVICE_NAME").map(String::as_str) == Some("infertap"),
        "service name"
    );

    // Probes: /healthz on the loopback address the agent binds, from inside the pod (exec); an
    // httpGet or tcpSocket probe would go to the node IP, where nothing listens.
    for (what, probe) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
    ] {
        let p = probe.as_ref().with_context(|| format!("no {what} probe"))?;
        ensure!(
            p.http_get.is_none() && p.tcp_socket.is_none(),
            "{what}: not exec"
        );
        let cmd = p
            .exec
            .as_ref()
            .and_then(|e| e.command.as_ref())
            .with_context(|| format!("{what}: no exec command"))?
            .join(" ");
        ensure!(
            cmd.contains("GET /healthz") && cmd.contains("INFERTAP_DEBUG_ADDR"),
            "{what} probe does not ask /healthz at INFERTAP_DEBUG_ADDR: {cmd}"
        );
    }
    // One port: the metrics listener, on every address of the pod, never the debug endpoint's.
    let ports = c.ports.as_deref().unwrap_or_default();
    ensure!(
        ports.len() == 1
            && ports[0].name.as_deref() == Some("metrics")
            && ports[0].container_port == i32::from(METRICS_PORT)
            && ports[0].host_port.is_none(),
        "the only port must be `metrics` ({METRICS_PORT}), not on the host: {ports:?}"
    );
    let metrics: SocketAddr = env_value(c, "INFERTAP_METRICS_ADDR")?.parse()?;
    ensure!(
        metrics.port() == METRICS_PORT && metrics.port() != debug.port(),
        "INFERTAP_METRICS_ADDR {metrics}"
    );

    // Resources.
    let r = c.resources.as_ref().context("no resources")?;
    let q =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    ensure!(
        q(&r.requests, "cpu").as_deref() == Some("100m"),
        "cpu request"
    );
    ensure!(
        q(&r.requests, "memory").as_deref() == Some("128Mi"),
        "memory request"
    );
    ensure!(q(&r.limits, "cpu").as_deref() == Some("1"), "cpu limit");
    ensure!(
        q(&r.limits, "memory").as_deref() == Some("512Mi"),
        "memory limit"
    );
    Ok(())
}

fn check(o: &Objects, privileged: bool) -> Result<()> {
    let kinds: BTreeSet<&str> = o.kinds.iter().map(String::as_str).collect();
    ensure!(kinds == BTreeSet::from(KINDS), "kinds {kinds:?}");
    ensure!(
        o.kinds.len() == KINDS.len(),
        "one object of each kind: {:?}",
        o.kinds
    );
    check_rbac(o)?;
    let ds = one(&o.daemon_sets, "DaemonSet")?;
    let ns = one(&o.namespaces, "Namespace")?;
    ensure!(
        ds.metadata.namespace == ns.metadata.name,
        "DaemonSet namespace"
    );
    let spec = ds.spec.as_ref().context("DaemonSet without spec")?;
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    let selects = spec.selector.match_labels.clone().unwrap_or_default();
    ensure!(
        !selects.is_empty()
            && selects
                .iter()
                .all(|(k, v)| labels.as_ref().and_then(|l| l.get(k)) == Some(v)),
        "the selector {selects:?} does not select the template's labels {labels:?}"
    );
    let update = spec.update_strategy.as_ref().context("no updateStrategy")?;
    ensure!(
        update.type_.as_deref() == Some("RollingUpdate"),
        "updateStrategy"
    );
    ensure!(
        update
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone())
            == Some(IntOrString::Int(1)),
        "maxUnavailable"
    );
    let pod = spec.template.spec.as_ref().context("no pod spec")?;
    check_pod(pod, o, privileged)
}

fn checked(docs: &[Value], privileged: bool) -> Result<()> {
    check(&parse(docs)?, privileged)
}

#[test]
fn base_manifests_are_api_objects_with_least_privilege() -> Result<()> {
    need_kubectl!();
    let docs = render("deploy/kubernetes")?;
    checked(&docs, false)?;
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    println!(
        "{} objects; capabilities {}",
        docs.len(),
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    );
    Ok(())
}

#[test]
fn privileged_overlay_differs_only_in_the_security_context() -> Result<()> {
    need_kubectl!();
    let base = render("deploy/kubernetes")?;
    let privileged = render("deploy/kubernetes/privileged")?;
    checked(&privileged, true)?;
    // The base is not privileged by the overlay's standard, and vice versa.
    ensure!(checked(&base, true).is_err() && checked(&privileged, false).is_err());
    // Apart from the container's securityContext and tracefs's readOnly, the same objects.
    let scrub = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .cloned()
            .map(|mut d| {
                if d["kind"] == "DaemonSet" {
                    let c = &mut d["spec"]["template"]["spec"]["containers"][0];
                    c.as_object_mut().unwrap().remove("securityContext");
                    for m in c["volumeMounts"].as_array_mut().unwrap() {
                        if m["name"] == "tracefs" {
                            m.as_object_mut().unwrap().remove("readOnly");
                        }
                    }
                }
                d
            })
            .collect()
    };
    ensure!(
        scrub(&base) == scrub(&privileged),
        "the overlay changes more than documented"
    );
    Ok(())
}

/// Each mutation must make the check fail: the test can fail.
#[test]
fn the_checker_rejects_widened_or_misspelled_manifests() -> Result<()> {
    need_kubectl!();
    let docs = render("deploy/kubernetes")?;
    checked(&docs, false)?;
    type Mutation = (&'static str, &'static str, fn(&mut Value));
    let mutations: [Mutation; 14] = [
        ("DaemonSet", "hostNetwork", |d| {
            d["spec"]["template"]["spec"]["hostNetwork"] = true.into()
        }),
        ("DaemonSet", "SYS_RESOURCE added back", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
                .as_array_mut()
                .unwrap()
                .push("SYS_RESOURCE".into())
        }),
        ("DaemonSet", "metrics served on the debug port", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
                9464.into()
        }),
        ("ClusterRole", "a verb added", |d| {
            d["rules"][0]["verbs"]
                .as_array_mut()
                .unwrap()
                .push("create".into())
        }),
        ("ClusterRole", "secrets readable", |d| {
            d["rules"][0]["resources"]
                .as_array_mut()
                .unwrap()
                .push("secrets".into())
        }),
        ("ClusterRole", "a second rule", |d| {
            let r = d["rules"][0].clone();
            d["rules"].as_array_mut().unwrap().push(r)
        }),
        ("ClusterRoleBinding", "bound to another account", |d| {
            d["subjects"][0]["name"] = "default".into()
        }),
        ("DaemonSet", "CAP_SYS_ADMIN added", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
                .as_array_mut()
                .unwrap()
                .push("SYS_ADMIN".into())
        }),
        ("DaemonSet", "capabilities kept", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
                .as_object_mut()
                .unwrap()
                .remove("drop");
        }),
        ("DaemonSet", "privileged", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
                true.into()
        }),
        ("DaemonSet", "hostPID misspelled", |d| {
            let spec = d["spec"]["template"]["spec"].as_object_mut().unwrap();
            let v = spec.remove("hostPID").unwrap();
            spec.insert("hostPid".into(), v);
        }),
        ("DaemonSet", "the host's root mounted", |d| {
            d["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] = "/".into()
        }),
        ("DaemonSet", "the debug endpoint on every interface", |d| {
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array_mut()
                .unwrap()
            {
                if e["name"] == "INFERTAP_DEBUG_ADDR" {
                    e["value"] = "0.0.0.0:9464".into();
                }
            }
        }),
        ("DaemonSet", "a probe on another path", |d| {
            let p = &mut d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"];
            let cmd = p["exec"]["command"][2]
                .as_str()
                .unwrap()
                .replace("/healthz", "/status");
            p["exec"]["command"][2] = cmd.into();
        }),
    ];
    for (kind, what, mutate) in mutations {
        let mut copy = docs.clone();
        let d = copy
            .iter_mut()
            .find(|d| d["kind"] == kind)
            .with_context(|| format!("no {kind}"))?;
        mutate(d);
        match checked(&copy, false) {
            Ok(()) => bail!("the checker accepted a manifest with {what}"),
            Err(e) => println!("rejected, {what}: {e:#}"),
        }
    }
    Ok(())
}

/// The PodMonitor example scrapes the port the agent's pods declare, at /metrics, and selects
/// those pods by the labels the DaemonSet gives them.
#[test]
fn the_pod_monitor_scrapes_the_metrics_port_of_the_agents_pods() -> Result<()> {
    need_kubectl!();
    let base = render("deploy/kubernetes")?;
    let ds = base.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let monitoring = render("deploy/kubernetes/monitoring")?;
    ensure!(monitoring.len() == 1, "one object: {monitoring:?}");
    let pm = &monitoring[0];
    ensure!(pm["kind"] == "PodMonitor" && pm["apiVersion"] == "monitoring.coreos.com/v1");
    ensure!(pm["metadata"]["namespace"] == ds["metadata"]["namespace"]);
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selects = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("matchLabels")?;
    ensure!(
        !selects.is_empty() && selects.iter().all(|(k, v)| &labels[k] == v),
        "{selects:?} does not select {labels}"
    );
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .context("endpoints")?;
    let declared = &ds["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    ensure!(
        endpoints.len() == 1
            && endpoints[0]["port"] == declared["name"]
            && endpoints[0]["path"] == "/metrics",
        "{endpoints:?} vs {declared}"
    );
    Ok(())
}
