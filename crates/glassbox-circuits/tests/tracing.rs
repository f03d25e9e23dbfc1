//! The attribution graph on the tiny fixtures with random transcoders: the frozen
//! replacement model reproduces the real logits; every edge equals the finite
//! difference of removing its source in the frozen linear model (built here from the
//! runtime's own hooks, independently of the hand-written backward pass); the edges into
//! a target add up to its value; pruning keeps the influence it promises; bad input is
//! refused with a message.

use candle_core::{Device, Tensor};
use glassbox_circuits::{
    attribute, intervene, prune, AttributionOptions, EditValue, FeatureEdit, InterventionMode,
    NodeKind, PruneOptions, ReplacementState, TranscoderSet,
};
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, Batch, HookFilter, Model, Run};
use glassbox_sae::testing::RandomTranscoder;
use glassbox_sae::Dictionary;
use std::collections::HashMap;

/// A random transcoder for `layer`: TopK (k 6 of 48), optionally with a skip connection.
fn transcoder(layer: usize, d: usize, skip: bool, seed: u64) -> Dictionary {
    RandomTranscoder {
        k: Some(6),
        skip,
        ..RandomTranscoder::new(layer, d, 48, seed)
    }
    .build()
    .unwrap()
}

fn setup(family: &str) -> (Model, TranscoderSet, Vec<u32>) {
    let model = load_model(&tiny_dir(family)).unwrap();
    let cfg = model.config().clone();
    let set = TranscoderSet::from_dictionaries(
        (0..cfg.n_layers)
            .map(|l| Some(transcoder(l, cfg.d_model, l == 1, 7 + l as u64)))
            .collect(),
        &cfg,
    )
    .unwrap();
    let tokens = vec![1, 45, 300, 17, 99, 256, 3, 410];
    (model, set, tokens)
}

/// Target values (feature pre-activations without b_enc, de-meaned logits) in the frozen
/// linear model, with the `removed` source nodes' outputs taken away.
fn linear_values(
    model: &Model,
    set: &TranscoderSet,
    state: &ReplacementState,
    g: &glassbox_circuits::Attribution,
    removed: &[usize],
) -> Vec<f32> {
    let t = &model.transformer;
    let cfg = &t.config;
    let (s, d) = (state.seq_len(), cfg.d_model);
    let mut feature_out: Vec<Vec<f32>> = vec![vec![0f32; s * d]; cfg.n_layers];
    let mut error_out: Vec<Vec<f32>> = state
        .errors
        .iter()
        .map(|e| e.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let mut embed: Vec<f32> = state
        .get("blocks.0.hook_resid_pre")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, node) in g.nodes.iter().enumerate() {
        let gone = removed.contains(&i);
        match node.kind {
            NodeKind::Feature {
                layer,
                position,
                feature,
                activation,
            } if !gone => {
                let row: Vec<f32> = set
                    .get(layer)
                    .unwrap()
                    .w_dec
                    .get(feature)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for (o, r) in feature_out[layer][position * d..(position + 1) * d]
                    .iter_mut()
                    .zip(row)
                {
                    *o += activation * r;
                }
            }
            NodeKind::Error {
                layer, position, ..
            } if gone => {
                error_out[layer][position * d..(position + 1) * d]
                    .iter_mut()
                    .for_each(|v| *v = 0.0);
            }
            NodeKind::Token { position, .. } if gone => {
                embed[position * d..(position + 1) * d]
                    .iter_mut()
                    .for_each(|v| *v = 0.0);
            }
            _ => {}
        }
    }
    let pinned = HookFilter::new(
        vec![
            "blocks.*.attn.hook_pattern".into(),
            "blocks.*.ln1.hook_scale".into(),
            "blocks.*.ln2.hook_scale".into(),
            "ln_final.hook_scale".into(),
        ],
        cfg,
    )
    .unwrap();
    let mlp = HookFilter::new(
        vec![
            "blocks.0.hook_resid_pre".into(),
            "blocks.*.ln2.hook_normalized".into(),
            "blocks.*.hook_mlp_out".into(),
        ],
        cfg,
    )
    .unwrap();
    let mut inputs: HashMap<usize, Tensor> = HashMap::new();
    let dev = Device::Cpu;
    let run_out = {
        let mut run = Run::new()
            .hook(pinned, |name, x| {
                Ok(state.get(name).unwrap().reshape(x.dims())?)
            })
            .hook(mlp, |name, x| {
                if name == "blocks.0.hook_resid_pre" {
                    return Ok(Tensor::from_vec(embed.clone(), (1, s, d), &dev)?);
                }
                let l = glassbox_model::layer_of(name).unwrap();
                if name.ends_with("hook_normalized") {
                    inputs.insert(l, x.squeeze(0)?);
                    return Ok(x);
                }
                let mut out = Tensor::from_vec(feature_out[l].clone(), (s, d), &dev)?
                    .add(&Tensor::from_vec(error_out[l].clone(), (s, d), &dev)?)?;
                if let Some(dict) = &set.by_layer[l] {
                    out = out.broadcast_add(&dict.b_dec)?;
                    if let Some(w) = &dict.w_skip {
                        out = (out + inputs[&l].matmul(&w.t()?)?)?;
                    }
                }
                Ok(out.unsqueeze(0)?)
            });
        t.run(&Batch::single(&state.tokens), &mut run).unwrap()
    };
    let logits: Vec<f32> = run_out
        .logits()
        .unwrap()
        .get(0)
        .unwrap()
        .get(s - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean = logits.iter().map(|&v| v as f64).sum::<f64>() as f32 / logits.len() as f32;
    g.nodes
        .iter()
        .map(|n| match n.kind {
            NodeKind::Feature {
                layer,
                position,
                feature,
                ..
            } => {
                let col = set.get(layer).unwrap().w_enc.narrow(1, feature, 1).unwrap();
                let x = inputs[&layer].get(position).unwrap().unsqueeze(0).unwrap();
                x.matmul(&col)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0]
            }
            NodeKind::Logit { token, .. } => logits[token as usize] - mean,
            _ => f32::NAN,
        })
        .collect()
}

