//! Pure parts of TLS site finding on synthetic inputs. The same code runs against real Go
//! binaries (normal and stripped) built by `tests/tests/tls.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::file::{open_in_root, open_map_files, parse_maps, OpenError, MAX_FILE_BYTES};
use super::golang::{capped_rets, ret_addresses, version_supported, MAX_RETS};
use super::gopclntab::{GoFunc, Pclntab, PclntabError, MAGIC_GO118, MAGIC_GO120};
use super::openssl::mapped_libssl;

/// A Go 1.18+ function table with the given (name, entry offset) functions and a text end.
fn pclntab(magic: u32, funcs: &[(&str, u32)], text_end: u32) -> Vec<u8> {
    let text_start: u64 = 0x401000;
    let header = 8 + 8 * 8;
    let mut names = Vec::new();
    let mut name_offs = Vec::new();
    for (n, _) in funcs {
        name_offs.push(names.len() as u32);
        names.extend_from_slice(n.as_bytes());
        names.push(0);
    }
    let funcnames = header;
    let functab = funcnames + names.len();
    let nfunc = funcs.len();
    let funcdata = (nfunc + 1) * 8; // _func records follow the table, relative to functab
    let mut out = Vec::new();
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&[0, 0, 1, 8]);
    for w in [
        nfunc as u64,
        0,
        text_start,
        funcnames as u64,
        0,
        0,
        0,
        functab as u64,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&names);
    for (i, (_, entry)) in funcs.iter().enumerate() {
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&((funcdata + 8 * i) as u32).to_le_bytes());
    }
    out.extend_from_slice(&text_end.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (i, (_, entry)) in funcs.iter().enumerate() {
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&name_offs[i].to_le_bytes());
    }
    out
}

#[test]
fn pclntab_finds_functions_by_name_with_their_end() {
    let funcs = [
        ("main.main", 0x0),
        ("crypto/tls.(*Conn).Read", 0x100),
        ("crypto/tls.(*Conn).Write", 0x380),
    ];
    for magic in [MAGIC_GO118, MAGIC_GO120] {
        let data = pclntab(magic, &funcs, 0x500);
        let t = Pclntab::parse(&data).unwrap();
        assert_eq!(t.nfunc, 3);
        assert_eq!(
            t.find("crypto/tls.(*Conn).Read"),
            Some(GoFunc {
                entry: 0x401100,
                end: 0x401380
            })
        );
        assert_eq!(
            t.find("crypto/tls.(*Conn).Write"),
            Some(GoFunc {
                entry: 0x401380,
                end: 0x401500
            })
        );
        assert_eq!(t.find("crypto/tls.(*Conn).Close"), None);
    }
}

