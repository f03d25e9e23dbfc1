//! Fixture run directories: a feature store built from the real schema, a tiny random
//! dictionary, and optionally a config.toml naming a model.
#![allow(dead_code)]

pub mod graphs;

use candle_core::{Device, Tensor};
use rusqlite::{params, Connection};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const SCHEMA: &str = include_str!("../../../glassbox-features/src/schema.sql");

/// Features in the fixture store.
pub const N_FEATURES: usize = 6;
/// Neurons in the fixture store.
pub const N_NEURONS: usize = 3;

/// A label that tries to break out of the page's embedded JSON.
pub const NASTY_LABEL: &str = "</script><script>alert(1)</script>";

pub fn label(kind: &str, id: usize) -> String {
    match (kind, id) {
        ("feature", 3) => "cat and kitten".into(),
        ("feature", 5) => NASTY_LABEL.into(),
        ("feature", i) => format!("feature label {i}"),
        (_, i) => format!("neuron label {i}"),
    }
}

const WINDOWS: [&[&str]; 3] = [
    &["The", " cat", " sat", " on", " the", " mat", "."],
    &["A", " small", " kitten", " chased", " the", " dog", "\n"],
    &["Prices", " rose", " by", " 3", "%", " in", " May"],
];

/// Writes `dir/features.sqlite` from schema.sql with a few units of each kind.
pub fn write_store(dir: &Path) {
    let c = Connection::open(dir.join("features.sqlite")).unwrap();
    c.execute_batch(SCHEMA).unwrap();
    for (k, v) in [
        ("model", "fixture-model"),
        ("hook", "blocks.1.hook_resid_pre"),
        ("neuron_hook", "blocks.1.mlp.hook_post"),
        ("d_sae", "6"),
        ("d_mlp", "3"),
        ("tokens", "4096"),
        ("context_size", "64"),
        ("context_radius", "3"),
        ("top_k", "4"),
        ("version", "1"),
    ] {
        c.execute("INSERT INTO meta VALUES (?1, ?2)", params![k, v])
            .unwrap();
    }
    for (i, w) in WINDOWS.iter().enumerate() {
        c.execute(
            "INSERT INTO windows VALUES (?1, ?2)",
            params![i as i64, serde_json::to_string(w).unwrap()],
        )
        .unwrap();
    }
    for (kind, n) in [("feature", N_FEATURES), ("neuron", N_NEURONS)] {
        for id in 0..n {
            let max_act = 1.0 + id as f64;
            let density = if kind == "feature" && id == 4 {
                0.0
            } else {
                0.01 * (id + 1) as f64
            };
            let top_tokens = if kind == "feature" && id == 3 {
                json!([[" cat", 3], [" kitten", 1]])
            } else {
                json!([[format!(" tok{id}"), 2]])
            };
            c.execute(
                "INSERT INTO units VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    kind,
                    id as i64,
                    density,
                    max_act,
                    max_act / 2.0,
                    label(kind, id),
                    top_tokens.to_string(),
                    0.1 * (n - id) as f64,
                    // up to 3162 (10^3.5): the long end labels a real store has
                    json!({"log10_edges": [-2.0, -1.0, 0.0, 1.0, 2.0, 3.5], "counts": [5, 10 + id, 2, 1, 1]})
                        .to_string(),
                ],
            )
            .unwrap();
            if density == 0.0 {
                continue;
            }
            // top examples: the unit fires on position 1 of windows 0 and 1
            for (rank, w) in [0i64, 1].into_iter().enumerate() {
                let acts: Vec<f64> = (0..WINDOWS[w as usize].len())
                    .map(|p| {
                        if p == 1 {
                            max_act - rank as f64 * 0.1
                        } else {
                            0.0
                        }
                    })
                    .collect();
                c.execute(
                    "INSERT INTO examples VALUES (?1, ?2, -1, ?3, ?4, ?5, 1, 0, ?6)",
                    params![
                        kind,
                        id as i64,
                        rank as i64,
                        acts[1],
                        w,
                        serde_json::to_string(&acts).unwrap()
                    ],
                )
                .unwrap();
            }
            // quantile bands 0 and 1 from window 2, context from position 1
            for band in 0..2i64 {
                let a = 0.2 + band as f64 * 0.3;
                let acts = [0.0, a, 0.05, 0.0];
                c.execute(
                    "INSERT INTO examples VALUES (?1, ?2, ?3, 0, ?4, 2, 2, 1, ?5)",
                    params![
                        kind,
                        id as i64,
                        band,
                        a,
                        serde_json::to_string(&acts).unwrap()
                    ],
                )
                .unwrap();
            }
            if kind == "feature" {
                for (sign, toks) in [(1i64, [" purr", " meow"]), (-1, [" bark", " woof"])] {
                    for (rank, t) in toks.iter().enumerate() {
                        c.execute(
                            "INSERT INTO logit_effects VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![
                                id as i64,
                                sign,
                                rank as i64,
                                t,
                                sign as f64 * (1.0 - rank as f64 * 0.25)
                            ],
                        )
                        .unwrap();
                    }
                }
                let other = (id + 1) % N_FEATURES;
                c.execute(
                    "INSERT INTO neighbours VALUES (?1, 0, ?2, 0.5)",
                    params![id as i64, other as i64],
                )
                .unwrap();
            } else {
                // neurons: from their output weights, in tables of their own
                for (sign, t) in [(1i64, " sun"), (-1, " rain")] {
                    c.execute(
                        "INSERT INTO neuron_logit_effects VALUES (?1, ?2, 0, ?3, ?4)",
                        params![id as i64, sign, t, sign as f64 * 0.5],
                    )
                    .unwrap();
                }
                let other = (id + 1) % N_NEURONS;
                c.execute(
                    "INSERT INTO neuron_neighbours VALUES (?1, 0, ?2, 0.25)",
                    params![id as i64, other as i64],
                )
                .unwrap();
            }
        }
    }
    for (k, v) in [
        ("feature_mean_concentration", 0.35),
        ("neuron_mean_concentration", 0.2),
    ] {
        c.execute("INSERT INTO comparison VALUES (?1, ?2)", params![k, v])
            .unwrap();
    }
}

