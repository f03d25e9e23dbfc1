//! One function per parser of untrusted input. Each writes the input where the real
//! reader expects a file (a per-process scratch folder, in `/dev/shm` when there is
//! one), calls the owning crate's public API exactly as the commands do, and, when the
//! input was accepted, uses what came back a little (a tokenizer encodes, a dictionary
//! encodes a row, a probe scores one), since accepting a file whose contents then
//! crash is the same bug.
//!
//! A target returns whether the input was accepted; errors are the expected outcome
//! for most inputs. What must never happen is a panic, an abort, a hang, or an
//! allocation over [`crate::alloc::limit_for`] of the input.

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A per-process, per-target folder for the files a target writes.
pub fn scratch(target: &str) -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("glassbox-fuzz-{}", std::process::id()))
    });
    let dir = base.join(target);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data)
        .unwrap_or_else(|e| panic!("fuzz harness: cannot write {}: {e}", path.display()));
}

/// Two files from one input: a little-endian u16 length, that many bytes, the rest.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    (&data[2..2 + n], &data[2 + n..])
}

/// [`split2`]'s inverse, for seeds.
pub fn join2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = u16::try_from(a.len()).expect("first part of a seed over 64 KiB");
    let mut v = n.to_le_bytes().to_vec();
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

/// A safetensors file as the HF loader reads it (`stored::SafetensorsFile`): the header,
/// then every tensor it lists.
pub fn safetensors_header(data: &[u8]) -> bool {
    let path = scratch("safetensors_header").join("model.safetensors");
    write(&path, data);
    let Ok(mut f) = glassbox_model::stored::SafetensorsFile::open(&path) else {
        return false;
    };
    let entries: Vec<_> = f.entries.iter().map(|(_, e)| e.clone()).collect();
    for e in &entries {
        let _ = f.read(e);
    }
    true
}

/// A GGUF file: the header (`read_gguf_header`), the tokenizer it describes
/// (`TextTokenizer::from_gguf`), and the whole model (`load_gguf`).
pub fn gguf(data: &[u8]) -> bool {
    let path = scratch("gguf").join("model.gguf");
    write(&path, data);
    let Ok((content, _)) = glassbox_model::gguf::read_gguf_header(&path) else {
        return false;
    };
    if let Ok(tok) = glassbox_model::TextTokenizer::from_gguf(&content) {
        use_tokenizer(&tok);
    }
    glassbox_model::gguf::load_gguf(&path).is_ok()
}

/// An HF `config.json` (`ModelConfig::from_hf_config`).
pub fn config_json(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return false;
    };
    glassbox_model::ModelConfig::from_hf_config(&v).is_ok()
}

fn use_tokenizer(tok: &glassbox_model::TextTokenizer) {
    if let Ok(ids) = tok.encode("Hello world 12345, <|im_start|> ünïcödé\n\tend") {
        let _ = tok.decode(&ids);
    }
    let _ = tok.token_text(0);
    let _ = tok.vocab_size();
}

/// A `tokenizer.json` (`TextTokenizer::from_file`), then an encode and decode.
pub fn tokenizer_json(data: &[u8]) -> bool {
    let path = scratch("tokenizer_json").join("tokenizer.json");
    write(&path, data);
    match glassbox_model::TextTokenizer::from_file(&path) {
        Ok(tok) => {
            use_tokenizer(&tok);
            true
        }
        Err(_) => false,
    }
}

fn use_dictionary(d: &glassbox_sae::Dictionary) {
    // Only small dictionaries: a valid file's sizes are what it holds, and the point is
    // that an accepted file does not crash, not to time a large matmul.
    if d.d_in.saturating_mul(d.d_sae) > 1 << 16 {
        return;
    }
    let Ok(x) = Tensor::zeros((2, d.d_in), DType::F32, &Device::Cpu) else {
        return;
    };
    if let Ok(f) = d.encode(&x) {
        let _ = d.decode(&f, Some(&x));
    }
    let _ = d.decoder_row(0);
}

fn dictionary(target: &str, weights_name: &str, data: &[u8]) -> bool {
    let dir = scratch(target);
    let (cfg, weights) = split2(data);
    write(&dir.join("cfg.json"), cfg);
    write(&dir.join(weights_name), weights);
    match glassbox_sae::format::load(&dir) {
        Ok(d) => {
            use_dictionary(&d);
            true
        }
        Err(_) => false,
    }
}

