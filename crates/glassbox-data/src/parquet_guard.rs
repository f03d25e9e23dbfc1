//! Checks that stand between a Parquet file from anywhere and the parquet crate's
//! reader, which trusts the file more than it should (found by fuzzing, RELIABILITY.md):
//!
//! - its Thrift skipper treats booleans inside a list as taking no bytes, so a 1 KB
//!   footer or page header that declares a list of 2³¹ booleans spins for minutes;
//! - it allocates a page's declared uncompressed size before decompressing it
//!   (939,524,116 bytes for a 1 KB file);
//! - its level and value decoders index past the end of a page whose data is shorter
//!   than its own length prefixes say, and panic.
//!
//! The first two are refused here before the parquet crate sees the bytes: the footer
//! and every page header of the text column are walked with a Thrift compact-protocol
//! reader that requires every declared element to fit in the bytes left. The walk knows
//! Parquet's structures ([`FILE_METADATA`], [`PAGE_HEADER`]) because the parquet crate
//! reads a known field by its id, whatever type the bytes declare: a field 2 of a row
//! group that declares itself a string is read as an integer, and from there the crate
//! reads other bytes than a type-blind walk checked (a 667-byte footer spun 4 s in its
//! skipper, found by fuzzing). A known field of the wrong type is refused. The third
//! needs the page decompressed to detect, so the decoding is run under [`contain`],
//! which turns a panic into an error naming the file.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Deepest Thrift nesting accepted; Parquet's own structures nest a handful of levels.
const MAX_DEPTH: usize = 64;

/// A page may expand to at most this multiple of its compressed size (or to
/// [`PAGE_FLOOR_BYTES`], whichever is larger). Text pages compress 2–10× with snappy or
/// zstd; snappy cannot exceed about 21×. A larger claim is refused rather than
/// allocated.
pub(crate) const MAX_PAGE_EXPANSION: u64 = 64;
pub(crate) const PAGE_FLOOR_BYTES: u64 = 1 << 20;

/// The sizes a page header declares, and how many bytes the header itself took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageSizes {
    pub header_len: usize,
    pub uncompressed: i64,
    pub compressed: i64,
}

