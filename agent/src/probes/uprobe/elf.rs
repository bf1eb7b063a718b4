//! What the TLS uprobes need from an ELF file: symbols (static then dynamic table), sections, the
//! bytes at a virtual address, and virtual address → file offset (uprobes attach at file offsets).
//! Parsing is the `object` crate's; this module only asks it questions. Pure: bytes in, answers out.
//! The bytes are any `object::ReadRef`: a slice, or a `ReadCache` over the opened file, which reads
//! only the ranges asked for (headers, symbol and string tables, the sections and function bytes
//! looked at), so a tenant's 500 MB binary is never held whole.
//!
//! The file is a tenant's: every lookup is linear in the file. Names are never read up to their
//! NUL (a string table without one would make each read scan the rest of the table, quadratic over
//! the symbols); a name is compared in place, reading at most its own length plus one byte.

use object::read::elf::{ElfFile64, FileHeader, SectionHeader, SectionTable, Sym, SymbolTable};
use object::{Endianness, Object, ObjectSegment, ReadRef, SectionIndex};

use super::UprobeError;

type Elf64 = object::elf::FileHeader64<Endianness>;

/// A parsed ELF image over its file's bytes.
pub struct Image<'a, R: ReadRef<'a> = &'a [u8]> {
    obj: ElfFile64<'a, Endianness, R>,
    data: R,
    /// The file's length: offsets past it are never reported.
    len: u64,
}

/// Whether the NUL-terminated string at `off` of `strtab` is `name` (reads `name.len() + 1` bytes).
fn name_is(strtab: &[u8], off: u32, name: &[u8]) -> bool {
    let off = off as usize;
    off.checked_add(name.len() + 1)
        .and_then(|end| strtab.get(off..end))
        .is_some_and(|s| s[..name.len()] == *name && s[name.len()] == 0)
}

impl<'a, R: ReadRef<'a>> Image<'a, R> {
    pub fn parse(data: R) -> Result<Image<'a, R>, UprobeError> {
        let obj = ElfFile64::<Endianness, R>::parse(data)
            .map_err(|e| UprobeError::NotElf(e.to_string()))?;
        let len = data
            .len()
            .map_err(|()| UprobeError::NotElf("the file's length is unknown".into()))?;
        Ok(Image { obj, data, len })
    }

    fn sections(&self) -> &SectionTable<'a, Elf64, R> {
        self.obj.elf_section_table()
    }

    /// The bytes of section `index` (empty when it has none in the file).
    fn section_data(&self, index: SectionIndex) -> Option<&'a [u8]> {
        let endian = self.obj.endian();
        self.sections()
            .section(index)
            .ok()?
            .data(endian, self.data)
            .ok()
    }

    /// The CPU the image is for.
    pub fn is_x86_64(&self) -> bool {
        self.obj.architecture() == object::Architecture::X86_64
    }

    /// Whether the image has a static symbol table (false for stripped binaries).
    pub fn has_symtab(&self) -> bool {
        !self.obj.elf_symbol_table().is_empty()
    }

    fn find_in(&self, table: &SymbolTable<'a, Elf64, R>, name: &str) -> Option<(u64, u64)> {
        let endian = self.obj.endian();
        let strtab = self.section_data(table.string_section())?;
        table
            .iter()
            .find(|s| {
                s.st_shndx(endian) != object::elf::SHN_UNDEF
                    && name_is(strtab, s.st_name(endian), name.as_bytes())
            })
            .map(|s| (s.st_value(endian), s.st_size(endian)))
    }

    /// A defined symbol's virtual address and size, from the static symbol table, else the
    /// dynamic one. One pass over each table.
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.find_in(self.obj.elf_symbol_table(), name)
            .or_else(|| self.find_in(self.obj.elf_dynamic_symbol_table(), name))
    }

    /// A section's virtual address and bytes. One pass over the section headers.
    pub fn section(&self, name: &str) -> Option<(u64, &'a [u8])> {
        let endian = self.obj.endian();
        let header = self.obj.elf_header();
        let shstrndx = header.shstrndx(endian, self.data).ok()?;
        let names = self.section_data(SectionIndex(shstrndx as usize))?;
        let (index, s) = self
            .sections()
            .enumerate()
            .find(|(_, s)| name_is(names, s.sh_name(endian), name.as_bytes()))?;
        Some((s.sh_addr(endian), self.section_data(index)?))
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

    /// `len` bytes of the file at a virtual address (clipped to its segment's file bytes); only
    /// those bytes are read.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&'a [u8]> {
        self.obj.segments().find_map(|seg| {
            let start = seg.address();
            let (off, size) = seg.file_range();
            if vaddr < start || vaddr - start >= size {
                return None;
            }
            let from = vaddr - start;
            let n = len.min(size - from);
            self.data.read_bytes_at(off.checked_add(from)?, n).ok()
        })
    }
}
