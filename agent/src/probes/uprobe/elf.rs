//! What the TLS uprobes need from an ELF file: symbols (static then dynamic table), sections, the
//! bytes at a virtual address, and virtual address → file offset (uprobes attach at file offsets).
//! Parsing is the `object` crate's; this module only asks it questions. Pure: bytes in, answers out.

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::UprobeError;

/// A parsed ELF image over its file's bytes.
pub struct Image<'a> {
    obj: object::File<'a>,
    /// The file's length: offsets past it are never reported.
    len: u64,
}

impl<'a> Image<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Image<'a>, UprobeError> {
        let obj = object::File::parse(data).map_err(|e| UprobeError::NotElf(e.to_string()))?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err(UprobeError::NotElf("not an ELF file".into()));
        }
        Ok(Image {
            obj,
            len: data.len() as u64,
        })
    }

    /// The CPU the image is for.
    pub fn is_x86_64(&self) -> bool {
        self.obj.architecture() == object::Architecture::X86_64
    }

    /// Whether the image has a static symbol table (false for stripped binaries).
    pub fn has_symtab(&self) -> bool {
        self.obj.symbols().next().is_some()
    }

    /// A defined symbol's virtual address and size, from the static symbol table, else the
    /// dynamic one.
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        let find = |mut it: object::SymbolIterator<'a, '_>| {
            it.find(|s| s.is_definition() && s.name_bytes().ok() == Some(name.as_bytes()))
                .map(|s| (s.address(), s.size()))
        };
        find(self.obj.symbols()).or_else(|| find(self.obj.dynamic_symbols()))
    }

    /// A section's virtual address and bytes.
    pub fn section(&self, name: &str) -> Option<(u64, &'a [u8])> {
        let s = self.obj.section_by_name(name)?;
        Some((s.address(), s.data().ok()?))
    }

    /// The file offset of a virtual address inside a loaded segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.obj.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            let start = seg.address();
            if vaddr >= start && vaddr - start < size {
                off.checked_add(vaddr - start).filter(|o| *o < self.len)
            } else {
                None
            }
        })
    }

    /// `len` bytes of the file at a virtual address (clipped to its segment's file bytes).
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&'a [u8]> {
        self.obj.segments().find_map(|seg| {
            let start = seg.address();
            let data = seg.data().ok()?;
            if vaddr < start || vaddr - start >= data.len() as u64 {
                return None;
            }
            let from = (vaddr - start) as usize;
            let to = from.saturating_add(len as usize).min(data.len());
            Some(&data[from..to])
        })
    }
}
