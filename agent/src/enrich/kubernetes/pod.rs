//! What the agent keeps of a pod: its identity, its workload, its containers by container ID, and
//! the per-pod targeting rule from its annotations. Everything here is pure: a `Pod` from the API
//! in, a small [`PodInfo`] out; no I/O, no panics on any input.

use std::collections::BTreeMap;

use crate::schema::attr;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// `infertap.io/target: "true" | "false"` — trace every process of the pod, or none of them.
pub const TARGET_ANNOTATION: &str = "infertap.io/target";
/// `infertap.io/ports: "8000,9002"` — trace the pod's processes listening on these ports (instead
/// of those whose command line looks like an inference server or EPP).
pub const PORTS_ANNOTATION: &str = "infertap.io/ports";

/// Which of a pod's processes are traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRule {
    /// Processes whose command line looks like an inference server or EPP (the default).
    Cmdline,
    /// Processes listening on one of these TCP ports (`infertap.io/ports`).
    Ports(Vec<u16>),
    /// Every process in the pod's containers (`infertap.io/target: "true"`).
    All,
    /// None (`infertap.io/target: "false"`).
    Off,
}

/// A pod of this node, as far as tracing needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Canonical (lowercase, dashed), as `enrich::cgroup::PodRef::pod_uid` has it.
    pub uid: String,
    pub node: Option<String>,
    /// The workload owner as span attributes (`k8s.replicaset.name`, `k8s.deployment.name`, …).
    pub workload: Vec<(&'static str, String)>,
    /// Container ID (lowercase, without the `containerd://` scheme) → container name.
    pub containers: BTreeMap<String, String>,
    pub rule: TargetRule,
    /// What was wrong with the pod's infertap annotations (they are then ignored).
    pub annotation_problem: Option<String>,
}