#[test]
fn frozen_replacement_model_reproduces_the_real_logits() {
    for family in ["llama", "qwen2", "gpt2", "gemma2"] {
        let (model, set, tokens) = setup(family);
        let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000).unwrap();
        let out = intervene(
            &model.transformer,
            &set,
            &state,
            &[],
            InterventionMode::Frozen,
            5,
        )
        .unwrap();
        let worst = out
            .probs_before
            .iter()
            .zip(&out.probs_after)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-6,
            "{family}: frozen replacement model moved a probability by {worst}"
        );
        assert!(out.kl.abs() < 1e-6, "{family}: KL {}", out.kl);
        assert!(!state.features.is_empty(), "{family}: no active features");
        // the real model, unedited through the transcoders, is the real model
        let live = intervene(
            &model.transformer,
            &set,
            &state,
            &[],
            InterventionMode::Live,
            5,
        )
        .unwrap();
        assert!(live.kl.abs() < 1e-6);
    }
}

#[test]
fn every_edge_is_the_finite_difference_of_its_source() {
    for family in ["llama", "qwen2", "gpt2"] {
        let (model, set, tokens) = setup(family);
        let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000).unwrap();
        let opts = AttributionOptions {
            batch: 7,
            ..Default::default()
        };
        let g = attribute(&model.transformer, &set, &state, &opts).unwrap();
        assert!(g.n_logits >= 1);
        let all = linear_values(&model, &set, &state, &g, &[]);
        let every_source: Vec<usize> = (0..g.logit_index(0)).collect();
        let none = linear_values(&model, &set, &state, &g, &every_source);
        let targets: Vec<usize> = (0..g.n_features).chain(g.logit_index(0)..g.n()).collect();
        let scale = targets.iter().map(|&t| all[t].abs()).fold(1f32, f32::max);
        // the edges into each target add up to what the sources contribute to it
        for &t in &targets {
            let sum: f32 = (0..g.n()).map(|s| g.edge(t, s)).sum();
            let want = all[t] - none[t];
            assert!(
                (sum - want).abs() < 2e-4 * scale,
                "{family}: target {t}: edges sum to {sum}, sources contribute {want}"
            );
        }
        // single sources: a sample of features, errors and tokens
        let mut sources: Vec<usize> = (0..g.n_features).step_by(5).collect();
        sources.extend([
            g.error_index(0, 3),
            g.error_index(1, 7),
            g.token_index(0),
            g.token_index(4),
        ]);
        let mut checked = 0;
        for &src in &sources {
            let without = linear_values(&model, &set, &state, &g, &[src]);
            for &t in &targets {
                let fd = all[t] - without[t];
                let e = g.edge(t, src);
                assert!(
                    (fd - e).abs() < 2e-4 * scale,
                    "{family}: edge {src}→{t} is {e}, finite difference {fd}"
                );
                checked += (e != 0.0) as usize;
            }
        }
        assert!(
            checked > 20,
            "{family}: only {checked} non-zero edges checked"
        );
        // the logit nodes' values are the model's de-meaned logits
        for i in 0..g.n_logits {
            let NodeKind::Logit { value, .. } = g.nodes[g.logit_index(i)].kind else {
                panic!()
            };
            assert!((value - all[g.logit_index(i)]).abs() < 1e-3 * scale);
        }
    }
}

