//! The hook points TransformerLens users reach for, against TransformerLens 3.9 itself
//! (`fixtures/tl/`, unprocessed weights), and the properties TL documents for them.

use glassbox_fixtures::*;
use glassbox_model::{load_model, Batch, HookFilter, Run};

const TL_HOOKS: &[&str] = &[
    "attn.hook_result",
    "attn.hook_z",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_mlp_in",
    "hook_attn_out",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
];

fn check_against_tl(family: &str) {
    let model = load_model(&tiny_dir(family)).unwrap();
    let tl = load_reference(&fixtures().join(format!("tl/tiny-{family}/reference.safetensors")));
    let batch = Batch::from_tensor(&tl["input_ids"]).unwrap();
    let out = model
        .transformer
        .run(&batch, &mut Run::new().cache(HookFilter::all()))
        .unwrap();
    let err = rel_err(out.logits.as_ref().unwrap(), &tl["logits"]);
    assert!(err < 1e-4, "{family}: logits differ from TL by {err:.2e}");
    let mut checked = 0;
    for (key, want) in &tl {
        if !key.starts_with("blocks.") || !TL_HOOKS.iter().any(|h| key.ends_with(h)) {
            continue;
        }
        let got = out
            .cache
            .get(key)
            .unwrap_or_else(|| panic!("{family}: glassbox has no hook `{key}`"));
        let err = rel_err(got, want);
        assert!(err < 1e-4, "{family}: {key} differs from TL by {err:.2e}");
        checked += 1;
    }
    assert!(
        checked >= 12,
        "{family}: only {checked} TL tensors compared"
    );
}

#[test]
fn gpt2_hooks_match_transformer_lens() {
    check_against_tl("gpt2");
}

#[test]
fn llama_gqa_hooks_match_transformer_lens() {
    check_against_tl("llama");
}

#[test]
fn head_results_sum_to_the_attention_output() {
    for family in ["gpt2", "llama", "qwen2", "gemma3", "olmo2"] {
        let model = load_model(&tiny_dir(family)).unwrap();
        let c = model.config();
        let batch = Batch::new(vec![vec![5, 9, 2, 7, 1, 3]]);
        let with_results = model
            .transformer
            .run(
                &batch,
                &mut Run::new().cache(HookFilter::parse("blocks.*.attn.hook_result", c).unwrap()),
            )
            .unwrap();
        // the reference pass does not hook hook_result: its output comes from one GEMM
        let mut wanted = "blocks.*.hook_attn_out".to_string();
        if c.post_sublayer_norms {
            wanted.push_str(",blocks.*.ln1_post.hook_scale");
        }
        let plain = model
            .transformer
            .run(
                &batch,
                &mut Run::new().cache(HookFilter::parse(&wanted, c).unwrap()),
            )
            .unwrap();
        for l in 0..c.n_layers {
            let result = &with_results.cache[&format!("blocks.{l}.attn.hook_result")];
            assert_eq!(result.dims(), &[1, 6, c.n_heads, c.d_model]);
            let blk = model.transformer.weights.blocks[l].get().unwrap();
            let mut sum = result.sum(2).unwrap();
            if let Some(b) = &blk.o.bias {
                sum = sum.broadcast_add(b).unwrap();
            }
            // where a post-norm follows attention, hook_attn_out is after it
            if let Some(post) = &blk.ln1_post {
                let scale = &plain.cache[&format!("blocks.{l}.ln1_post.hook_scale")];
                sum = sum
                    .broadcast_div(scale)
                    .unwrap()
                    .broadcast_mul(&post.weight)
                    .unwrap();
            }
            let attn_out = &plain.cache[&format!("blocks.{l}.hook_attn_out")];
            let err = rel_err(&sum, attn_out);
            assert!(
                err < 1e-5,
                "{family} layer {l}: sum over heads != attn_out ({err:.2e})"
            );
        }
    }
}

#[test]
fn patching_one_heads_query_input_changes_only_that_heads_pattern() {
    for family in ["llama", "gpt2"] {
        let model = load_model(&tiny_dir(family)).unwrap();
        let c = model.config();
        let batch = Batch::new(vec![vec![5, 9, 2, 7, 1, 3, 8, 4]]);
        let patterns = HookFilter::parse("blocks.0.attn.hook_pattern", c).unwrap();
        let clean = model
            .transformer
            .run(&batch, &mut Run::new().cache(patterns.clone()))
            .unwrap();
        let head = 1;
        let patched = model
            .transformer
            .run(
                &batch,
                &mut Run::new().cache(patterns).hook(
                    HookFilter::parse("blocks.0.hook_q_input", c).unwrap(),
                    |_, x| {
                        // replace head 1's input with a reversed sequence's
                        let (b, s, h, d) = x.dims4()?;
                        let rev: Vec<u32> = (0..s as u32).rev().collect();
                        let idx = candle_core::Tensor::new(rev.as_slice(), x.device())?;
                        let flipped = x.index_select(&idx, 1)?;
                        let mask: Vec<f32> = (0..h).map(|i| (i == head) as u8 as f32).collect();
                        let m = candle_core::Tensor::new(mask.as_slice(), x.device())?
                            .reshape((1, 1, h, 1))?;
                        let keep = (1.0 - &m)?;
                        let _ = (b, d);
                        Ok((x.broadcast_mul(&keep)? + flipped.broadcast_mul(&m)?)?)
                    },
                ),
            )
            .unwrap();
        let a = &clean.cache["blocks.0.attn.hook_pattern"];
        let b = &patched.cache["blocks.0.attn.hook_pattern"];
        for h in 0..c.n_heads {
            let diff = max_abs_diff(&a.narrow(1, h, 1).unwrap(), &b.narrow(1, h, 1).unwrap());
            if h == head {
                assert!(
                    diff > 1e-3,
                    "{family}: patched head {h} did not change ({diff:.2e})"
                );
            } else {
                assert!(diff < 1e-6, "{family}: head {h} changed by {diff:.2e}");
            }
        }
    }
}
