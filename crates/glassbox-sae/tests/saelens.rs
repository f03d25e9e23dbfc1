//! Dictionaries written by SAELens 6.54 encode and decode exactly as SAELens does.

use glassbox_fixtures::{fixtures, load_reference, max_abs_diff, rel_err};
use glassbox_sae::format::{load, save_saelens};

const KINDS: [&str; 4] = ["standard", "topk", "jumprelu", "gated"];

#[test]
fn saelens_fixtures_match_their_reference_outputs() {
    for kind in KINDS {
        let dir = fixtures().join(format!("saelens/sae-{kind}"));
        let d = load(&dir).unwrap();
        assert_eq!(d.architecture.name(), kind);
        assert_eq!(d.hook_name.as_deref(), Some("blocks.0.hook_resid_post"));
        let r = load_reference(&dir.join("reference.safetensors"));
        let f = d.encode(&r["x"]).unwrap();
        let e = max_abs_diff(&f, &r["feature_acts"]);
        assert!(e < 1e-5, "{kind}: feature_acts differ by {e}");
        let out = d.decode(&r["feature_acts"], Some(&r["x"])).unwrap();
        // 256-term sums in a different order: compare relative to the output's scale
        let e = rel_err(&out, &r["sae_out"]);
        assert!(
            e < 1e-5,
            "{kind}: sae_out differs by {e:.2e} of its max |value| ({:.2e} absolute)",
            max_abs_diff(&out, &r["sae_out"])
        );
        if kind == "topk" {
            let l0: Vec<f32> = f
                .gt(0.0)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .sum(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                l0.iter().all(|&n| n <= 8.0),
                "top-8 keeps at most 8 features"
            );
        }
    }
}

#[test]
fn a_saved_dictionary_loads_back_identically() {
    for kind in KINDS {
        let d = load(&fixtures().join(format!("saelens/sae-{kind}"))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_saelens(&d, dir.path()).unwrap();
        let back = load(dir.path()).unwrap();
        let r =
            load_reference(&fixtures().join(format!("saelens/sae-{kind}/reference.safetensors")));
        assert_eq!(
            max_abs_diff(&back.encode(&r["x"]).unwrap(), &d.encode(&r["x"]).unwrap()),
            0.0
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architecture"], kind);
        assert_eq!(cfg["metadata"]["hook_name"], "blocks.0.hook_resid_post");
    }
}

#[test]
fn legacy_configs_and_sparsify_files_load() {
    // a legacy (pre-6) flat config for the topk fixture
    let src = fixtures().join("saelens/sae-topk");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("sae_weights.safetensors"),
        dir.path().join("sae_weights.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cfg.json"),
        r#"{"d_in": 64, "d_sae": 256, "hook_name": "blocks.0.hook_resid_post", "hook_layer": 0, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8}, "apply_b_dec_to_input": true, "normalize_activations": "none"}"#,
    )
    .unwrap();
    let legacy = load(dir.path()).unwrap();
    let r = load_reference(&src.join("reference.safetensors"));
    assert!(max_abs_diff(&legacy.encode(&r["x"]).unwrap(), &r["feature_acts"]) < 1e-5);
    assert_eq!(
        legacy.hook_name.as_deref(),
        Some("blocks.0.hook_resid_post")
    );

    // the same weights in sparsify's layout
    let d = load(&src).unwrap();
    let sp = tempfile::tempdir().unwrap();
    let tensors = std::collections::HashMap::from([
        (
            "encoder.weight".to_string(),
            d.w_enc.t().unwrap().contiguous().unwrap(),
        ),
        ("encoder.bias".to_string(), d.b_enc.clone().unwrap()),
        ("W_dec".to_string(), d.w_dec.clone()),
        ("b_dec".to_string(), d.b_dec.clone()),
    ]);
    candle_core::safetensors::save(&tensors, sp.path().join("sae.safetensors")).unwrap();
    std::fs::write(
        sp.path().join("cfg.json"),
        r#"{"expansion_factor": 4, "normalize_decoder": true, "num_latents": 256, "k": 8}"#,
    )
    .unwrap();
    let s = load(sp.path()).unwrap();
    assert!(max_abs_diff(&s.encode(&r["x"]).unwrap(), &r["feature_acts"]) < 1e-5);
}

#[test]
fn bad_dictionaries_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("no cfg.json"), "{msg}");
    let src = fixtures().join("saelens/sae-standard");
    std::fs::copy(
        src.join("sae_weights.safetensors"),
        dir.path().join("sae_weights.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cfg.json"),
        r#"{"d_in": 64, "d_sae": 512, "architecture": "standard"}"#,
    )
    .unwrap();
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("`W_enc` has shape [64, 256]") && msg.contains("[64, 512]"),
        "{msg}"
    );
    let d = load(&src).unwrap();
    assert!(d
        .decoder_row(256)
        .unwrap_err()
        .to_string()
        .contains("256 features"));
    let x = candle_core::Tensor::zeros((2, 10), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    assert!(d.encode(&x).unwrap_err().to_string().contains("width 64"));
}

