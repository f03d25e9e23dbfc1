//! SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized) against HF transformers on the same
//! weights: exact token ids, logits within 1e-3 of max |logit|, identical top-10.

use glassbox_fixtures::*;
use glassbox_model::{load_model, Batch, HookFilter, Run};

#[test]
fn smollm2_gguf_matches_hf() {
    let Some(gguf) = default_gguf() else { return };
    let model = load_model(&gguf).unwrap();
    let tok = model.tokenizer().unwrap();
    let refs = load_reference(&fixtures().join("smollm2/smollm2_reference.safetensors"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/smollm2_reference.json")).unwrap(),
    )
    .unwrap();
    let prompts = json["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 4);
    for (i, p) in prompts.iter().enumerate() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "token ids differ for {text:?}");

        let filter = HookFilter::parse(
            "blocks.0.hook_resid_pre,blocks.10.hook_resid_pre,blocks.29.hook_resid_pre",
            model.config(),
        )
        .unwrap();
        let out = model
            .transformer
            .run(&Batch::single(&ids), &mut Run::new().cache(filter))
            .unwrap();
        let logits = out.logits.as_ref().unwrap().squeeze(0).unwrap();
        let err = rel_err(&logits, &refs[&format!("prompt{i}.logits")]);
        assert!(
            err < 1e-3,
            "prompt {i}: logits differ by {err:.2e} relative to max"
        );
        for l in [0, 10, 29] {
            let name = format!("blocks.{l}.hook_resid_pre");
            let got = out.cache[&name].squeeze(0).unwrap();
            let err = rel_err(&got, &refs[&format!("prompt{i}.{name}")]);
            assert!(err < 1e-3, "prompt {i}: {name} differs by {err:.2e}");
        }
        let last: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let want_top: Vec<usize> = p["top10_next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            &order[..10],
            want_top.as_slice(),
            "prompt {i}: top-10 differs"
        );
        for t in p["top10_next"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap() as usize;
            assert!((last[id] - t["logit"].as_f64().unwrap() as f32).abs() < 2e-2);
        }
    }
}

#[test]
fn smollm2_tokenizer_round_trips_and_keeps_special_tokens_whole() {
    let Some(gguf) = default_gguf() else { return };
    let model = load_model(&gguf).unwrap();
    let tok = model.tokenizer().unwrap();
    let text = "In 1776, 13 colonies declared independence.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // the GGUF asks for no BOS: a whole prompt is the text alone, as HF encodes it
    assert!(!tok.add_bos_token);
    assert_eq!(tok.encode_prompt(text).unwrap(), ids);
    // digits are split one by one
    let digits: Vec<String> = tok
        .encode("1776")
        .unwrap()
        .iter()
        .map(|&i| tok.token_text(i))
        .collect();
    assert_eq!(digits, ["1", "7", "7", "6"]);
    let chat = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(chat[0], tok.token_to_id("<|im_start|>").unwrap());
}
