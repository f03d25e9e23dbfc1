//! "Never silently wrong": copies of the tiny fixtures with one computation-changing
//! config field changed either match HF transformers (references in
//! `fixtures/variants/`, made by `scripts/make-variant-fixtures.py`) or are refused with
//! a message naming the field. Configs in transformers 5's form load like the hub's.

use glassbox_fixtures::*;
use glassbox_model::{load_model, Batch, HookFilter, Run};
use serde_json::{json, Value};
use std::path::Path;

/// Every reference tensor within 1e-4 of its max, on the hooked and the fused path.
fn check_dir(dir: &Path, what: &str) {
    let model = load_model(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    let reference = load_reference(&dir.join("reference.safetensors"));
    let batch = Batch::from_tensor(&reference["input_ids"]).unwrap();
    let hooked = model
        .transformer
        .run(&batch, &mut Run::new().cache(HookFilter::all()))
        .unwrap();
    let fast = model.transformer.run(&batch, &mut Run::new()).unwrap();
    let mut checked = 0;
    for (key, want) in &reference {
        if key == "input_ids" {
            continue;
        }
        let got = if key == "logits" {
            hooked.logits.as_ref().unwrap()
        } else {
            &hooked.cache[key]
        };
        let err = rel_err(got, want);
        assert!(err < 1e-4, "{what}: {key} differs from HF by {err:.2e}");
        checked += 1;
    }
    let err = rel_err(fast.logits.as_ref().unwrap(), &reference["logits"]);
    assert!(err < 1e-4, "{what}: fused-path logits differ by {err:.2e}");
    assert!(checked >= 3, "{what}: only {checked} tensors compared");
}

/// A copy of fixture `tiny-NAME` with its config replaced by `edit(config)`.
fn variant(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let src = tiny_dir(name);
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "reference.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    tmp
}

fn set(name: &str, key: &str, value: Value) -> tempfile::TempDir {
    let key = key.to_string();
    variant(name, move |c| c[key] = value)
}

fn refused(dir: &Path, field: &str) {
    let err = match load_model(dir) {
        Ok(_) => panic!("a config with `{field}` changed loaded; it must match HF or be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(field),
        "the refusal must name `{field}`: {err}"
    );
}

#[test]
fn variants_made_by_hf_match() {
    let dir = fixtures().join("variants");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check_dir(&path, &path.file_name().unwrap().to_string_lossy());
        n += 1;
    }
    assert!(n >= 7, "only {n} variants in {}", dir.display());
}

#[test]
fn transformers_5_configs_load_like_the_hubs() {
    for name in [
        "llama3",
        "llama-bf16",
        "qwen3",
        "gemma3",
        "mistral",
        "phi3",
        "olmo2",
    ] {
        let v5: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("v5-configs/tiny-{name}.json")))
                .unwrap(),
        )
        .unwrap();
        assert!(
            v5.get("rope_parameters").is_some() && v5.get("rope_theta").is_none(),
            "{name}: not the transformers 5 form"
        );
        let dir = variant(name, |c| *c = v5);
        check_dir(dir.path(), &format!("{name} (transformers 5 config)"));
    }
}

#[test]
fn gemma3_sliding_window_pattern_stands_in_for_layer_types() {
    // layers sliding, sliding, full == every third layer global
    let dir = variant("gemma3", |c| {
        c.as_object_mut().unwrap().remove("layer_types");
        c.as_object_mut().unwrap().remove("_sliding_window_pattern");
        c["sliding_window_pattern"] = json!(3);
    });
    check_dir(dir.path(), "gemma3 with sliding_window_pattern");
}

#[test]
fn computation_changing_fields_without_an_implementation_are_refused() {
    let rope = |t: &str| json!({"rope_type": t, "factor": 2.0});
    let cases: Vec<(tempfile::TempDir, &str)> = vec![
        (set("llama3", "rope_scaling", rope("yarn")), "yarn"),
        (set("llama", "rope_scaling", rope("dynamic")), "dynamic"),
        (set("phi3", "rope_scaling", rope("longrope")), "longrope"),
        (
            variant("llama3", |c| {
                c["rope_parameters"] =
                    json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0});
                c.as_object_mut().unwrap().remove("rope_scaling");
            }),
            "yarn",
        ),
        (set("llama", "sliding_window", json!(8)), "sliding_window"),
        (set("olmo2", "sliding_window", json!(8)), "sliding_window"),
        (
            set("llama", "partial_rotary_factor", json!(0.5)),
            "partial_rotary_factor",
        ),
        (
            set("mistral", "attention_bias", json!(true)),
            "attention_bias",
        ),
        (set("qwen3", "mlp_bias", json!(true)), "mlp_bias"),
        (set("llama", "use_qk_norm", json!(true)), "use_qk_norm"),
        (
            set("gemma3", "use_bidirectional_attention", json!(true)),
            "use_bidirectional_attention",
        ),
        (
            set("gemma3", "attn_logit_softcapping", json!(30.0)),
            "attn_logit_softcapping",
        ),
        (
            set("qwen3", "attn_logit_softcapping", json!(30.0)),
            "attn_logit_softcapping",
        ),
        (
            set("mistral", "final_logit_softcapping", json!(30.0)),
            "final_logit_softcapping",
        ),
        (set("llama", "hidden_act", json!("gelu_10")), "gelu_10"),
        (
            set(
                "mistral",
                "layer_types",
                json!(["chunked_attention", "full_attention"]),
            ),
            "layer_types",
        ),
        (
            set(
                "llama",
                "layer_types",
                json!(["sliding_attention", "full_attention"]),
            ),
            "layer_types",
        ),
        (
            set("mistral", "tie_word_embeddings", json!(true)),
            "tie_word_embeddings",
        ),
        (
            set("llama-bf16", "tie_word_embeddings", json!(true)),
            "tie_word_embeddings",
        ),
        // the weights have no bias for attention_bias = true to read
        (set("llama", "attention_bias", json!(true)), "bias"),
    ];
    for (dir, field) in &cases {
        refused(dir.path(), field);
    }
}

#[test]
fn tensors_the_config_does_not_use_are_refused() {
    // attention_bias = false on a checkpoint that has the biases: HF would drop them.
    let src = fixtures().join("variants/llama-attention-bias");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["attention_bias"] = json!(false);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    refused(tmp.path(), "self_attn.o_proj.bias");
}

#[test]
fn untied_checkpoint_without_lm_head_names_it() {
    let dir = set("llama", "tie_word_embeddings", json!(false));
    refused(dir.path(), "lm_head.weight");
}
