//! tracefs: tracepoints are attached by id, read from `events/<category>/<name>/id` under
//! tracefs. A fresh machine may not have it mounted; the agent mounts it (and says so).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing (nor /sys/kernel/debug/tracing) and \
         mounting it failed ({0}{hint}); mount it with `mount -t tracefs tracefs \
         /sys/kernel/tracing`, or give the agent CAP_SYS_ADMIN so that it mounts it itself, or in \
         Kubernetes mount the host's /sys/kernel/tracing into the agent's container",
        hint = if .0.kind() == std::io::ErrorKind::PermissionDenied {
            ": mounting needs CAP_SYS_ADMIN"
        } else {
            ""
        }
    )]
    Mount(std::io::Error),
}

pub struct Tracefs {
    pub root: PathBuf,
    /// Set when this process mounted it.
    pub mounted_by_us: Option<PathBuf>,
}

fn usable(root: &Path) -> bool {
    root.join("events/syscalls").is_dir()
}

pub fn ensure_mounted() -> Result<Tracefs, TracefsError> {
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if usable(Path::new(root)) {
            return Ok(Tracefs {
                root: root.into(),
                mounted_by_us: None,
            });
        }
    }
    let root = PathBuf::from("/sys/kernel/tracing");
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(Tracefs {
        root: root.clone(),
        mounted_by_us: Some(root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_refused_for_lack_of_privilege_names_the_capability_and_the_fixes() {
        let e = TracefsError::Mount(std::io::Error::from_raw_os_error(libc::EPERM)).to_string();
        for needle in [
            "/sys/kernel/tracing",
            "CAP_SYS_ADMIN",
            "mount -t tracefs tracefs /sys/kernel/tracing",
            "Kubernetes",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        let e = TracefsError::Mount(std::io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(!e.contains(": mounting needs"), "{e}");
    }
}