/// What the parquet crate reads at a known field id (parquet-format's `parquet.thrift`,
/// as parquet 60 decodes it). Fields not listed are skipped by their declared type, by
/// the crate and by this walk alike.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    Byte,
    I16,
    /// Also every Thrift enum.
    I32,
    I64,
    Double,
    /// Also strings.
    Binary,
    List(&'static Ty),
    Struct(&'static [(i16, Ty)]),
    /// A union member without data: the crate requires the struct's stop byte at once.
    Empty,
}

impl Ty {
    /// Whether a value declared as compact type `kind` is read as this type.
    fn declared_as(self, kind: u8) -> bool {
        let want: &[u8] = match self {
            Ty::Bool => &[1, 2],
            Ty::Byte => &[3],
            Ty::I16 => &[4],
            Ty::I32 => &[5],
            Ty::I64 => &[6],
            Ty::Double => &[7],
            Ty::Binary => &[8],
            Ty::List(_) => &[9],
            Ty::Struct(_) | Ty::Empty => &[12],
        };
        want.contains(&kind)
    }
}

const STATISTICS: &[(i16, Ty)] = &[
    (1, Ty::Binary),
    (2, Ty::Binary),
    (3, Ty::I64),
    (4, Ty::I64),
    (5, Ty::Binary),
    (6, Ty::Binary),
    (7, Ty::Bool),
    (8, Ty::Bool),
    (9, Ty::I64),
];
const KEY_VALUE: &[(i16, Ty)] = &[(1, Ty::Binary), (2, Ty::Binary)];
const TIME_UNIT: &[(i16, Ty)] = &[(1, Ty::Empty), (2, Ty::Empty), (3, Ty::Empty)];
const LOGICAL_TYPE: &[(i16, Ty)] = &[
    (1, Ty::Empty),
    (2, Ty::Empty),
    (3, Ty::Empty),
    (4, Ty::Empty),
    (5, Ty::Struct(&[(1, Ty::I32), (2, Ty::I32)])),
    (6, Ty::Empty),
    (7, Ty::Struct(&[(1, Ty::Bool), (2, Ty::Struct(TIME_UNIT))])),
    (8, Ty::Struct(&[(1, Ty::Bool), (2, Ty::Struct(TIME_UNIT))])),
    (10, Ty::Struct(&[(1, Ty::Byte), (2, Ty::Bool)])),
    (11, Ty::Empty),
    (12, Ty::Empty),
    (13, Ty::Empty),
    (14, Ty::Empty),
    (15, Ty::Empty),
    (16, Ty::Struct(&[(1, Ty::Byte)])),
    (17, Ty::Struct(&[(1, Ty::Binary)])),
    (18, Ty::Struct(&[(1, Ty::Binary), (2, Ty::I32)])),
    (19, Ty::Empty),
];
const SCHEMA_ELEMENT: &[(i16, Ty)] = &[
    (1, Ty::I32),
    (2, Ty::I32),
    (3, Ty::I32),
    (4, Ty::Binary),
    (5, Ty::I32),
    (6, Ty::I32),
    (7, Ty::I32),
    (8, Ty::I32),
    (9, Ty::I32),
    (10, Ty::Struct(LOGICAL_TYPE)),
];
const COLUMN_META_DATA: &[(i16, Ty)] = &[
    (1, Ty::I32),
    (2, Ty::List(&Ty::I32)),
    (3, Ty::List(&Ty::Binary)),
    (4, Ty::I32),
    (5, Ty::I64),
    (6, Ty::I64),
    (7, Ty::I64),
    (8, Ty::List(&Ty::Struct(KEY_VALUE))),
    (9, Ty::I64),
    (10, Ty::I64),
    (11, Ty::I64),
    (12, Ty::Struct(STATISTICS)),
    (
        13,
        Ty::List(&Ty::Struct(&[(1, Ty::I32), (2, Ty::I32), (3, Ty::I32)])),
    ),
    (14, Ty::I64),
    (15, Ty::I32),
    (
        16,
        Ty::Struct(&[
            (1, Ty::I64),
            (2, Ty::List(&Ty::I64)),
            (3, Ty::List(&Ty::I64)),
        ]),
    ),
    (
        17,
        Ty::Struct(&[
            (
                1,
                Ty::Struct(&[
                    (1, Ty::Double),
                    (2, Ty::Double),
                    (3, Ty::Double),
                    (4, Ty::Double),
                    (5, Ty::Double),
                    (6, Ty::Double),
                    (7, Ty::Double),
                    (8, Ty::Double),
                ]),
            ),
            (2, Ty::List(&Ty::I32)),
        ]),
    ),
];
const COLUMN_CHUNK: &[(i16, Ty)] = &[
    (1, Ty::Binary),
    (2, Ty::I64),
    (3, Ty::Struct(COLUMN_META_DATA)),
    (4, Ty::I64),
    (5, Ty::I32),
    (6, Ty::I64),
    (7, Ty::I32),
    (
        8,
        Ty::Struct(&[
            (1, Ty::Empty),
            (
                2,
                Ty::Struct(&[(1, Ty::List(&Ty::Binary)), (2, Ty::Binary)]),
            ),
        ]),
    ),
    (9, Ty::Binary),
];
const ROW_GROUP: &[(i16, Ty)] = &[
    (1, Ty::List(&Ty::Struct(COLUMN_CHUNK))),
    (2, Ty::I64),
    (3, Ty::I64),
    (
        4,
        Ty::List(&Ty::Struct(&[(1, Ty::I32), (2, Ty::Bool), (3, Ty::Bool)])),
    ),
    (5, Ty::I64),
    (6, Ty::I64),
    (7, Ty::I16),
];
const AES_GCM: &[(i16, Ty)] = &[(1, Ty::Binary), (2, Ty::Binary), (3, Ty::Bool)];

/// Parquet's `FileMetaData`, the footer.
const FILE_METADATA: &[(i16, Ty)] = &[
    (1, Ty::I32),
    (2, Ty::List(&Ty::Struct(SCHEMA_ELEMENT))),
    (3, Ty::I64),
    (4, Ty::List(&Ty::Struct(ROW_GROUP))),
    (5, Ty::List(&Ty::Struct(KEY_VALUE))),
    (6, Ty::Binary),
    (
        7,
        Ty::List(&Ty::Struct(&[
            (1, Ty::Empty),
            (2, Ty::Empty),
            (3, Ty::Empty),
        ])),
    ),
    (
        8,
        Ty::Struct(&[(1, Ty::Struct(AES_GCM)), (2, Ty::Struct(AES_GCM))]),
    ),
    (9, Ty::Binary),
];

/// Parquet's `PageHeader`.
const PAGE_HEADER: &[(i16, Ty)] = &[
    (1, Ty::I32),
    (2, Ty::I32),
    (3, Ty::I32),
    (4, Ty::I32),
    (
        5,
        Ty::Struct(&[
            (1, Ty::I32),
            (2, Ty::I32),
            (3, Ty::I32),
            (4, Ty::I32),
            (5, Ty::Struct(STATISTICS)),
        ]),
    ),
    (6, Ty::Struct(&[])),
    (7, Ty::Struct(&[(1, Ty::I32), (2, Ty::I32), (3, Ty::Bool)])),
    (
        8,
        Ty::Struct(&[
            (1, Ty::I32),
            (2, Ty::I32),
            (3, Ty::I32),
            (4, Ty::I32),
            (5, Ty::I32),
            (6, Ty::I32),
            (7, Ty::Bool),
            (8, Ty::Struct(STATISTICS)),
        ]),
    ),
];

/// Walks the footer metadata (a Thrift `FileMetaData`) at the start of `buf` and returns
/// its length in bytes, or what is wrong with it.
pub(crate) fn footer_len(buf: &[u8]) -> Result<usize, String> {
    let mut r = Reader { buf, pos: 0 };
    r.skip_struct(MAX_DEPTH, Some(FILE_METADATA), &mut |_, _| {})?;
    Ok(r.pos)
}

/// Reads the page header at the start of `buf`: its length and the two sizes every
/// page header must carry (fields 2 and 3 of Parquet's `PageHeader`).
pub(crate) fn page_header(buf: &[u8]) -> Result<PageSizes, String> {
    let mut r = Reader { buf, pos: 0 };
    let (mut uncompressed, mut compressed) = (None, None);
    r.skip_struct(MAX_DEPTH, Some(PAGE_HEADER), &mut |id, v| match id {
        2 => uncompressed = Some(v),
        3 => compressed = Some(v),
        _ => {}
    })?;
    match (uncompressed, compressed) {
        (Some(u), Some(c)) if u >= 0 && c >= 0 => Ok(PageSizes {
            header_len: r.pos,
            uncompressed: u,
            compressed: c,
        }),
        (Some(_), Some(_)) => Err("a page header declares a negative size".into()),
        _ => Err("a page header lacks its sizes".into()),
    }
}

/// Checks the pages of one column chunk (`chunk` holds exactly its bytes): every
/// header is well formed, every page lies inside the chunk, and no page claims to
/// expand beyond [`MAX_PAGE_EXPANSION`]×.
pub(crate) fn check_pages(chunk: &[u8]) -> Result<usize, String> {
    let mut pos = 0usize;
    let mut pages = 0usize;
    while pos < chunk.len() {
        let h = page_header(&chunk[pos..]).map_err(|e| format!("page {pages}: {e}"))?;
        let body = h.compressed as u64;
        let end = (pos + h.header_len) as u64 + body;
        if end > chunk.len() as u64 {
            return Err(format!(
                "page {pages} claims {body} bytes but the column chunk has {} left",
                chunk.len() - pos - h.header_len
            ));
        }
        let limit = (body * MAX_PAGE_EXPANSION).max(PAGE_FLOOR_BYTES);
        if h.uncompressed as u64 > limit {
            return Err(format!(
                "page {pages} claims to expand from {body} to {} bytes (more than \
                 {MAX_PAGE_EXPANSION}×): the file is corrupt, or compressed further than \
                 glassbox accepts; re-save it uncompressed or with snappy",
                h.uncompressed
            ));
        }
        pos = end as usize;
        pages += 1;
    }
    Ok(pages)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or("the Thrift data ends early (truncated file?)")?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "the Thrift data declares {n} bytes where {} are left",
                self.left()
            ));
        }
        self.pos += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a Thrift integer is longer than 10 bytes".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A count of elements that must each take at least one byte of what is left.
    fn count(&mut self, n: u64) -> Result<usize, String> {
        if n > self.left() as u64 {
            return Err(format!(
                "a Thrift list or map declares {n} elements in {} bytes",
                self.left()
            ));
        }
        Ok(n as usize)
    }

    /// Skips one struct whose known fields are `schema` (None: a struct the parquet
    /// crate skips, type-blind); `field` sees each integer field of this struct (not
    /// nested ones) as (id, value).
    fn skip_struct(
        &mut self,
        depth: usize,
        schema: Option<&'static [(i16, Ty)]>,
        field: &mut dyn FnMut(i16, i64),
    ) -> Result<(), String> {
        if depth == 0 {
            return Err("Thrift data nests too deeply".into());
        }
        let mut last_id: i16 = 0;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(());
            }
            let kind = b & 0x0f;
            let delta = b >> 4;
            let id = if delta == 0 {
                self.zigzag()? as i16
            } else {
                last_id.wrapping_add(i16::from(delta))
            };
            last_id = id;
            let known = schema.and_then(|s| s.iter().find(|(i, _)| *i == id));
            if let Some(&(_, ty)) = known {
                if !ty.declared_as(kind) {
                    return Err(format!(
                        "field {id} declares Thrift type {kind}, which Parquet does not \
                         store there"
                    ));
                }
                if let Ty::I16 | Ty::I32 | Ty::I64 = ty {
                    field(id, self.zigzag()?);
                } else {
                    self.skip_typed(ty, depth)?;
                }
                continue;
            }
            match kind {
                // A boolean field carries its value in the field header.
                1 | 2 => {}
                4..=6 => field(id, self.zigzag()?),
                _ => self.skip_value(kind, depth)?,
            }
        }
    }

    /// Skips one value of compact type `kind` (inside a list, map or struct).
    fn skip_value(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        match kind {
            // Inside a list or map a boolean takes one byte.
            1..=3 => self.skip(1),
            4..=6 => self.varint().map(drop),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(usize::try_from(n).unwrap_or(usize::MAX))
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.count(n)?;
                let elem = h & 0x0f;
                // Booleans in a list take a byte each (the compact protocol), but parquet
                // 60's skipper reads them as none: from there on it reads other fields
                // than this walk checked, and can spin (found by fuzzing). Parquet's
                // footer and page headers hold no such list; refuse one.
                if n > 0 && matches!(elem, 1 | 2) {
                    return Err(
                        "a list of booleans, which no Parquet footer or page header holds".into(),
                    );
                }
                for _ in 0..n {
                    self.skip_element(elem, depth)?;
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                let n = self.count(n)?;
                if n > 0 {
                    let kv = self.byte()?;
                    // The same misreading as a list of booleans (above), and no Parquet
                    // structure holds a map at all.
                    if matches!(kv >> 4, 1 | 2) || matches!(kv & 0x0f, 1 | 2) {
                        return Err(
                            "a map with booleans, which no Parquet footer or page header holds"
                                .into(),
                        );
                    }
                    for _ in 0..n {
                        self.skip_element(kv >> 4, depth)?;
                        self.skip_element(kv & 0x0f, depth)?;
                    }
                }
                Ok(())
            }
            12 => self.skip_struct(depth - 1, None, &mut |_, _| {}),
            13 => self.skip(16),
            other => Err(format!("unknown Thrift type {other}")),
        }
    }

    /// Skips one value of a known field or list element, already checked to be
    /// declared as `ty`.
    fn skip_typed(&mut self, ty: Ty, depth: usize) -> Result<(), String> {
        match ty {
            Ty::Bool => Ok(()),
            Ty::Struct(fields) => self.skip_struct(depth - 1, Some(fields), &mut |_, _| {}),
            Ty::Empty => match self.byte()? {
                0 => Ok(()),
                _ => Err("a union member that carries no data has fields".into()),
            },
            Ty::List(elem) => {
                let h = self.byte()?;
                // the parquet crate reads a zero header as an empty list of any type
                if h == 0 {
                    return Ok(());
                }
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.count(n)?;
                if !elem.declared_as(h & 0x0f) || matches!(elem, Ty::Bool) {
                    return Err(format!(
                        "a list declares elements of Thrift type {}, which Parquet does \
                         not store there",
                        h & 0x0f
                    ));
                }
                if depth <= 1 {
                    return Err("Thrift data nests too deeply".into());
                }
                for _ in 0..n {
                    self.skip_typed(*elem, depth - 1)?;
                }
                Ok(())
            }
            Ty::Byte => self.skip_value(3, depth),
            Ty::I16 | Ty::I32 | Ty::I64 => self.varint().map(drop),
            Ty::Double => self.skip_value(7, depth),
            Ty::Binary => self.skip_value(8, depth),
        }
    }

    fn skip_element(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        if depth <= 1 {
            return Err("Thrift data nests too deeply".into());
        }
        self.skip_value(kind, depth - 1)
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err(message)` without printing the panic.
/// For third-party decoders that panic on malformed input; nothing `f` built survives
/// the panic, so no half-updated state is observed.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    out.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_booleans_must_fit_in_the_bytes_left() {
        // FileMetaData { 15 (unknown): list<bool> of 2^31 elements }, then nothing:
        // parquet 60's skipper loops 2^31 times over no input.
        let mut buf = vec![0xf9, 0xf1];
        buf.extend([0x80, 0x80, 0x80, 0x80, 0x08]);
        let e = footer_len(&buf).unwrap_err();
        assert!(e.contains("declares 2147483648 elements"), "{e}");
    }

    #[test]
    fn a_list_of_booleans_is_refused_since_parquet_misreads_it() {
        // FileMetaData { 15 (unknown): list<bool> [true, false] }
        let e = footer_len(&[0xf9, 0x21, 0x01, 0x02, 0x00]).unwrap_err();
        assert!(e.contains("a list of booleans"), "{e}");
    }

    #[test]
    fn a_known_field_of_another_type_is_refused_since_parquet_reads_it_by_id() {
        // FileMetaData { 1: version as a string "ab" }: parquet reads field 1 as an
        // integer whatever it declares, then goes on from the wrong byte.
        let e = footer_len(&[0x18, 0x02, b'a', b'b', 0x00]).unwrap_err();
        assert!(e.contains("field 1 declares Thrift type 8"), "{e}");
        // the same bytes as an unknown field are skipped by both
        assert_eq!(footer_len(&[0xf8, 0x02, b'a', b'b', 0x00]), Ok(5));
        // a row group's columns as a list of integers
        let e = footer_len(&[0x49, 0x1c, 0x19, 0x15, 0x02, 0x00, 0x00]).unwrap_err();
        assert!(e.contains("elements of Thrift type 5"), "{e}");
    }

    #[test]
    fn the_two_footers_that_spun_parquet_are_refused() {
        for name in [
            "slow-unit-9680d6526e550230fceb12c2ccb932bdc7248048",
            "timeout-0cac0cc4fb0fff7b87a6044b43785a4fd97e7a0c",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../glassbox-fuzz/regressions/corpus_parquet")
                .join(name);
            let file = std::fs::read(&path).unwrap();
            let n = file.len();
            let meta_len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
            let e = footer_len(&file[n - 8 - meta_len..n - 8]).unwrap_err();
            assert!(
                e.contains("which Parquet does not store there"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn page_headers_give_their_sizes_and_length() {
        // PageHeader { 1: type=0, 2: uncompressed=100, 3: compressed=40, 5: struct{} }
        let buf = [
            0x15, 0x00, 0x15, 0xc8, 0x01, 0x15, 0x50, 0x2c, 0x00, 0x00, 0xff,
        ];
        let h = page_header(&buf).unwrap();
        assert_eq!(
            h,
            PageSizes {
                header_len: 10,
                uncompressed: 100,
                compressed: 40
            }
        );
    }

    #[test]
    fn a_page_that_claims_to_expand_too_far_is_refused() {
        // uncompressed 939,524,116 from 4 bytes
        let mut page = vec![0x15, 0x00, 0x15];
        let mut v = 939_524_116u64 << 1;
        while v >= 0x80 {
            page.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        page.push(v as u8);
        page.extend([0x15, 0x08, 0x00, 1, 2, 3, 4]);
        let e = check_pages(&page).unwrap_err();
        assert!(e.contains("claims to expand from 4 to 939524116"), "{e}");
    }

    #[test]
    fn contain_turns_a_panic_into_an_error_and_leaves_the_thread_usable() {
        let e = contain(|| -> u32 { panic!("index 7 out of range") }).unwrap_err();
        assert_eq!(e, "index 7 out of range");
        assert_eq!(contain(|| 3), Ok(3));
    }
}

/// A Parquet file that the parquet crate may read only where it has been checked (the
/// footer, then each column chunk whose pages were walked): reading elsewhere, or on
/// past the end of a checked range, is an error instead of more bytes. Its readers
/// err rather than return 0 at the end, since the crate's Thrift skipper loops over
/// element counts taken from the file and would spin on an empty read.
pub(crate) struct CheckedFile {
    file: std::fs::File,
    len: u64,
    allowed: Allowed,
}

/// The ranges a [`CheckedFile`] may read, shared with whoever checks them.
#[derive(Clone, Default)]
pub(crate) struct Allowed(std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>);

impl Allowed {
    /// Lets bytes `start..start + len` be read.
    pub(crate) fn allow(&self, start: u64, len: u64) {
        if let Ok(mut a) = self.0.lock() {
            a.push((start, start.saturating_add(len)));
        }
    }
}

impl CheckedFile {
    /// The file, and the handle that widens what it lets be read.
    pub(crate) fn new(file: std::fs::File, len: u64) -> (Self, Allowed) {
        let allowed = Allowed::default();
        let f = CheckedFile {
            file,
            len,
            allowed: allowed.clone(),
        };
        (f, allowed)
    }

    /// The end of the checked range holding `start`.
    fn end_of(&self, start: u64) -> parquet::errors::Result<u64> {
        let allowed = self
            .allowed
            .0
            .lock()
            .map_err(|_| parquet::errors::ParquetError::General("lock poisoned".into()))?;
        allowed
            .iter()
            .filter(|(a, b)| *a <= start && start < *b)
            .map(|&(_, b)| b)
            .max()
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "offset {start} lies outside the footer and the checked column chunks"
                ))
            })
    }
}

impl parquet::file::reader::Length for CheckedFile {
    fn len(&self) -> u64 {
        self.len
    }
}

/// A reader of one checked range.
pub(crate) struct RangeReader {
    file: std::fs::File,
    pos: u64,
    end: u64,
}

impl std::io::Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of a checked column chunk",
            ));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ended inside a checked range",
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl parquet::file::reader::ChunkReader for CheckedFile {
    type T = RangeReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeReader> {
        let end = self.end_of(start)?;
        Ok(RangeReader {
            file: self.file.try_clone()?,
            pos: start,
            end,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        use std::os::unix::fs::FileExt;
        let end = self.end_of(start)?;
        let want = start.saturating_add(length as u64);
        if want > end {
            return Err(parquet::errors::ParquetError::General(format!(
                "{length} bytes at offset {start} run past the checked range (to {end})"
            )));
        }
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(bytes::Bytes::from(buf))
    }
}
