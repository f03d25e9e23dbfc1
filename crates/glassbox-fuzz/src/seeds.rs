//! Seed inputs: one or a few tiny valid files per target, built by the same writers
//! the project uses (`save_saelens`, `probes::store::save`, candle's safetensors and GGUF
//! writers, the feature store's schema) so that they stay valid as the formats evolve.
//! `scripts/fuzz` writes them out as each fuzzer's starting corpus; the CI smoke
//! mutates them.

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// The tiny Llama fixture's `config.json` (64 wide, 2 layers).
pub const TINY_LLAMA_CONFIG: &str = include_str!("../../../fixtures/tiny-llama/config.json");

/// The feature store's schema, as `features build` creates it.
pub const SCHEMA: &str = include_str!("../../glassbox-features/src/schema.sql");

/// A small attribution graph in `glassbox trace`'s shape.
pub const GRAPH_JSON: &str = r#"{"metadata":{"format":"glassbox attribution graph 1","prompt":"The cat","prompt_tokens":["The"," cat"],"prompt_token_ids":[1,2],"model":"tiny","transcoders":"set","n_layers":2,"node_threshold":0.8,"edge_threshold":0.98,"replacement_score":0.5,"completeness_score":0.9,"kept_influence":0.8,"final_influence":0.9,"unpruned_features":3,"unpruned_nodes":6,"unpruned_edges":9,"features_folded_into_errors":0,"attribution_seconds":0.1},
"nodes":[{"node_id":"0_1_1","feature_type":"transcoder","layer":0,"ctx_idx":1,"feature":1,"token":null,"token_str":"","activation":1.5,"error_norm":null,"token_prob":null,"logit":null,"influence":0.5},
{"node_id":"E_2_1","feature_type":"embedding","layer":-1,"ctx_idx":1,"feature":null,"token":2,"token_str":" cat","activation":null,"error_norm":null,"token_prob":null,"logit":null,"influence":0.2},
{"node_id":"0_e_1","feature_type":"mlp reconstruction error","layer":0,"ctx_idx":1,"feature":null,"token":null,"token_str":"","activation":null,"error_norm":0.3,"token_prob":null,"logit":null,"influence":0.1},
{"node_id":"L_5_1","feature_type":"logit","layer":2,"ctx_idx":1,"feature":null,"token":5,"token_str":" sat","activation":null,"error_norm":null,"token_prob":0.4,"logit":3.0,"influence":1.0}],
"links":[{"source":"E_2_1","target":"0_1_1","weight":0.7},{"source":"0_1_1","target":"L_5_1","weight":1.2},{"source":"0_e_1","target":"L_5_1","weight":-0.3}]}"#;

fn cpu() -> Device {
    Device::Cpu
}

fn ramp(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * scale)
        .collect();
    Tensor::from_vec(v, shape, &cpu()).expect("seed tensor")
}

fn scratch_file(name: &str) -> std::path::PathBuf {
    crate::targets::scratch("seeds").join(name)
}

fn safetensors_bytes(tensors: &[(&str, Tensor)]) -> Vec<u8> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let path = scratch_file("seed.safetensors");
    candle_core::safetensors::save(&map, &path).expect("write seed safetensors");
    std::fs::read(&path).expect("read seed safetensors")
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    vec![
        safetensors_bytes(&[
            ("model.embed_tokens.weight", ramp(&[8, 4], 1.0)),
            ("model.norm.weight", ramp(&[4], 1.0)),
        ]),
        safetensors_bytes(&[
            ("a", ramp(&[2, 3], 1.0).to_dtype(DType::BF16).unwrap()),
            ("b", ramp(&[3], 1.0).to_dtype(DType::F16).unwrap()),
            ("c", ramp(&[2], 1.0).to_dtype(DType::F64).unwrap()),
            ("ids", Tensor::new(&[1i64, 2, 3], &cpu()).unwrap()),
        ]),
    ]
}

