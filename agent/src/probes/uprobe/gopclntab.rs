//! Go's function table (`.gopclntab`), enough to find a function's entry and end address by name
//! in a stripped binary (`-ldflags=-s -w` removes the ELF symbol table; this table stays, the Go
//! runtime needs it for stack traces).
//!
//! Written by hand: the layout used since Go 1.18 is a 64-byte header and two flat arrays, and no
//! maintained crate parses it (the few that do are parts of large disassemblers or decompilers).
//!
//! Layout (Go 1.18+, `runtime/symtab.go` `pcHeader`; magic 0xfffffff0 for Go 1.18–1.19,
//! 0xfffffff1 from Go 1.20 on; same fields):
//!
//! ```text
//! u32 magic; u8 pad, pad; u8 minLC; u8 ptrSize;
//! uintptr nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
//! functab at pclnOffset: nfunc+1 × { u32 entryOff (from textStart); u32 funcOff (from functab) }
//! _func at functab + funcOff: { u32 entryOff; i32 nameOff (into funcnametab) ... }
//! ```
//!
//! Pure and total: every read is bounds-checked; a malformed table is an error, never a panic.
//! Linear: a lookup is one pass over the table, and no name is read past its expected length.

/// A function found in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoFunc {
    /// Virtual address of its first instruction.
    pub entry: u64,
    /// Virtual address just past its last byte (the next function's entry).
    pub end: u64,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("the .gopclntab header is truncated")]
    Short,
    #[error("unsupported .gopclntab magic {0:#x} (Go before 1.18, or not a Go function table)")]
    Magic(u32),
    #[error("the .gopclntab has {0}-byte pointers; only 8 is supported")]
    PtrSize(u8),
    #[error("the .gopclntab function table points outside the section")]
    OutOfBounds,
}

/// The longest function name [`Pclntab::functions`] returns (Go's longest real names, generic
/// instantiations included, are a few hundred bytes).
pub const MAX_NAME: usize = 4096;

pub const MAGIC_GO118: u32 = 0xffff_fff0;
pub const MAGIC_GO120: u32 = 0xffff_fff1;

/// The parsed header: where the arrays are.
#[derive(Debug)]
pub struct Pclntab<'a> {
    data: &'a [u8],
    pub nfunc: usize,
    pub text_start: u64,
    funcnames: usize,
    functab: usize,
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    d.get(off..off.checked_add(4)?)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    d.get(off..off.checked_add(8)?)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

impl<'a> Pclntab<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Pclntab<'a>, PclntabError> {
        let magic = u32_at(data, 0).ok_or(PclntabError::Short)?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err(PclntabError::Magic(magic));
        }
        let ptr_size = *data.get(7).ok_or(PclntabError::Short)?;
        if ptr_size != 8 {
            return Err(PclntabError::PtrSize(ptr_size));
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).ok_or(PclntabError::Short);
        let nfunc = word(0)? as usize;
        let text_start = word(2)?;
        let funcnames = word(3)? as usize;
        let functab = word(7)? as usize;
        // functab holds nfunc + 1 pairs of u32.
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab))
            .ok_or(PclntabError::OutOfBounds)?;
        if need > data.len() || funcnames > data.len() {
            return Err(PclntabError::OutOfBounds);
        }
        Ok(Pclntab {
            data,
            nfunc,
            text_start,
            funcnames,
            functab,
        })
    }

    /// Where function `i`'s name starts in the data, if the table is sound there.
    fn name_start(&self, i: usize) -> Option<usize> {
        let func_off = u32_at(self.data, self.functab + 8 * i + 4)? as usize;
        let name_off = u32_at(
            self.data,
            self.functab.checked_add(func_off)?.checked_add(4)?,
        )?;
        self.funcnames.checked_add(name_off as usize)
    }

    /// Name of function `i` (raw bytes), if the table is sound there and the name is at most
    /// [`MAX_NAME`] bytes: a name is never read past that (a table without NULs would otherwise make
    /// every read scan the rest of the section).
    fn name(&self, i: usize) -> Option<&'a [u8]> {
        let rest = self.data.get(self.name_start(i)?..)?;
        let rest = &rest[..rest.len().min(MAX_NAME + 1)];
        let len = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..len])
    }

    /// Whether function `i` is named `name` (reads `name.len() + 1` bytes).
    fn name_is(&self, i: usize, name: &[u8]) -> bool {
        self.name_start(i)
            .and_then(|s| self.data.get(s..s.checked_add(name.len() + 1)?))
            .is_some_and(|b| b[..name.len()] == *name && b[name.len()] == 0)
    }

    fn entry(&self, i: usize) -> Option<u64> {
        u32_at(self.data, self.functab + 8 * i)
            .and_then(|o| self.text_start.checked_add(u64::from(o)))
    }

    /// Every function as (name, entry, end), in address order.
    pub fn functions(&self) -> impl Iterator<Item = (&'a [u8], GoFunc)> + '_ {
        (0..self.nfunc).filter_map(move |i| {
            Some((
                self.name(i)?,
                GoFunc {
                    entry: self.entry(i)?,
                    end: self.entry(i + 1)?,
                },
            ))
        })
    }

    /// A function by its full name (e.g. `crypto/tls.(*Conn).Read`). One pass over the table,
    /// each name compared in place.
    pub fn find(&self, name: &str) -> Option<GoFunc> {
        let i = (0..self.nfunc).find(|&i| self.name_is(i, name.as_bytes()))?;
        Some(GoFunc {
            entry: self.entry(i)?,
            end: self.entry(i + 1)?,
        })
    }
}
