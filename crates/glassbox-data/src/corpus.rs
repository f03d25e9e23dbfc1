//! Reading corpora: plain text, JSON lines and Parquet (the shape HF datasets take on
//! disk), one file or a folder of them. Unusable files are skipped and counted rather
//! than fatal, so one stray file does not stop a long run; the report says what
//! happened.

use crate::{io_err, parquet_guard, DataError, Result};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The documents of a corpus and what reading it skipped.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// the documents kept, in path order (a leading byte-order mark removed, duplicates
    /// dropped)
    pub texts: Vec<String>,
    /// what was read and skipped
    pub report: CorpusReport,
}

/// Counts from reading a corpus: print it so that a user sees what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorpusReport {
    /// corpus files read (skipped ones included)
    pub files: usize,
    /// documents kept
    pub documents: usize,
    /// empty files, and empty or null documents inside JSON lines / Parquet
    pub skipped_empty: usize,
    /// `.txt` files and Parquet values that are not UTF-8
    pub skipped_non_utf8: usize,
    /// JSON lines that are not JSON objects or lack the text field
    pub skipped_bad_lines: usize,
    /// documents identical (up to surrounding whitespace) to an earlier one: a corpus
    /// shipped in two formats would otherwise leak held-out windows into training
    pub skipped_duplicates: usize,
}

impl fmt::Display for CorpusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}, {}",
            plural(self.files, "file", "files"),
            plural(self.documents, "document", "documents")
        )?;
        let skipped: Vec<String> = [
            (self.skipped_empty, "empty"),
            (self.skipped_non_utf8, "not UTF-8"),
            (self.skipped_bad_lines, "bad JSON lines"),
            (self.skipped_duplicates, "duplicate documents"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !skipped.is_empty() {
            write!(f, " (skipped: {})", skipped.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    JsonLines,
    Parquet,
}

fn kind_of(path: &Path) -> Option<Kind> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "txt" => Some(Kind::Text),
        "jsonl" | "json" => Some(Kind::JsonLines),
        "parquet" => Some(Kind::Parquet),
        _ => None,
    }
}

const SUPPORTED: &str = ".txt, .jsonl, .json or .parquet";

/// Reads a corpus: a `.txt` file (one document), a `.jsonl`/`.json` file (one JSON
/// object a line, the text under `text_field`; a `.json` holding one array of objects
/// works too), a `.parquet` file (a string column named `text_field`), or a folder
/// holding any of these at any depth (hidden entries skipped), read in path order so
/// the corpus — and everything seeded from it — is the same on every machine.
///
/// Empty files, non-UTF-8 text and malformed JSON lines are skipped and counted in
/// the report. A file in which no line has `text_field`, or a Parquet file without
/// that column, is an error naming the fields that do exist: that is a wrong
/// `text_field`, not a stray line.
pub fn read_corpus(path: &Path, text_field: &str) -> Result<Corpus> {
    if !path.exists() {
        return Err(DataError::Corpus(format!(
            "corpus {} does not exist",
            path.display()
        )));
    }
    let files = if path.is_dir() {
        let mut files = Vec::new();
        let mut other: BTreeMap<String, usize> = BTreeMap::new();
        walk(path, &mut files, &mut other)?;
        files.sort();
        if files.is_empty() {
            let found = if other.is_empty() {
                "it is empty".to_string()
            } else {
                let list: Vec<String> = other.iter().map(|(e, n)| format!("{n} {e}")).collect();
                format!("it has {}", list.join(", "))
            };
            let arrow_hint = if other.contains_key(".arrow") {
                "; .arrow files are a `datasets` save_to_disk folder: write Parquet with \
                 `ds.to_parquet(\"corpus.parquet\")` and pass that"
            } else {
                ""
            };
            return Err(DataError::Corpus(format!(
                "{} holds no {SUPPORTED} files ({found}){arrow_hint}",
                path.display()
            )));
        }
        files
    } else {
        if kind_of(path).is_none() {
            return Err(DataError::Corpus(format!(
                "{}: not a corpus file; use {SUPPORTED}, or a folder of them",
                path.display()
            )));
        }
        vec![path.to_path_buf()]
    };
    let mut corpus = Corpus::default();
    for f in &files {
        corpus.report.files += 1;
        match kind_of(f) {
            Some(Kind::Text) => read_txt(f, &mut corpus)?,
            Some(Kind::JsonLines) => read_jsonl(f, text_field, &mut corpus)?,
            Some(Kind::Parquet) => read_parquet(f, text_field, &mut corpus)?,
            None => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    let before = corpus.texts.len();
    corpus
        .texts
        .retain(|t| seen.insert(twox_hash::XxHash64::oneshot(0, t.trim().as_bytes())));
    corpus.report.skipped_duplicates = before - corpus.texts.len();
    corpus.report.documents = corpus.texts.len();
    if corpus.texts.is_empty() {
        return Err(DataError::Corpus(format!(
            "{} has no usable document: {}",
            path.display(),
            corpus.report
        )));
    }
    Ok(corpus)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, other: &mut BTreeMap<String, usize>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, files, other)?;
        } else if kind_of(&p).is_some() {
            files.push(p);
        } else {
            let ext = p
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_else(|| "without extension".into());
            *other.entry(ext).or_default() += 1;
        }
    }
    Ok(())
}

