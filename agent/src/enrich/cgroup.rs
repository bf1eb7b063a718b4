//! Process → Kubernetes pod and container, from the process's cgroup path (`/proc/<pid>/cgroup`).
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID, and the container runtime puts
//! each container in a child cgroup named after the container ID. The names depend on the kubelet's
//! cgroup driver:
//!
//! - **systemd**: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//!   cri-containerd-<id>.scope`, with the UID's dashes written as `_` (a `-` in a slice name is
//!   systemd's hierarchy separator). Guaranteed pods have no QoS slice: `kubepods-pod<uid>.slice`.
//!   A kubelet with its own cgroup root prefixes every slice name (kind:
//!   `/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...`).
//! - **cgroupfs**: `/kubepods/burstable/pod<uid>/<id>`, guaranteed pods directly under `/kubepods`,
//!   possibly below some other root (`/k3s/kubepods/...`, a kind node's `/docker/<id>/kubepods/...`).
//!
//! The container cgroup is `<id>` (containerd or Docker under cgroupfs), `cri-containerd-<id>`,
//! `crio-<id>` or `docker-<id>`, with `.scope` under systemd. CRI-O's `crio-conmon-<id>` holds the
//! container's monitor, not the container: a process there maps to the pod with no container.
//!
//! Paths are shown relative to the reader's cgroup namespace, so an agent in its own namespace sees
//! other pods as `/../../kubepods-besteffort-pod<uid>.slice/...` or `/../pod<uid>/<id>`: the pod
//! cgroup is recognised by its own name, and the QoS class is `None` when that name does not carry it.
//! A process whose whole cgroup is the namespace root (`0::/`) cannot be mapped.
//!
//! With cgroup v1, only the `memory`, `cpu`/`cpuacct`, `pids` and `name=systemd` hierarchies are
//! read (others, such as `cpuset` or `net_cls`, are often left at a different path); the cgroup v2
//! line (`0::`) is read first.
//!
//! [`parse_proc_cgroup`] is pure, bounded and never panics; [`read_pod_ref`] is the module's only I/O.

use std::io::Read;

/// The pod, and where known the container, a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's UID, canonical: lowercase hex, dashed (`8-4-4-4-12`).
    pub pod_uid: String,
    /// The container ID: 64 lowercase hex digits. `None` for a process in the pod cgroup itself,
    /// in CRI-O's conmon cgroup, or under a child cgroup whose name is not a container ID.
    pub container_id: Option<String>,
    /// The runtime named by the container cgroup: `"containerd"`, `"cri-o"` or `"docker"`; `None`
    /// where the name does not say (a bare ID under the cgroupfs driver).
    pub runtime: Option<&'static str>,
    /// The pod's QoS class: `"guaranteed"`, `"burstable"` or `"besteffort"`; `None` where the path
    /// does not show it (a cgroupfs path seen from inside a cgroup namespace).
    pub qos: Option<&'static str>,
}

/// Lines of `/proc/<pid>/cgroup` looked at; a v1 host has about a dozen hierarchies.
const MAX_LINES: usize = 64;
/// Longest line considered (PATH_MAX plus the hierarchy fields); longer lines are skipped.
const MAX_LINE_LEN: usize = 4096 + 256;
/// Bytes of `/proc/<pid>/cgroup` read.
const MAX_FILE_LEN: u64 = 64 * 1024;

const CGROUP_V2: u8 = 0;
const V1_PREFERENCE: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "name=systemd"];

/// The pod and container of a process, from the text of its `/proc/<pid>/cgroup`.
///
/// Looks at the cgroup v2 line first, then the v1 `memory`, `cpu,cpuacct`, `pids` and
/// `name=systemd` hierarchies, and returns the first that names a pod. `None` when none does
/// (system services, user sessions, Docker outside Kubernetes, a namespace root, malformed UIDs).
pub fn parse_proc_cgroup(text: &str) -> Option<PodRef> {
    let mut candidates: [Option<(u8, &str)>; MAX_LINES] = [None; MAX_LINES];
    for (slot, line) in candidates.iter_mut().zip(text.lines()) {
        if line.len() <= MAX_LINE_LEN {
            *slot = classify_line(line);
        }
    }
    // Stable by rank, so equal ranks keep file order.
    let mut ranked: Vec<(u8, &str)> = candidates.iter().flatten().copied().collect();
    ranked.sort_by_key(|&(rank, _)| rank);
    ranked.into_iter().find_map(|(_, path)| parse_path(path))
}

/// `/proc/<pid>/cgroup` of a live process, parsed. `None` when the process is gone, the file cannot
/// be read, or it names no pod.
pub fn read_pod_ref(pid: u32) -> Option<PodRef> {
    let file = std::fs::File::open(format!("/proc/{pid}/cgroup")).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN).read_to_end(&mut bytes).ok()?;
    parse_proc_cgroup(&String::from_utf8_lossy(&bytes))
}

