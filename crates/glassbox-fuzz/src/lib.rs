//! glassbox-fuzz: a fuzz target for every parser of untrusted input in the workspace,
//! the seed inputs they start from, and the pieces the two drivers share:
//!
//! - `fuzz/` (its own workspace, outside the normal build): the coverage-guided harness,
//!   libFuzzer on the stable toolchain, run by `scripts/fuzz`;
//! - `tests/smoke.rs`: the CI smoke, every target over its seeds, its regression inputs
//!   (`regressions/<target>/`) and a few thousand deterministic mutations of them.
//!
//! Both install [`alloc::CountingAlloc`] and refuse any single allocation over
//! [`alloc::limit_for`] of the input.
//!
//! [`TARGETS`] lists the targets ([`target`] finds one by name), [`seeds::seeds`] builds
//! a target's seed inputs, [`regressions`] reads its saved crash inputs, and
//! [`mutate::mutate`] derives the smoke's inputs from both. A target is a plain
//! function; errors are its expected answer, a panic is a bug. The `config_json` seeds
//! are the tiny fixtures' own `config.json` files:
//!
//! ```
//! let t = glassbox_fuzz::target("config_json").expect("a target of that name");
//! let seeds = glassbox_fuzz::seeds::seeds(t.name);
//! assert!(seeds.len() >= 6);
//! // every seed reaches the parser and is accepted ...
//! assert!(seeds.iter().all(|s| (t.run)(s)));
//! // ... and broken input is refused, not a crash
//! assert!(!(t.run)(b"{\"model_type\": "));
//! ```

#![deny(missing_docs)]

pub mod alloc;
pub mod mutate;
pub mod seeds;
pub mod targets;

/// A fuzz target: a name (the `regressions/` folder and the harness's
/// `GLASSBOX_FUZZ_TARGET`), what it reads, and the function.
pub struct Target {
    /// the function's name in [`targets`], also its `regressions/` and seed folder
    pub name: &'static str,
    /// what an input is, and which API reads it (`glassbox-fuzz list` prints it)
    pub reads: &'static str,
    /// Runs one input; returns whether the parser accepted it.
    pub run: fn(&[u8]) -> bool,
}

macro_rules! targets {
    ($($name:ident: $reads:literal),* $(,)?) => {
        /// Every target, in the order `scripts/fuzz` runs them.
        pub const TARGETS: &[Target] = &[
            $(Target { name: stringify!($name), reads: $reads, run: targets::$name }),*
        ];
    };
}

targets! {
    safetensors_header: "a safetensors file (glassbox_model::stored::SafetensorsFile: header, then each tensor)",
    gguf: "a GGUF file (header, tokenizer from its metadata, whole model)",
    config_json: "an HF config.json (ModelConfig::from_hf_config)",
    tokenizer_json: "a tokenizer.json (TextTokenizer::from_file, then encode/decode)",
    saelens: "a SAELens dictionary: cfg.json + sae_weights.safetensors (glassbox_sae::format::load)",
    sparsify: "a sparsify dictionary: cfg.json + sae.safetensors (glassbox_sae::format::load)",
    features_sqlite: "a features.sqlite (glassbox_features::store and glassbox_server::Store)",
    graph_json: "an attribution graph graphs/NAME.json (glassbox_server::Graphs)",
    set_index: "a transcoder set's index.json (SetIndex::read, TranscoderSet::load)",
    probe: "a probe: probe.json + probe.safetensors (glassbox_probes::store::load)",
    csv_dataset: "a probe dataset CSV (glassbox_probes::dataset::read_csv)",
    corpus_jsonl: "a JSON-lines / JSON-array corpus (glassbox_data::read_corpus)",
    corpus_parquet: "a Parquet corpus (glassbox_data::read_corpus)",
    tokens_file: "a tokens file, safetensors with input_ids (Batch::from_tokens_file)",
    toml_config: "a run directory's config.toml (glassbox_features::run_dir::read_run)",
    api_body: "the dashboard server's HTTP API: POST bodies, GET paths and queries",
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The folder of a target's regression inputs (every crash found, kept as a file).
pub fn regressions_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target)
}

/// The regression inputs of `target`, sorted by file name.
pub fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(regressions_dir(target)) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            std::fs::read(e.path()).ok().map(|b| (name, b))
        })
        .collect();
    v.sort();
    v
}
