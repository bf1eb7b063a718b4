use super::*;
use proptest::prelude::*;

const UID: &str = "0b8f5a3e-7c1d-4e2f-9a6b-3c4d5e6f7a8b";
const UID_: &str = "0b8f5a3e_7c1d_4e2f_9a6b_3c4d5e6f7a8b";
const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a1908";

/// `expect`: `None`, or `uid container runtime qos` with `-` for an absent field.
fn check(input: &str, expect: Option<&str>) {
    let got = parse_proc_cgroup(input).map(|p| {
        format!(
            "{} {} {} {}",
            p.pod_uid,
            p.container_id.as_deref().unwrap_or("-"),
            p.runtime.unwrap_or("-"),
            p.qos.unwrap_or("-"),
        )
    });
    let expect = expect.map(|e| e.replace("$UID", UID).replace("$ID", ID));
    assert_eq!(got, expect, "input:\n{input}");
}

fn fill(template: &str) -> String {
    template
        .replace("$UID_", UID_)
        .replace("$UID", UID)
        .replace("$ID", ID)
}

/// A cgroup v1 host's file with `path` on the given hierarchies and `/` elsewhere.
fn v1(path: &str, on: &[&str]) -> String {
    let hierarchies = [
        "12:rdma",
        "11:hugetlb",
        "10:cpuset",
        "9:net_cls,net_prio",
        "8:perf_event",
        "7:memory",
        "6:cpu,cpuacct",
        "5:pids",
        "4:freezer",
        "3:blkio",
        "2:devices",
        "1:name=systemd",
    ];
    let mut text = String::new();
    for h in hierarchies {
        let controllers = h.split_once(':').map_or("", |(_, c)| c);
        let p = if on.contains(&controllers) { path } else { "/" };
        text.push_str(&format!("{h}:{p}\n"));
    }
    text.push_str("0::/\n");
    text
}

const ALL_V1: &[&str] = &["memory", "cpu,cpuacct", "pids", "name=systemd"];

#[test]
fn systemd_driver_v2_each_runtime_and_qos() {
    let cases = [
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd burstable"),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd besteffort"),
        ("/kubepods.slice/kubepods-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd guaranteed"),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UID_.slice/crio-$ID.scope",
         "$UID $ID cri-o burstable"),
        ("/kubepods.slice/kubepods-pod$UID_.slice/crio-$ID.scope", "$UID $ID cri-o guaranteed"),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$UID_.slice/docker-$ID.scope",
         "$UID $ID docker besteffort"),
        // A process in the pod slice itself, and one in a cgroup nested inside its container.
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UID_.slice",
         "$UID - - burstable"),
        ("/kubepods.slice/kubepods-pod$UID_.slice/cri-containerd-$ID.scope/init.scope",
         "$UID $ID containerd guaranteed"),
        // CRI-O's monitor is not the container.
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UID_.slice/crio-conmon-$ID.scope",
         "$UID - cri-o burstable"),
        // Removed cgroup.
        ("/kubepods.slice/kubepods-pod$UID_.slice/crio-$ID.scope (deleted)", "$UID $ID cri-o guaranteed"),
    ];
    for (path, expect) in cases {
        check(&fill(&format!("0::{path}\n")), Some(expect));
    }
}

#[test]
fn cgroupfs_driver_v2() {
    let cases = [
        ("/kubepods/burstable/pod$UID/$ID", "$UID $ID - burstable"),
        ("/kubepods/besteffort/pod$UID/$ID", "$UID $ID - besteffort"),
        ("/kubepods/pod$UID/$ID", "$UID $ID - guaranteed"),
        (
            "/kubepods/burstable/pod$UID/crio-$ID",
            "$UID $ID cri-o burstable",
        ),
        (
            "/kubepods/pod$UID/crio-conmon-$ID",
            "$UID - cri-o guaranteed",
        ),
        ("/kubepods/besteffort/pod$UID", "$UID - - besteffort"),
        // k3s, and a kind node on cgroup v1 hosts (the node's own container first).
        (
            "/k3s/kubepods/burstable/pod$UID/$ID",
            "$UID $ID - burstable",
        ),
        (
            "/docker/$ID/kubepods/besteffort/pod$UID/$ID",
            "$UID $ID - besteffort",
        ),
    ];
    for (path, expect) in cases {
        check(&fill(&format!("0::{path}\n")), Some(expect));
    }
}