/// `hierarchy-id:controllers:path` → (preference rank, path), for the hierarchies worth reading.
fn classify_line(line: &str) -> Option<(u8, &str)> {
    let mut fields = line.splitn(3, ':');
    let id = fields.next()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    if id == "0" && controllers.is_empty() {
        return Some((CGROUP_V2, path));
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rank = controllers
        .split(',')
        .filter_map(|c| V1_PREFERENCE.iter().position(|&p| p == c))
        .min()?;
    // cpu and cpuacct share a rank; the v1 ranks start after v2's.
    let rank = match rank {
        0 => 1,
        1 | 2 => 2,
        3 => 3,
        _ => 4,
    };
    Some((rank, path))
}

/// A cgroup path → the outermost pod cgroup in it and the container cgroup right below. The
/// outermost: the kubelet makes it, while a tenant with a delegated cgroup subtree can make
/// pod-like names below its own container's cgroup and so pass its processes off as another
/// pod's. (Kubernetes nested in a pod, kind for one, is seen from the inner cluster's own cgroup
/// namespace, where the outer pod is not visible.)
fn parse_path(path: &str) -> Option<PodRef> {
    // The kernel marks a removed cgroup this way.
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    if !path.starts_with('/') {
        return None;
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (index, uid, qos) = components.iter().enumerate().find_map(|(i, name)| {
        let (uid, qos) = systemd_pod(name).or_else(|| cgroupfs_pod(name, &components[..i]))?;
        Some((i, uid, qos))
    })?;
    let (container_id, runtime) = match components.get(index + 1) {
        Some(name) => container(name),
        None => (None, None),
    };
    Some(PodRef {
        pod_uid: uid,
        container_id,
        runtime,
        qos,
    })
}

/// `[<prefix>-]kubepods[-<qos>]-pod<uid with _>.slice` → (uid, qos).
fn systemd_pod(name: &str) -> Option<(String, Option<&'static str>)> {
    let stem = name.strip_suffix(".slice")?;
    let at = stem.rfind("-pod")?;
    let (parent, uid) = (&stem[..at], &stem[at + "-pod".len()..]);
    let uid = canonical_uid(uid, b'_')?;
    let (kubepods, qos) = if let Some(p) = parent.strip_suffix("-burstable") {
        (p, "burstable")
    } else if let Some(p) = parent.strip_suffix("-besteffort") {
        (p, "besteffort")
    } else {
        (parent, "guaranteed")
    };
    (kubepods == "kubepods" || kubepods.ends_with("-kubepods")).then_some((uid, Some(qos)))
}

/// `pod<uid with ->` directly under `kubepods`, under `kubepods/<qos>`, or under a namespace view's
/// `..` (where the QoS class is unknown) → (uid, qos).
fn cgroupfs_pod(name: &str, parents: &[&str]) -> Option<(String, Option<&'static str>)> {
    let uid = canonical_uid(name.strip_prefix("pod")?, b'-')?;
    let qos = match parents {
        [.., "kubepods"] => Some("guaranteed"),
        [.., "kubepods" | "..", "burstable"] => Some("burstable"),
        [.., "kubepods" | "..", "besteffort"] => Some("besteffort"),
        [.., ".."] => None,
        _ => return None,
    };
    Some((uid, qos))
}

/// A UID written `8-4-4-4-12` hex with `separator` → lowercase with dashes.
fn canonical_uid(text: &str, separator: u8) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut at = 0;
    for (n, len) in GROUPS.iter().enumerate() {
        if n > 0 {
            if bytes[at] != separator {
                return None;
            }
            at += 1;
        }
        if !bytes[at..at + len].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        at += len;
    }
    Some(
        bytes
            .iter()
            .map(|&b| {
                if b == separator {
                    '-'
                } else {
                    char::from(b.to_ascii_lowercase())
                }
            })
            .collect(),
    )
}

/// A container cgroup name → (64-hex id, runtime). CRI-O's conmon cgroup and unknown names give
/// no container.
fn container(name: &str) -> (Option<String>, Option<&'static str>) {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if stem.starts_with("crio-conmon-") {
        return (None, Some("cri-o"));
    }
    let (id, runtime) = if let Some(id) = stem.strip_prefix("cri-containerd-") {
        (id, Some("containerd"))
    } else if let Some(id) = stem.strip_prefix("crio-") {
        (id, Some("cri-o"))
    } else if let Some(id) = stem.strip_prefix("docker-") {
        (id, Some("docker"))
    } else {
        (stem, None)
    };
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        (Some(id.to_ascii_lowercase()), runtime)
    } else {
        (None, None)
    }
}

#[cfg(test)]
mod tests;