fn gguf_bytes(arch: &str, d: usize, dtype: GgmlDType, tokenizer: &str) -> Vec<u8> {
    let (heads, kv, ff, vocab) = (2usize, 1usize, 2 * d, 8usize);
    let dh = d / heads;
    let u32v = |v: usize| GgufValue::U32(v as u32);
    let s = |v: &str| GgufValue::String(v.to_string());
    let tokens: Vec<&str> = match tokenizer {
        "llama" => vec![
            "<unk>",
            "<s>",
            "</s>",
            "\u{2581}a",
            "b",
            "c",
            "<0x41>",
            "\u{2581}",
        ],
        _ => vec!["<|endoftext|>", "a", "b", "c", "ab", "Ġ", "Ġa", "1"],
    };
    let mut meta: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), s(arch)),
        (format!("{arch}.embedding_length"), u32v(d)),
        (format!("{arch}.attention.head_count"), u32v(heads)),
        (format!("{arch}.attention.head_count_kv"), u32v(kv)),
        (format!("{arch}.block_count"), u32v(1)),
        (format!("{arch}.feed_forward_length"), u32v(ff)),
        (format!("{arch}.context_length"), u32v(64)),
        (format!("{arch}.vocab_size"), u32v(vocab)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            GgufValue::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), GgufValue::F32(10000.0)),
        ("tokenizer.ggml.model".into(), s(tokenizer)),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(
                (0..tokens.len())
                    .map(|i| GgufValue::I32(if i < 3 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u32v(1)),
        ("tokenizer.ggml.eos_token_id".into(), u32v(2)),
    ];
    if tokenizer == "llama" {
        meta.push((
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(
                (0..tokens.len())
                    .map(|i| GgufValue::F32(-(i as f32)))
                    .collect(),
            ),
        ));
    } else {
        meta.push((
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(vec![s("a b"), s("Ġ a")]),
        ));
    }
    if arch == "gemma3" {
        meta.push(("gemma3.attention.key_length".into(), u32v(dh)));
        meta.push(("gemma3.attention.sliding_window".into(), u32v(16)));
    }
    let q = |shape: &[usize], dt: GgmlDType| QTensor::quantize(&ramp(shape, 0.5), dt).unwrap();
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(&[vocab, d], GgmlDType::F32)),
        ("output_norm.weight".into(), q(&[d], GgmlDType::F32)),
        ("blk.0.attn_norm.weight".into(), q(&[d], GgmlDType::F32)),
        ("blk.0.ffn_norm.weight".into(), q(&[d], GgmlDType::F32)),
        ("blk.0.attn_q.weight".into(), q(&[heads * dh, d], dtype)),
        ("blk.0.attn_k.weight".into(), q(&[kv * dh, d], dtype)),
        ("blk.0.attn_v.weight".into(), q(&[kv * dh, d], dtype)),
        (
            "blk.0.attn_output.weight".into(),
            q(&[d, heads * dh], dtype),
        ),
        ("blk.0.ffn_up.weight".into(), q(&[ff, d], dtype)),
        ("blk.0.ffn_gate.weight".into(), q(&[ff, d], dtype)),
        ("blk.0.ffn_down.weight".into(), q(&[d, ff], dtype)),
    ];
    if arch == "gemma3" {
        for (n, w) in [
            ("post_attention_norm", d),
            ("post_ffw_norm", d),
            ("attn_q_norm", dh),
            ("attn_k_norm", dh),
        ] {
            tensors.push((format!("blk.0.{n}.weight"), q(&[w], GgmlDType::F32)));
        }
    }
    let meta_refs: Vec<(&str, &GgufValue)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta_refs, &tensor_refs).expect("write seed GGUF");
    buf.into_inner()
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    vec![
        gguf_bytes("llama", 8, GgmlDType::F32, "gpt2"),
        gguf_bytes("gemma3", 8, GgmlDType::F32, "llama"),
        gguf_bytes("llama", 32, GgmlDType::Q8_0, "llama"),
    ]
}

fn config_seeds() -> Vec<Vec<u8>> {
    [
        TINY_LLAMA_CONFIG,
        include_str!("../../../fixtures/tiny-gpt2/config.json"),
        include_str!("../../../fixtures/tiny-gemma2/config.json"),
        include_str!("../../../fixtures/tiny-qwen3/config.json"),
        include_str!("../../../fixtures/tiny-gpt_neox/config.json"),
        include_str!("../../../fixtures/tiny-phi3/config.json"),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn tokenizer_seeds() -> Vec<Vec<u8>> {
    let added = json!([{"id": 0, "content": "<|im_start|>", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true}]);
    let bpe = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|im_start|>": 0, "H": 1, "e": 2, "l": 3, "o": 4, "He": 5, "ll": 6, "Ġ": 7, "w": 8, "1": 9},
            "merges": ["H e", "l l"]}
    });
    let unigram = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Replace",
            "pattern": {"String": " "}, "content": "\u{2581}"}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false,
            "vocab": [["<unk>", 0.0], ["\u{2581}He", -1.0], ["llo", -2.0], ["\u{2581}", -3.0], ["o", -4.0], ["l", -4.5]]}
    });
    let wordpiece = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3}}
    });
    [bpe, unigram, wordpiece]
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect()
}

