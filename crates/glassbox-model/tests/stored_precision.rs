//! Weights stay in their stored precision and are expanded one layer at a time; the
//! results are identical (bit for bit) to keeping every layer expanded.

use glassbox_fixtures::*;
use glassbox_model::{load_model_with, Batch, HookFilter, LoadOptions, Run};
use std::path::Path;

fn per_layer() -> LoadOptions {
    LoadOptions {
        keep_expanded_bytes: 0,
    }
}

fn same_run(path: &Path, tokens: Vec<Vec<u32>>) {
    let kept = load_model_with(path, &LoadOptions::default()).unwrap();
    let lazy = load_model_with(path, &per_layer()).unwrap();
    assert!(
        lazy.transformer
            .weights
            .blocks
            .iter()
            .all(|b| b.expands_per_pass()),
        "{}: blocks are not stored",
        path.display()
    );
    assert!(!kept
        .transformer
        .weights
        .blocks
        .iter()
        .any(|b| b.expands_per_pass()));
    let batch = Batch::new(tokens);
    let filter = HookFilter::parse("blocks.*.hook_resid_post", kept.config()).unwrap();
    let a = kept
        .transformer
        .run(&batch, &mut Run::new().cache(filter.clone()))
        .unwrap();
    let b = lazy
        .transformer
        .run(&batch, &mut Run::new().cache(filter))
        .unwrap();
    assert_eq!(
        max_abs_diff(a.logits.as_ref().unwrap(), b.logits.as_ref().unwrap()),
        0.0,
        "{}: logits differ",
        path.display()
    );
    for (k, v) in &a.cache {
        assert_eq!(max_abs_diff(v, &b.cache[k]), 0.0, "{k} differs");
    }
}

#[test]
fn bf16_checkpoint_expanded_per_layer_matches_kept_expanded() {
    let dir = tiny_dir("llama-bf16");
    same_run(&dir, vec![vec![1, 5, 9, 200, 3, 7]; 2]);
    // the stored matrices really are bf16 (half the bytes of f32)
    let m = load_model_with(&dir, &per_layer()).unwrap();
    assert_eq!(
        m.transformer.weights.embed.dense().unwrap().dtype(),
        candle_core::DType::BF16
    );
}

#[test]
fn gguf_expanded_per_layer_matches_kept_expanded() {
    let Some(gguf) = default_gguf() else { return };
    same_run(&gguf, vec![vec![1, 504, 3458, 282, 4649, 314]]);
}

#[test]
fn stop_at_layer_expands_nothing_past_it() {
    for opts in [per_layer(), LoadOptions::default()] {
        let m = load_model_with(&tiny_dir("llama-bf16"), &opts).unwrap();
        let batch = Batch::new(vec![vec![1, 5, 9]]);
        let blocks = &m.transformer.weights.blocks;
        m.transformer
            .run(&batch, &mut Run::new().stop_at_layer(1))
            .unwrap();
        assert_eq!(blocks[0].times_expanded(), 1);
        assert_eq!(blocks[1].times_expanded(), 0, "layer 1 was expanded");
        m.transformer.run(&batch, &mut Run::new()).unwrap();
        let kept = opts.keep_expanded_bytes > 0;
        // kept: expanded once and reused; per layer: expanded on every pass
        assert_eq!(blocks[0].times_expanded(), if kept { 1 } else { 2 });
        assert_eq!(blocks[1].times_expanded(), 1);
    }
}