impl PodInfo {
    /// `None` for an object without a name, namespace or UID (never sent by a real API server).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone()?;
        let name = meta.name.clone()?;
        let uid = meta.uid.as_deref()?.to_ascii_lowercase();
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .map(String::as_str);
        let workload = workload_attributes(meta.owner_references.as_deref().unwrap_or(&[]), hash);
        let mut containers = BTreeMap::new();
        if let Some(status) = &pod.status {
            let all = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for statuses in all.into_iter().flatten() {
                for s in statuses {
                    if let Some(id) = s.container_id.as_deref().and_then(container_id) {
                        containers.insert(id, s.name.clone());
                    }
                }
            }
        }
        let empty = BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let (rule, annotation_problem) = target_rule(
            annotations.get(TARGET_ANNOTATION).map(String::as_str),
            annotations.get(PORTS_ANNOTATION).map(String::as_str),
        );
        Some(PodInfo {
            namespace,
            name,
            uid,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            workload,
            containers,
            rule,
            annotation_problem,
        })
    }

    /// The name of the container with this ID (as the cgroup path has it: 64 lowercase hex).
    pub fn container_name(&self, id: &str) -> Option<&str> {
        self.containers.get(id).map(String::as_str)
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>` in lowercase; `None` when empty.
pub fn container_id(status_id: &str) -> Option<String> {
    let id = status_id
        .split_once("://")
        .map_or(status_id, |(_, id)| id)
        .trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// The workload attributes of a pod from its controller owner reference, without any API call:
/// a ReplicaSet named `<deployment>-<pod-template-hash>` (the hash being the pod's own
/// `pod-template-hash` label) belongs to that Deployment; StatefulSets, DaemonSets and Jobs are
/// named directly. Other owners (custom controllers) give nothing.
pub fn workload_attributes(
    owners: &[OwnerReference],
    pod_template_hash: Option<&str>,
) -> Vec<(&'static str, String)> {
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
    else {
        return Vec::new();
    };
    let name = owner.name.clone();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = pod_template_hash
                .filter(|h| !h.is_empty())
                .and_then(|h| name.strip_suffix(h))
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty())
                .map(str::to_string);
            let mut out = vec![(attr::K8S_REPLICASET_NAME, name)];
            if let Some(d) = deployment {
                out.push((attr::K8S_DEPLOYMENT_NAME, d));
            }
            out
        }
        "StatefulSet" => vec![(attr::K8S_STATEFULSET_NAME, name)],
        "DaemonSet" => vec![(attr::K8S_DAEMONSET_NAME, name)],
        "Job" => vec![(attr::K8S_JOB_NAME, name)],
        _ => Vec::new(),
    }
}

/// The targeting rule from the two annotations' values, and what was wrong with them. A bad value
/// is ignored (the default rule applies) and reported, never guessed at.
pub fn target_rule(target: Option<&str>, ports: Option<&str>) -> (TargetRule, Option<String>) {
    let mut problem = None;
    let switch = match target.map(|t| t.trim().to_ascii_lowercase()) {
        None => None,
        Some(t) if t == "true" => Some(true),
        Some(t) if t == "false" => Some(false),
        Some(_) => {
            problem = Some(format!(
                "{TARGET_ANNOTATION} is {:?}; use \"true\" or \"false\"",
                target.unwrap_or_default()
            ));
            None
        }
    };
    if switch == Some(false) {
        return (TargetRule::Off, problem);
    }
    if let Some(text) = ports {
        match parse_ports(text) {
            Some(list) => return (TargetRule::Ports(list), problem),
            None => {
                problem = Some(format!(
                    "{PORTS_ANNOTATION} is {text:?}; use TCP ports separated by commas, e.g. \"8000,9002\""
                ))
            }
        }
    }
    match switch {
        Some(true) => (TargetRule::All, problem),
        _ => (TargetRule::Cmdline, problem),
    }
}

/// `"8000, 9002"` → `[8000, 9002]`; `None` unless every item is a port from 1 to 65535 and there is
/// at least one. At most 64 ports.
fn parse_ports(text: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port: u16 = item.parse().ok().filter(|p| *p != 0)?;
        if !out.contains(&port) {
            out.push(port);
        }
        if out.len() > 64 {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Why a process of a pod is traced under `rule`, or `None` when it is not. `cmdline_matches`:
/// its command line looks like an inference server or EPP; `listening` gives the TCP ports it
/// listens on, and is only called for the ports rule (it reads /proc).
pub fn decide(
    rule: &TargetRule,
    cmdline_matches: bool,
    listening: impl FnOnce() -> Vec<u16>,
) -> Option<String> {
    match rule {
        TargetRule::Off => None,
        TargetRule::All => Some("annotation target".into()),
        TargetRule::Cmdline => cmdline_matches.then(|| "cmdline".into()),
        TargetRule::Ports(ports) => listening()
            .into_iter()
            .find(|p| ports.contains(p))
            .map(|p| format!("annotation port {p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn deployment_comes_from_the_replicaset_name_and_the_pod_template_hash() {
        let rs = [owner("ReplicaSet", "vllm-llama-7d9f8c6b5", Some(true))];
        assert_eq!(
            workload_attributes(&rs, Some("7d9f8c6b5")),
            vec![
                ("k8s.replicaset.name", "vllm-llama-7d9f8c6b5".to_string()),
                ("k8s.deployment.name", "vllm-llama".to_string())
            ]
        );
        // A bare ReplicaSet (no hash label, or a name that does not end in it): no deployment.
        assert_eq!(
            workload_attributes(&rs, None),
            vec![("k8s.replicaset.name", "vllm-llama-7d9f8c6b5".to_string())]
        );
        assert_eq!(workload_attributes(&rs, Some("abc")).len(), 1);
        let odd = [owner("ReplicaSet", "7d9f8c6b5", Some(true))];
        assert_eq!(workload_attributes(&odd, Some("7d9f8c6b5")).len(), 1);
        // The controller owner wins over others; each kind has its attribute.
        let many = [
            owner("ConfigMap", "x", None),
            owner("StatefulSet", "sglang", Some(true)),
        ];
        assert_eq!(
            workload_attributes(&many, None),
            vec![("k8s.statefulset.name", "sglang".to_string())]
        );
        assert_eq!(
            workload_attributes(&[owner("DaemonSet", "d", None)], None),
            vec![("k8s.daemonset.name", "d".to_string())]
        );
        assert_eq!(
            workload_attributes(&[owner("Job", "bench-1", Some(true))], None),
            vec![("k8s.job.name", "bench-1".to_string())]
        );
        assert!(workload_attributes(&[owner("LeaderWorkerSet", "l", Some(true))], None).is_empty());
        assert!(workload_attributes(&[], Some("h")).is_empty());
    }

    #[test]
    fn container_ids_lose_their_scheme_and_case() {
        let hex = "A".repeat(64);
        assert_eq!(
            container_id(&format!("containerd://{hex}")),
            Some("a".repeat(64))
        );
        assert_eq!(container_id("cri-o://abc"), Some("abc".into()));
        assert_eq!(container_id("docker://"), None);
        assert_eq!(container_id(""), None);
    }

    #[test]
    fn containers_are_named_from_every_status_list() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "AAAAAAAA-1111-2222-3333-444444444444",
                         "labels": {"pod-template-hash": "h1"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-h1", "uid": "r", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "vllm"}]},
            "status": {
                "containerStatuses": [
                    {"name": "vllm", "containerID": format!("containerd://{}", "b".repeat(64)),
                     "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": format!("cri-o://{}", "c".repeat(64)),
                     "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        let info = PodInfo::from_pod(&pod).unwrap();
        assert_eq!(info.uid, "aaaaaaaa-1111-2222-3333-444444444444");
        assert_eq!(info.node.as_deref(), Some("node-a"));
        assert_eq!(info.container_name(&"b".repeat(64)), Some("vllm"));
        assert_eq!(info.container_name(&"c".repeat(64)), Some("init"));
        assert_eq!(info.container_name(&"d".repeat(64)), None);
        assert_eq!(info.containers.len(), 2);
        assert_eq!(info.workload[1], ("k8s.deployment.name", "web".to_string()));
        assert_eq!(info.rule, TargetRule::Cmdline);
        let nameless: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert!(PodInfo::from_pod(&nameless).is_none());
    }

    #[test]
    fn annotations_choose_the_rule_and_bad_values_are_reported_not_guessed() {
        assert_eq!(target_rule(None, None), (TargetRule::Cmdline, None));
        assert_eq!(target_rule(Some("false"), Some("8000")).0, TargetRule::Off);
        assert_eq!(target_rule(Some(" TRUE "), None), (TargetRule::All, None));
        assert_eq!(
            target_rule(None, Some("8000, 9002,8000")),
            (TargetRule::Ports(vec![8000, 9002]), None)
        );
        assert_eq!(
            target_rule(Some("true"), Some("8000")).0,
            TargetRule::Ports(vec![8000])
        );
        for bad in ["", "0", "70000", "80a", "8000;9000", ","] {
            let (rule, problem) = target_rule(None, Some(bad));
            assert_eq!(rule, TargetRule::Cmdline, "{bad:?}");
            assert!(problem.unwrap().contains("infertap.io/ports"), "{bad:?}");
        }
        let (rule, problem) = target_rule(Some("yes please"), None);
        assert_eq!(rule, TargetRule::Cmdline);
        assert!(problem.unwrap().contains("\"true\" or \"false\""));
        let many: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
        assert!(target_rule(None, Some(&many.join(","))).1.is_some());
    }

    #[test]
    fn decide_follows_the_rule_and_reads_ports_only_when_asked() {
        let never = || -> Vec<u16> { panic!("ports read for a rule that does not need them") };
        assert_eq!(
            decide(&TargetRule::Cmdline, true, never),
            Some("cmdline".into())
        );
        assert_eq!(decide(&TargetRule::Cmdline, false, never), None);
        assert_eq!(decide(&TargetRule::Off, true, never), None);
        assert!(decide(&TargetRule::All, false, never).is_some());
        let rule = TargetRule::Ports(vec![9002]);
        assert_eq!(
            decide(&rule, false, || vec![8080, 9002]),
            Some("annotation port 9002".into())
        );
        assert_eq!(decide(&rule, true, || vec![8000]), None);
    }
}
