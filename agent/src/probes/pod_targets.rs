//! Which processes are traced in Kubernetes mode: those of this node's pods in opted-in namespaces
//! that serve inference or are EPPs (by command line), or that a pod's annotations name
//! (`enrich::kubernetes::pod::TargetRule`). Processes are mapped to pods by their cgroup
//! (`enrich::cgroup`), so nothing about a pod has to change.
//!
//! Cost per scan (every 250 ms): one read of `/proc`'s directory; `/proc/<pid>/cgroup` of each new
//! process, and again once a second for processes not (yet) in a pod (a process may be moved into
//! its cgroup after it started); for processes in opted-in pods only, the command line (and, under
//! the ports rule, the listening sockets) until they are targeted, re-read at most once a second
//! after a "no". Processes outside pods and in other namespaces cost the cgroup read only.
//!
//! Reads /proc only; the cache is written by the watchers, the kernel maps by the caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use super::targets::{provider_of, tcp_sockets, Target, TargetSource};
use crate::enrich::cgroup::{read_pod_ref, PodRef};
use crate::enrich::kubernetes::pod::{decide, PodInfo, TargetRule};
use crate::enrich::kubernetes::{KubeCache, ProcPods};

/// How often a process not in a pod, or a "no" for a process in a pod, is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// What is known of one process.
#[derive(Debug)]
struct Seen {
    pod: Option<PodRef>,
    cgroup_read: Instant,
    /// The last decision, the rule it was made under, and when.
    decision: Option<(TargetRule, Option<Target>, Instant)>,
}

pub struct PodScanner {
    cache: KubeCache,
    procs: ProcPods,
    cmdline: Regex,
    self_pid: u32,
    seen: HashMap<u32, Seen>,
    /// The cache's change count at the last `changed` call.
    changes_seen: u64,
}

impl PodScanner {
    /// `cmdline`: the pattern of inference servers and EPPs (`DEFAULT_CMDLINE`, or
    /// `--target-cmdline`).
    pub fn new(cache: KubeCache, procs: ProcPods, cmdline: Regex) -> PodScanner {
        PodScanner {
            cache,
            procs,
            cmdline,
            self_pid: std::process::id(),
            seen: HashMap::new(),
            changes_seen: 0,
        }
    }

    /// The processes to trace now.
    pub fn scan(&mut self) -> Vec<Target> {
        let now = Instant::now();
        let pids = list_pids();
        self.seen.retain(|pid, _| pids.binary_search(pid).is_ok());
        let mut out = Vec::new();
        let mut published: HashMap<u32, PodRef> = HashMap::new();
        for &pid in &pids {
            if pid == self.self_pid {
                continue;
            }
            let seen = self.seen.entry(pid).or_insert_with(|| Seen {
                pod: read_pod_ref(pid),
                cgroup_read: now,
                decision: None,
            });
            if seen.pod.is_none() && now.duration_since(seen.cgroup_read) >= RECHECK {
                seen.pod = read_pod_ref(pid);
                seen.cgroup_read = now;
            }
            let Some(pref) = &seen.pod else { continue };
            let Some(pod) = self.cache.opted_in_pod(&pref.pod_uid) else {
                seen.decision = None;
                continue;
            };
            let fresh = match &seen.decision {
                Some((rule, Some(_), _)) => *rule == pod.rule,
                Some((rule, None, at)) => *rule == pod.rule && now.duration_since(*at) < RECHECK,
                None => false,
            };
            if !fresh {
                let target = decide_process(&self.cmdline, pid, &pod, pref);
                seen.decision = Some((pod.rule.clone(), target, now));
            }
            if let Some((_, Some(t), _)) = &seen.decision {
                out.push(t.clone());
                published.insert(pid, pref.clone());
            }
        }
        self.procs.publish(&published, now);
        out
    }
}

/// Whether (and why) a process of an opted-in pod is traced.
fn decide_process(pattern: &Regex, pid: u32, pod: &Arc<PodInfo>, pref: &PodRef) -> Option<Target> {
    let cmdline = read_cmdline(pid)?;
    // The pod's sandbox ("pause") holds the namespaces and serves nothing.
    if cmdline.is_empty() || cmdline == "/pause" {
        return None;
    }
    let why = decide(&pod.rule, pattern.is_match(&cmdline), || {
        tcp_sockets(pid)
            .into_iter()
            .filter(|s| s.listening)
            .map(|s| s.local.port())
            .collect()
    })?;
    let container = pref
        .container_id
        .as_deref()
        .and_then(|id| pod.container_name(id))
        .map(|c| format!(" container {c}"))
        .unwrap_or_default();
    Some(Target {
        pid,
        comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default(),
        reason: format!("pod {}/{}{container}: {why}", pod.namespace, pod.name),
        provider: provider_of(&cmdline),
    })
}