/// A small dictionary of `arch` (d_in 4, d_sae 8), as `save_saelens` writes it:
/// (`cfg.json`, `sae_weights.safetensors`).
fn saelens_files(arch: glassbox_sae::Architecture, skip: bool) -> (Vec<u8>, Vec<u8>) {
    use glassbox_sae::Architecture as A;
    let (d_in, d_sae) = (4, 8);
    let name = match arch {
        A::Standard => "standard",
        A::TopK => "topk",
        A::JumpReLU => "jumprelu",
        A::Gated => "gated",
    };
    let mut cfg = json!({"architecture": name, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
        "apply_b_dec_to_input": true, "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.0.hook_resid_pre", "model_name": "tiny"}});
    if arch == A::TopK {
        cfg["k"] = json!(2);
    }
    let gated = arch == A::Gated;
    let v = |n: usize| Some(ramp(&[n], 0.1));
    let d = glassbox_sae::Dictionary {
        architecture: arch,
        d_in,
        d_sae,
        d_out: d_in,
        k: (arch == A::TopK).then_some(2),
        apply_b_dec_to_input: true,
        w_enc: ramp(&[d_in, d_sae], 1.0),
        b_enc: if gated { None } else { v(d_sae) },
        w_dec: ramp(&[d_sae, d_in], 1.0),
        b_dec: ramp(&[d_in], 0.1),
        threshold: if arch == A::JumpReLU { v(d_sae) } else { None },
        b_gate: if gated { v(d_sae) } else { None },
        r_mag: if gated { v(d_sae) } else { None },
        b_mag: if gated { v(d_sae) } else { None },
        w_skip: skip.then(|| ramp(&[d_in, d_in], 0.1)),
        hook_name: Some("blocks.0.hook_resid_pre".into()),
        hook_name_out: skip.then(|| "blocks.0.hook_mlp_out".into()),
        model_name: Some("tiny".into()),
        extra_cfg: cfg.as_object().unwrap().clone(),
    };
    let dir = crate::targets::scratch("seeds").join(format!("sae-{name}-{skip}"));
    let _ = std::fs::create_dir_all(&dir);
    glassbox_sae::format::save_saelens(&d, &dir).expect("save seed dictionary");
    (
        std::fs::read(dir.join("cfg.json")).unwrap(),
        std::fs::read(dir.join("sae_weights.safetensors")).unwrap(),
    )
}

fn saelens_seeds() -> Vec<Vec<u8>> {
    use glassbox_sae::Architecture as A;
    [
        (A::Standard, false),
        (A::TopK, false),
        (A::JumpReLU, false),
        (A::Gated, false),
        (A::TopK, true),
    ]
    .into_iter()
    .map(|(a, skip)| {
        let (c, w) = saelens_files(a, skip);
        crate::targets::join2(&c, &w)
    })
    .collect()
}

fn sparsify_seeds() -> Vec<Vec<u8>> {
    let (d_in, d_sae) = (4, 8);
    let base = [
        ("encoder.weight", ramp(&[d_sae, d_in], 1.0)),
        ("encoder.bias", ramp(&[d_sae], 0.1)),
        ("W_dec", ramp(&[d_sae, d_in], 1.0)),
        ("b_dec", ramp(&[d_in], 0.1)),
    ];
    let sae = safetensors_bytes(&base);
    let mut with_skip = base.to_vec();
    with_skip.push(("W_skip", ramp(&[d_in, d_in], 0.1)));
    let skip = safetensors_bytes(&with_skip);
    vec![
        crate::targets::join2(
            br#"{"activation": "topk", "k": 2, "expansion_factor": 2, "normalize_decoder": true, "num_latents": 8}"#,
            &sae,
        ),
        crate::targets::join2(
            br#"{"activation": "topk", "k": 3, "transcode": true, "skip_connection": true}"#,
            &skip,
        ),
    ]
}

