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
