//! Reading corpora: text, JSON lines, Parquet (HF layout), folders, and the files that
//! must be skipped or refused.

use glassbox_data::{read_corpus, CorpusReport, DataError};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A Parquet file written by the parquet crate itself: an optional `content` string
/// column (one null, one non-UTF-8 value) and an `id` column, snappy-compressed.
fn write_parquet(path: &Path) {
    let schema = Arc::new(
        parse_message_type(
            "message doc { OPTIONAL BYTE_ARRAY content (UTF8); REQUIRED INT64 id; }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let values = [
        ByteArray::from("parquet one"),
        ByteArray::from(vec![0xffu8, 0xfe, 0x41]),
        ByteArray::from("parquet two"),
    ];
    // def level 0 = null: rows are "parquet one", null, <non-UTF-8>, "parquet two"
    col.typed::<ByteArrayType>()
        .write_batch(&values, Some(&[1, 0, 1, 1]), None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(&[1, 2, 3, 4], None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

fn err_text(r: Result<glassbox_data::Corpus, DataError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {:?}", c.report),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_folder_mixes_formats_skips_bad_files_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.txt"), "\u{feff}first text document".as_bytes());
    write(&d.join("b_empty.txt"), b"");
    write(&d.join("c_latin1.txt"), b"caf\xe9 au lait");
    write(
        &d.join("sub/d.jsonl"),
        concat!(
            "{\"text\": \"json one\", \"id\": 1}\n",
            "not json at all\n",
            "{\"id\": 3}\n",
            "\n",
            "{\"text\": \"\"}\n",
            "[1, 2]\n",
            "{\"text\": \"json two\"}"
        )
        .as_bytes(),
    );
    write(
        &d.join("sub/e.json"),
        br#"[{"text": "array one"}, {"text": "array two"}]"#,
    );
    write(&d.join("notes.md"), b"# not a corpus file");
    write(&d.join(".hidden/x.txt"), b"hidden documents are not read");
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    write_parquet(&d.join("sub/deeper/f.parquet"));

    // the parquet file names its column `content`: read it with that field, the rest
    // has `text`, so read the two parts separately
    let c = read_corpus(d, "text");
    let msg = err_text(c);
    assert!(msg.contains("no column `text`"), "{msg}");
    assert!(msg.contains("[content, id]"), "{msg}");

    std::fs::remove_file(d.join("sub/deeper/f.parquet")).unwrap();
    let c = read_corpus(d, "text").unwrap();
    assert_eq!(
        c.texts,
        [
            "first text document",
            "json one",
            "json two",
            "array one",
            "array two"
        ]
    );
    assert_eq!(
        c.report,
        CorpusReport {
            files: 5,
            documents: 5,
            skipped_empty: 2,
            skipped_non_utf8: 1,
            skipped_bad_lines: 3,
            skipped_duplicates: 0,
        }
    );
    assert_eq!(
        c.report.to_string(),
        "5 files, 5 documents (skipped: 2 empty, 1 not UTF-8, 3 bad JSON lines)"
    );
}

#[test]
fn parquet_written_by_the_parquet_crate_reads_with_nulls_and_bad_bytes_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("docs.parquet");
    write_parquet(&p);
    let c = read_corpus(&p, "content").unwrap();
    assert_eq!(c.texts, ["parquet one", "parquet two"]);
    assert_eq!(c.report.skipped_empty, 1);
    assert_eq!(c.report.skipped_non_utf8, 1);
    assert_eq!(c.report.files, 1);

    let msg = err_text(read_corpus(&p, "id"));
    assert!(msg.contains("column `id` holds INT64"), "{msg}");
}

#[test]
fn an_hf_dataset_folder_written_by_pyarrow_reads_in_shard_order() {
    // snappy (the HF default, two row groups) and zstd shards under data/
    let c = read_corpus(&data_dir().join("hf-dataset"), "text").unwrap();
    assert_eq!(
        c.texts,
        [
            "The first document.",
            "Le deuxième document, en UTF-8 : ça marche.",
            "A third document, compressed with zstd.",
            "And a fourth."
        ]
    );
    // one empty string and one null
    assert_eq!(c.report.skipped_empty, 2);
    assert_eq!(c.report.files, 2);

    let msg = err_text(read_corpus(&data_dir().join("hf-dataset"), "content"));
    assert!(msg.contains("no column `content`"), "{msg}");
    assert!(msg.contains("the columns are [text, id]"), "{msg}");
    assert!(msg.contains("--text-field text"), "{msg}");
}

#[test]
fn jsonl_without_the_field_names_the_keys_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.jsonl");
    write(
        &p,
        b"{\"content\": \"a long document text\", \"id\": 1}\n{\"content\": \"b\", \"id\": 2}\n",
    );
    let msg = err_text(read_corpus(&p, "text"));
    assert!(
        msg.contains(
            "no line has field `text`; the first line has keys [content, id]: pass --text-field content"
        ),
        "{msg}"
    );
    assert_eq!(read_corpus(&p, "content").unwrap().texts.len(), 2);

    write(&p, b"just text\nmore text\n");
    let msg = err_text(read_corpus(&p, "text"));
    assert!(msg.contains("not a JSON object"), "{msg}");
}

