//! `glassbox trace` and `glassbox intervene` through the real binary, on the default
//! model with a set of small random transcoders (the graph's exactness is tested in
//! glassbox-circuits; here: the file, the forms scripts use, and bad input).

use glassbox_fixtures::default_gguf;
use glassbox_sae::testing::RandomTranscoder;
use glassbox_sae::Dictionary;
use std::path::Path;
use std::process::{Command, Output};

fn glassbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .expect("run glassbox")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_refused(args: &[&str], needles: &[&str]) {
    let o = glassbox(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = text(&o);
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in {err}");
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// TopK (k 4 of 64) with decoder rows large enough to matter in SmolLM2's residual stream.
fn random_transcoder(layer: usize, d: usize, m: usize, seed: u64) -> Dictionary {
    let spec = RandomTranscoder {
        k: Some(4),
        enc_scale: 0.2,
        dec_scale: 3.0,
        ..RandomTranscoder::new(layer, d, m, seed)
    };
    spec.build().unwrap()
}

fn write_set(dir: &Path, layers: usize, d: usize) {
    let mut entries = Vec::new();
    for l in 0..layers {
        let path = format!("layer_{l:02}");
        glassbox_sae::format::save_saelens(
            &random_transcoder(l, d, 64, 100 + l as u64),
            &dir.join(&path),
        )
        .unwrap();
        entries.push(serde_json::json!({"layer": l, "path": path}));
    }
    let index = serde_json::json!({"format": "glassbox transcoder set 1", "layers": entries});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn trace_writes_a_pruned_graph_and_intervene_moves_the_output() {
    let Some(model) = default_gguf() else { return };
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    write_set(&set, 30, 576);
    let set = set.to_str().unwrap();
    let out = tmp.path().join("graphs/capital.json");
    let prompt = "The capital of France is";
    let o = glassbox(&[
        "trace",
        "--model",
        model,
        "--transcoders",
        set,
        "--prompt",
        prompt,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("replacement score"), "{}", text(&o));
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(g["metadata"]["format"], "glassbox attribution graph 1");
    let n_tokens = g["metadata"]["prompt_token_ids"].as_array().unwrap().len();
    let nodes = g["nodes"].as_array().unwrap();
    let of_type = |t: &str| nodes.iter().filter(|n| n["feature_type"] == t).count();
    assert_eq!(of_type("embedding"), n_tokens, "every token is kept");
    assert!(of_type("logit") >= 1);
    assert!(of_type("transcoder") >= 1, "some feature survives pruning");
    let ids: std::collections::HashSet<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    let links = g["links"].as_array().unwrap();
    assert!(!links.is_empty());
    for l in links {
        assert!(
            ids.contains(l["source"].as_str().unwrap())
                && ids.contains(l["target"].as_str().unwrap())
        );
    }
    for key in ["replacement_score", "completeness_score"] {
        let v = g["metadata"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    assert!(g["metadata"]["kept_influence"].as_f64().unwrap() >= 0.8);

    // an explicit target
    let o = glassbox(&[
        "trace",
        "--model",
        model,
        "--transcoders",
        set,
        "--prompt",
        prompt,
        "--target",
        " Paris",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let logits: Vec<&serde_json::Value> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["feature_type"] == "logit")
        .collect();
    assert_eq!(logits.len(), 1);
    assert_eq!(logits[0]["token_str"], " Paris");

    // intervene: ablate the strongest kept feature at the last position
    let feature = nodes
        .iter()
        .filter(|n| n["feature_type"] == "transcoder")
        .max_by(|a, b| {
            a["influence"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["influence"].as_f64().unwrap())
        })
        .unwrap();
    let edit = format!(
        "{}/{}@{}*0",
        feature["layer"], feature["feature"], feature["ctx_idx"]
    );
    let o = glassbox(&[
        "intervene",
        "--model",
        model,
        "--transcoders",
        set,
        "--prompt",
        prompt,
        "--edit",
        &edit,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["kl"].as_f64().unwrap() > 0.0,
        "ablating an influential feature changes the output: {v}"
    );
    assert_eq!(v["edits"][0]["new_activation"], 0.0);
}

#[test]
fn trace_refuses_bad_input_with_a_message() {
    let Some(model) = default_gguf() else { return };
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_set(&good, 2, 576);
    let narrow = tmp.path().join("narrow");
    write_set(&narrow, 2, 64);
    let out = tmp.path().join("g.json");
    let o = out.to_str().unwrap();
    let (g, n) = (good.to_str().unwrap(), narrow.to_str().unwrap());
    let long = "word ".repeat(100);
    assert_refused(
        &[
            "trace",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            &long,
            "--out",
            o,
        ],
        &["limit is 64", "--max-tokens"],
    );
    assert_refused(
        &[
            "trace",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            "Hi",
            "--target",
            " Parisxyzzy",
            "--out",
            o,
        ],
        &["not one token"],
    );
    assert_refused(
        &[
            "trace",
            "--model",
            model,
            "--transcoders",
            n,
            "--prompt",
            "Hi",
            "--out",
            o,
        ],
        &["d_model is 576"],
    );
    assert_refused(
        &[
            "trace",
            "--model",
            model,
            "--transcoders",
            tmp.path().to_str().unwrap(),
            "--prompt",
            "Hi",
            "--out",
            o,
        ],
        &["not a transcoder set"],
    );
    assert_refused(
        &[
            "trace",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            "Hi",
            "--node-threshold",
            "2",
            "--out",
            o,
        ],
        &["threshold must be between 0 and 1"],
    );
    assert!(!out.exists(), "nothing is written when tracing fails");
    assert_refused(
        &[
            "intervene",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            "Hi",
            "--edit",
            "0/3",
        ],
        &["LAYER/FEATURE@POSITION"],
    );
    assert_refused(
        &[
            "intervene",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            "Hi",
            "--edit",
            "0/999@1*0",
        ],
        &["feature 999 does not exist"],
    );
    assert_refused(
        &[
            "intervene",
            "--model",
            model,
            "--transcoders",
            g,
            "--prompt",
            "Hi",
            "--edit",
            "7/1@1*0",
        ],
        &["no transcoder for layer 7"],
    );
}
