//! Every tensor in the tiny fixtures' `reference.safetensors` (computed by HF
//! transformers) must be reproduced within 1e-4 relative to the tensor's max |value|.

use glassbox_fixtures::*;
use glassbox_model::{load_model, Batch, HookFilter, Run};

fn check_family(name: &str) {
    let dir = fixtures().join(format!("tiny-{name}"));
    let model = load_model(&dir).unwrap();
    let reference = load_reference(&dir.join("reference.safetensors"));
    let batch = Batch::from_tensor(&reference["input_ids"]).unwrap();
    let filter = HookFilter::all();
    let out = model
        .transformer
        .run(&batch, &mut Run::new().cache(filter))
        .unwrap();
    let mut checked = 0;
    for (key, want) in &reference {
        if key == "input_ids" {
            continue;
        }
        let got = if key == "logits" {
            out.logits.as_ref().unwrap()
        } else {
            &out.cache[key]
        };
        let err = rel_err(got, want);
        assert!(
            err < 1e-4,
            "{name}: {key} differs from HF by {err:.2e} (relative to max)"
        );
        checked += 1;
    }
    // No hooks: the fused kernels (rotary split, attention) instead of the composed ops.
    let fast = model.transformer.run(&batch, &mut Run::new()).unwrap();
    let err = rel_err(fast.logits.as_ref().unwrap(), &reference["logits"]);
    assert!(
        err < 1e-4,
        "{name}: logits of the fused path differ from HF by {err:.2e}"
    );
    assert!(
        checked >= 9,
        "{name}: only {checked} reference tensors compared"
    );
}

#[test]
fn tiny_llama_matches_hf() {
    check_family("llama");
}
#[test]
fn tiny_qwen2_matches_hf() {
    check_family("qwen2");
}
#[test]
fn tiny_gemma2_matches_hf() {
    check_family("gemma2");
}
#[test]
fn tiny_gpt2_matches_hf() {
    check_family("gpt2");
}
#[test]
fn tiny_gpt_neox_matches_hf() {
    check_family("gpt_neox");
}

// The second wave: input_ids [2, 24], past the sliding windows of 8.
#[test]
fn tiny_llama3_rope_scaling_matches_hf() {
    check_family("llama3");
}
#[test]
fn tiny_llama_bf16_matches_hf() {
    check_family("llama-bf16");
}
#[test]
fn tiny_qwen3_matches_hf() {
    check_family("qwen3");
}
#[test]
fn tiny_gemma3_matches_hf() {
    check_family("gemma3");
}
#[test]
fn tiny_mistral_sliding_window_matches_hf() {
    check_family("mistral");
}
#[test]
fn tiny_phi3_matches_hf() {
    check_family("phi3");
}
#[test]
fn tiny_olmo2_matches_hf() {
    check_family("olmo2");
}

/// `hook_points` (what `inspect` lists and hook patterns are checked against) names
/// exactly the tensors a fully hooked pass produces, with their shapes.
#[test]
fn hook_inventory_matches_the_forward_pass() {
    for name in [
        "llama",
        "qwen2",
        "gemma2",
        "gpt2",
        "gpt_neox",
        "llama3",
        "llama-bf16",
        "qwen3",
        "gemma3",
        "mistral",
        "phi3",
        "olmo2",
    ] {
        let model = load_model(&fixtures().join(format!("tiny-{name}"))).unwrap();
        let (b, s) = (2usize, 5usize);
        let batch = Batch::new(vec![vec![3, 1, 4, 1, 5]; b]);
        let out = model
            .transformer
            .run(&batch, &mut Run::new().cache(HookFilter::all()))
            .unwrap();
        let listed = glassbox_model::hook_points(model.config());
        let mut names: Vec<&str> = listed.iter().map(|h| h.name.as_str()).collect();
        names.sort();
        let emitted: Vec<&str> = out.cache.keys().map(String::as_str).collect();
        assert_eq!(names, emitted, "{name}: listed vs emitted hook points");
        for h in &listed {
            let want: Vec<usize> = h
                .shape
                .iter()
                .map(|d| match (d.name, d.size) {
                    ("batch", None) => b,
                    ("pos" | "query_pos" | "key_pos", None) => s,
                    (_, Some(n)) => n,
                    (other, None) => panic!("{name}: shape entry {other} has no size"),
                })
                .collect();
            assert_eq!(
                out.cache[&h.name].dims(),
                want.as_slice(),
                "{name}: {} shape",
                h.name
            );
        }
    }
}
