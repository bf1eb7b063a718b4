//! Opening the files of a traced process (its executable, the libssl it maps) so that the process
//! cannot choose what the agent opens, reads or attaches to. The agent runs as root on every node;
//! the process is a tenant's, and so are its files, paths and mappings.
//!
//! A file is named by a mapping of `/proc/<pid>/maps` (start, end, device, inode, path) and opened:
//!
//! 1. through `/proc/<pid>/map_files/<start>-<end>`: the kernel hands over the mapped file itself,
//!    whatever its path now names (needs CAP_SYS_ADMIN), else
//! 2. by its path with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!    under `/proc/<pid>/root`: no symlink is followed and nothing outside the process's root is
//!    reached (mapped paths are the kernel's, free of symlinks).
//!
//! Either way the file is first opened `O_PATH` (nothing is opened for reading: a FIFO cannot block
//! the agent, a device is never opened), must be a regular file, not on FUSE (its server could
//! stall the agent), and must be the mapped device and inode. Only then is it reopened for reading,
//! through the agent's own descriptor (`/proc/self/fd/<n>`, `O_NONBLOCK`), and read from that
//! descriptor with a size cap ([`MAX_FILE_BYTES`]) by positioned reads of only the ranges the
//! analysis needs ([`OpenedFile::reader`]: headers, symbol and string tables, the sections and
//! function bytes looked at), so the agent's memory never grows by the file's size. Uprobes are attached through the same
//! descriptor ([`OpenedFile::proc_path`]), so the inode probed is the inode read.
//!
//! Overlayfs (on older kernels) shows the underlying file's device and inode in `/proc/<pid>/maps`
//! while an opened file reports the overlay's: when they differ, the agent maps one page of its own
//! descriptor and compares what its own `/proc/self/maps` shows for it, the same view.

use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Largest file analysed for TLS. Go servers are tens to a few hundred MiB; libssl about one.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// `statfs.f_type` of FUSE filesystems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// A file-backed mapping of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `dev_t` of the device (`makedev(major, minor)`).
    pub dev: u64,
    pub ino: u64,
    /// The path as the process sees it (`" (deleted)"` appended for a deleted file).
    pub path: String,
}

/// The file-backed mappings of a `/proc/<pid>/maps` listing (paths may contain spaces).
pub fn parse_maps(maps: &str) -> Vec<Mapping> {
    maps.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let (f, r) = rest.split_once(' ')?;
        rest = r;
        Some(f)
    };
    let (range, _perms, _off, dev, ino) = (field()?, field()?, field()?, field()?, field()?);
    let path = rest.trim_start_matches(' ');
    if !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let ino: u64 = ino.parse().ok()?;
    if ino == 0 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        dev: libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        ino,
        path: path.to_string(),
    })
}

/// Why a file was not opened or read. Each says what the agent refused and why.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("cannot open {path}: {error}")]
    Open { path: String, error: String },
    #[error("not a regular file ({0}); not read")]
    NotRegular(&'static str),
    #[error("on a FUSE filesystem (its server could stall the agent); not read")]
    Fuse,
    #[error(
        "the file changed since its mapping was read (mapped dev {mapped_dev:#x} inode {mapped_ino}, \
         found dev {dev:#x} inode {ino}); not read, looked at again when the process is targeted again"
    )]
    Changed {
        mapped_dev: u64,
        mapped_ino: u64,
        dev: u64,
        ino: u64,
    },
    #[error(
        "the file is {size} bytes, over the {limit}-byte limit of TLS analysis; skipped \
         (TLS of this process is not captured)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read the file: {0}")]
    Read(String),
}

/// A traced process's file, opened for reading by the agent, checked to be the mapped one.
#[derive(Debug)]
pub struct OpenedFile {
    file: File,
    /// (device, inode) of the mapping it was checked against.
    pub mapped: (u64, u64),
    pub size: u64,
}

impl OpenedFile {
    /// Positioned reads of this descriptor for the ELF parser (`object::ReadCache`): only the
    /// ranges the analysis asks for are read and held, never the whole file. At most `limit`
    /// bytes ([`OpenError::TooLarge`] beyond, also when the file grew since it was opened).
    pub fn reader(&self, limit: u64) -> Result<object::ReadCache<&File>, OpenError> {
        let size = (&self.file)
            .seek(SeekFrom::End(0))
            .map_err(|e| OpenError::Read(e.to_string()))?;
        let size = size.max(self.size);
        if size > limit {
            return Err(OpenError::TooLarge { size, limit });
        }
        Ok(object::ReadCache::new(&self.file))
    }

