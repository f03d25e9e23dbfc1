//! Bad input gets an error that names the problem — never a panic or a wrong answer.
//! Also: a GGUF written from the tiny llama checkpoint loads and matches HF.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use glassbox_fixtures::*;
use glassbox_model::{load_model, Batch, Edit, HookFilter, Intervention, ModelError, Run};
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn err_text<T>(r: Result<T, ModelError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn tiny_llama_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-llama"), dir.path());
    dir
}

#[test]
fn missing_model_path_is_named() {
    let msg = err_text(load_model(Path::new("/nonexistent/model")));
    assert!(
        msg.contains("/nonexistent/model") && msg.contains("no such file"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tiny_llama_copy();
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_text(load_model(dir.path()));
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    std::fs::write(&f, b"garbage").unwrap();
    let msg = err_text(load_model(dir.path()));
    assert!(msg.contains("not a valid safetensors"), "{msg}");
}

#[test]
fn config_and_weights_disagreeing_is_reported() {
    let dir = tiny_llama_copy();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"intermediate_size\": 176", "\"intermediate_size\": 200");
    std::fs::write(&cfg, text).unwrap();
    let msg = err_text(load_model(dir.path()));
    assert!(
        msg.contains("disagree") && msg.contains("[200, 64]") && msg.contains("[176, 64]"),
        "{msg}"
    );
}

#[test]
fn unsupported_architecture_is_named_with_the_supported_list() {
    let dir = tiny_llama_copy();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
    std::fs::write(&cfg, text).unwrap();
    let msg = err_text(load_model(dir.path()));
    assert!(
        msg.contains("mamba") && msg.contains("gpt_neox") && msg.contains("gemma2"),
        "{msg}"
    );
}

#[test]
fn token_ids_out_of_vocabulary_are_refused() {
    let m = load_model(&fixtures().join("tiny-llama")).unwrap();
    let msg = err_text(
        m.transformer
            .run(&Batch::single(&[1, 2, 512]), &mut Run::new()),
    );
    assert!(
        msg.contains("512") && msg.contains("position 2") && msg.contains("512 entries"),
        "{msg}"
    );
}

#[test]
fn prompts_longer_than_the_context_are_refused() {
    let m = load_model(&fixtures().join("tiny-gpt2")).unwrap();
    let long: Vec<u32> = (0..200).map(|i| i % 500).collect();
    let msg = err_text(m.transformer.run(&Batch::single(&long), &mut Run::new()));
    assert!(
        msg.contains("200 tokens") && msg.contains("context is 128"),
        "{msg}"
    );
}

#[test]
fn unknown_hook_names_suggest_the_nearest() {
    let m = load_model(&fixtures().join("tiny-llama")).unwrap();
    let msg = err_text(HookFilter::parse("blocks.0.hook_resid_pst", m.config()));
    assert!(
        msg.contains("blocks.0.hook_resid_pst")
            && msg.contains("did you mean `blocks.0.hook_resid_post`"),
        "{msg}"
    );
    let msg = err_text(HookFilter::parse("blocks.*.mlp.hook_postt", m.config()));
    assert!(msg.contains("did you mean"), "{msg}");
}

#[test]
fn replacement_of_the_wrong_shape_is_refused() {
    let m = load_model(&fixtures().join("tiny-llama")).unwrap();
    let bad = Tensor::zeros((1, 3, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let f = HookFilter::parse("blocks.0.hook_resid_post", m.config()).unwrap();
    let msg = err_text(m.transformer.run(
        &Batch::single(&[1, 2, 3, 4]),
        &mut Run::new().intervene(f.clone(), Intervention::new(Edit::Replace(bad))),
    ));
    assert!(
        msg.contains("blocks.0.hook_resid_post")
            && msg.contains("[1, 3, 64]")
            && msg.contains("[1, 4, 64]"),
        "{msg}"
    );
    let msg = err_text(m.transformer.run(
        &Batch::single(&[1, 2, 3, 4]),
        &mut Run::new().hook(f, |_, x| Ok(x.narrow(1, 0, 2)?)),
    ));
    assert!(msg.contains("hook returned shape"), "{msg}");
    let f = HookFilter::parse("blocks.0.hook_resid_post", m.config()).unwrap();
    let iv = Intervention::new(Edit::ZeroAblate).at_heads(vec![0]);
    let msg = err_text(m.transformer.run(
        &Batch::single(&[1, 2, 3, 4]),
        &mut Run::new().intervene(f, iv),
    ));
    assert!(msg.contains("no head axis"), "{msg}");
}

/// Writes the tiny llama checkpoint as a GGUF (f32 tensors, llama.cpp's rotary row order).
fn write_tiny_gguf(path: &Path) {
    let t = candle_core::safetensors::load(
        fixtures().join("tiny-llama/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let permute = |w: &Tensor, heads: usize| {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            t["model.embed_tokens.weight"].clone(),
        ),
        ("output_norm.weight".into(), t["model.norm.weight"].clone()),
    ];
    for l in 0..2 {
        let g = |n: &str| t[&format!("model.layers.{l}.{n}")].clone();
        tensors.extend([
            (
                format!("blk.{l}.attn_norm.weight"),
                g("input_layernorm.weight"),
            ),
            (
                format!("blk.{l}.ffn_norm.weight"),
                g("post_attention_layernorm.weight"),
            ),
            (
                format!("blk.{l}.attn_q.weight"),
                permute(&g("self_attn.q_proj.weight"), 4),
            ),
            (
                format!("blk.{l}.attn_k.weight"),
                permute(&g("self_attn.k_proj.weight"), 2),
            ),
            (
                format!("blk.{l}.attn_v.weight"),
                g("self_attn.v_proj.weight"),
            ),
            (
                format!("blk.{l}.attn_output.weight"),
                g("self_attn.o_proj.weight"),
            ),
            (
                format!("blk.{l}.ffn_gate.weight"),
                g("mlp.gate_proj.weight"),
            ),
            (format!("blk.{l}.ffn_up.weight"), g("mlp.up_proj.weight")),
            (
                format!("blk.{l}.ffn_down.weight"),
                g("mlp.down_proj.weight"),
            ),
        ]);
    }
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    use gguf_file::Value as V;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(64)),
        ("llama.block_count", V::U32(2)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.feed_forward_length", V::U32(176)),
        ("llama.context_length", V::U32(128)),
        ("llama.vocab_size", V::U32(512)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
    ];
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

#[test]
fn gguf_of_the_tiny_llama_matches_hf_and_bad_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path);
    let m = load_model(&path).unwrap();
    assert!(m.tokenizer.is_none());
    let r = load_reference(&fixtures().join("tiny-llama/reference.safetensors"));
    let out = m
        .transformer
        .run(
            &Batch::from_tensor(&r["input_ids"]).unwrap(),
            &mut Run::new()
                .cache(HookFilter::parse("blocks.*.attn.hook_pattern", m.config()).unwrap()),
        )
        .unwrap();
    assert!(rel_err(out.logits().unwrap(), &r["logits"]) < 1e-4);
    assert!(
        rel_err(
            &out.cache["blocks.1.attn.hook_pattern"],
            &r["blocks.1.attn.hook_pattern"]
        ) < 1e-4
    );

    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = err_text(load_model(&truncated));
    assert!(
        msg.contains("truncated.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    let wrong_magic = dir.path().join("magic.gguf");
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"NOPE");
    std::fs::write(&wrong_magic, &b).unwrap();
    let msg = err_text(load_model(&wrong_magic));
    assert!(
        msg.contains("magic.gguf") && msg.contains("not a valid GGUF"),
        "{msg}"
    );
    let not_model = dir.path().join("weights.bin");
    std::fs::write(&not_model, b"x").unwrap();
    let msg = err_text(load_model(&not_model));
    assert!(msg.contains("expected a HF model directory"), "{msg}");
}

fn write_gguf(path: &Path, metadata: &[(&str, gguf_file::Value)]) {
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let meta: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn unsupported_gguf_architecture_is_named_with_the_supported_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    write_gguf(
        &path,
        &[(
            "general.architecture",
            gguf_file::Value::String("mamba".into()),
        )],
    );
    let msg = err_text(load_model(&path));
    assert!(
        msg.contains("mamba") && msg.contains("gemma3") && msg.contains("llama"),
        "{msg}"
    );
}

#[test]
fn gguf_layer_count_beyond_the_file_is_refused_without_allocating() {
    use gguf_file::Value as V;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.gguf");
    write_gguf(
        &path,
        &[
            ("general.architecture", V::String("llama".into())),
            ("llama.embedding_length", V::U32(32)),
            ("llama.attention.head_count", V::U32(4)),
            ("llama.block_count", V::U64(u64::MAX / 2)),
            ("llama.feed_forward_length", V::U32(64)),
            ("llama.vocab_size", V::U32(4)),
        ],
    );
    let msg = err_text(load_model(&path));
    assert!(msg.contains("block_count"), "{msg}");
    // head_count = 0 is refused, not divided by
    let path = dir.path().join("zero.gguf");
    write_gguf(
        &path,
        &[
            ("general.architecture", V::String("llama".into())),
            ("llama.embedding_length", V::U32(32)),
            ("llama.attention.head_count", V::U32(0)),
            ("llama.block_count", V::U32(1)),
            ("llama.feed_forward_length", V::U32(64)),
        ],
    );
    let msg = err_text(load_model(&path));
    assert!(msg.contains("head_count"), "{msg}");
}

/// Rewrites one tensor of a copied fixture's model.safetensors.
fn with_tensor(family: &str, name: &str, edit: impl FnOnce(Tensor) -> Tensor) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_dir(family), dir.path());
    let f = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
    let t = tensors.remove(name).unwrap();
    tensors.insert(name.to_string(), edit(t));
    candle_core::safetensors::save(&tensors, &f).unwrap();
    dir
}

#[test]
fn fused_tensor_of_the_wrong_width_is_named() {
    let dir = with_tensor("phi3", "model.layers.0.self_attn.qkv_proj.weight", |t| {
        t.narrow(0, 0, t.dim(0).unwrap() - 16).unwrap()
    });
    let msg = err_text(load_model(dir.path()));
    assert!(msg.contains("qkv_proj") && msg.contains("shape"), "{msg}");
    let dir = with_tensor("phi3", "model.layers.1.mlp.gate_up_proj.weight", |t| {
        t.narrow(0, 0, t.dim(0).unwrap() / 2).unwrap()
    });
    let msg = err_text(load_model(dir.path()));
    assert!(msg.contains("gate_up_proj"), "{msg}");
}

#[test]
fn bf16_data_under_a_header_that_says_f32_is_refused() {
    // A header claiming F32 for data written as bf16 (half the bytes): refused by
    // name instead of read as garbage.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_dir("llama-bf16"), dir.path());
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(header).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    assert_eq!(json[name]["dtype"], "BF16");
    json[name]["dtype"] = "F32".into();
    let mut new_header = json.to_string().into_bytes();
    // keep the header length (pad with spaces, as safetensors allows)
    assert!(new_header.len() <= n);
    new_header.resize(n, b' ');
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&f, out).unwrap();
    let msg = err_text(load_model(dir.path()));
    assert!(
        msg.contains(name) && msg.contains("F32") && msg.contains("dtype"),
        "{msg}"
    );
}