/// A SAELens dictionary: `cfg.json` + `sae_weights.safetensors` ([`split2`]).
pub fn saelens(data: &[u8]) -> bool {
    dictionary("saelens", "sae_weights.safetensors", data)
}

/// A sparsify dictionary: `cfg.json` + `sae.safetensors` ([`split2`]).
pub fn sparsify(data: &[u8]) -> bool {
    dictionary("sparsify", "sae.safetensors", data)
}

/// A `features.sqlite`, through the one reader (`glassbox_features::store`) and the
/// dashboard server's JSON face over it (`glassbox_server::Store`).
pub fn features_sqlite(data: &[u8]) -> bool {
    use glassbox_features::store::{FeatureStore, Order};
    use glassbox_features::UnitKind;
    use glassbox_server::{Kind, ListQuery, Sort};
    let path = scratch("features_sqlite").join("features.sqlite");
    write(&path, data);
    let mut ok = false;
    if let Ok(s) = FeatureStore::open(&path) {
        ok = true;
        let _ = s.meta();
        let _ = s.comparison();
        for kind in [UnitKind::Feature, UnitKind::Neuron] {
            let _ = s.count(kind);
            for order in [
                Order::Id,
                Order::Density,
                Order::MaxAct,
                Order::Concentration,
            ] {
                let _ = s.units(kind, order, false, 8, 0);
            }
            let _ = s.units(kind, Order::Density, true, 8, 1);
            for id in 0..4 {
                let _ = s.unit(kind, id);
            }
        }
    }
    if let Ok(s) = glassbox_server::Store::open(&path) {
        ok = true;
        let _ = s.meta();
        let _ = s.counts();
        let _ = s.comparison();
        for kind in Kind::ALL {
            for sort in [Sort::Id, Sort::Density, Sort::MaxAct, Sort::Concentration] {
                let _ = s.list(&ListQuery {
                    kind,
                    q: Some("a".into()),
                    sort,
                    descending: true,
                    limit: 8,
                    offset: 0,
                });
            }
            let _ = s.all_summaries(kind);
            let _ = s.labels(kind, &[0, 1, 2, -1]);
            for id in [-1, 0, 1, 2, 3] {
                let _ = s.summary(kind, id);
                let _ = s.unit(kind, id);
            }
        }
    }
    ok
}

/// An attribution graph `graphs/g.json` as the server lists, serves and resolves it.
pub fn graph_json(data: &[u8]) -> bool {
    let dir = scratch("graph_json");
    let graphs = dir.join(glassbox_server::GRAPHS_DIR);
    let _ = std::fs::create_dir_all(&graphs);
    write(&graphs.join("g.json"), data);
    let g = glassbox_server::Graphs::new(&dir, None);
    let _ = g.list();
    let _ = g.layer_feature(0, 0, Some("g"));
    g.get("g").is_ok()
}

/// A transcoder set's `index.json`, as the server (`SetIndex::read`) and the tracer
/// (`TranscoderSet::load`) read it.
pub fn set_index(data: &[u8]) -> bool {
    static CFG: OnceLock<glassbox_model::ModelConfig> = OnceLock::new();
    let cfg = CFG.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(crate::seeds::TINY_LLAMA_CONFIG)
            .expect("the built-in config is JSON");
        glassbox_model::ModelConfig::from_hf_config(&v).expect("the built-in config loads")
    });
    let dir = scratch("set_index");
    write(&dir.join(glassbox_circuits::SET_INDEX), data);
    let ok = match glassbox_server::SetIndex::read(&dir) {
        Ok(Some(i)) => {
            let _ = i.describe();
            true
        }
        _ => false,
    };
    let _ = glassbox_circuits::TranscoderSet::load(&dir, cfg);
    ok
}

/// A probe: `probe.json` + `probe.safetensors` ([`split2`]), then a score.
pub fn probe(data: &[u8]) -> bool {
    let dir = scratch("probe");
    let (meta, weights) = split2(data);
    write(&dir.join("probe.json"), meta);
    write(&dir.join("probe.safetensors"), weights);
    match glassbox_probes::store::load(&dir) {
        Ok((p, _)) => {
            let x = vec![0.5f32; p.weight.len()];
            let _ = p.prob(&x);
            true
        }
        Err(_) => false,
    }
}

/// A probe dataset CSV (`probe sweep --data FILE.csv`).
pub fn csv_dataset(data: &[u8]) -> bool {
    let path = scratch("csv_dataset").join("data.csv");
    write(&path, data);
    match glassbox_probes::dataset::read_csv(&path) {
        Ok(d) => {
            let _ = d.hash();
            let _ = d.split(0.25, 0);
            true
        }
        Err(_) => false,
    }
}