    /// A path naming this very descriptor's file for as long as it is held (for attaching).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

fn cstring(p: &Path) -> Result<CString, OpenError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| OpenError::Open {
        path: p.display().to_string(),
        error: "NUL in path".into(),
    })
}

fn os_err(path: &Path) -> OpenError {
    OpenError::Open {
        path: path.display().to_string(),
        error: std::io::Error::last_os_error().to_string(),
    }
}

fn fstat(fd: &impl AsRawFd) -> Result<libc::stat, OpenError> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(OpenError::Read(std::io::Error::last_os_error().to_string()));
    }
    Ok(st)
}

fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

/// `open(2)` with the given flags (the path is one the agent trusts: a `/proc` magic link).
fn open_raw(path: &Path, flags: libc::c_int) -> Result<OwnedFd, OpenError> {
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path; the descriptor returned is owned here.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(path));
    }
    // SAFETY: fd was just returned by open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the agent's own `/proc/self/maps` shows as (device, inode) for a page of `file`.
fn mapped_identity(file: &File) -> Option<(u64, u64)> {
    // SAFETY: a read-only private mapping of one page of a regular file the agent holds; it is
    // never read, only looked up in /proc/self/maps, and unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    // SAFETY: the mapping made above, of one page.
    unsafe { libc::munmap(addr, 1) };
    parse_maps(&maps)
        .into_iter()
        .find(|m| m.start == addr as u64)
        .map(|m| (m.dev, m.ino))
}

/// Check an `O_PATH` descriptor of a candidate file and reopen it for reading.
fn checked(opath: OwnedFd, mapped: (u64, u64)) -> Result<OpenedFile, OpenError> {
    let st = fstat(&opath)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(OpenError::NotRegular(kind(st.st_mode)));
    }
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a statfs buffer.
    if unsafe { libc::fstatfs(opath.as_raw_fd(), &mut fs) } == 0
        && fs.f_type as i64 == FUSE_SUPER_MAGIC
    {
        return Err(OpenError::Fuse);
    }
    // Reopen the inode held (not a path the process controls) for reading.
    let own = PathBuf::from(format!("/proc/self/fd/{}", opath.as_raw_fd()));
    let file = File::from(open_raw(
        &own,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )?);
    let st2 = fstat(&file)?;
    let (dev, ino) = (st2.st_dev, st2.st_ino);
    if (st.st_dev, st.st_ino) != (dev, ino) || st2.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(OpenError::NotRegular("replaced while opened"));
    }
    if (dev, ino) != mapped && mapped_identity(&file) != Some(mapped) {
        return Err(OpenError::Changed {
            mapped_dev: mapped.0,
            mapped_ino: mapped.1,
            dev,
            ino,
        });
    }
    Ok(OpenedFile {
        file,
        mapped,
        size: st2.st_size as u64,
    })
}

/// The mapped file through `/proc/<pid>/map_files/<start>-<end>`.
pub fn open_map_files(pid: u32, m: &Mapping) -> Result<OpenedFile, OpenError> {
    let link = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    checked(open_raw(&link, libc::O_PATH)?, (m.dev, m.ino))
}

/// `struct open_how` of `openat2(2)` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `path` (absolute, as the process sees it) resolved inside `root` with no symlink followed.
pub fn open_in_root(root: &Path, path: &str, mapped: (u64, u64)) -> Result<OpenedFile, OpenError> {
    let dir = open_raw(root, libc::O_PATH | libc::O_DIRECTORY)?;
    let rel = Path::new(path.trim_start_matches('/'));
    let c = cstring(rel)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid directory descriptor, a NUL-terminated path and an open_how of
    // the size passed; the descriptor returned is owned here.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(os_err(&root.join(rel)));
    }
    // SAFETY: fd was just returned by openat2 and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    checked(fd, mapped)
}

/// A mapping of process `pid`: through `map_files`, else by its path inside the process's root.
pub fn open_mapping(pid: u32, m: &Mapping) -> Result<OpenedFile, OpenError> {
    match open_map_files(pid, m) {
        Err(OpenError::Open { .. }) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            open_in_root(&root, &m.path, (m.dev, m.ino))
        }
        other => other,
    }
}