fn push_doc(text: &str, corpus: &mut Corpus) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        corpus.report.skipped_empty += 1;
    } else {
        corpus.texts.push(text.to_string());
    }
}

fn read_txt(path: &Path, corpus: &mut Corpus) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    match String::from_utf8(bytes) {
        Ok(text) => push_doc(&text, corpus),
        Err(_) => corpus.report.skipped_non_utf8 += 1,
    }
    Ok(())
}

/// `"a", "b"` as `[a, b]`, for messages.
fn key_list(obj: &serde_json::Map<String, Value>) -> String {
    format!("[{}]", obj.keys().cloned().collect::<Vec<_>>().join(", "))
}

/// The key most likely to hold the text: the one with the longest string value.
fn likely_text_key(obj: &serde_json::Map<String, Value>) -> Option<&str> {
    obj.iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.len())))
        .max_by_key(|(_, n)| *n)
        .map(|(k, _)| k.as_str())
}

fn read_jsonl(path: &Path, field: &str, corpus: &mut Corpus) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        corpus.report.skipped_empty += 1;
        return Ok(());
    }
    // A `.json` file may also be one array of records.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let records: Vec<std::result::Result<Value, ()>> = match first {
        Some(b'[') => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                DataError::Corpus(format!(
                    "{}: starts with `[` but is not a JSON array: {e}",
                    path.display()
                ))
            })?;
            match v {
                Value::Array(items) => items.into_iter().map(Ok).collect(),
                _ => vec![Err(())],
            }
        }
        _ => bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| serde_json::from_slice::<Value>(l).map_err(|_| ()))
            .collect(),
    };
    let mut with_field = 0;
    let mut first_record: Option<Option<serde_json::Map<String, Value>>> = None;
    for r in records {
        let obj = match r {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        };
        if first_record.is_none() {
            first_record = Some(obj.clone());
        }
        match obj.as_ref().map(|o| o.get(field)) {
            Some(Some(Value::String(s))) => {
                with_field += 1;
                push_doc(s, corpus);
            }
            Some(Some(Value::Null)) => {
                with_field += 1;
                corpus.report.skipped_empty += 1;
            }
            _ => corpus.report.skipped_bad_lines += 1,
        }
    }
    if with_field == 0 {
        let about_first = match first_record.flatten() {
            Some(o) => {
                let hint = likely_text_key(&o)
                    .map(|k| format!(": pass --text-field {k}"))
                    .unwrap_or_default();
                format!("the first line has keys {}{hint}", key_list(&o))
            }
            None => "the first line is not a JSON object: is this a JSON lines file?".into(),
        };
        return Err(DataError::Corpus(format!(
            "{}: no line has field `{field}`; {about_first}",
            path.display()
        )));
    }
    Ok(())
}

fn parquet_err(path: &Path, doing: &str, e: parquet::errors::ParquetError) -> DataError {
    let msg = e.to_string();
    let hint = if msg.contains("feature") || msg.contains("codec") {
        " (this build reads uncompressed, snappy and zstd Parquet: re-save the data with \
         one of those)"
    } else {
        ""
    };
    DataError::Corpus(format!("{}: {doing}: {msg}{hint}", path.display()))
}