/// A JSON-lines corpus (`--corpus FILE.jsonl`; a `.json` array reads the same way).
pub fn corpus_jsonl(data: &[u8]) -> bool {
    let path = scratch("corpus_jsonl").join("corpus.jsonl");
    write(&path, data);
    glassbox_data::read_corpus(&path, "text").is_ok()
}

/// A Parquet corpus (`--corpus FILE.parquet`, the text column `text`).
pub fn corpus_parquet(data: &[u8]) -> bool {
    let path = scratch("corpus_parquet").join("corpus.parquet");
    write(&path, data);
    glassbox_data::read_corpus(&path, "text").is_ok()
}

/// A tokens file (`cache --tokens-file`): safetensors with an int64 `input_ids`.
pub fn tokens_file(data: &[u8]) -> bool {
    let path = scratch("tokens_file").join("tokens.safetensors");
    write(&path, data);
    glassbox_model::Batch::from_tokens_file(&path).is_ok()
}

/// A run directory's `config.toml` (`glassbox_features::run_dir::read_run`).
pub fn toml_config(data: &[u8]) -> bool {
    let dir = scratch("toml_config");
    // read_run wants a dictionary to be there; only its presence is checked
    for f in ["cfg.json", "sae_weights.safetensors"] {
        if !dir.join(f).is_file() {
            write(&dir.join(f), b"{}");
        }
    }
    write(&dir.join("config.toml"), data);
    glassbox_features::run_dir::read_run(&dir).is_ok()
}

struct Api {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let dir = scratch("api_body").join("run");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(glassbox_server::GRAPHS_DIR))
            .expect("fuzz harness: cannot create the API's run directory");
        // no model named: live views answer 503 without trying to load one
        crate::seeds::write_store(&dir.join(glassbox_server::STORE_FILE), "");
        crate::seeds::write_dictionary(&dir, 16, "blocks.1.hook_resid_pre");
        write(
            &dir.join(glassbox_server::GRAPHS_DIR).join("g.json"),
            crate::seeds::GRAPH_JSON.as_bytes(),
        );
        let app = glassbox_server::App::open(&dir).expect("the fuzz run directory opens");
        // the server's limits (read timeouts, the live gate's deadline) need timers
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        Api {
            rt,
            router: glassbox_server::router(std::sync::Arc::new(app)),
        }
    })
}

/// The routes of [`api_body`], chosen by the input's first byte.
pub const API_ROUTES: [(&str, &str); 8] = [
    ("POST", "/api/prompt"),
    ("POST", "/api/steer"),
    ("POST", "/api/graphs/g/intervene"),
    ("GET", "/api/units?"),
    ("GET", "/api/units/"),
    ("GET", "/api/layers/"),
    ("GET", "/api/graphs/"),
    ("GET", "/"),
];

/// Bytes as they may appear in a URI: unreserved ones and the separators kept, the
/// rest percent-encoded.
fn uri_part(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len());
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-._~/?=&%".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The dashboard server's HTTP API on a run directory without a model: the first byte
/// picks one of [`API_ROUTES`]; the rest is the JSON body of a POST or the tail of a
/// GET's path and query. A 5xx answer counts as a crash: a bad request is the
/// client's error (4xx), and a panic in a handler's blocking task surfaces as a 500.
pub fn api_body(data: &[u8]) -> bool {
    use tower::ServiceExt;
    let Some((&sel, rest)) = data.split_first() else {
        return false;
    };
    let (method, route) = API_ROUTES[sel as usize % API_ROUTES.len()];
    let req = if method == "POST" {
        axum::http::Request::builder()
            .method(method)
            .uri(route)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(rest.to_vec()))
    } else {
        axum::http::Request::builder()
            .method(method)
            .uri(format!("{route}{}", uri_part(rest)))
            .body(axum::body::Body::empty())
    };
    let Ok(req) = req else {
        return false;
    };
    let a = api();
    let resp = a.rt.block_on(a.router.clone().oneshot(req));
    let Ok(resp) = resp;
    let status = resp.status();
    let body =
        a.rt.block_on(axum::body::to_bytes(resp.into_body(), 64 << 20))
            .unwrap_or_default();
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "{method} {route}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    // accepted: the request was well-formed enough to reach the handler's own checks
    ![400, 405, 413, 415, 422].contains(&status.as_u16())
}