#[test]
fn pruning_keeps_the_influence_it_promises() {
    let (model, set, tokens) = setup("llama");
    let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000).unwrap();
    let g = attribute(
        &model.transformer,
        &set,
        &state,
        &AttributionOptions::default(),
    )
    .unwrap();
    for node_threshold in [0.5f32, 0.8, 0.95] {
        let p = prune(
            &g,
            PruneOptions {
                node_threshold,
                edge_threshold: 0.98,
            },
        )
        .unwrap();
        assert!(
            p.kept_influence >= node_threshold,
            "kept {} < {node_threshold}",
            p.kept_influence
        );
        let kept_features = (0..g.n_features).filter(|&i| p.node_mask[i]).count();
        assert!(
            kept_features > 0 && kept_features < g.n_features,
            "kept {kept_features} of {}",
            g.n_features
        );
        for i in g.token_index(0)..g.n() {
            assert!(p.node_mask[i], "tokens and logits are always kept");
        }
        for &(t, s, w) in &p.edges {
            assert!(p.node_mask[t] && p.node_mask[s] && w != 0.0);
        }
        assert!((0.0..=1.0).contains(&p.replacement_score));
        assert!((0.0..=1.0).contains(&p.completeness_score));
    }
    // a looser threshold keeps no more nodes than a stricter one
    let count = |t: f32| {
        prune(
            &g,
            PruneOptions {
                node_threshold: t,
                edge_threshold: 1.0,
            },
        )
        .unwrap()
        .node_mask
        .iter()
        .filter(|&&k| k)
        .count()
    };
    assert!(count(0.5) <= count(0.9));
    assert!(prune(
        &g,
        PruneOptions {
            node_threshold: 1.5,
            edge_threshold: 0.9
        }
    )
    .is_err());
}

#[test]
fn ablating_a_feature_moves_the_output() {
    let (model, set, tokens) = setup("llama");
    let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000).unwrap();
    // the most active feature at the last position of layer 0
    let f = state
        .features
        .iter()
        .filter(|f| f.layer == 0 && f.position == tokens.len() - 1)
        .max_by(|a, b| a.activation.total_cmp(&b.activation))
        .copied()
        .unwrap();
    let edit = FeatureEdit {
        layer: 0,
        position: f.position,
        feature: f.feature,
        value: EditValue::Scale(0.0),
    };
    for mode in [InterventionMode::Frozen, InterventionMode::Live] {
        let out = intervene(&model.transformer, &set, &state, &[edit], mode, 5).unwrap();
        assert!(out.kl > 1e-6, "{mode:?}: KL {}", out.kl);
        assert_eq!(out.edits[0].clean_activation, f.activation);
        assert_eq!(out.edits[0].new_activation, 0.0);
    }
    let bad = [
        FeatureEdit {
            position: 99,
            ..edit
        },
        FeatureEdit {
            feature: 48,
            ..edit
        },
        FeatureEdit { layer: 5, ..edit },
        FeatureEdit {
            value: EditValue::Set(f32::NAN),
            ..edit
        },
    ];
    for b in bad {
        let e = intervene(
            &model.transformer,
            &set,
            &state,
            &[b],
            InterventionMode::Live,
            5,
        )
        .unwrap_err();
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn a_transcoder_set_that_does_not_fit_the_model_is_refused() {
    let model = load_model(&tiny_dir("llama")).unwrap();
    let cfg = model.config().clone();
    let d = cfg.d_model;
    let wide = transcoder(0, d + 8, false, 1);
    let e = TranscoderSet::from_dictionaries(vec![Some(wide), None], &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("d_model"), "{e}");
    let mut wrong_hook = transcoder(0, d, false, 1);
    wrong_hook.hook_name = Some("blocks.0.hook_resid_pre".into());
    let e = TranscoderSet::from_dictionaries(vec![Some(wrong_hook), None], &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ln2.hook_normalized"), "{e}");
    let e = TranscoderSet::from_dictionaries(vec![None, None, None], &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("3 layer slots"), "{e}");

    // on disk: a layer the model does not have, and a folder that is not a set
    let dir = tempfile::tempdir().unwrap();
    glassbox_sae::format::save_saelens(&transcoder(0, d, false, 3), &dir.path().join("layer_07"))
        .unwrap();
    std::fs::write(
        dir.path().join("index.json"),
        r#"{"layers": [{"layer": 7, "path": "layer_07"}]}"#,
    )
    .unwrap();
    let e = TranscoderSet::load(dir.path(), &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layer 7") && e.contains("0..2"), "{e}");
    let e = TranscoderSet::load(&dir.path().join("layer_07"), &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a transcoder set"), "{e}");

    // a target token outside the vocabulary
    let (model, set, tokens) = setup("llama");
    let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000).unwrap();
    let opts = AttributionOptions {
        targets: vec![100_000],
        ..Default::default()
    };
    let e = attribute(&model.transformer, &set, &state, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocabulary"), "{e}");
}