#[test]
fn each_driver_on_cgroup_v1() {
    let cases = [
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd burstable"),
        ("/kubepods.slice/kubepods-pod$UID_.slice/docker-$ID.scope", "$UID $ID docker guaranteed"),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$UID_.slice/crio-$ID.scope",
         "$UID $ID cri-o besteffort"),
        ("/kubepods/burstable/pod$UID/$ID", "$UID $ID - burstable"),
        ("/kubepods/pod$UID/$ID", "$UID $ID - guaranteed"),
    ];
    for (path, expect) in cases {
        let path = fill(path);
        check(&v1(&path, ALL_V1), Some(expect));
        // Any one of the preferred hierarchies is enough.
        for h in ALL_V1 {
            check(&v1(&path, &[h]), Some(expect));
        }
        // Others are not read.
        check(
            &v1(&path, &["cpuset", "net_cls,net_prio", "freezer", "devices"]),
            None,
        );
    }
}

#[test]
fn hierarchy_preference() {
    // The v2 line wins over v1 lines, memory over pids, in any file order.
    let other = "1111aaaa-2222-3333-4444-555566667777";
    let text = fill(&format!(
        "5:pids:/kubepods/pod{other}/$ID\n7:memory:/kubepods/burstable/pod$UID/$ID\n0::/\n"
    ));
    check(&text, Some("$UID $ID - burstable"));
    let text = fill(&format!(
        "7:memory:/kubepods/pod{other}/$ID\n0::/kubepods/besteffort/pod$UID/$ID\n"
    ));
    check(&text, Some("$UID $ID - besteffort"));
    let text = fill(&format!(
        "6:cpu,cpuacct:/kubepods/pod{other}/$ID\n0::/kubepods/pod$UID/$ID\n1:name=systemd:/kubepods/pod{other}/$ID\n"
    ));
    check(&text, Some("$UID $ID - guaranteed"));
    let text = fill(&format!(
        "1:name=systemd:/kubepods/pod{other}/$ID\n5:pids:/kubepods/pod{other}/$ID\n6:cpu,cpuacct:/kubepods/pod$UID/$ID\n"
    ));
    check(&text, Some("$UID $ID - guaranteed"));
    // A v2 line that names no pod falls through to v1 (hybrid hosts).
    let text = fill("0::/init.scope\n4:memory:/kubepods/pod$UID/$ID\n");
    check(&text, Some("$UID $ID - guaranteed"));
}

#[test]
fn kind_and_prefixed_cgroup_roots() {
    let cases = [
        ("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd besteffort"),
        ("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod$UID_.slice/cri-containerd-$ID.scope",
         "$UID $ID containerd guaranteed"),
        // Pod-like cgroups below a pod's container (a tenant's delegated subtree, or Kubernetes
        // nested in a pod seen from the host): the outermost pod, the kubelet's, is the process's.
        ("/kubepods/burstable/pod$UID/$ID/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod1111aaaa_2222_3333_4444_555566667777.slice/cri-containerd-$ID.scope",
         "$UID $ID - burstable"),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$UID_.slice/cri-containerd-$ID.scope/kubepods/pod1111aaaa-2222-3333-4444-555566667777/0123",
         "$UID $ID containerd besteffort"),
    ];
    for (path, expect) in cases {
        check(&fill(&format!("0::{path}\n")), Some(expect));
    }
}

#[test]
fn paths_seen_from_a_cgroup_namespace() {
    let cases = [
        ("/../../kubepods-besteffort.slice/kubepods-besteffort-pod$UID_.slice/cri-containerd-$ID.scope",
         Some("$UID $ID containerd besteffort")),
        ("/../../kubepods-burstable-pod$UID_.slice/cri-containerd-$ID.scope",
         Some("$UID $ID containerd burstable")),
        ("/../kubepods-pod$UID_.slice/crio-$ID.scope", Some("$UID $ID cri-o guaranteed")),
        ("/../../../kubepods.slice/kubepods-pod$UID_.slice/cri-containerd-$ID.scope",
         Some("$UID $ID containerd guaranteed")),
        ("/../pod$UID/$ID", Some("$UID $ID - -")),
        ("/../../burstable/pod$UID/$ID", Some("$UID $ID - burstable")),
        // Inside the container's own namespace, nothing is left to see.
        ("/", None),
        ("/init.scope", None),
        ("/..", None),
    ];
    for (path, expect) in cases {
        check(&fill(&format!("0::{path}\n")), expect);
    }
}