fn read_parquet(path: &Path, field: &str, corpus: &mut Corpus) -> Result<()> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    if file.metadata().map_err(io_err(path))?.len() == 0 {
        corpus.report.skipped_empty += 1;
        return Ok(());
    }
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let meta_len = check_footer(path, &file, file_len)?;
    // The parquet crate reads only what has been checked: the footer now, each column
    // chunk once its pages are walked (reading on past a chunk spun for seconds on a
    // page header made of the footer's bytes, found by fuzzing).
    let (file, allowed) = parquet_guard::CheckedFile::new(file, file_len);
    allowed.allow(file_len - 8 - meta_len, meta_len + 8);
    let reader = SerializedFileReader::new(file)
        .map_err(|e| parquet_err(path, "not a readable Parquet file", e))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let columns: Vec<String> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let Some(index) =
        (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [field])
    else {
        let hint = ["text", "content", "document", "body", "article"]
            .iter()
            .find(|c| columns.iter().any(|k| k == *c) && **c != field)
            .map(|c| format!(": pass --text-field {c}"))
            .unwrap_or_default();
        return Err(DataError::Corpus(format!(
            "{}: no column `{field}`; the columns are [{}]{hint}",
            path.display(),
            columns.join(", ")
        )));
    };
    let descr = schema.column(index);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() > 0 {
        return Err(DataError::Corpus(format!(
            "{}: column `{field}` holds {}{}, not one string per row; pass the text column \
             with --text-field",
            path.display(),
            descr.physical_type(),
            if descr.max_rep_level() > 0 {
                " lists"
            } else {
                ""
            }
        )));
    }
    for g in 0..reader.num_row_groups() {
        // parquet's column reader panics on a negative start or size
        // (`ColumnChunkMetaData::byte_range`): check the chunk lies inside the file first.
        let chunk = reader.metadata().row_group(g).column(index);
        let start = chunk
            .dictionary_page_offset()
            .unwrap_or(chunk.data_page_offset());
        let len = chunk.compressed_size();
        if start < 0 || len < 0 || (start as u64).saturating_add(len as u64) > file_len {
            return Err(DataError::Corpus(format!(
                "{}: row group {g}: column `{field}` claims bytes {start}..{start}+{len} of a \
                 {file_len}-byte file (corrupt metadata)",
                path.display()
            )));
        }
        let bytes = read_range(path, start as u64, len as u64)?;
        parquet_guard::check_pages(&bytes).map_err(|e| {
            DataError::Corpus(format!(
                "{}: row group {g}, column `{field}`: {e} (corrupt file)",
                path.display()
            ))
        })?;
        allowed.allow(start as u64, len as u64);
        // The pages' contents are checked by parquet's decoders, which panic on some
        // malformed pages: contain that, and name the file.
        parquet_guard::contain(|| read_text_column(path, &reader, g, index, field, corpus))
            .map_err(|panic| {
                DataError::Corpus(format!(
                    "{}: row group {g}, column `{field}`: corrupt page data (the Parquet \
                     decoder failed: {panic}); re-save the file",
                    path.display()
                ))
            })??;
    }
    Ok(())
}

/// Bytes `start..start + len` of a file (a range already checked to lie inside it).
fn read_range(path: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Walks the footer's Thrift metadata before the parquet crate does (see
/// `parquet_guard`): a footer that declares more than it holds is refused here.
/// Checks the footer's length and walks its metadata; returns the metadata's length (0
/// when the file does not end in `PAR1`: the parquet crate then says what it is).
fn check_footer(path: &Path, file: &std::fs::File, file_len: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let corrupt = |what: String| DataError::Corpus(format!("{}: {what}", path.display()));
    if file_len < 12 {
        return Err(corrupt(format!(
            "{file_len} bytes is too short to be a Parquet file"
        )));
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, file_len - 8)
        .map_err(io_err(path))?;
    if &tail[4..] != b"PAR1" {
        // Not plain Parquet (or encrypted): the parquet crate says which.
        return Ok(0);
    }
    let meta_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if meta_len + 8 > file_len {
        return Err(corrupt(format!(
            "the footer claims {meta_len} bytes of metadata in a {file_len}-byte file \
             (corrupt or truncated file)"
        )));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, file_len - 8 - meta_len)
        .map_err(io_err(path))?;
    parquet_guard::footer_len(&meta)
        .map(|_| meta_len)
        .map_err(|e| corrupt(format!("corrupt footer metadata: {e}")))
}

/// Appends the documents of column `index` in row group `g` to `corpus`.
fn read_text_column(
    path: &Path,
    reader: &SerializedFileReader<parquet_guard::CheckedFile>,
    g: usize,
    index: usize,
    field: &str,
    corpus: &mut Corpus,
) -> Result<()> {
    let mut values = Vec::new();
    let mut defs = Vec::new();
    {
        let group = reader
            .get_row_group(g)
            .map_err(|e| parquet_err(path, "cannot read a row group", e))?;
        let col = group
            .get_column_reader(index)
            .map_err(|e| parquet_err(path, &format!("cannot read column `{field}`"), e))?;
        let ColumnReader::ByteArrayColumnReader(mut col) = col else {
            return Err(DataError::Corpus(format!(
                "{}: column `{field}` is not a string column",
                path.display()
            )));
        };
        loop {
            values.clear();
            defs.clear();
            let (records, n_values, _) = col
                .read_records(1024, Some(&mut defs), None, &mut values)
                .map_err(|e| parquet_err(path, &format!("cannot read column `{field}`"), e))?;
            if records == 0 {
                break;
            }
            // Nulls have no value: count them as empty documents.
            corpus.report.skipped_empty += records.saturating_sub(n_values);
            for v in &values {
                match std::str::from_utf8(v.data()) {
                    Ok(s) => push_doc(s, corpus),
                    Err(_) => corpus.report.skipped_non_utf8 += 1,
                }
            }
        }
    }
    Ok(())
}