#[test]
fn malformed_configs_are_refused_with_reasons() {
    let src = fixtures().join("saelens/sae-topk");
    for (cfg, want) in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (r#"{"d_sae": 256, "architecture": "topk", "k": 8}"#, "d_in"),
        (
            r#"{"d_in": 64, "d_sae": 256, "architecture": "relu6"}"#,
            "relu6",
        ),
        (
            r#"{"d_in": 64, "d_sae": 256, "architecture": "topk"}"#,
            "needs `k`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            src.join("sae_weights.safetensors"),
            dir.path().join("sae_weights.safetensors"),
        )
        .unwrap();
        std::fs::write(dir.path().join("cfg.json"), cfg).unwrap();
        let msg = load(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains(want) && msg.contains("cfg.json"),
            "{cfg}: {msg}"
        );
    }
}

/// A save that fails half-way (a full disk while writing either file) leaves the
/// dictionary already in the folder whole: its weights and its cfg.json, loadable.
#[test]
fn a_failed_save_leaves_the_previous_dictionary_intact() {
    for failing in ["sae_weights.safetensors", "cfg.json"] {
        let dir = tempfile::tempdir().unwrap();
        let original = load(&fixtures().join("saelens/sae-standard")).unwrap();
        glassbox_sae::format::save_saelens(&original, dir.path()).unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let before = (read("sae_weights.safetensors"), read("cfg.json"));
        glassbox_atomic::testing::fail_next_write_of(&dir.path().join(failing));
        let other = load(&fixtures().join("saelens/sae-topk")).unwrap();
        let err = glassbox_sae::format::save_saelens(&other, dir.path()).unwrap_err();
        assert!(err.to_string().contains(failing), "{err}");
        assert_eq!((read("sae_weights.safetensors"), read("cfg.json")), before);
        assert_eq!(
            load(dir.path()).unwrap().architecture,
            original.architecture
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }
}

/// SAELens' TopK `rescale_acts_by_decoder_norm`: pre-activations scaled by the decoder
/// row norms before the top-k, divided out in decode. Loading folds it into the weights;
/// the outputs are those of the run-time definition.
#[test]
fn rescale_acts_by_decoder_norm_is_folded_on_load() {
    use candle_core::{Device, Tensor};
    use glassbox_sae::testing::RandomTranscoder;
    let spec = RandomTranscoder {
        k: Some(3),
        skip: true,
        dec_scale: 2.0,
        ..RandomTranscoder::new(0, 8, 12, 5)
    };
    let d = spec.build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    glassbox_sae::format::save_saelens(&d, dir.path()).unwrap();
    let cfg_path = dir.path().join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rescale_acts_by_decoder_norm"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let loaded = glassbox_sae::format::load(dir.path()).unwrap();

    let x = Tensor::from_vec(
        (0..40)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect::<Vec<_>>(),
        (5, 8),
        &Device::Cpu,
    )
    .unwrap();
    let norms: Vec<f32> = d
        .w_dec
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    let pre: Vec<Vec<f32>> = x
        .matmul(&d.w_enc)
        .unwrap()
        .broadcast_add(d.b_enc.as_ref().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let w_dec: Vec<Vec<f32>> = d.w_dec.to_vec2().unwrap();
    let got_f: Vec<Vec<f32>> = loaded.encode(&x).unwrap().to_vec2().unwrap();
    let got_y: Vec<Vec<f32>> = loaded
        .decode(&loaded.encode(&x).unwrap(), Some(&x))
        .unwrap()
        .to_vec2()
        .unwrap();
    let skip: Vec<Vec<f32>> = x
        .matmul(&d.w_skip.as_ref().unwrap().t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let b_dec: Vec<f32> = d.b_dec.to_vec1().unwrap();
    for r in 0..5 {
        let scaled: Vec<f32> = pre[r].iter().zip(&norms).map(|(p, n)| p * n).collect();
        let mut idx: Vec<usize> = (0..12).collect();
        idx.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
        let mut want_f = [0f32; 12];
        for &i in &idx[..3] {
            want_f[i] = scaled[i].max(0.0);
        }
        for i in 0..12 {
            assert!(
                (got_f[r][i] - want_f[i]).abs() < 1e-4,
                "row {r} feature {i}: {} vs {}",
                got_f[r][i],
                want_f[i]
            );
        }
        for o in 0..8 {
            let want_y: f32 = (0..12)
                .map(|i| want_f[i] / norms[i] * w_dec[i][o])
                .sum::<f32>()
                + b_dec[o]
                + skip[r][o];
            assert!(
                (got_y[r][o] - want_y).abs() < 1e-4,
                "row {r} out {o}: {} vs {want_y}",
                got_y[r][o]
            );
        }
    }
    assert!(
        norms.iter().any(|n| (n - 1.0).abs() > 0.1),
        "the test needs non-unit decoder rows"
    );
}

/// sparsify transcoders (`transcode`, `skip_connection`): the input is not centred on
/// `b_dec`, and `W_skip` adds `x·W_skipᵀ` to the output, as sparsify's forward does.
#[test]
fn sparsify_transcoders_keep_their_input_and_skip() {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let (d_in, d_sae) = (6, 10);
    let enc = Tensor::randn(0f32, 1.0, (d_sae, d_in), &dev).unwrap();
    let bias = Tensor::randn(0f32, 0.1, d_sae, &dev).unwrap();
    let w_dec = Tensor::randn(0f32, 1.0, (d_sae, d_in), &dev).unwrap();
    // a large b_dec: centring the input on it (the autoencoder rule) would show
    let b_dec = Tensor::full(3f32, d_in, &dev).unwrap();
    let w_skip = Tensor::randn(0f32, 1.0, (d_in, d_in), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, d_in), &dev).unwrap();
    let write = |dir: &std::path::Path, cfg: &str, skip: bool| {
        let mut t = std::collections::HashMap::from([
            ("encoder.weight".to_string(), enc.clone()),
            ("encoder.bias".to_string(), bias.clone()),
            ("W_dec".to_string(), w_dec.clone()),
            ("b_dec".to_string(), b_dec.clone()),
        ]);
        if skip {
            t.insert("W_skip".to_string(), w_skip.clone());
        }
        candle_core::safetensors::save(&t, dir.join("sae.safetensors")).unwrap();
        std::fs::write(dir.join("cfg.json"), cfg).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    // k = d_sae: every positive pre-activation is kept, so the expectation is a ReLU
    let cfg =
        format!(r#"{{"k": {d_sae}, "transcode": true, "skip_connection": true, "d_in": {d_in}}}"#);
    write(dir.path(), &cfg, true);
    let d = load(dir.path()).unwrap();
    assert!(d.is_transcoder());
    let want_f = x
        .matmul(&enc.t().unwrap())
        .unwrap()
        .broadcast_add(&bias)
        .unwrap()
        .relu()
        .unwrap();
    let f = d.encode(&x).unwrap();
    assert!(max_abs_diff(&f, &want_f) < 1e-5);
    let want_out = (want_f
        .matmul(&w_dec)
        .unwrap()
        .broadcast_add(&b_dec)
        .unwrap()
        + x.matmul(&w_skip.t().unwrap()).unwrap())
    .unwrap();
    assert!(rel_err(&d.decode(&f, Some(&x)).unwrap(), &want_out) < 1e-5);
    // without the skip: still a transcoder, still uncentred
    let plain = tempfile::tempdir().unwrap();
    write(
        plain.path(),
        &format!(r#"{{"k": {d_sae}, "transcode": true}}"#),
        false,
    );
    let d = load(plain.path()).unwrap();
    assert!(d.is_transcoder() && d.w_skip.is_none());
    assert!(max_abs_diff(&d.encode(&x).unwrap(), &want_f) < 1e-5);

    // what sparsify can write but these dictionaries cannot express is refused
    for (cfg, skip, want) in [
        (r#"{"k": 2, "activation": "groupmax"}"#, false, "groupmax"),
        (
            r#"{"k": 2, "skip_connection": true}"#,
            true,
            "skip_connection",
        ),
        (
            r#"{"k": 2, "transcode": true, "skip_connection": true}"#,
            false,
            "no tensor `W_skip`",
        ),
        (
            r#"{"k": 2, "transcode": true}"#,
            true,
            "does not set `skip_connection`",
        ),
    ] {
        let bad = tempfile::tempdir().unwrap();
        write(bad.path(), cfg, skip);
        let e = load(bad.path()).unwrap_err().to_string();
        assert!(e.contains(want), "{cfg}: {e}");
    }
}

/// Every architecture as an SAE, a transcoder and a transcoder with a skip connection
/// saves and loads back with identical outputs (`gated_transcoder` was written but not
/// read, so a gated transcoder set that trained fine could not be opened).
#[test]
fn every_architecture_and_form_round_trips() {
    use candle_core::{Device, Tensor};
    for kind in KINDS {
        let base = load(&fixtures().join(format!("saelens/sae-{kind}"))).unwrap();
        let r =
            load_reference(&fixtures().join(format!("saelens/sae-{kind}/reference.safetensors")));
        let x = &r["x"];
        for form in ["sae", "transcoder", "skip transcoder"] {
            let mut d = base.clone();
            if form != "sae" {
                d.hook_name_out = Some("blocks.0.hook_mlp_out".into());
            }
            if form == "skip transcoder" {
                let n = d.d_out * d.d_in;
                let w: Vec<f32> = (0..n)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
                    .collect();
                d.w_skip = Some(Tensor::from_vec(w, (d.d_out, d.d_in), &Device::Cpu).unwrap());
            }
            let dir = tempfile::tempdir().unwrap();
            save_saelens(&d, dir.path()).unwrap();
            let back = load(dir.path())
                .unwrap_or_else(|e| panic!("{kind} {form}: saved, but cannot load back: {e}"));
            assert_eq!(back.architecture, d.architecture, "{kind} {form}");
            assert_eq!(back.is_transcoder(), form != "sae", "{kind} {form}");
            assert_eq!(back.w_skip.is_some(), form == "skip transcoder");
            let (f, fb) = (d.encode(x).unwrap(), back.encode(x).unwrap());
            assert_eq!(max_abs_diff(&f, &fb), 0.0, "{kind} {form}: features");
            let (y, yb) = (
                d.decode(&f, Some(x)).unwrap(),
                back.decode(&fb, Some(x)).unwrap(),
            );
            assert_eq!(max_abs_diff(&y, &yb), 0.0, "{kind} {form}: outputs");
        }
    }
}

#[test]
fn a_skip_transcoder_without_its_skip_weights_is_refused() {
    let mut d = load(&fixtures().join("saelens/sae-standard")).unwrap();
    d.hook_name_out = Some("blocks.0.hook_mlp_out".into());
    let dir = tempfile::tempdir().unwrap();
    save_saelens(&d, dir.path()).unwrap();
    let cfg_path = dir.path().join("cfg.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("\"transcoder\""), "{cfg}");
    std::fs::write(
        &cfg_path,
        cfg.replace("\"transcoder\"", "\"skip_transcoder\""),
    )
    .unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("skip_transcoder") && e.contains("W_skip"), "{e}");
}
