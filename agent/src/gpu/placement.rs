//! Which GPUs serve a process: the devices whose running-process list (host PIDs) holds it or one
//! of its descendants (vLLM's engine core is a child process holding the GPU), else the devices
//! its `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` name.
//!
//! [`parse_visible_devices`] and [`parse_environ`] are pure; `read_*` functions are the module's
//! only I/O (/proc).

use std::collections::BTreeSet;

/// One entry of a `*_VISIBLE_DEVICES` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRef {
    Index(u32),
    /// A GPU UUID (`GPU-…`); MIG UUIDs are kept as written.
    Uuid(String),
}

/// What a `*_VISIBLE_DEVICES` value selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visible {
    All,
    None,
    List(Vec<DeviceRef>),
}

/// Most processes below a target that are looked at.
const MAX_DESCENDANTS: usize = 256;

/// Parses `0,1`, `GPU-8f…,GPU-1a…`, `all`, `none`, `void`, empty. Unparseable entries are skipped;
/// CUDA ignores everything after the first invalid entry, and so does this.
pub fn parse_visible_devices(value: &str) -> Visible {
    let v = value.trim();
    match v {
        "all" => return Visible::All,
        "" | "none" | "void" | "NoDevFiles" => return Visible::None,
        _ => {}
    }
    let mut list = Vec::new();
    for part in v.split(',').map(str::trim) {
        if let Ok(i) = part.parse::<u32>() {
            list.push(DeviceRef::Index(i));
        } else if (part.starts_with("GPU-") || part.starts_with("MIG-")) && part.len() <= 96 {
            list.push(DeviceRef::Uuid(part.to_string()));
        } else {
            break;
        }
    }
    Visible::List(list)
}

/// `CUDA_VISIBLE_DEVICES`, else `NVIDIA_VISIBLE_DEVICES`, from the NUL-separated text of
/// `/proc/<pid>/environ`. Only these two variables are looked at; nothing else is kept.
pub fn parse_environ(environ: &[u8]) -> Option<Visible> {
    let mut nvidia = None;
    for var in environ.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"CUDA_VISIBLE_DEVICES=") {
            return Some(parse_visible_devices(&String::from_utf8_lossy(v)));
        }
        if let Some(v) = var.strip_prefix(b"NVIDIA_VISIBLE_DEVICES=") {
            nvidia = Some(parse_visible_devices(&String::from_utf8_lossy(v)));
        }
    }
    nvidia
}

/// The visible-devices setting of a live process (`None`: unset, or the process is gone).
pub fn read_visible_devices(pid: u32) -> Option<Visible> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    parse_environ(&bytes)
}

/// The process and its descendants (breadth first, bounded), from
/// `/proc/<pid>/task/<tid>/children`.
pub fn read_process_tree(pid: u32) -> BTreeSet<u32> {
    let mut seen = BTreeSet::from([pid]);
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if seen.len() >= MAX_DESCENDANTS {
                    return seen;
                }
                if seen.insert(child) {
                    queue.push(child);
                }
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_forms() {
        assert_eq!(
            parse_visible_devices("0,2"),
            Visible::List(vec![DeviceRef::Index(0), DeviceRef::Index(2)])
        );
        assert_eq!(
            parse_visible_devices(" GPU-8f6c0a1e-0000-1111-2222-333344445555 "),
            Visible::List(vec![DeviceRef::Uuid(
                "GPU-8f6c0a1e-0000-1111-2222-333344445555".into()
            )])
        );
        assert_eq!(parse_visible_devices("all"), Visible::All);
        assert_eq!(parse_visible_devices(""), Visible::None);
        assert_eq!(parse_visible_devices("void"), Visible::None);
        // CUDA stops at the first invalid entry.
        assert_eq!(
            parse_visible_devices("1,x,2"),
            Visible::List(vec![DeviceRef::Index(1)])
        );
    }

    #[test]
    fn cuda_visible_devices_wins_over_nvidia_visible_devices() {
        let env = b"PATH=/bin\0NVIDIA_VISIBLE_DEVICES=all\0CUDA_VISIBLE_DEVICES=1\0";
        assert_eq!(
            parse_environ(env),
            Some(Visible::List(vec![DeviceRef::Index(1)]))
        );
        assert_eq!(
            parse_environ(b"NVIDIA_VISIBLE_DEVICES=all\0HOME=/"),
            Some(Visible::All)
        );
        assert_eq!(parse_environ(b"HOME=/\0"), None);
        assert_eq!(parse_environ(b"\xff\xfe\0=\0"), None);
    }

    #[test]
    fn the_process_tree_holds_the_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = read_process_tree(std::process::id());
        child.kill().unwrap();
        let _ = child.wait();
        assert!(tree.contains(&std::process::id()));
        assert!(tree.contains(&child.id()), "{tree:?}");
    }
}