/// `LinearOp` is public: a bias of the wrong length is an error, never a GEMM that reads
/// past the bias into uninitialised memory.
#[test]
fn a_linear_bias_of_the_wrong_length_is_refused() {
    use candle_core::{Device, Tensor};
    use glassbox_model::kernels::LinearOp;
    use std::sync::Arc;
    let x = Tensor::ones((5, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    for len in [0, 3, 5, 1000] {
        let op = LinearOp::new(Some(Arc::new(vec![1.0; len])));
        let e = x.apply_op2_no_bwd(&w, &op).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("bias of length {len} for 4 outputs")),
            "{e}"
        );
    }
    let ok = x
        .apply_op2_no_bwd(&w, &LinearOp::new(Some(Arc::new(vec![1.0; 4]))))
        .unwrap();
    assert_eq!(ok.to_vec2::<f32>().unwrap(), vec![vec![3.0f32; 4]; 5]);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_not_answered_with_nothing() {
    let m = load_model(&tiny_dir("llama")).unwrap();
    let n_ctx = m.config().n_ctx;
    let prompt: Vec<u32> = (0..n_ctx as u32 + 1).map(|i| 1 + i % 100).collect();
    let msg = err_text(m.transformer.generate(
        &prompt,
        &glassbox_model::SamplingOptions::default(),
        &mut Run::new(),
        |_| {},
    ));
    assert!(
        msg.contains(&format!("{} tokens", n_ctx + 1)) && msg.contains("shorten"),
        "{msg}"
    );
    // a prompt that fills the context exactly still gets an answer: one token
    let fits = m
        .transformer
        .generate(
            &prompt[..n_ctx],
            &Default::default(),
            &mut Run::new(),
            |_| {},
        )
        .unwrap();
    assert_eq!(fits.len(), 1);
}