#[test]
fn pclntab_rejects_old_layouts_and_never_panics_on_truncation() {
    let mut data = pclntab(MAGIC_GO118, &[("a", 0), ("b", 16)], 32);
    for n in 0..data.len() {
        // Any prefix: an error or a table whose lookups fail cleanly.
        if let Ok(t) = Pclntab::parse(&data[..n]) {
            let _ = t.find("b");
            let _ = t.functions().count();
        }
    }
    data[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes()); // Go 1.2–1.15
    assert_eq!(
        Pclntab::parse(&data).unwrap_err(),
        PclntabError::Magic(0xffff_fffb)
    );
    let mut big = pclntab(MAGIC_GO120, &[("a", 0)], 16);
    big[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // nfunc
    assert_eq!(Pclntab::parse(&big).unwrap_err(), PclntabError::OutOfBounds);
}

#[test]
fn ret_finder_reports_every_ret_and_only_rets() {
    // A Go-shaped function: stack check, body with two exits, morestack call at the end.
    let code = [
        0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
        0x76, 0x0f, // jbe +15
        0x48, 0x85, 0xc0, // test rax, rax
        0x74, 0x02, // je +2
        0xc3, // ret                         (offset 11)
        0x90, // nop
        0x48, 0x31, 0xc0, // xor rax, rax
        0xc2, 0x08, 0x00, // ret 8         (offset 16)
        0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3 (a 0xc3 byte that is not a RET)
        0xe8, 0x00, 0x00, 0x00, 0x00, // call morestack
        0xeb, 0xe1, // jmp start
    ];
    assert_eq!(ret_addresses(&code, 0x1000), vec![0x100b, 0x1010]);
    assert!(ret_addresses(&[], 0x1000).is_empty());
}

#[test]
fn go_versions_from_1_18_are_supported() {
    for v in [
        "go1.18",
        "go1.19.8",
        "go1.22.3",
        "go1.23rc1",
        "devel go1.24-abc",
    ] {
        assert!(version_supported(v), "{v}");
    }
    for v in ["go1.17.13", "go1.9", "gccgo", ""] {
        assert!(!version_supported(v), "{v}");
    }
}

#[test]
fn libssl_is_found_in_a_maps_listing() {
    let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/python3.11
7f0000000000-7f0000001000 r--p 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000100000-7f0000101000 r-xp 00020000 08:01 789 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000200000-7f0000201000 rw-p 00000000 00:00 0 [heap]
";
    let maps = parse_maps(maps);
    assert_eq!(maps.len(), 3, "{maps:?}");
    let ssl = mapped_libssl(&maps).unwrap();
    assert_eq!(ssl.path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
    assert_eq!((ssl.start, ssl.end), (0x7f0000100000, 0x7f0000101000));
    assert_eq!((ssl.dev, ssl.ino), (libc::makedev(8, 1), 789));
    assert_eq!(
        mapped_libssl(&parse_maps("7f-7f r--p 0 0:0 1 /usr/lib/libc.so.6\n")),
        None
    );
    // Paths with spaces are kept whole.
    let spaced = parse_maps("1000-2000 r-xp 00000000 fd:01 42          /opt/my app/libssl.so.3\n");
    assert_eq!(spaced[0].path, "/opt/my app/libssl.so.3");
}

#[test]
fn pclntab_lookup_is_linear_when_names_have_no_terminator() {
    // 50,000 functions whose names all start at the same 1 MiB run without a NUL: reading each
    // name up to its NUL would scan 50 GB; comparing in place reads a few bytes per function.
    let nfunc: usize = 50_000;
    let header = 8 + 8 * 8;
    let names = 1 << 20;
    let functab = header + names;
    let funcdata = (nfunc + 1) * 8;
    let mut d = Vec::new();
    d.extend_from_slice(&MAGIC_GO120.to_le_bytes());
    d.extend_from_slice(&[0, 0, 1, 8]);
    for w in [
        nfunc as u64,
        0,
        0x401000,
        header as u64,
        0,
        0,
        0,
        functab as u64,
    ] {
        d.extend_from_slice(&w.to_le_bytes());
    }
    d.resize(functab, b'a');
    for i in 0..=nfunc {
        d.extend_from_slice(&(i as u32 * 16).to_le_bytes());
        d.extend_from_slice(&(funcdata as u32).to_le_bytes());
    }
    d.extend_from_slice(&0u32.to_le_bytes());
    d.extend_from_slice(&0u32.to_le_bytes()); // every name at offset 0
    let t = Pclntab::parse(&d).unwrap();
    let started = Instant::now();
    assert_eq!(t.find("crypto/tls.(*Conn).Read"), None);
    assert_eq!(
        t.functions().count(),
        0,
        "names over MAX_NAME are not returned"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_function_with_too_many_rets_is_refused_with_the_count() {
    let code = vec![0xc3u8; MAX_RETS + 1];
    let err = capped_rets("f", &code, 0x1000).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("f has 65 RET instructions, over the {MAX_RETS} probed per function; this binary is skipped (not a regular Go build?)")
    );
    assert_eq!(
        capped_rets("f", &code[..MAX_RETS], 0x1000).unwrap().len(),
        MAX_RETS
    );
}

/// A fake container root in a fresh directory.
fn fake_root(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("infertap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
    dir
}

fn identity(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.dev(), m.ino())
}

#[test]
fn a_tenant_symlink_to_a_host_file_is_not_followed() {
    let root = fake_root("symlink");
    let lib = root.join("usr/lib/libssl.so.3");
    std::os::unix::fs::symlink("/etc/shadow", &lib).unwrap();
    let shadow = identity(Path::new("/etc/shadow"));
    // Even with the identity of the file it points to, the link is not followed.
    let err = open_in_root(&root, "/usr/lib/libssl.so.3", shadow).unwrap_err();
    assert!(
        matches!(&err, OpenError::Open { error, .. } if error.contains("symbolic links")),
        "{err}"
    );
    // An absolute path inside the root cannot climb out of it either.
    std::fs::write(root.join("usr/lib/real"), b"x").unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", root.join("usr/up")).unwrap();
    assert!(open_in_root(&root, "/usr/up/shadow", shadow).is_err());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_fifo_is_refused_at_once_without_blocking() {
    let root = fake_root("fifo");
    let fifo = root.join("usr/lib/libssl.so.3");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let started = Instant::now();
    let err = open_in_root(&root, "/usr/lib/libssl.so.3", identity(&fifo)).unwrap_err();
    assert_eq!(err, OpenError::NotRegular("a FIFO"));
    assert_eq!(err.to_string(), "not a regular file (a FIFO); not read");
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_device_is_refused() {
    let zero = Path::new("/dev/zero");
    let err = open_in_root(Path::new("/"), "/dev/zero", identity(zero)).unwrap_err();
    assert_eq!(err, OpenError::NotRegular("a character device"));
}

#[test]
fn a_file_swapped_after_its_mapping_was_read_is_refused() {
    let root = fake_root("swap");
    let lib = root.join("usr/lib/libssl.so.3");
    std::fs::write(&lib, b"\x7fELF the mapped one").unwrap();
    let mapped = identity(&lib);
    let ok = open_in_root(&root, "/usr/lib/libssl.so.3", mapped).unwrap();
    let cache = ok.reader(MAX_FILE_BYTES).unwrap();
    assert_eq!(
        object::ReadRef::read_bytes_at(&cache, 0, 19).unwrap(),
        b"\x7fELF the mapped one"
    );
    // The tenant renames another file over the path between planning and opening.
    let other = root.join("usr/lib/other");
    std::fs::write(&other, b"\x7fELF another").unwrap();
    std::fs::rename(&other, &lib).unwrap();
    let err = open_in_root(&root, "/usr/lib/libssl.so.3", mapped).unwrap_err();
    assert!(matches!(err, OpenError::Changed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("changed since its mapping was read"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_file_over_the_size_cap_is_reported_and_not_read() {
    let root = fake_root("big");
    let lib = root.join("usr/lib/libssl.so.3");
    let f = std::fs::File::create(&lib).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap(); // sparse
    let opened = open_in_root(&root, "/usr/lib/libssl.so.3", identity(&lib)).unwrap();
    let err = opened.reader(MAX_FILE_BYTES).map(|_| ()).unwrap_err();
    assert_eq!(
        err,
        OpenError::TooLarge {
            size: MAX_FILE_BYTES + 1,
            limit: MAX_FILE_BYTES
        }
    );
    assert!(
        err.to_string().contains("over the 536870912-byte limit"),
        "{err}"
    );
    // A file that grows past the cap after it was opened is caught before it is read.
    let grows = root.join("usr/lib/grows");
    std::fs::write(&grows, b"small").unwrap();
    let opened = open_in_root(&root, "/usr/lib/grows", identity(&grows)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&grows)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert_eq!(
        opened.reader(1024).map(|_| ()).unwrap_err(),
        OpenError::TooLarge {
            size: 4096,
            limit: 1024
        }
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn map_files_opens_the_mapped_inode_of_a_process() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED (needs root: /proc/<pid>/map_files needs CAP_SYS_ADMIN)");
        return;
    }
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
    let m = maps
        .iter()
        .find(|m| Path::new(&m.path) == exe)
        .expect("the test binary is mapped");
    let opened = open_map_files(std::process::id(), m).unwrap();
    assert_eq!(opened.mapped, identity(&exe));
    let attach_path = opened.proc_path();
    assert_eq!(
        identity(&std::fs::canonicalize(&attach_path).unwrap()),
        identity(&exe)
    );
    let cache = opened.reader(MAX_FILE_BYTES).unwrap();
    let len = object::ReadRef::len(&cache).unwrap();
    assert_eq!(len, std::fs::metadata(&exe).unwrap().len());
    assert!(object::ReadRef::read_bytes_at(&cache, 0, 4).unwrap() == b"\x7fELF");
    // A mapping whose recorded inode is not the file's is refused.
    let wrong = super::file::Mapping {
        ino: m.ino + 1,
        ..m.clone()
    };
    assert!(matches!(
        open_map_files(std::process::id(), &wrong),
        Err(OpenError::Changed { .. })
    ));
}

/// The in-place symbol and section lookups agree with the `object` crate's own on real files:
/// this test binary (static symbols) and the host's libssl when it has one (dynamic symbols).
#[test]
fn elf_lookups_agree_with_the_object_crate() {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut files = vec![std::fs::read("/proc/self/exe").unwrap()];
    if let Ok(ssl) = std::fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3") {
        files.push(ssl);
        let sites = super::openssl::analyze(&files.last().unwrap()[..]).unwrap();
        assert!(
            sites.functions.iter().any(|(n, _)| *n == "SSL_read"),
            "{sites:?}"
        );
    }
    for data in &files {
        let img = super::elf::Image::parse(&data[..]).unwrap();
        let obj = object::File::parse(&data[..]).unwrap();
        for s in obj.sections().take(50) {
            let name = s.name().unwrap();
            if name.is_empty() {
                continue;
            }
            let first = obj.sections().find(|x| x.name() == Ok(name)).unwrap();
            assert_eq!(
                img.section(name).map(|(a, _)| a),
                Some(first.address()),
                "{name}"
            );
        }
        let mut checked = 0;
        for s in obj.symbols().chain(obj.dynamic_symbols()) {
            let Ok(name) = s.name() else { continue };
            if name.is_empty() || !s.is_definition() || s.address() == 0 {
                continue;
            }
            assert!(img.symbol(name).is_some(), "{name}");
            checked += 1;
            if checked > 500 {
                break;
            }
        }
        assert!(checked > 0);
    }
}

/// A file whose reads are counted.
struct Counted {
    file: std::fs::File,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl std::io::Seek for Counted {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// The analysis reads a tenant's file through positioned reads: looking up symbols, sections and
/// a function's bytes in this (large, unstripped) test binary reads a small part of it, never the
/// whole file.
#[test]
fn symbol_lookups_read_a_small_part_of_the_file() {
    let path = std::fs::read_link("/proc/self/exe").unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let cache = object::ReadCache::new(Counted {
        file: std::fs::File::open(&path).unwrap(),
        read: read.clone(),
    });
    let img = super::elf::Image::parse(&cache).unwrap();
    assert!(img.section(".text").is_some());
    let (addr, len) = img
        .symbol("rust_begin_unwind")
        .or_else(|| img.symbol("main"))
        .expect("a symbol of the test binary");
    assert!(img.bytes_at(addr, len.max(1)).is_some());
    assert!(super::golang::analyze(&cache).unwrap().is_none(), "not Go");
    let read = read.get();
    println!("read {read} of {size} bytes");
    assert!(read < size / 2, "read {read} of {size} bytes");
}