#[test]
fn nothing_usable_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = err_text(read_corpus(&d.join("missing"), "text"));
    assert!(msg.contains("does not exist"), "{msg}");

    let msg = err_text(read_corpus(d, "text"));
    assert!(
        msg.contains("holds no .txt, .jsonl, .json or .parquet files (it is empty)"),
        "{msg}"
    );

    write(&d.join("data-00000-of-00001.arrow"), b"arrow");
    write(&d.join("state.json.lock"), b"");
    let msg = err_text(read_corpus(d, "text"));
    assert!(msg.contains("1 .arrow"), "{msg}");
    assert!(msg.contains("to_parquet"), "{msg}");

    write(&d.join("empty.txt"), b"  \n");
    write(&d.join("bin.txt"), b"\xff\xfe\xfd");
    let msg = err_text(read_corpus(d, "text"));
    assert!(msg.contains("has no usable document"), "{msg}");
    assert!(
        msg.contains("2 files, 0 documents (skipped: 1 empty, 1 not UTF-8)"),
        "{msg}"
    );

    let msg = err_text(read_corpus(&d.join("data-00000-of-00001.arrow"), "text"));
    assert!(msg.contains("not a corpus file"), "{msg}");
}

#[test]
fn a_single_text_file_is_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("one.txt");
    write(&p, b"line one\nline two\n");
    let c = read_corpus(&p, "text").unwrap();
    assert_eq!(c.texts, ["line one\nline two\n"]);
    assert_eq!(c.report.to_string(), "1 file, 1 document");
}

#[test]
fn duplicate_documents_are_dropped_and_counted() {
    // the State of the Union package ships every address as .txt and as .json
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.txt"),
        "Fellow citizens, the union is strong.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        "{\"year\": 1790, \"text\": \"Fellow citizens, the union is strong.\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.txt"), "Another address.").unwrap();
    let c = glassbox_data::read_corpus(dir.path(), "text").unwrap();
    assert_eq!(c.texts.len(), 2);
    assert_eq!(c.report.skipped_duplicates, 1);
    assert!(
        c.report.to_string().contains("1 duplicate documents"),
        "{}",
        c.report
    );
}

fn pages_fixture(name: &str) -> PathBuf {
    data_dir().join("pages").join(name)
}

#[test]
fn every_page_layout_pyarrow_writes_reads() {
    // 300 rows in 3 row groups of ~1 KB zstd pages, one null: v1 and v2 data pages,
    // with and without dictionary pages, page index and statistics (make_parquet.py).
    for name in [
        "v1.0-dict.parquet",
        "v1.0-plain.parquet",
        "v2.0-dict.parquet",
        "v2.0-plain.parquet",
    ] {
        let c = read_corpus(&pages_fixture(name), "text").unwrap();
        assert_eq!(c.texts.len(), 299, "{name}");
        assert_eq!(c.report.skipped_empty, 1, "{name}");
        assert!(c.texts[0].ends_with(" #0"), "{name}: {}", c.texts[0]);
        assert!(c.texts[298].ends_with(" #299"), "{name}: {}", c.texts[298]);
    }
}

/// The byte offset of the first page of column `text` in row group 0.
fn first_text_page(path: &Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let chunk = r.metadata().row_group(0).column(1);
    chunk
        .dictionary_page_offset()
        .unwrap_or(chunk.data_page_offset()) as usize
}

#[test]
fn a_page_header_that_declares_more_than_it_holds_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let good_path = pages_fixture("v1.0-plain.parquet");
    let good = std::fs::read(&good_path).unwrap();
    let at = first_text_page(&good_path);

    // A header whose first field (15, unknown) is a list of 2^31 booleans in 7 bytes: the parquet
    // crate's own skipper spins over it for minutes (found by fuzzing).
    let mut spin = good.clone();
    spin[at..at + 7].copy_from_slice(&[0xf9, 0xf1, 0x80, 0x80, 0x80, 0x80, 0x08]);
    let p = dir.path().join("spin.parquet");
    write(&p, &spin);
    let t = std::time::Instant::now();
    let msg = err_text(read_corpus(&p, "text"));
    assert!(msg.contains("row group 0, column `text`: page 0"), "{msg}");
    assert!(msg.contains("declares 2147483648 elements"), "{msg}");
    assert!(msg.contains("corrupt file"), "{msg}");
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());

    // A footer that claims more metadata than the file holds.
    let mut short = good.clone();
    let n = short.len();
    short[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = dir.path().join("footer.parquet");
    write(&p, &short);
    let msg = err_text(read_corpus(&p, "text"));
    assert!(msg.contains("the footer claims 4294967295 bytes"), "{msg}");
}