/// Writes a small feature store (three features, two neurons) of `model` at `path`,
/// from the real schema.
pub fn write_store(path: &Path, model: &str) {
    use rusqlite::{params, Connection};
    let _ = std::fs::remove_file(path);
    let c = Connection::open(path).expect("create seed store");
    // small pages keep the seed (and every fuzz input) a few kilobytes
    c.execute_batch("PRAGMA page_size = 512;").unwrap();
    c.execute_batch(SCHEMA).unwrap();
    for (k, v) in [
        ("model", model),
        ("hook", "blocks.1.hook_resid_pre"),
        ("neuron_hook", "blocks.1.mlp.hook_post"),
        ("d_sae", "3"),
        ("d_mlp", "2"),
        ("tokens", "4096"),
        ("context_size", "8"),
        ("context_radius", "2"),
        ("top_k", "2"),
        ("version", "1"),
    ] {
        c.execute("INSERT INTO meta VALUES (?1, ?2)", params![k, v])
            .unwrap();
    }
    let windows = [["The", " cat", " sat", "."], ["A", " dog", " ran", "!"]];
    for (i, w) in windows.iter().enumerate() {
        c.execute(
            "INSERT INTO windows VALUES (?1, ?2)",
            params![i as i64, serde_json::to_string(w).unwrap()],
        )
        .unwrap();
    }
    for (kind, n) in [("feature", 3usize), ("neuron", 2)] {
        for id in 0..n {
            let max_act = 1.0 + id as f64;
            c.execute(
                "INSERT INTO units VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    kind,
                    id as i64,
                    0.01 * (id + 1) as f64,
                    max_act,
                    max_act / 2.0,
                    format!("{kind} {id}"),
                    json!([[" cat", 2], [" dog", 1]]).to_string(),
                    0.5,
                    json!({"log10_edges": [-2.0, -1.0, 0.0], "counts": [3, 1]}).to_string(),
                ],
            )
            .unwrap();
            for (band, w) in [(-1i64, 0i64), (0, 1)] {
                c.execute(
                    "INSERT INTO examples VALUES (?1, ?2, ?3, 0, ?4, ?5, 1, 0, ?6)",
                    params![
                        kind,
                        id as i64,
                        band,
                        max_act,
                        w,
                        json!([0.0, max_act, 0.1, 0.0]).to_string()
                    ],
                )
                .unwrap();
            }
            if kind == "feature" {
                for (sign, t) in [(1i64, " purr"), (-1, " bark")] {
                    c.execute(
                        "INSERT INTO logit_effects VALUES (?1, ?2, 0, ?3, ?4)",
                        params![id as i64, sign, t, sign as f64 * 0.5],
                    )
                    .unwrap();
                }
                c.execute(
                    "INSERT INTO neighbours VALUES (?1, 0, ?2, 0.5)",
                    params![id as i64, ((id + 1) % n) as i64],
                )
                .unwrap();
            }
        }
    }
    c.execute(
        "INSERT INTO comparison VALUES ('feature_mean_concentration', 0.4)",
        [],
    )
    .unwrap();
}

/// Writes a small standard dictionary (`d_sae` 3) reading `hook` into `dir`.
pub fn write_dictionary(dir: &Path, d_in: usize, hook: &str) {
    let d_sae = 3;
    let cfg = json!({"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
        "apply_b_dec_to_input": false, "normalize_activations": "none",
        "metadata": {"hook_name": hook, "model_name": "tiny"}});
    let d = glassbox_sae::Dictionary {
        architecture: glassbox_sae::Architecture::Standard,
        d_in,
        d_sae,
        d_out: d_in,
        k: None,
        apply_b_dec_to_input: false,
        w_enc: ramp(&[d_in, d_sae], 1.0),
        b_enc: Some(ramp(&[d_sae], 0.1)),
        w_dec: ramp(&[d_sae, d_in], 1.0),
        b_dec: ramp(&[d_in], 0.1),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: Some(hook.into()),
        hook_name_out: None,
        model_name: Some("tiny".into()),
        extra_cfg: cfg.as_object().unwrap().clone(),
    };
    glassbox_sae::format::save_saelens(&d, dir).expect("save the fuzz run's dictionary");
}

fn sqlite_seeds() -> Vec<Vec<u8>> {
    let path = scratch_file("features.sqlite");
    write_store(&path, "tiny");
    vec![std::fs::read(&path).unwrap()]
}

