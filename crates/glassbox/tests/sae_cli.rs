//! `glassbox sae apply` and `glassbox eval-sae`, driven through the real binary.

use candle_core::{Device, Tensor};
use glassbox_fixtures::{default_gguf, fixtures, load_reference, max_abs_diff, rel_err};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn glassbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .expect("run glassbox")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The command fails, says every one of `needles`, and does not panic.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let o = glassbox(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = stderr(&o);
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in {err}");
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

fn save(path: &Path, tensors: Vec<(&str, Tensor)>) {
    let t: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    candle_core::safetensors::save(&t, path).unwrap();
}

#[test]
fn sae_apply_matches_saelens_on_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["standard", "topk", "jumprelu", "gated"] {
        let dir = fixtures().join(format!("saelens/sae-{kind}"));
        let reference = dir.join("reference.safetensors");
        let out = tmp.path().join(format!("{kind}.safetensors"));
        let o = glassbox(&[
            "sae",
            "apply",
            "--sae",
            dir.to_str().unwrap(),
            "--input",
            reference.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{kind}: {}", stderr(&o));
        let r = load_reference(&reference);
        let got = load_reference(&out);
        assert_eq!(got.len(), 2, "{kind}: exactly feature_acts and sae_out");
        let e = max_abs_diff(&got["feature_acts"], &r["feature_acts"]);
        assert!(e < 1e-5, "{kind}: feature_acts differ by {e}");
        let e = rel_err(&got["sae_out"], &r["sae_out"]);
        assert!(e < 1e-5, "{kind}: sae_out differs by {e:.2e} of its max");
    }
    // no temporary files left behind
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn sae_apply_refuses_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let sae = fixtures().join("saelens/sae-standard");
    let sae = sae.to_str().unwrap();
    let out = tmp.path().join("out.safetensors");
    let out = out.to_str().unwrap();
    let input = tmp.path().join("in.safetensors");
    let inp = input.to_str().unwrap();
    let dev = &Device::Cpu;

    save(
        &input,
        vec![
            (
                "acts",
                Tensor::zeros((4, 64), candle_core::DType::F32, dev).unwrap(),
            ),
            (
                "labels",
                Tensor::zeros(4, candle_core::DType::F32, dev).unwrap(),
            ),
        ],
    );
    assert_refused(
        &["sae", "apply", "--sae", sae, "--input", inp, "--out", out],
        &["no tensor `x`", "acts, labels"],
    );

    save(
        &input,
        vec![(
            "x",
            Tensor::zeros((4, 48), candle_core::DType::F32, dev).unwrap(),
        )],
    );
    assert_refused(
        &["sae", "apply", "--sae", sae, "--input", inp, "--out", out],
        &["48", "64"],
    );

    let mut v = vec![0.5f32; 4 * 64];
    v[2 * 64 + 3] = f32::INFINITY;
    v[3 * 64] = f32::NAN;
    save(
        &input,
        vec![("x", Tensor::from_vec(v, (4, 64), dev).unwrap())],
    );
    assert_refused(
        &["sae", "apply", "--sae", sae, "--input", inp, "--out", out],
        &["2 NaN or infinite", "row 2, column 3"],
    );
    assert!(!Path::new(out).exists(), "nothing written on failure");
}

#[test]
fn eval_sae_refuses_a_wrong_width_or_a_missing_hook() {
    let tiny = fixtures().join("tiny-llama");
    let tiny = tiny.to_str().unwrap();
    let sae = fixtures().join("saelens/sae-standard");
    // the MLP's hidden layer is 176 wide; the dictionary reads 64
    assert_refused(
        &[
            "eval-sae",
            "--model",
            tiny,
            "--sae",
            sae.to_str().unwrap(),
            "--hook",
            "blocks.0.mlp.hook_post",
        ],
        &["64", "176", "blocks.0.mlp.hook_post"],
    );
    // a dictionary that names no hook
    let tmp = tempfile::tempdir().unwrap();
    let mut d = glassbox_sae::format::load(&sae).unwrap();
    d.hook_name = None;
    d.extra_cfg.remove("metadata");
    glassbox_sae::format::save_saelens(&d, tmp.path()).unwrap();
    assert_refused(
        &[
            "eval-sae",
            "--model",
            tiny,
            "--sae",
            tmp.path().to_str().unwrap(),
        ],
        &["--hook"],
    );
}

/// An exact dictionary on the default model: FVU 0, everything recovered. Needs the
/// fetched default model (SKIPPED loudly otherwise); a small generated corpus keeps it fast.
#[test]
fn eval_sae_on_the_default_model_reports_every_number() {
    let Some(model) = default_gguf() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = 576;
    let mut enc = vec![0f32; d * 2 * d];
    let mut dec = vec![0f32; 2 * d * d];
    for i in 0..d {
        enc[i * 2 * d + i] = 1.0;
        enc[i * 2 * d + d + i] = -1.0;
        dec[i * d + i] = 1.0;
        dec[(d + i) * d + i] = -1.0;
    }
    let dev = &Device::Cpu;
    let dict = glassbox_sae::Dictionary {
        architecture: glassbox_sae::Architecture::Standard,
        d_in: d,
        d_sae: 2 * d,
        d_out: d,
        k: None,
        apply_b_dec_to_input: true,
        w_enc: Tensor::from_vec(enc, (d, 2 * d), dev).unwrap(),
        b_enc: Some(Tensor::zeros(2 * d, candle_core::DType::F32, dev).unwrap()),
        w_dec: Tensor::from_vec(dec, (2 * d, d), dev).unwrap(),
        b_dec: Tensor::zeros(d, candle_core::DType::F32, dev).unwrap(),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: Some("blocks.3.hook_resid_post".into()),
        hook_name_out: None,
        model_name: None,
        extra_cfg: serde_json::Map::new(),
    };
    let sae = tmp.path().join("identity");
    glassbox_sae::format::save_saelens(&dict, &sae).unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let text: String = (0..300)
        .map(|i| {
            format!(
                "Report {i}: the committee met on day {} and approved {} of the {} proposals. ",
                i % 28 + 1,
                i % 7,
                i % 11 + 7
            )
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let o = glassbox(&[
        "eval-sae",
        "--model",
        model.to_str().unwrap(),
        "--sae",
        sae.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "100",
        "--context-size",
        "64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], 126, "two windows of 63 evaluated tokens: {v}");
    assert_eq!(v["window_tokens"], 126);
    assert_eq!(v["context_size"], 64);
    assert_eq!(v["first_position_excluded"], true);
    assert_eq!(v["first_position_spliced"], false);
    assert_eq!(v["hook"], "blocks.3.hook_resid_post");
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(num("fvu").abs() < 1e-9);
    assert!((num("ce_recovered") - 1.0).abs() < 1e-6);
    assert!((num("kl_recovered") - 1.0).abs() < 1e-6);
    assert!(num("ce_zero_ablated") > num("ce_clean"));
    for k in [
        "l0",
        "explained_variance",
        "cosine",
        "dead_fraction",
        "dense_fraction",
        "ce_spliced",
        "kl_spliced",
        "kl_zero_ablated",
    ] {
        num(k);
    }
    assert_eq!(
        v["density_histogram"]["counts"].as_array().unwrap().len(),
        20
    );
}
