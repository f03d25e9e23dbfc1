//! `glassbox explain` end to end: a feature store built by the CLI on the default model
//! (a small random TopK dictionary), explained and scored by a real `serve-model` with
//! the same default model on loopback. The 135M model is a weak explainer: the test
//! checks what is stored and how (never a malformed reply as an explanation, the cost
//! counted, resuming, search, the Neuronpedia export, an unreachable endpoint), and
//! prints what the model said.

use glassbox_features::store::{FeatureStore, Order, UnitQuery};
use glassbox_features::UnitKind;
use glassbox_fixtures::default_gguf;
use glassbox_model_server::{policy::Policy, serve_listener, ServeOptions, State};
use glassbox_sae::testing::RandomTranscoder;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

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

/// A run directory with a 64-feature TopK dictionary at layer 1 and its feature store.
fn built_run(dir: &Path, model: &str) {
    let dict = RandomTranscoder {
        k: Some(4),
        enc_scale: 0.2,
        dec_scale: 3.0,
        ..RandomTranscoder::new(1, 576, 64, 11)
    }
    .build()
    .unwrap();
    let run = dir.join("run");
    glassbox_sae::format::save_saelens(&dict, &run).unwrap();
    std::fs::write(run.join("config.toml"), format!("model = {model:?}\n")).unwrap();
    let sentences = [
        "The river runs past the old mill and under the bridge to the sea.",
        "My cat sleeps on the warm window sill every afternoon.",
        "Prices rose by three percent in May, the bank said on Tuesday.",
        "She wrote the letter in French and sent it to Paris.",
        "Seven players scored in the second half of the game.",
        "The committee will vote on the budget next week.",
    ];
    // about 6,000 tokens: 95 windows of 64, a tenth held out
    let corpus: String = (0..480)
        .map(|i| format!("{} ", sentences[(i * 7 + i / 6) % sentences.len()]))
        .collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    let o = glassbox(&[
        "features",
        "build",
        "--run",
        run.to_str().unwrap(),
        "--corpus",
        dir.join("corpus.txt").to_str().unwrap(),
        "--context-size",
        "64",
        "--no-neurons",
    ]);
    assert!(o.status.success(), "features build: {}", text(&o));
}

