//! One rule for BOS, HF's `tokenizer(text)`: a HF directory asks for it in
//! `tokenizer_config.json` (`add_bos_token`), else through `tokenizer.json`'s
//! post-processor (Llama 3); a GGUF through `tokenizer.ggml.add_bos_token`.

use glassbox_fixtures::{default_gguf, gemma3_gguf, tiny_dir};
use glassbox_model::load_model;
use std::path::Path;

/// A word-level tokenizer over the tiny fixture's first ids: `<s>` is id 1 (the
/// config's `bos_token_id`), optionally with a post-processor that puts it first.
fn tokenizer_json(bos_post_processor: bool) -> serde_json::Value {
    let post = if bos_post_processor {
        serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        })
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 1, "content": "<s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "the": 2, "cat": 3},
                  "unk_token": "<unk>"}
    })
}

fn model_dir(dir: &Path, post: bool, add_bos_token: Option<bool>) {
    let tiny = tiny_dir("llama");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(post).to_string()).unwrap();
    if let Some(b) = add_bos_token {
        let cfg = serde_json::json!({"add_bos_token": b, "bos_token": "<s>"});
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    }
}

#[test]
fn a_hf_directory_follows_its_tokenizer_config_then_its_post_processor() {
    let tmp = tempfile::tempdir().unwrap();
    // (post-processor adds BOS, tokenizer_config's add_bos_token) → BOS first?
    for (post, flag, want) in [
        (false, None, false),
        (true, None, true),
        (true, Some(false), false),
        (false, Some(true), true),
    ] {
        let dir = tmp.path().join(format!("m-{post}-{flag:?}"));
        model_dir(&dir, post, flag);
        let model = load_model(&dir).unwrap();
        let tok = model.tokenizer().unwrap();
        assert_eq!(
            tok.add_bos_token, want,
            "post {post}, add_bos_token {flag:?}"
        );
        let ids = tok.encode_prompt("the cat").unwrap();
        let expected: Vec<u32> = if want { vec![1, 2, 3] } else { vec![2, 3] };
        assert_eq!(ids, expected, "post {post}, add_bos_token {flag:?}");
        // a prompt that writes BOS itself gets exactly one
        assert_eq!(tok.encode_prompt("<s> the cat").unwrap(), vec![1, 2, 3]);
        // bare encode never adds anything
        assert_eq!(tok.encode("the cat").unwrap(), vec![2, 3]);
    }
}

#[test]
fn the_packaged_models_follow_their_gguf_flags() {
    let mut checked = 0;
    // SmolLM2's GGUF (byte-level BPE) adds none; Gemma 3's (SentencePiece) adds `<bos>`.
    for (path, want) in [(default_gguf(), false), (gemma3_gguf(), true)] {
        let Some(path) = path else { continue };
        let tok = glassbox_model::TextTokenizer::from_gguf_file(&path).unwrap();
        assert_eq!(tok.add_bos_token, want, "{}", path.display());
        let ids = tok.encode_prompt("The capital of France is").unwrap();
        assert_eq!(ids.first() == tok.bos_token_id.as_ref(), want);
        checked += 1;
    }
    assert!(
        checked > 0 || std::env::var_os("CI").is_none(),
        "no packaged model to check: run `glassbox fetch --model-only`"
    );
}