impl TargetSource for PodScanner {
    fn scan(&mut self) -> Vec<Target> {
        PodScanner::scan(self)
    }

    /// A process that is not in a pod is looked at again after [`RECHECK`]: so often, so that
    /// one moved into a pod's cgroup (no exec, no kernel event) is found that soon.
    fn interval(&self) -> Option<Duration> {
        Some(RECHECK)
    }

    /// A namespace opted in or out, a pod came or went or changed its annotations.
    fn changed(&mut self) -> bool {
        let now = self.cache.changes();
        std::mem::replace(&mut self.changes_seen, now) != now
    }

    /// Processes that exec'd are judged afresh (their cached decision was about the program
    /// they ran before), in one scan.
    fn check(&mut self, pids: &[u32]) -> Vec<Target> {
        for pid in pids {
            self.seen.remove(pid);
        }
        let mut all = PodScanner::scan(self);
        all.retain(|t| pids.binary_search(&t.pid).is_ok());
        all
    }
}

/// Every process id in /proc, sorted.
fn list_pids() -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The command line, arguments joined by spaces; `None` when the process is gone.
fn read_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    Some(
        text.split('\0')
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::runtime::watcher::Event;
    use std::path::PathBuf;

    /// Child back to the root cgroup and killed, created cgroups removed, whatever happens.
    struct Guard {
        child: std::process::Child,
        root: PathBuf,
        created: Vec<PathBuf>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::write(self.root.join("cgroup.procs"), self.child.id().to_string());
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in self.created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    fn pod(uid: &str, container: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "llm", "uid": uid, "annotations": annotations},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"containerStatuses": [{"name": "c", "containerID": format!("containerd://{container}"),
                       "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .unwrap()
    }

    /// As root with a cgroup v2 hierarchy: a process in a kubelet-named cgroup is targeted once its
    /// namespace opts in, named by pod and container, published for the enricher, and dropped when
    /// its pod says `infertap.io/target: "false"`.
    #[test]
    fn a_process_in_an_opted_in_pod_is_targeted_by_its_cgroup() {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.subtree_control").exists());
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        let (true, Some(root)) = (is_root, root) else {
            println!("SKIPPED (needs root and cgroup v2)");
            return;
        };
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), 7);
        let container = format!("{:064x}", u64::from(std::process::id()));
        let child = std::process::Command::new("sleep")
            .arg("31")
            .spawn()
            .unwrap();
        let mut guard = Guard {
            child,
            root: root.clone(),
            created: Vec::new(),
        };
        let mut dir = root;
        for part in [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{container}.scope"),
        ] {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                guard.created.push(dir.clone());
            }
        }
        let pid = guard.child.id();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();

        let cache = KubeCache::new("n1", "infertap.io/enabled=true");
        let procs = ProcPods::default();
        let mut scanner = PodScanner::new(
            cache.clone(),
            procs.clone(),
            Regex::new("^sleep 31$").unwrap(),
        );
        cache.apply_pod(Event::Apply(pod(&uid, &container, serde_json::json!({}))));
        assert!(
            !scanner.scan().iter().any(|t| t.pid == pid),
            "namespace not opted in"
        );

        // The targeting thread rescans on a watch event, not at its next (slow) interval.
        let _ = TargetSource::changed(&mut scanner);
        assert!(!TargetSource::changed(&mut scanner), "nothing happened");
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "llm"}})).unwrap();
        cache.apply_namespace(Event::Apply(ns));
        assert!(TargetSource::changed(&mut scanner), "a namespace opted in");
        assert!(!TargetSource::changed(&mut scanner), "told once");
        let found = scanner.scan();
        let t = found.iter().find(|t| t.pid == pid).expect("targeted");
        assert_eq!(t.reason, "pod llm/p container c: cmdline");
        assert_eq!(t.comm, "sleep");
        let published = procs.get(pid).unwrap();
        assert_eq!(published.pod_uid, uid);
        assert_eq!(published.container_id.as_deref(), Some(container.as_str()));

        let off = serde_json::json!({"infertap.io/target": "false"});
        cache.apply_pod(Event::Apply(pod(&uid, &container, off)));
        assert!(
            !scanner.scan().iter().any(|t| t.pid == pid),
            "annotation says no"
        );
    }
}