#[test]
fn explain_scores_and_stores_through_serve_model_and_resumes() {
    let Some(gguf) = default_gguf() else {
        return; // default_gguf printed SKIPPED (and CI fails on it)
    };
    let tmp = tempfile::tempdir().unwrap();
    built_run(tmp.path(), gguf.to_str().unwrap());
    let run = tmp.path().join("run");
    let run_s = run.to_str().unwrap();

    // the three sparsest features that fired (the likeliest to have quiet spans)
    let store = FeatureStore::open(&run).unwrap();
    let by_density = store
        .units(UnitKind::Feature, Order::Density, true, 64, 0)
        .unwrap();
    let mut alive: Vec<u32> = by_density.iter().rev().take(3).map(|u| u.id).collect();
    alive.sort_unstable();
    assert_eq!(alive.len(), 3, "the random dictionary fires");
    drop(store);
    let list = alive
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");

    let model = glassbox_model::load_model(&gguf).unwrap();
    let state = State::new(model, Policy::empty(), ServeOptions::new("default")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || serve_listener(state, listener));

    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--run",
            run_s,
            "--features",
            &list,
            "--explainer",
            &base,
            "--explainer-model",
            "default",
            "--concurrency",
            "2",
            "--quiet-windows",
            "10",
            "--non-activating",
            "6",
            "--scorer-batch",
            "8",
        ];
        args.extend_from_slice(extra);
        glassbox(&args)
    };
    let o = explain(&[]);
    let out = text(&o);
    eprintln!("{out}");
    assert!(o.status.success(), "explain: {out}");
    assert!(out.contains("cost: "), "the cost line: {out}");

    let store = FeatureStore::open(&run).unwrap();
    let rows = store.all_explanations().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.feature).collect::<Vec<_>>(),
        alive,
        "one row per chosen feature"
    );
    for r in &rows {
        assert_eq!(r.explainer_model, "default");
        assert_eq!(r.prompt_version, glassbox_explain::prompts::PROMPT_VERSION);
        assert!(r.prompt_tokens > 50 && r.completion_tokens > 0, "{r:?}");
        // a row is an explanation or a recorded failure, never a raw reply
        match &r.explanation {
            Some(e) => {
                assert!(!e.is_empty() && e.chars().count() <= 400, "{r:?}");
                assert_eq!(r.details["shown"].as_u64().map(|n| n > 0), Some(true));
                let d = &r.details["detection"];
                let positives = d["positives"].as_u64().unwrap();
                let held: u64 = r.details["held_out"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .sum();
                assert_eq!(positives, held, "every held-out context is a positive");
                assert_eq!(
                    d["negatives"].as_u64(),
                    r.details["non_activating"].as_u64()
                );
                for s in [r.detection, r.fuzzing].into_iter().flatten() {
                    assert!((0.0..=1.0).contains(&s), "{r:?}");
                }
                // the scorer was asked about every excerpt: answered, or in a failed batch
                for t in ["detection", "fuzzing"] {
                    let d = &r.details[t];
                    let n = d["positives"].as_u64().unwrap() + d["negatives"].as_u64().unwrap();
                    let (answered, failed) = (
                        d["answered"].as_u64().unwrap(),
                        d["failed_batches"].as_u64().unwrap(),
                    );
                    assert!(answered <= n && answered + 8 * failed >= n, "{t}: {d}");
                }
            }
            None => assert!(r.failure.is_some(), "a failure says why: {r:?}"),
        }
    }
    // the store's prompt tokens are the cost line's
    let total: u64 = rows.iter().map(|r| r.prompt_tokens).sum();
    assert!(out.contains(&format!("cost: {total} prompt")), "{out}");

    // the feature page and the list carry the explanation; words of it find the feature
    if let Some(r) = rows.iter().find(|r| r.explanation.is_some()) {
        let e = r.explanation.as_ref().unwrap();
        let detail = store.unit(UnitKind::Feature, r.feature).unwrap().unwrap();
        assert_eq!(detail.explanations[0].explanation.as_ref(), Some(e));
        assert_eq!(detail.unit.explanation.as_ref(), Some(e));
        let word = e
            .split(|c: char| !c.is_alphanumeric())
            .find(|w| w.len() >= 4)
            .unwrap_or("");
        if !word.is_empty() {
            let (n, found) = store
                .search(&UnitQuery {
                    kind: UnitKind::Feature,
                    search: Some(word),
                    order: Order::Id,
                    descending: false,
                    limit: 100,
                    offset: 0,
                })
                .unwrap();
            assert!(
                found.iter().any(|u| u.id == r.feature),
                "searching {word:?} finds feature {} ({n} matches)",
                r.feature
            );
        }
        let np = tmp.path().join("np.json");
        let o = glassbox(&[
            "features",
            "explanations",
            run_s,
            "--neuronpedia",
            np.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&np).unwrap()).unwrap();
        let first = &v.as_array().unwrap()[0];
        for k in [
            "modelId",
            "layer",
            "index",
            "description",
            "explanationModelName",
        ] {
            assert!(first.get(k).is_some(), "Neuronpedia field {k}: {first}");
        }
        assert_eq!(first["layer"], "1-glassbox-normalized");
    }
    let explained = rows.iter().filter(|r| r.explanation.is_some()).count();
    // the store and the model gave held-out and verified non-activating contexts
    assert!(
        rows.iter()
            .any(|r| r.details["detection"]["positives"].as_u64() > Some(0)
                && r.details["detection"]["negatives"].as_u64() > Some(0)),
        "some feature was scored on both kinds of excerpt: {rows:?}"
    );
    drop(store);

    // a rerun skips what was explained and tries the failures again
    let o = explain(&[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    if explained > 0 {
        assert!(
            out.contains(&format!("{explained} already explained by default")),
            "{out}"
        );
    }

    // an endpoint that is not there: a clear error within seconds, nothing lost
    let t = Instant::now();
    let o = glassbox(&[
        "explain",
        "--run",
        run_s,
        "--features",
        &list,
        "--explainer",
        "http://127.0.0.1:9/v1",
        "--explainer-model",
        "other",
        "--quiet-windows",
        "2",
    ]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("127.0.0.1:9"), "names the endpoint: {out}");
    assert!(out.contains("a rerun resumes"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
    let store = FeatureStore::open(&run).unwrap();
    assert_eq!(store.all_explanations().unwrap().len(), rows.len());
}

#[test]
fn explain_refuses_bad_input_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    let o = glassbox(&[
        "explain",
        "--run",
        missing.to_str().unwrap(),
        "--sample",
        "3",
        "--explainer",
        "http://127.0.0.1:9/v1",
        "--explainer-model",
        "m",
    ]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("features build"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}