fn probe_seeds() -> Vec<Vec<u8>> {
    use glassbox_probes::probe::{Method, Probe};
    let dir = crate::targets::scratch("seeds").join("probe");
    let _ = std::fs::create_dir_all(&dir);
    let probe = Probe {
        method: Method::Lr,
        weight: vec![0.5, -0.25, 1.0, 0.0],
        bias: 0.1,
    };
    let meta: glassbox_probes::store::ProbeMeta = serde_json::from_value(json!({
        "model": "tiny", "architecture": "llama", "d_model": 4, "n_layers": 2,
        "hook": "blocks.1.hook_resid_post", "layer": 1, "position": "last", "method": "lr",
        "normalisation": "none", "data": "capitals", "data_hash": "0", "split": "75/25 seed 0",
        "test_accuracy": 0.9, "test_auroc": 0.95
    }))
    .expect("a probe description");
    glassbox_probes::store::save(&dir, &probe, &meta).expect("save seed probe");
    vec![crate::targets::join2(
        &std::fs::read(dir.join("probe.json")).unwrap(),
        &std::fs::read(dir.join("probe.safetensors")).unwrap(),
    )]
}

fn tokens_seeds() -> Vec<Vec<u8>> {
    vec![
        safetensors_bytes(&[(
            "input_ids",
            Tensor::new(&[[1i64, 2, 3], [4, 5, 6]], &cpu()).unwrap(),
        )]),
        safetensors_bytes(&[("input_ids", Tensor::new(&[7u32, 8], &cpu()).unwrap())]),
    ]
}

/// Seeds for `target` ([`crate::TARGETS`]); empty for an unknown name.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let text = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
    match target {
        "safetensors_header" => safetensors_seeds(),
        "gguf" => gguf_seeds(),
        "config_json" => config_seeds(),
        "tokenizer_json" => tokenizer_seeds(),
        "saelens" => saelens_seeds(),
        "sparsify" => sparsify_seeds(),
        "features_sqlite" => sqlite_seeds(),
        "graph_json" => vec![GRAPH_JSON.as_bytes().to_vec()],
        "set_index" => text(&[
            r#"{"model": "tiny", "layers": [{"layer": 0, "path": "layer_00"}, {"layer": 1, "path": "layer_01"}], "fvu": [0.1, 0.2]}"#,
        ]),
        "probe" => probe_seeds(),
        "csv_dataset" => text(&[
            "statement,label\nThe sky is blue.,1\nFire is cold.,0\nWater is wet.,1\n",
            "id,statement,label,source\n1,\"Paris is in France, Europe.\",1,a\n2,\"Rome is in \"\"Spain\"\".\",0,b\n",
        ]),
        "corpus_jsonl" => text(&[
            "{\"text\": \"The first document.\"}\n{\"text\": \"A second one.\", \"id\": 2}\n{\"text\": null}\n",
            "[{\"text\": \"one\"}, {\"text\": \"two\"}, {\"content\": \"three\"}]",
        ]),
        "corpus_parquet" => vec![
            include_bytes!("../../glassbox-data/tests/data/hf-dataset/data/train-00000-of-00002.parquet").to_vec(),
            include_bytes!("../../glassbox-data/tests/data/hf-dataset/data/train-00001-of-00002.parquet").to_vec(),
        ],
        "tokens_file" => tokens_seeds(),
        "toml_config" => text(&[
            "model = \"default\"\nhook = \"blocks.1.hook_resid_pre\"\ncontext_size = 64\ncorpus = \"c.jsonl\"\ntext_field = \"text\"\n\n[train]\nseed = 3\nlr = 4e-4\n",
        ]),
        "api_body" => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            for (i, body) in [
                r#"{"text": "The cat sat", "feature": 1}"#,
                r#"{"prompt": "The cat", "features": [{"id": 1, "strength": 4.0}], "max_new_tokens": 4}"#,
                r#"{"mode": "frozen", "edits": [{"layer": 0, "position": 1, "feature": 1, "value": {"scale": 0.0}}], "top": 5}"#,
                "kind=feature&sort=density&q=cat&limit=3&offset=0&order=desc",
                "feature/1",
                "0/features/1?graph=g",
                "g",
                "unit/feature/1",
            ]
            .iter()
            .enumerate()
            {
                let mut s = vec![i as u8];
                s.extend_from_slice(body.as_bytes());
                v.push(s);
            }
            v
        }
        _ => Vec::new(),
    }
}
