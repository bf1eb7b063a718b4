//! The fake NVML library (`gpu/fake-nvml`) for the agent's GPU tests: built on demand with the
//! profile of the running test, and installed as `libnvidia-ml.so.1` with a timeline beside it,
//! ready for `--nvml-lib`. The timeline types and the model that computes what the fake reports
//! at a time are re-exported, so a test writes its timeline in Rust and derives its expectations
//! from the same functions the library answers with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use nvidia_ml::install::{LIBRARY_FILE, STATS_FILE, TIMELINE_FILE};
pub use nvidia_ml::model::{DeviceModel, ProcessUtil, SampleKind};
pub use nvidia_ml::stats::{StatsReport, SymbolStats};
pub use nvidia_ml::timeline::{
    Architecture, Device, ErrorCode, InjectedError, Process, RelUs, Series, Timeline, Window,
};

/// `target/<profile>/libnvidia_ml.so`, brought up to date once per test process with
/// `cargo build -p fake-nvml` in the profile this test was built with.
pub fn built_library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/<test>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test binary lives in target/<profile>/deps");
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ has a parent");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace)
                .args(["build", "--quiet", "-p", "fake-nvml"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(
                status.success(),
                "`cargo build -p fake-nvml` failed: {status}"
            );
            let lib = profile_dir.join(nvidia_ml::install::BUILT_FILE);
            assert!(lib.is_file(), "cargo built no {}", lib.display());
            lib
        })
        .clone()
}

/// An installed fake: `dir/libnvidia-ml.so.1`, `dir/fake-nvml-timeline.json`, and the stats
/// file the library writes there.
#[derive(Clone, Debug)]
pub struct FakeNvml {
    pub dir: PathBuf,
    pub lib: PathBuf,
    pub timeline: Timeline,
}

impl FakeNvml {
    /// Installs the fake into `dir` (created if needed) with `timeline`; the timeline's
    /// `missing_symbols` are absent from the installed library.
    pub fn install(dir: &Path, timeline: Timeline) -> FakeNvml {
        let lib = nvidia_ml::install::install(&built_library(), dir, &timeline)
            .unwrap_or_else(|e| panic!("installing the fake NVML library: {e}"));
        FakeNvml {
            dir: dir.to_path_buf(),
            lib,
            timeline,
        }
    }

    /// The figures of device `index` (panics past the last device).
    pub fn device(&self, index: usize) -> DeviceModel<'_> {
        self.timeline
            .device_model(index)
            .unwrap_or_else(|| panic!("the timeline has no device {index}"))
    }

    /// Unix µs → timeline time; needs `anchor_unix_us` set in the timeline (tests should set
    /// it, since the default is the moment the agent calls `nvmlInit`).
    pub fn rel(&self, unix_us: u64) -> RelUs {
        let anchor = self
            .timeline
            .anchor_unix_us
            .expect("set timeline.anchor_unix_us to compare times");
        unix_us as RelUs - anchor as RelUs
    }

    pub fn stats_path(&self) -> PathBuf {
        self.dir.join(STATS_FILE)
    }

    /// The library's call counters (rewritten every 250 ms and at `nvmlShutdown`); `None`
    /// before the library was initialised.
    pub fn stats(&self) -> Option<StatsReport> {
        StatsReport::read(&self.stats_path()).ok()
    }
}
