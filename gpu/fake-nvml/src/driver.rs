//! The fake driver's state between `nvmlInit` and `nvmlShutdown`, and the one entry every
//! exported call goes through ([`serve`]): the driver lock (real NVML serialises calls too), the
//! initialised check, device handles, injected errors and the per-symbol counters.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use nvml_wrapper_sys::bindings::{self as b, nvmlDevice_t, nvmlGpmSample_t, nvmlReturn_t};

use crate::install::{STATS_FILE, TIMELINE_FILE};
use crate::stats::{self, now_unix_us, Sym, Writer};
use crate::timeline::{RelUs, Timeline};

/// Environment variable naming the timeline file (else `fake-nvml-timeline.json` beside the
/// library).
pub const TIMELINE_ENV: &str = "FAKE_NVML_TIMELINE";
/// Environment variable naming the stats file (else `fake-nvml-stats.json` beside the library
/// when the timeline was found there).
pub const STATS_ENV: &str = "FAKE_NVML_STATS";

/// Device handles are opaque pointers to NVML users; the fake never dereferences them.
const HANDLE_BASE: usize = 0x00fa_4e00_0000;
const HANDLE_STRIDE: usize = 0x40;
const GPM_BASE: usize = 0x00fa_4e80_0000;

pub(crate) struct Driver {
    pub timeline: Timeline,
    pub anchor_us: u64,
    refs: u32,
    /// Remaining injections per `timeline.errors` entry (`None`: unlimited).
    injections_left: Vec<Option<u32>>,
    pub gpm: GpmSamples,
    stats: Option<Writer>,
}

/// GPM samples by handle: (device, time) once filled.
#[derive(Default)]
pub(crate) struct GpmSamples {
    next: usize,
    samples: HashMap<usize, Option<(usize, RelUs)>>,
}

impl GpmSamples {
    pub fn alloc(&mut self) -> nvmlGpmSample_t {
        self.next += 1;
        self.samples.insert(self.next, None);
        std::ptr::without_provenance_mut(GPM_BASE + self.next * HANDLE_STRIDE)
    }

    fn id(h: nvmlGpmSample_t) -> Option<usize> {
        let v = (h as usize).checked_sub(GPM_BASE)?;
        (v % HANDLE_STRIDE == 0).then_some(v / HANDLE_STRIDE)
    }

    /// Frees a sample; false when it is not one of ours.
    pub fn free(&mut self, h: nvmlGpmSample_t) -> bool {
        Self::id(h).is_some_and(|id| self.samples.remove(&id).is_some())
    }

    /// The slot of a live sample.
    pub fn get_mut(&mut self, h: nvmlGpmSample_t) -> Option<&mut Option<(usize, RelUs)>> {
        self.samples.get_mut(&Self::id(h)?)
    }
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);
/// Injected `nvmlInit` failures so far (they leave no driver state to count in).
static INIT_FAILURES: AtomicU32 = AtomicU32::new(0);

fn lock() -> MutexGuard<'static, Option<Driver>> {
    DRIVER.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn device_handle(index: usize) -> nvmlDevice_t {
    std::ptr::without_provenance_mut(HANDLE_BASE + index * HANDLE_STRIDE)
}

impl Driver {
    /// Timeline time now.
    pub fn now(&self) -> RelUs {
        now_unix_us() as RelUs - self.anchor_us as RelUs
    }

    /// Timeline time → the driver's timestamps (Unix µs).
    pub fn rel_to_unix(&self, t: RelUs) -> u64 {
        (self.anchor_us as RelUs + t).max(0) as u64
    }

    /// A `lastSeenTimeStamp` → timeline time; 0 means "everything buffered".
    pub fn unix_to_rel(&self, ts: u64) -> Option<RelUs> {
        (ts != 0).then(|| ts as RelUs - self.anchor_us as RelUs)
    }

    fn device_index(&self, h: nvmlDevice_t) -> Option<usize> {
        let v = (h as usize).checked_sub(HANDLE_BASE)?;
        let i = v / HANDLE_STRIDE;
        (v % HANDLE_STRIDE == 0 && i < self.timeline.devices.len()).then_some(i)
    }

    fn injected(&mut self, sym: Sym, dev: Option<usize>, now: RelUs) -> Option<nvmlReturn_t> {
        for (e, left) in self
            .timeline
            .errors
            .iter()
            .zip(self.injections_left.iter_mut())
        {
            let applies = e.symbol == sym.name()
                && e.device.is_none_or(|d| Some(d as usize) == dev)
                && e.window().contains(now)
                && *left != Some(0);
            if applies {
                if let Some(n) = left.as_mut() {
                    *n -= 1;
                }
                return Some(e.code.0);
            }
        }
        None
    }
}

