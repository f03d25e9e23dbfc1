//! A transcoder-set directory on the tiny llama fixture: random transcoders for both
//! layers (standard at layer 0, TopK with a skip at layer 1) saved as SAELens folders
//! with an index.json, one attribution graph in graphs/ built with glassbox-circuits,
//! and a feature store for layer 1 built with glassbox-features (layer 0 has none).

use glassbox_circuits::{
    attribute, graph_json, prune, AttributionOptions, GraphContext, PruneOptions, ReplacementState,
    TranscoderSet,
};
use glassbox_model::load_model;
use glassbox_sae::testing::RandomTranscoder;
use glassbox_sae::Dictionary;
use serde_json::{json, Value};
use std::path::PathBuf;

pub const GRAPH_NAME: &str = "tiny-prompt";
pub const PROMPT_TOKENS: [u32; 8] = [1, 45, 300, 17, 99, 256, 3, 410];
pub const D_SAE: usize = 48;

pub fn tiny_llama() -> PathBuf {
    glassbox_fixtures::tiny_dir("llama")
}

/// A random transcoder for `layer` of a `d`-wide model.
pub fn transcoder(layer: usize, d: usize, topk: bool, skip: bool, seed: u64) -> Dictionary {
    let spec = RandomTranscoder {
        k: topk.then_some(6),
        skip,
        ..RandomTranscoder::new(layer, d, D_SAE, seed)
    };
    let mut t = spec.build().unwrap();
    t.model_name = Some("tiny-llama".into());
    t
}

fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut x = 11u64;
    (0..n)
        .map(|_| {
            std::iter::once(1)
                .chain((1..len).map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    3 + (x >> 33) as u32 % 500
                }))
                .collect()
        })
        .collect()
}

pub struct GraphSet {
    pub dir: tempfile::TempDir,
    pub graph: Value,
}

/// The transcoder-set directory with graphs/tiny-prompt.json and layer_01/features.sqlite.
pub fn graph_set() -> GraphSet {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_llama();
    let model = load_model(&model_dir).unwrap();
    let cfg = model.config().clone();
    let t = &model.transformer;
    let mut layers = Vec::new();
    for l in 0..cfg.n_layers {
        let d = transcoder(l, cfg.d_model, l == 1, l == 1, 7 + l as u64);
        let rel = format!("layer_{l:02}");
        glassbox_sae::format::save_saelens(&d, &dir.path().join(&rel)).unwrap();
        layers.push(json!({
            "layer": l, "path": rel,
            "hook_in": d.hook_name, "hook_out": d.hook_name_out,
        }));
    }
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_string_pretty(&json!({
            "format": "glassbox transcoder set 1",
            "model": model_dir.display().to_string(),
            "layers": layers,
        }))
        .unwrap(),
    )
    .unwrap();
    let set = TranscoderSet::load(dir.path(), &cfg).unwrap();

    let state = ReplacementState::new(t, &set, &PROMPT_TOKENS, 8192).unwrap();
    let g = attribute(t, &set, &state, &AttributionOptions::default()).unwrap();
    let opts = PruneOptions::default();
    let pruned = prune(&g, opts).unwrap();
    let token_text = |id: u32| format!("t{id}");
    let model_str = model_dir.display().to_string();
    let set_str = dir.path().display().to_string();
    let graph = graph_json(
        &g,
        &pruned,
        opts,
        &GraphContext {
            prompt: "a tiny prompt",
            model: &model_str,
            transcoders: &set_str,
            token_text: &token_text,
        },
    );
    let text = serde_json::to_string(&graph).unwrap();
    let graphs = dir.path().join("graphs");
    std::fs::create_dir_all(&graphs).unwrap();
    std::fs::write(graphs.join(format!("{GRAPH_NAME}.json")), &text).unwrap();
    // the file as a reader sees it (f32 values printed shortest, read back as f64)
    let graph: Value = serde_json::from_str(&text).unwrap();

    // the feature store of layer 1, exactly as `glassbox features build --sae
    // SET/layer_01 --model M` makes it: the transcoder read at its input hook
    let l1 = set.get(1).unwrap();
    let hook = l1.hook_name.clone().unwrap();
    let w = windows(8, 16);
    glassbox_features::build(
        &glassbox_features::BuildInput {
            model: t,
            dict: l1,
            hook: &hook,
            windows: &w,
            token_text: &token_text,
            meta: vec![("model".into(), "tiny-llama".into())],
        },
        &glassbox_features::BuildOptions {
            top_k: 4,
            context_radius: 3,
            rows: glassbox_model::RowRule::new([1]),
            ..Default::default()
        },
        &dir.path().join("layer_01").join("features.sqlite"),
        |_| {},
    )
    .unwrap();
    GraphSet { dir, graph }
}

/// The graph's transcoder nodes, most influential first.
pub fn feature_nodes(graph: &Value) -> Vec<Value> {
    let mut v: Vec<Value> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["feature_type"] == "transcoder")
        .cloned()
        .collect();
    v.sort_by(|a, b| {
        b["influence"]
            .as_f64()
            .unwrap()
            .total_cmp(&a["influence"].as_f64().unwrap())
    });
    v
}
