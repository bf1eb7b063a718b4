//! Pure parts of TLS site finding on synthetic inputs. The same code runs against real Go
//! binaries (normal and stripped) built by `tests/tests/tls.rs`.

use super::golang::{ret_addresses, version_supported};
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
    assert_eq!(
        mapped_libssl(maps).unwrap().to_str(),
        Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    );
    assert_eq!(
        mapped_libssl("7f-7f r--p 0 0:0 0 /usr/lib/libc.so.6\n"),
        None
    );
}