#[test]
fn canonical_case() {
    let upper_uid = UID_.to_ascii_uppercase();
    let upper_id = ID.to_ascii_uppercase();
    check(
        &format!(
            "0::/kubepods.slice/kubepods-pod{upper_uid}.slice/cri-containerd-{upper_id}.scope\n"
        ),
        Some("$UID $ID containerd guaranteed"),
    );
}

#[test]
fn negatives() {
    let id63 = &ID[..63];
    let id65 = format!("{ID}0");
    let cases: Vec<String> = vec![
        // Not Kubernetes.
        "0::/system.slice/containerd.service".into(),
        "0::/system.slice/kubelet.service".into(),
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope".into(),
        "0::/user.slice/user-1000.slice/session-3.scope".into(),
        "0::/system.slice/docker-$ID.scope".into(),
        "0::/docker/$ID".into(),
        "0::/kubepods.slice".into(),
        "0::/kubepods.slice/kubepods-burstable.slice".into(),
        "0::/kubepods/burstable".into(),
        // Malformed pod UIDs: wrong separator for the driver, short, non-hex, misplaced dashes.
        "0::/kubepods.slice/kubepods-pod$UID.slice/cri-containerd-$ID.scope".into(),
        "0::/kubepods/pod$UID_/$ID".into(),
        "0::/kubepods/pod0b8f5a3e-7c1d-4e2f-9a6b-3c4d5e6f7a8/$ID".into(),
        "0::/kubepods/pod0b8f5a3e-7c1d-4e2f-9a6b-3c4d5e6f7a8bb/$ID".into(),
        "0::/kubepods/pod0b8f5a3e-7c1d-4e2f-9a6g-3c4d5e6f7a8b/$ID".into(),
        "0::/kubepods/pod0b8f5a3e7-c1d-4e2f-9a6b-3c4d5e6f7a8b/$ID".into(),
        "0::/kubepods.slice/kubepods-pod.slice".into(),
        // A pod-shaped name that is not under kubepods.
        "0::/system.slice/pod$UID/$ID".into(),
        "0::/kubepods/other/pod$UID/$ID".into(),
        "0::/system.slice/foo-pod$UID_.slice".into(),
        "0::/kubepods.slice/kubepods-other-pod$UID_.slice".into(),
        // Not a cgroup file.
        "".into(),
        "\n\n".into(),
        "kubepods-pod$UID_.slice".into(),
        "0:/kubepods/pod$UID/$ID".into(),
        "x::/kubepods/pod$UID/$ID".into(),
        "0::kubepods/pod$UID/$ID".into(),
        "3:cpuset:/kubepods/pod$UID/$ID\n0::/".into(),
    ];
    for case in cases {
        check(&fill(&case), None);
    }
    // The pod is known; the container is not, for a malformed ID.
    for bad in [id63, &id65, "cri-containerd-xyz", "sandbox"] {
        check(
            &fill(&format!(
                "0::/kubepods.slice/kubepods-pod$UID_.slice/cri-containerd-{bad}.scope\n"
            )),
            Some("$UID - - guaranteed"),
        );
        check(
            &fill(&format!("0::/kubepods/pod$UID/{bad}\n")),
            Some("$UID - - guaranteed"),
        );
    }
}

#[test]
fn bounded_input() {
    // Lines past the first MAX_LINES are not read, nor lines longer than MAX_LINE_LEN.
    let good = fill("0::/kubepods/pod$UID/$ID\n");
    let padding = "2:devices:/\n".repeat(MAX_LINES);
    check(&format!("{padding}{good}"), None);
    check(
        &format!("{}{good}", "2:devices:/\n".repeat(MAX_LINES - 1)),
        Some("$UID $ID - guaranteed"),
    );
    let long = fill(&format!(
        "0::/{}/kubepods/pod$UID/$ID\n",
        "a/".repeat(MAX_LINE_LEN)
    ));
    check(&long, None);
}

