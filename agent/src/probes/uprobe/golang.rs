//! Where to put uprobes in a Go binary to read `crypto/tls` plaintext: the entries of
//! `(*Conn).Read`, `(*Conn).Write` and `(*Conn).handshakeContext`, and every RET instruction of
//! Read and Write (results are read there, never with return probes: those replace the return
//! address on a goroutine stack that the runtime may move, which crashes the program).
//!
//! Symbols come from the ELF symbol table, or from `.gopclntab` when the binary is stripped. RET
//! instructions are found by decoding the function's bytes with `iced-x86`. Pure: file bytes in,
//! file offsets out.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use object::ReadRef;

use super::elf::Image;
use super::gopclntab::Pclntab;
use super::UprobeError;

pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const HANDSHAKE: &str = "crypto/tls.(*Conn).handshakeContext";

/// Oldest Go whose function table this reads (and whose register ABI the probes assume: 1.17).
const MIN_MINOR: u32 = 18;

/// Most RET instructions probed per function. Go's `(*Conn).Read` and `Write` have a handful;
/// more is a binary built some other way, or one made to make the agent attach thousands of
/// uprobes. Such a binary is skipped with [`UprobeError::TooManyReturns`].
pub const MAX_RETS: usize = 64;

/// Largest function decoded to find its RETs (Read and Write are a few KiB).
pub const MAX_FUNCTION_BYTES: u64 = 1 << 20;

/// Uprobe sites of one function, as file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncSites {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// Everything needed to attach the Go TLS probes to one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTlsSites {
    /// `go1.19.8`, from `.go.buildinfo`.
    pub version: String,
    /// Where the function addresses came from: `symtab` or `gopclntab`.
    pub symbols: &'static str,
    pub read: FuncSites,
    pub write: FuncSites,
    pub handshake: u64,
}

/// The Go version recorded in `.go.buildinfo` (Go 1.18+ layout: the version string inline after a
/// 32-byte header, varint length-prefixed). `Ok(None)`: not a Go binary.
pub fn build_version<'a, R: ReadRef<'a>>(
    img: &Image<'a, R>,
) -> Result<Option<String>, UprobeError> {
    let Some((_, data)) = img.section(".go.buildinfo") else {
        return Ok(None);
    };
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !data.starts_with(MAGIC) || data.len() < 32 {
        return Ok(None);
    }
    let flags = data[15];
    if flags & 2 == 0 {
        // Before Go 1.18 the header held pointers to the version string instead.
        return Err(UprobeError::GoVersion("before go1.18".into()));
    }
    let mut len: usize = 0;
    let mut shift = 0;
    let mut at = 32;
    loop {
        let b = *data.get(at).ok_or(UprobeError::GoBuildInfo)?;
        len |= usize::from(b & 0x7f) << shift;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(UprobeError::GoBuildInfo);
        }
    }
    let v = data.get(at..at + len).ok_or(UprobeError::GoBuildInfo)?;
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// Whether the probes support this Go version (`go1.N[.x]`, N ≥ 18; development builds pass).
pub fn version_supported(v: &str) -> bool {
    let Some(rest) = v.strip_prefix("go1.") else {
        return v.starts_with("devel");
    };
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    minor.parse::<u32>().is_ok_and(|m| m >= MIN_MINOR)
}

/// Virtual addresses of the RET instructions in `code`, which starts at `ip`.
pub fn ret_addresses(code: &[u8], ip: u64) -> Vec<u64> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.mnemonic() == Mnemonic::Ret {
            out.push(ins.ip());
        }
    }
    out
}

/// The RETs of function `name` (`code`, starting at `ip`): at least one, at most [`MAX_RETS`].
pub fn capped_rets(name: &'static str, code: &[u8], ip: u64) -> Result<Vec<u64>, UprobeError> {
    let rets = ret_addresses(code, ip);
    if rets.is_empty() {
        return Err(UprobeError::NoReturn(name));
    }
    if rets.len() > MAX_RETS {
        return Err(UprobeError::TooManyReturns {
            function: name,
            found: rets.len(),
            limit: MAX_RETS,
        });
    }
    Ok(rets)
}

/// A function's [entry, end) virtual addresses, from the symbol table or the function table.
fn locate<'a, R: ReadRef<'a>>(
    img: &Image<'a, R>,
    tab: Option<&Pclntab<'_>>,
    name: &'static str,
) -> Result<(u64, u64), UprobeError> {
    if let Some((addr, size)) = img.symbol(name).filter(|(_, s)| *s > 0) {
        if let Some(end) = addr.checked_add(size) {
            return Ok((addr, end));
        }
    }
    tab.and_then(|t| t.find(name))
        .filter(|f| f.end > f.entry)
        .map(|f| (f.entry, f.end))
        .ok_or(UprobeError::SymbolNotFound(name))
}

fn sites<'a, R: ReadRef<'a>>(
    img: &Image<'a, R>,
    tab: Option<&Pclntab<'_>>,
    name: &'static str,
) -> Result<FuncSites, UprobeError> {
    let (start, end) = locate(img, tab, name)?;
    let size = end.saturating_sub(start);
    if size > MAX_FUNCTION_BYTES {
        return Err(UprobeError::FunctionTooLarge {
            function: name,
            size,
            limit: MAX_FUNCTION_BYTES,
        });
    }
    let code = img
        .bytes_at(start, end.saturating_sub(start))
        .ok_or(UprobeError::SymbolNotFound(name))?;
    let rets = capped_rets(name, code, start)?;
    let off = |a: u64| img.file_offset(a).ok_or(UprobeError::SymbolNotFound(name));
    Ok(FuncSites {
        entry: off(start)?,
        rets: rets.into_iter().map(off).collect::<Result<_, _>>()?,
    })
}

/// The TLS uprobe sites of a Go binary. `Ok(None)`: not a Go binary, or one that does not link
/// `crypto/tls`.
pub fn analyze<'a, R: ReadRef<'a>>(data: R) -> Result<Option<GoTlsSites>, UprobeError> {
    // A 32-bit executable (ELFCLASS32) is not probed and not reported: `Image` reads 64-bit ELF.
    if data
        .read_bytes_at(0, 5)
        .is_ok_and(|h| h.starts_with(b"\x7fELF") && h[4] == 1)
    {
        return Ok(None);
    }
    let img = Image::parse(data)?;
    let Some(version) = build_version(&img)? else {
        return Ok(None);
    };
    if !version_supported(&version) {
        return Err(UprobeError::GoVersion(version));
    }
    if !img.is_x86_64() {
        return Err(UprobeError::Arch);
    }
    let pcln = img.section(".gopclntab").map(|(_, d)| d);
    let tab = match pcln {
        Some(d) => Some(Pclntab::parse(d).map_err(UprobeError::Pclntab)?),
        None => None,
    };
    let symbols = if img.symbol(READ).is_some() {
        "symtab"
    } else {
        "gopclntab"
    };
    let read = match sites(&img, tab.as_ref(), READ) {
        Ok(s) => s,
        // A Go program without crypto/tls: nothing to probe.
        Err(UprobeError::SymbolNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let write = sites(&img, tab.as_ref(), WRITE)?;
    let (hs, _) = locate(&img, tab.as_ref(), HANDSHAKE)?;
    let handshake = img
        .file_offset(hs)
        .ok_or(UprobeError::SymbolNotFound(HANDSHAKE))?;
    Ok(Some(GoTlsSites {
        version,
        symbols,
        read,
        write,
        handshake,
    }))
}