/// Serves one call: counts it, times it, and turns a panic into `NVML_ERROR_UNKNOWN` (a panic
/// must not unwind into C). `handle`: the call's device, checked and turned into an index.
pub(crate) fn serve(
    sym: Sym,
    handle: Option<nvmlDevice_t>,
    f: impl FnOnce(&mut Driver, Option<usize>, RelUs) -> nvmlReturn_t,
) -> nvmlReturn_t {
    let start = Instant::now();
    let rc = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = lock();
        let Some(driver) = guard.as_mut() else {
            return b::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
        };
        let now = driver.now();
        let dev = match handle {
            None => None,
            Some(h) => match driver.device_index(h) {
                Some(i) => Some(i),
                None => return b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
            },
        };
        // A "missing" symbol reached anyway (the library was loaded without `install` hiding
        // it): answer as a driver without the entry point does.
        if driver
            .timeline
            .missing_symbols
            .iter()
            .any(|m| m == sym.name())
        {
            return b::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND;
        }
        if let Some(code) = driver.injected(sym, dev, now) {
            return code;
        }
        if let Some(&us) = driver.timeline.call_latency_us.get(sym.name()) {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        f(driver, dev, now)
    }))
    .unwrap_or(b::nvmlReturn_enum_NVML_ERROR_UNKNOWN);
    stats::record(sym, start.elapsed(), rc);
    rc
}

/// Like [`serve`] for a call on one device.
pub(crate) fn serve_device(
    sym: Sym,
    handle: nvmlDevice_t,
    f: impl FnOnce(&mut Driver, usize, RelUs) -> nvmlReturn_t,
) -> nvmlReturn_t {
    serve(sym, Some(handle), |d, dev, now| match dev {
        Some(i) => f(d, i, now),
        None => b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
    })
}

/// The directory this library was loaded from.
fn library_dir() -> Option<PathBuf> {
    // SAFETY: Dl_info is a C struct of pointers and integers, for which all-zero bytes are valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = library_dir as *const libc::c_void;
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(std::ffi::OsStr::new(
        std::str::from_utf8(name.to_bytes()).ok()?,
    ));
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    path.parent().map(|p| p.to_path_buf())
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `nvmlInit*`: loads the timeline on the first call; later calls only count references.
pub(crate) fn init(sym: Sym) -> nvmlReturn_t {
    let start = Instant::now();
    let rc = catch_unwind(AssertUnwindSafe(|| init_inner(sym)))
        .unwrap_or(b::nvmlReturn_enum_NVML_ERROR_UNKNOWN);
    stats::record(sym, start.elapsed(), rc);
    rc
}

fn init_inner(sym: Sym) -> nvmlReturn_t {
    let mut guard = lock();
    if let Some(d) = guard.as_mut() {
        d.refs += 1;
        return b::nvmlReturn_enum_NVML_SUCCESS;
    }
    let beside = library_dir().map(|d| d.join(TIMELINE_FILE));
    let (path, found_beside) = match env_path(TIMELINE_ENV) {
        Some(p) => (p, false),
        None => match beside.filter(|p| p.exists()) {
            Some(p) => (p, true),
            None => {
                // Like a machine with the library but without the kernel driver.
                eprintln!(
                    "fake-nvml: no timeline: set {TIMELINE_ENV} or put {TIMELINE_FILE} beside the library; answering DRIVER_NOT_LOADED"
                );
                return b::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
            }
        },
    };
    let timeline = match Timeline::load(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fake-nvml: {e}");
            return b::nvmlReturn_enum_NVML_ERROR_UNKNOWN;
        }
    };
    let now = now_unix_us();
    let anchor_us = timeline.anchor_unix_us.unwrap_or(now);
    let t = now as RelUs - anchor_us as RelUs;
    let failures = INIT_FAILURES.load(Ordering::Relaxed);
    let injected = timeline.errors.iter().find(|e| {
        e.symbol == sym.name() && e.window().contains(t) && e.times.is_none_or(|n| failures < n)
    });
    if let Some(e) = injected {
        INIT_FAILURES.fetch_add(1, Ordering::Relaxed);
        return e.code.0;
    }
    let stats_path = env_path(STATS_ENV).or_else(|| {
        found_beside
            .then(|| path.parent().map(|d| d.join(STATS_FILE)))
            .flatten()
    });
    *guard = Some(Driver {
        injections_left: timeline.errors.iter().map(|e| e.times).collect(),
        timeline,
        anchor_us,
        refs: 1,
        gpm: GpmSamples::default(),
        stats: stats_path.map(Writer::start),
    });
    b::nvmlReturn_enum_NVML_SUCCESS
}

/// `nvmlShutdown`: the last reference drops the state and writes the final stats.
pub(crate) fn shutdown() -> nvmlReturn_t {
    let start = Instant::now();
    let (rc, writer) = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = lock();
        match guard.as_mut() {
            None => (b::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED, None),
            Some(d) if d.refs > 1 => {
                d.refs -= 1;
                (b::nvmlReturn_enum_NVML_SUCCESS, None)
            }
            Some(_) => {
                let writer = guard.take().and_then(|d| d.stats);
                (b::nvmlReturn_enum_NVML_SUCCESS, writer)
            }
        }
    }))
    .unwrap_or((b::nvmlReturn_enum_NVML_ERROR_UNKNOWN, None));
    stats::record(Sym::Shutdown, start.elapsed(), rc);
    if let Some(w) = writer {
        w.finish();
    }
    rc
}
