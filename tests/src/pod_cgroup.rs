//! Real cgroups named as the kubelet and the container runtime name them, for processes the test
//! wants to look like a pod's containers. Removed (their processes moved back to the root first)
//! when the guard drops.
//!
//! Two layouts: the systemd driver on cgroup v2
//! (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
//! cri-containerd-<id>.scope`) and the cgroupfs driver on a cgroup v1 hierarchy
//! (`kubepods/burstable/pod<uid>/<id>`, in the controller-less `name=systemd` hierarchy, so no
//! resource of the machine is touched).

use std::fs;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    SystemdV2,
    CgroupfsV1,
}

/// Mount point of the cgroup v2 hierarchy, or of the v1 `name=systemd` one, from mountinfo.
pub fn mount_point(layout: Layout) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        let mut r = right.split_whitespace();
        let fstype = r.next()?;
        let _source = r.next()?;
        let options = r.next().unwrap_or("");
        let ok = match layout {
            Layout::SystemdV2 => fstype == "cgroup2",
            Layout::CgroupfsV1 => {
                fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
            }
        };
        ok.then(|| PathBuf::from(mount))
    })
}

/// One container's cgroup (and the pod and QoS cgroups above it).
pub struct PodCgroup {
    root: PathBuf,
    /// Created directories, outermost first.
    created: Vec<PathBuf>,
}

impl PodCgroup {
    /// Creates the cgroups of container `container_id` of pod `uid` (burstable QoS); `None`
    /// when this machine has no such hierarchy.
    pub fn create(layout: Layout, uid: &str, container_id: &str) -> Option<PodCgroup> {
        let root = mount_point(layout)?;
        let parts: Vec<String> = match layout {
            Layout::SystemdV2 => {
                let u = uid.replace('-', "_");
                vec![
                    "kubepods.slice".into(),
                    "kubepods-burstable.slice".into(),
                    format!("kubepods-burstable-pod{u}.slice"),
                    format!("cri-containerd-{container_id}.scope"),
                ]
            }
            Layout::CgroupfsV1 => vec![
                "kubepods".into(),
                "burstable".into(),
                format!("pod{uid}"),
                container_id.into(),
            ],
        };
        let mut created = Vec::new();
        let mut path = root.clone();
        for p in parts {
            path.push(p);
            if !path.exists() {
                fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
                created.push(path.clone());
            }
        }
        Some(PodCgroup { root, created })
    }

    pub fn leaf(&self) -> PathBuf {
        self.created
            .last()
            .cloned()
            .unwrap_or_else(|| self.root.clone())
    }

    /// Moves a process (all its threads) into the container's cgroup.
    pub fn add(&self, pid: u32) {
        let procs = self.leaf().join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}
