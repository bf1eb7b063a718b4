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