/// A random ReLU dictionary with `N_FEATURES` features reading `hook`.
pub fn write_dictionary(dir: &Path, d_in: usize, hook: &str) {
    let dev = Device::Cpu;
    let d_sae = N_FEATURES;
    let w_enc =
        (Tensor::randn(0f32, 1.0, (d_in, d_sae), &dev).unwrap() / (d_in as f64).sqrt()).unwrap();
    let w_dec = Tensor::randn(0f32, 1.0, (d_sae, d_in), &dev).unwrap();
    let norm = w_dec.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    let w_dec = w_dec.broadcast_div(&norm).unwrap();
    let cfg = json!({
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": false,
        "normalize_activations": "none",
        "metadata": {"hook_name": hook, "model_name": "fixture"},
    });
    let d = glassbox_sae::Dictionary {
        architecture: glassbox_sae::dictionary::Architecture::Standard,
        d_in,
        d_sae,
        d_out: d_in,
        k: None,
        apply_b_dec_to_input: false,
        w_enc,
        b_enc: Some(Tensor::zeros(d_sae, candle_core::DType::F32, &dev).unwrap()),
        w_dec,
        b_dec: Tensor::zeros(d_in, candle_core::DType::F32, &dev).unwrap(),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: Some(hook.into()),
        hook_name_out: None,
        model_name: Some("fixture".into()),
        extra_cfg: cfg.as_object().unwrap().clone(),
    };
    glassbox_sae::format::save_saelens(&d, dir).unwrap();
}

/// A complete run directory without a model (the API and pages work; live views do not).
pub fn run_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write_store(t.path());
    write_dictionary(t.path(), 16, "blocks.1.hook_resid_pre");
    t
}

/// A run directory whose config.toml names `model` and whose dictionary reads
/// blocks.1.hook_resid_pre of a 576-wide model (SmolLM2).
pub fn run_dir_with_model(model: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write_store(t.path());
    write_dictionary(t.path(), 576, "blocks.1.hook_resid_pre");
    std::fs::write(
        t.path().join("config.toml"),
        format!(
            "model = {:?}\nhook = \"blocks.1.hook_resid_pre\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    t
}

/// Words of the tiny model's tokenizer (ids 3…); the rest of its 512 ids are `w{id}`.
const WORDS: &[&str] = &[
    "The", "the", "cat", "sat", "on", "mat", ".", ",", "A", "a", "small", "kitten", "chased",
    "dog", "weather", "today", "is", "Prices", "rose", "by", "in", "May", "hello", "world", "of",
    "and", "to", "it", "was", "good",
];

/// The tiny llama fixture (2 layers, d_model 64, 4 heads × d_head 16, vocab 512) copied
/// into a temporary folder with a word-level `tokenizer.json` (whitespace split, unknown
/// words → `<unk>`), so the live views run text prompts on it in milliseconds.
pub fn tiny_text_model() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let src = glassbox_fixtures::tiny_dir("llama");
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), t.path().join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<s>", "</s>"].iter().chain(WORDS).enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    for i in vocab.len()..512 {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    std::fs::write(t.path().join("tokenizer.json"), tok.to_string()).unwrap();
    t
}

/// A run directory on `model` (a [`tiny_text_model`]): the fixture store, a random
/// dictionary of `d_in` reading `hook`, and a config.toml naming the model.
pub fn run_dir_on(model: &Path, d_in: usize, hook: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write_store(t.path());
    write_dictionary(t.path(), d_in, hook);
    std::fs::write(
        t.path().join("config.toml"),
        format!(
            "model = {:?}\nhook = {hook:?}\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    t
}

/// Starts the server for `dir` on a free port of 127.0.0.1 (real TCP) in a background
/// thread; returns its base URL.
pub fn start_server(dir: &Path) -> String {
    start_server_with(dir, glassbox_server::Limits::default())
}

/// [`start_server`] with other limits.
pub fn start_server_with(dir: &Path, limits: glassbox_server::Limits) -> String {
    let app = glassbox_server::App::open(dir)
        .unwrap()
        .with_limits(limits)
        .unwrap();
    let app = std::sync::Arc::new(app);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || glassbox_server::serve_listener(app, listener).unwrap());
    format!("http://{addr}")
}

/// One raw HTTP/1.1 request over TCP: (status, body). The target is sent exactly as
/// given (no normalisation, unlike a browser).
pub fn raw_request(base: &str, method: &str, target: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let raw = out.get(split + 4..).unwrap_or(&[]);
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(raw)
    } else {
        raw.to_vec()
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&b[..eol]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &b[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        b = rest.get(n + 2..).unwrap_or(&[]);
    }
    out
}

pub fn path_of(t: &tempfile::TempDir) -> PathBuf {
    t.path().to_path_buf()
}
