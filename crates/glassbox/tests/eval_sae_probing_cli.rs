//! `glassbox eval-sae --suite probing|absorption` on the default model: sparse probing on
//! every built-in statement dataset and a CSV given with --probe-data, k = 1, 2, 5
//! against the raw activations; feature absorption on the first-letter task (the
//! arithmetic of both is tested on planted dictionaries in glassbox-probes).

use glassbox_fixtures::default_gguf;
use glassbox_sae::testing::RandomTranscoder;
use std::process::Command;

#[test]
fn sparse_probing_reports_every_dataset_and_k() {
    let Some(model) = default_gguf() else {
        return; // default_gguf printed SKIPPED (and CI fails on it)
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut dict = RandomTranscoder {
        k: Some(8),
        ..RandomTranscoder::new(3, 576, 128, 5)
    }
    .build()
    .unwrap();
    // an SAE on the residual stream before block 3
    dict.hook_name = Some("blocks.3.hook_resid_pre".into());
    dict.hook_name_out = Some("blocks.3.hook_resid_pre".into());
    glassbox_sae::format::save_saelens(&dict, &tmp.path().join("sae")).unwrap();
    let csv = tmp.path().join("colours.csv");
    let mut rows = String::from("statement,label\n");
    for (thing, colour, truth) in [
        ("Grass", "green", 1),
        ("Snow", "white", 1),
        ("Coal", "black", 1),
        ("The sky", "blue", 1),
        ("Blood", "red", 1),
        ("Milk", "white", 1),
        ("Grass", "purple", 0),
        ("Snow", "black", 0),
        ("Coal", "white", 0),
        ("The sky", "green", 0),
        ("Blood", "blue", 0),
        ("Milk", "black", 0),
    ] {
        rows.push_str(&format!("{thing} is {colour}.,{truth}\n"));
    }
    std::fs::write(&csv, rows).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["eval-sae", "--model", model.to_str().unwrap(), "--sae"])
        .arg(tmp.path().join("sae"))
        .args(["--suite", "probing", "--json", "--probe-data"])
        .arg(&csv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = v["probing"].as_array().unwrap();
    let names: Vec<&str> = p.iter().map(|d| d["dataset"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "capitals",
            "capitals_neg",
            "numbers",
            "numbers_neg",
            "colours"
        ]
    );
    for d in p {
        assert!(
            d["train"].as_u64().unwrap() > 0 && d["test"].as_u64().unwrap() > 0,
            "{d}"
        );
        let raw = d["raw_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&raw), "{d}");
        let ks: Vec<u64> = d["sparse"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["k"].as_u64().unwrap())
            .collect();
        assert_eq!(ks, [1, 2, 5]);
        for f in d["sparse"].as_array().unwrap() {
            assert_eq!(
                f["latents"].as_array().unwrap().len() as u64,
                f["k"].as_u64().unwrap()
            );
            assert!((0.0..=1.0).contains(&f["accuracy"].as_f64().unwrap()));
        }
    }
    // the numbers dataset is linearly easy from early layers: raw reads it well
    assert!(p[2]["raw_accuracy"].as_f64().unwrap() > 0.8, "{}", p[2]);

    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["eval-sae", "--model", model.to_str().unwrap(), "--sae"])
        .arg(tmp.path().join("sae"))
        .args(["--suite", "absorption", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &v["absorption"];
    let letters = a["letters"].as_array().unwrap();
    assert!(
        letters.len() >= 20,
        "SmolLM2's vocabulary has words for most letters: {a}"
    );
    for l in letters {
        let n = |k: &str| l[k].as_u64().unwrap();
        assert!(
            n("absorbed") <= n("main_missed") && n("main_missed") <= n("true_positives"),
            "{l}"
        );
        assert!(n("true_positives") <= n("test_words"), "{l}");
    }
    let rate = a["mean_absorption_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{a}");

    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["eval-sae", "--model", model.to_str().unwrap(), "--sae"])
        .arg(tmp.path().join("sae"))
        .args(["--suite", "probing", "--probe-data", "/nonexistent/x.csv"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/x.csv") && !err.contains("panicked"),
        "{err}"
    );
}
