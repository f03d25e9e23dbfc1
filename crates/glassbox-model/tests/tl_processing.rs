//! TransformerLens weight processing (fold_ln, center_writing_weights, center_unembed,
//! fold_value_biases) against TransformerLens 3.9's processed model (`fixtures/tl/`),
//! and the properties TL documents.

use candle_core::D;
use glassbox_fixtures::*;
use glassbox_model::{apply_tl_processing, load_model, Batch, HookFilter, Run, TlProcessing};

fn log_softmax(x: &candle_core::Tensor) -> candle_core::Tensor {
    candle_nn::ops::log_softmax(x, D::Minus1).unwrap()
}

#[test]
fn processed_models_match_transformer_lens() {
    for family in ["gpt2", "llama"] {
        let mut model = load_model(&tiny_dir(family)).unwrap();
        apply_tl_processing(&mut model.transformer, &TlProcessing::default()).unwrap();
        let tl =
            load_reference(&fixtures().join(format!("tl/tiny-{family}/reference.safetensors")));
        let batch = Batch::from_tensor(&tl["input_ids"]).unwrap();
        let out = model
            .transformer
            .run(&batch, &mut Run::new().cache(HookFilter::all()))
            .unwrap();
        let logits = out.logits.as_ref().unwrap();
        let mut checked = 0;
        for (key, want) in &tl {
            let Some(name) = key.strip_prefix("processed.") else {
                continue;
            };
            let got = match name {
                "logits" => logits.clone(),
                "log_probs" => log_softmax(logits),
                hook => out.cache[hook].clone(),
            };
            let err = rel_err(&got, want);
            assert!(
                err < 1e-4,
                "{family}: processed {name} differs from TL by {err:.2e}"
            );
            checked += 1;
        }
        assert!(
            checked >= 8,
            "{family}: only {checked} processed tensors compared"
        );
    }
}

#[test]
fn processing_keeps_log_probs_and_centres_residuals() {
    for family in [
        "gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "phi3", "gemma3",
    ] {
        let plain = load_model(&tiny_dir(family)).unwrap();
        let mut processed = load_model(&tiny_dir(family)).unwrap();
        apply_tl_processing(&mut processed.transformer, &TlProcessing::default()).unwrap();
        let batch = Batch::new(vec![vec![3, 17, 5, 99, 42, 7, 1, 250]; 2]);
        let filter = HookFilter::parse("blocks.*.hook_resid_pre", plain.config()).unwrap();
        let a = plain
            .transformer
            .run(&batch, &mut Run::new().cache(filter.clone()))
            .unwrap();
        let b = processed
            .transformer
            .run(&batch, &mut Run::new().cache(filter))
            .unwrap();
        let (la, lb) = (
            log_softmax(a.logits.as_ref().unwrap()),
            log_softmax(b.logits.as_ref().unwrap()),
        );
        let err = rel_err(&lb, &la);
        assert!(err < 1e-4, "{family}: log-probs moved by {err:.2e}");
        let centred = plain.config().norm == glassbox_model::NormKind::LayerNorm;
        for (k, ra) in &a.cache {
            let rb = &b.cache[k];
            let want = if centred {
                ra.broadcast_sub(&ra.mean_keepdim(D::Minus1).unwrap())
                    .unwrap()
            } else {
                ra.clone()
            };
            let err = rel_err(rb, &want);
            assert!(
                err < 1e-4,
                "{family}: {k} is not the unprocessed one minus its mean ({err:.2e})"
            );
        }
    }
}

#[test]
fn processing_is_refused_where_it_cannot_apply() {
    for (family, field) in [("gemma2", "final_logit_softcapping"), ("olmo2", "no norms")] {
        let mut m = load_model(&tiny_dir(family)).unwrap();
        let msg = apply_tl_processing(&mut m.transformer, &TlProcessing::default())
            .err()
            .unwrap_or_else(|| panic!("{family}: processing applied"))
            .to_string();
        assert!(msg.contains(field) && msg.contains("--process tl"), "{msg}");
    }
}
