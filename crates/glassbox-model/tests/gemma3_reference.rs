//! Gemma-3-270M (Q4_K_M GGUF, dequantized) against HF transformers on the same weights:
//! last-position logits within 1e-3 of max |logit|, identical top-10, residuals within
//! 1e-3 of their max — including a 758-token prompt past the 512-token sliding window.
//! Token ids come from the reference here; the tokenizer has its own test.

use glassbox_fixtures::*;
use glassbox_model::gguf::load_gguf;
use glassbox_model::{Batch, HookFilter, Run, Transformer};

fn top10(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(10);
    idx
}

#[test]
fn gemma3_270m_gguf_matches_hf() {
    let Some(gguf) = gemma3_gguf() else { return };
    let g = load_gguf(&gguf).unwrap();
    let model = Transformer::new(g.config, g.weights);
    let refs = load_reference(&fixtures().join("gemma3-270m/gemma3_270m_reference.safetensors"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gemma3-270m/gemma3_270m_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let prompts = json["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 4);
    assert!(prompts
        .iter()
        .any(|p| p["n_tokens"].as_u64().unwrap() > 512));
    for (i, p) in prompts.iter().enumerate() {
        let ids: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let filter = HookFilter::parse(
            "blocks.0.hook_resid_pre,blocks.9.hook_resid_pre,blocks.17.hook_resid_pre",
            &model.config,
        )
        .unwrap();
        let out = model
            .run(
                &Batch::single(&ids),
                &mut Run::new()
                    .cache(filter)
                    .logits(glassbox_model::LogitsMode::Last),
            )
            .unwrap();
        let logits = out.logits.as_ref().unwrap().flatten_all().unwrap();
        let want = &refs[&format!("prompt{i}.last_logits")];
        let err = rel_err(&logits, want);
        assert!(
            err < 1e-3,
            "prompt {i}: last logits differ by {err:.2e} of max"
        );
        let got_top = top10(&logits.to_vec1::<f32>().unwrap());
        let want_top: Vec<usize> = p["top10_next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got_top, want_top, "prompt {i}: top-10 differs");
        for l in [0, 9, 17] {
            let name = format!("blocks.{l}.hook_resid_pre");
            let got = out.cache[&name].squeeze(0).unwrap();
            let err = rel_err(&got, &refs[&format!("prompt{i}.{name}")]);
            assert!(err < 1e-3, "prompt {i}: {name} differs by {err:.2e}");
        }
    }
}
