//! Where to put uprobes in OpenSSL's libssl: `SSL_read`, `SSL_write`, `SSL_read_ex`,
//! `SSL_write_ex` from its dynamic symbol table, and which libssl a process has mapped.

use super::elf::Image;
use super::file::Mapping;
use super::UprobeError;

/// The four functions, with whether each is an `_ex` form.
pub const FUNCTIONS: [(&str, bool); 4] = [
    ("SSL_read", false),
    ("SSL_write", false),
    ("SSL_read_ex", true),
    ("SSL_write_ex", true),
];

/// File offsets of the functions present (`_ex` forms exist from OpenSSL 1.1.1 on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslSites {
    pub functions: Vec<(&'static str, u64)>,
}

pub fn analyze<'a, R: object::ReadRef<'a>>(data: R) -> Result<SslSites, UprobeError> {
    let img = Image::parse(data)?;
    let mut functions = Vec::new();
    for (name, _) in FUNCTIONS {
        if let Some((addr, _)) = img.symbol(name).filter(|(a, _)| *a != 0) {
            let off = img
                .file_offset(addr)
                .ok_or(UprobeError::SymbolNotFound(name))?;
            functions.push((name, off));
        }
    }
    if !functions
        .iter()
        .any(|(n, _)| *n == "SSL_read" || *n == "SSL_read_ex")
    {
        return Err(UprobeError::SymbolNotFound("SSL_read"));
    }
    Ok(SslSites { functions })
}

/// The libssl a process has mapped, from its `/proc/<pid>/maps` mappings.
pub fn mapped_libssl(maps: &[Mapping]) -> Option<&Mapping> {
    maps.iter().find(|m| {
        let file = m.path.rsplit('/').next().unwrap_or_default();
        file.starts_with("libssl.so")
    })
}