#[test]
fn read_pod_ref_of_a_missing_process_is_none() {
    assert_eq!(read_pod_ref(u32::MAX), None);
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("0::".to_string()),
        Just("7:memory:".to_string()),
        Just("kubepods".to_string()),
        Just("kubepods.slice".to_string()),
        Just("kubepods-burstable-pod".to_string()),
        Just("-pod".to_string()),
        Just("pod".to_string()),
        Just(".slice".to_string()),
        Just(".scope".to_string()),
        Just("cri-containerd-".to_string()),
        Just("crio-conmon-".to_string()),
        Just("burstable".to_string()),
        Just("..".to_string()),
        Just(" (deleted)".to_string()),
        Just(UID.to_string()),
        Just(UID_.to_string()),
        Just(ID.to_string()),
        "[0-9a-f_-]{0,40}",
        ".{0,8}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        let _ = parse_proc_cgroup(&text);
    }

    #[test]
    fn cgroup_shaped_text_never_panics_and_results_are_canonical(
        parts in proptest::collection::vec(fragment(), 0..40)
    ) {
        let text = parts.concat();
        if let Some(p) = parse_proc_cgroup(&text) {
            prop_assert!(canonical_uid(&p.pod_uid, b'-').as_deref() == Some(p.pod_uid.as_str()));
            if let Some(id) = &p.container_id {
                prop_assert!(id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            }
        }
    }
}

/// Against the kernel: a real cgroup with a Kubernetes-shaped path, a real process in it.
mod real_cgroup {
    use super::*;
    use std::io::ErrorKind;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};

    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

    fn is_cgroup2(path: &str) -> bool {
        let Ok(c_path) = std::ffi::CString::new(path) else {
            return false;
        };
        // SAFETY: statfs is a C struct of integers, for which all-zero bytes are valid.
        let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a zeroed statfs the kernel fills.
        let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
        #[allow(clippy::unnecessary_cast)]
        let magic = buf.f_type as i64;
        rc == 0 && magic == CGROUP2_SUPER_MAGIC
    }

    /// Undoes the test's changes in any case: child back home, killed, created cgroups removed.
    struct Guard {
        child: Option<Child>,
        home_procs: PathBuf,
        created: Vec<PathBuf>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = std::fs::write(&self.home_procs, child.id().to_string());
                let _ = child.kill();
                let _ = child.wait();
            }
            for dir in self.created.iter().rev() {
                if let Err(e) = std::fs::remove_dir(dir) {
                    eprintln!("real cgroup test: could not remove {}: {e}", dir.display());
                }
            }
        }
    }

    fn skip(reason: &str) {
        println!("SKIPPED (needs root + cgroup v2): {reason}");
    }

    fn refused(e: &std::io::Error) -> bool {
        e.kind() == ErrorKind::PermissionDenied
            || matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EBUSY | libc::EROFS | libc::EACCES)
            )
    }

    #[test]
    fn process_in_a_kubernetes_shaped_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("not root");
        }
        // Unified hosts mount v2 at /sys/fs/cgroup; hybrid hosts at /sys/fs/cgroup/unified.
        let Some(root) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .find(|p| is_cgroup2(p))
        else {
            return skip("no cgroup v2 mount at /sys/fs/cgroup");
        };

        let mut guard = Guard {
            child: None,
            home_procs: PathBuf::new(),
            created: Vec::new(),
        };
        let child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        guard.child = Some(child);
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
        let home = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        guard.home_procs = Path::new(root)
            .join(home.trim_start_matches('/'))
            .join("cgroup.procs");

        let seed: u128 = rand::random();
        let hex = format!("{seed:032x}");
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        let uid_ = uid.replace('-', "_");
        let id = format!("{hex}{hex}");
        let levels = [
            "kubepods.slice".to_string(),
            "kubepods-burstable.slice".to_string(),
            format!("kubepods-burstable-pod{uid_}.slice"),
            format!("cri-containerd-{id}.scope"),
        ];
        let mut dir = PathBuf::from(root);
        for level in &levels {
            dir.push(level);
            match std::fs::create_dir(&dir) {
                Ok(()) => guard.created.push(dir.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) if refused(&e) => return skip(&format!("mkdir {}: {e}", dir.display())),
                Err(e) => panic!("mkdir {}: {e}", dir.display()),
            }
        }
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            if refused(&e) || e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return skip(&format!("moving {pid} into {}: {e}", dir.display()));
            }
            panic!("moving {pid} into {}: {e}", dir.display());
        }

        let got = read_pod_ref(pid);
        println!("real cgroup test ran under {root}: {got:?}");
        assert_eq!(
            got,
            Some(PodRef {
                pod_uid: uid,
                container_id: Some(id),
                runtime: Some("containerd"),
                qos: Some("burstable"),
            })
        );
    }
}
