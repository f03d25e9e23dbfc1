//! Drives the real `glassbox` binary, as scripts would.

use glassbox_fixtures::{default_gguf, fixtures, rel_err};
use std::process::{Command, Output};

fn glassbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .expect("run glassbox")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The figure in a bench line: `… : N tokens/s …`.
fn tokens_per_second(out: &str) -> f64 {
    let figure = out
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    figure
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no tokens/s in {out:?}"))
}

/// The command fails, says `needle`, and does not panic.
fn assert_refused(args: &[&str], needle: &str) {
    let o = glassbox(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// The default model when fetched; CI fetches it first, elsewhere a loud skip.
fn default_model() -> Option<std::path::PathBuf> {
    default_gguf()
}

#[test]
fn inspect_lists_every_hook_point_with_shapes() {
    let o = glassbox(&[
        "inspect",
        "--model",
        fixtures().join("tiny-gpt2").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("architecture  gpt2"));
    assert!(out.contains("hook_pos_embed"));
    assert!(
        out.contains("blocks.1.attn.hook_pattern")
            && out.contains("[batch, head=4, query_pos, key_pos]")
    );
    assert!(out.contains("blocks.0.mlp.hook_post") && out.contains("d_mlp=256"));
    assert!(!out.contains("hook_rot_q"), "gpt2 has no rotary hooks");
    let o = glassbox(&[
        "inspect",
        "--model",
        fixtures().join("tiny-gpt2").to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["n_layers"], 2);
    assert!(v["hook_points"].as_array().unwrap().len() > 30);
}

#[test]
fn cache_writes_logits_and_matched_activations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let tiny = fixtures().join("tiny-qwen2");
    let o = glassbox(&[
        "cache",
        "--model",
        tiny.to_str().unwrap(),
        "--tokens-file",
        tiny.join("reference.safetensors").to_str().unwrap(),
        "--hooks",
        "blocks.*.hook_resid_post,blocks.1.attn.hook_pattern",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(
        tiny.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut keys: Vec<&String> = got.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "blocks.0.hook_resid_post",
            "blocks.1.attn.hook_pattern",
            "blocks.1.hook_resid_post",
            "input_ids",
            "logits"
        ]
    );
    for k in [
        "logits",
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_pattern",
    ] {
        let e = rel_err(&got[k], &want[k]);
        assert!(e < 1e-4, "{k}: {e}");
    }
    assert_eq!(got["logits"].dims(), [2, 16, 512]);
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit_code() {
    let tiny = fixtures().join("tiny-llama");
    let t = tiny.to_str().unwrap();
    let reference = tiny.join("reference.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", "--model", "/no/such/model"], "no such file"),
        (
            vec![
                "cache",
                "--model",
                t,
                "--tokens-file",
                reference.to_str().unwrap(),
                "--hooks",
                "blocks.0.hook_resid_pst",
                "--out",
                "/tmp/never.safetensors",
            ],
            "did you mean `blocks.0.hook_resid_post`",
        ),
        (
            vec!["predict", "--model", t, "--prompt", "hello"],
            "no tokenizer",
        ),
        (
            vec![
                "cache",
                "--model",
                t,
                "--tokens-file",
                "/no/such.safetensors",
                "--hooks",
                "*",
                "--out",
                "/tmp/never.safetensors",
            ],
            "cannot read /no/such.safetensors",
        ),
        (
            vec![
                "bench", "forward", "--model", t, "--batch", "1", "--seq", "4000",
            ],
            "context is 128",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&args, needle);
    }
    assert!(!std::path::Path::new("/tmp/never.safetensors").exists());
}

#[test]
fn fetch_names_the_models_it_knows_and_an_unfetched_gemma_says_how_to_get_it() {
    assert_refused(
        &["fetch", "--model", "gemma9"],
        "known: default, gemma3-270m",
    );
    assert_refused(
        &["fetch", "--model", "gemma3-270m", "--model-only"],
        "cannot be used with",
    );
    // an empty cache: nothing is downloaded, the error names the fetch command
    let home = tempfile::tempdir().unwrap();
    for name in ["gemma3-270m", "Gemma-3-270M"] {
        let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["inspect", "--model", name])
            .env("GLASSBOX_HOME", home.path())
            .output()
            .expect("run glassbox");
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("run `glassbox fetch --model gemma3-270m` first"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bench_forward_reports_tokens_per_second() {
    let o = glassbox(&[
        "bench",
        "forward",
        "--model",
        fixtures().join("tiny-gpt_neox").to_str().unwrap(),
        "--batch",
        "2",
        "--seq",
        "32",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let tps = tokens_per_second(&out);
    assert!(tps > 0.0, "{out}");
}

#[test]
fn predict_and_generate_on_the_default_model() {
    if default_model().is_none() {
        return;
    }
    let o = glassbox(&[
        "predict",
        "--model",
        "default",
        "--prompt",
        "The capital of France is",
        "--top",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["input_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    assert_eq!(v["top"][0]["token"], " Paris");
    assert!((v["top"][0]["logit"].as_f64().unwrap() - 17.3713).abs() < 0.02);
    let p: f64 = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["prob"].as_f64().unwrap())
        .sum();
    assert!(p > 0.5 && p <= 1.0);

    let o = glassbox(&[
        "generate",
        "--model",
        "default",
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
    let sampled = |seed: &str| {
        stdout(&glassbox(&[
            "generate",
            "--model",
            "default",
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "8",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]))
    };
    assert_eq!(
        sampled("5"),
        sampled("5"),
        "sampling must be reproducible for a seed"
    );
}

#[test]
fn a_hf_repo_id_fails_fast_and_clearly_when_it_cannot_be_fetched() {
    let start = std::time::Instant::now();
    let o = glassbox(&["inspect", "--model", "glassbox-no-such-org/no-such-model"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("huggingface.co") || err.contains("hf-hub"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}

const IOI_CLEAN: &str = "When Mary and John went to the store, John gave a drink to";
const IOI_CORRUPT: &str = "When Mary and John went to the store, Tom gave a drink to";

#[test]
fn patch_writes_the_grid_scripts_depend_on() {
    if default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let o = glassbox(&[
        "patch",
        "--model",
        "default",
        "--clean",
        IOI_CLEAN,
        "--corrupt",
        IOI_CORRUPT,
        "--answer",
        " Mary",
        "--wrong",
        " John",
        "--site",
        "resid_pre",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // HF: " Mary" 11.037, " John" 4.917
    assert!(
        (v["logit_diff_clean"].as_f64().unwrap() - 6.12).abs() < 0.02,
        "{}",
        v["logit_diff_clean"]
    );
    let grid = v["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 30);
    assert_eq!(grid[0].as_array().unwrap().len(), 14);
    // at layer 0 only the changed token (position 9) matters, and it restores everything
    assert!((grid[0][9].as_f64().unwrap() - 1.0).abs() < 1e-3);
    assert!(grid[0][3].as_f64().unwrap().abs() < 1e-3);
    assert!(dir.path().join("p.svg").exists());
}

#[test]
fn causal_commands_refuse_bad_input_with_reasons() {
    if default_model().is_none() {
        return;
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "patch",
                "--model",
                "default",
                "--clean",
                IOI_CLEAN,
                "--corrupt",
                "When Mary went to the store",
                "--answer",
                " Mary",
                "--wrong",
                " John",
                "--json",
                "/tmp/never.json",
            ],
            "clean has 14, corrupted has 6",
        ),
        (
            vec![
                "patch",
                "--model",
                "default",
                "--clean",
                IOI_CLEAN,
                "--corrupt",
                IOI_CORRUPT,
                "--answer",
                " Mary Ann Smith",
                "--wrong",
                " John",
                "--json",
                "/tmp/never.json",
            ],
            "is 3 tokens",
        ),
        (
            vec![
                "steer",
                "--model",
                "default",
                "--pairs",
                "/dev/null",
                "--hook",
                "blocks.3.hook_resid_pre",
                "--strength",
                "NaN",
                "--prompt",
                "Hi",
            ],
            "holds no pairs",
        ),
        (
            vec![
                "ablate",
                "--model",
                "default",
                "--prompt",
                "Hello there friend",
                "--heads",
                "3.99",
            ],
            "out of range",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&args, needle);
    }
    assert!(!std::path::Path::new("/tmp/never.json").exists());
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.tsv");
    std::fs::write(&pairs, "I love it\tI hate it\n").unwrap();
    for s in ["NaN", "inf"] {
        let o = glassbox(&[
            "steer",
            "--model",
            "default",
            "--pairs",
            pairs.to_str().unwrap(),
            "--hook",
            "blocks.3.hook_resid_pre",
            "--strength",
            s,
            "--prompt",
            "Hi",
        ]);
        assert!(stderr(&o).contains("finite"), "{}", stderr(&o));
    }
    let o = glassbox(&[
        "steer",
        "--model",
        "default",
        "--pairs",
        pairs.to_str().unwrap(),
        "--hook",
        "blocks.3.hook_resid_pre",
        "--strength",
        "0",
        "--prompt",
        "The weather today is",
        "--target",
        " nice",
        "--sweep",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0.00000"),
        "strength 0 must have zero KL: {}",
        stdout(&o)
    );
}

#[test]
fn probe_sweep_train_and_monitor_on_the_default_model() {
    if default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("acts");
    let sweep = |cache: &std::path::Path| {
        let o = glassbox(&[
            "probe",
            "sweep",
            "--model",
            "default",
            "--data",
            "builtin:numbers",
            "--layers",
            "2..4",
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = sweep(&cache);
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    let acc = v["layers"][0]["test"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "held-out accuracy {acc} on `a is larger than b`");
    assert!(
        std::fs::read_dir(&cache).unwrap().count() > 0,
        "activations are cached"
    );
    assert_eq!(
        sweep(&cache)["layers"],
        v["layers"],
        "a cached rerun gives the same result"
    );

    let probe = dir.path().join("probe");
    let o = glassbox(&[
        "probe",
        "train",
        "--model",
        "default",
        "--data",
        "builtin:numbers",
        "--layer",
        "3",
        "--out",
        probe.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(probe.join("probe.json")).unwrap()).unwrap();
    assert_eq!(meta["hook"], "blocks.3.hook_resid_post");
    assert_eq!(meta["d_model"], 576);

    let o = glassbox(&[
        "monitor",
        "--model",
        "default",
        "--probe",
        probe.to_str().unwrap(),
        "--prompt",
        "12 is larger than 85.",
        "--max-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("larger[") && out.contains("than["),
        "per-token readings: {out}"
    );
    // "12 is larger than 85." is false: the reading at its full stop says so
    let stop = out
        .split("].[")
        .nth(1)
        .and_then(|r| r.get(..4))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a reading after the full stop");
    assert!(stop < 0.5, "p(true) at the end of a false claim: {stop}");

    let csv = dir.path().join("claims.csv");
    std::fs::write(&csv, "statement,label\n90 is larger than 3.,1\n4 is larger than 77.,0\n61 is larger than 12.,1\n8 is larger than 59.,0\n").unwrap();
    let report = dir.path().join("report.json");
    let o = glassbox(&[
        "monitor",
        "--model",
        "default",
        "--probe",
        probe.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--max-tokens",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["statements"], 4);
    assert!(r["auroc"].as_f64().unwrap() >= 0.75, "{}", r["auroc"]);
    assert!(std::fs::read_to_string(report.with_extension("html"))
        .unwrap()
        .contains("p(true)"));
}

#[test]
fn probe_commands_refuse_bad_input_with_reasons() {
    if default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let labels = write("labels.csv", "statement,label\nA is A.,1\nB is C.,yes\n");
    let single = write("single.csv", "statement,label\nA is A.,1\nB is B.,1\n");
    let long = write(
        "long.csv",
        &format!("statement,label\n{},1\nShort.,0\n", "word ".repeat(9000)),
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--data".into(), labels], "\"yes\" is not 0 or 1"),
        (vec!["--data".into(), single], "both true (1) and false (0)"),
        (
            vec!["--data".into(), long],
            "longer than the model's context",
        ),
        (
            vec!["--data".into(), "builtin:nope".into()],
            "unknown built-in dataset",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = ["probe", "sweep", "--model", "default", "--layers", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = glassbox(&refs);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(needle),
            "expected {needle:?} in {}",
            stderr(&o)
        );
    }
    // a probe trained on SmolLM2 refuses another model
    let probe = dir.path().join("p");
    let o = glassbox(&[
        "probe",
        "train",
        "--model",
        "default",
        "--data",
        "builtin:numbers",
        "--layer",
        "1",
        "--out",
        probe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = glassbox(&[
        "monitor",
        "--model",
        fixtures().join("tiny-llama").to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(
        stderr(&o).contains("d_model 576") && stderr(&o).contains("d_model 64"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_sae_step_reports_tokens_per_second() {
    let o = glassbox(&[
        "bench",
        "sae-step",
        "--d-in",
        "16",
        "--d-sae",
        "64",
        "--k",
        "4",
        "--batch",
        "32",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let tps = tokens_per_second(&out);
    assert!(tps > 0.0, "{out}");
    assert_refused(
        &["bench", "sae", "--d-sae", "8", "--k", "9"],
        "k must be between 1 and d_sae (8)",
    );
    // every architecture's step runs
    for arch in ["batchtopk", "standard", "jumprelu", "gated"] {
        let o = glassbox(&[
            "bench", "sae", "--arch", arch, "--d-in", "16", "--d-sae", "64", "--batch", "32",
        ]);
        assert!(o.status.success(), "{arch}: {}", stderr(&o));
        assert!(tokens_per_second(&stdout(&o)) > 0.0);
    }
    assert_refused(
        &["bench", "sae", "--arch", "relu6"],
        "is not one of: topk, batchtopk",
    );
}

#[test]
fn train_sae_writes_a_saelens_dictionary_and_metrics() {
    if default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let text =
        "The committee met on Tuesday to review the budget for the coming year. ".repeat(200);
    std::fs::write(&corpus, text).unwrap();
    let out = dir.path().join("sae");
    let o = glassbox(&[
        "train-sae",
        "--model",
        "default",
        "--corpus",
        corpus.to_str().unwrap(),
        "--hook",
        "blocks.3.hook_resid_post",
        "--d-sae",
        "64",
        "--k",
        "4",
        "--tokens",
        "1024",
        "--context-size",
        "32",
        "--batch",
        "256",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = glassbox_sae::format::load(&out).unwrap();
    assert_eq!((d.d_in, d.d_sae, d.k), (576, 64, Some(4)));
    assert_eq!(d.hook_name.as_deref(), Some("blocks.3.hook_resid_post"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let fvu = m["eval"]["fvu"].as_f64().unwrap();
    assert!(fvu.is_finite() && fvu > 0.0 && fvu < 1.5, "FVU {fvu}");
    assert!(m["eval"]["l0"].as_f64().unwrap() <= 4.0);
    assert_refused(
        &[
            "train-sae",
            "--model",
            "default",
            "--corpus",
            corpus.to_str().unwrap(),
            "--tokens",
            "100000000",
            "--out",
            "/tmp/never-sae",
        ],
        "needs",
    );
}

#[test]
fn process_tl_opens_the_model_as_transformer_lens_processes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let tl = fixtures().join("tl/tiny-gpt2/reference.safetensors");
    let o = glassbox(&[
        "--process",
        "tl",
        "cache",
        "--model",
        fixtures().join("tiny-gpt2").to_str().unwrap(),
        "--tokens-file",
        tl.to_str().unwrap(),
        "--hooks",
        "blocks.1.hook_resid_pre",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(&tl, &candle_core::Device::Cpu).unwrap();
    for (g, w) in [
        ("logits", "processed.logits"),
        (
            "blocks.1.hook_resid_pre",
            "processed.blocks.1.hook_resid_pre",
        ),
    ] {
        let err = rel_err(&got[g], &want[w]);
        assert!(
            err < 1e-4,
            "{g} differs from TL's processed model by {err:.2e}"
        );
    }
    // a model the processing cannot apply to: refused with the reason
    assert_refused(
        &[
            "--process",
            "tl",
            "predict",
            "--model",
            fixtures().join("tiny-gemma2").to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "final_logit_softcapping",
    );
}

#[test]
fn a_dictionary_trained_on_a_processed_model_warns_when_the_model_is_not() {
    // SAELens records how the model was opened; {} means from_pretrained's defaults (all on)
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("saelens/sae-topk");
    let weights = "sae_weights.safetensors";
    std::fs::copy(src.join(weights), dir.path().join(weights)).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("cfg.json")).unwrap()).unwrap();
    cfg["model_from_pretrained_kwargs"] = serde_json::json!({});
    cfg["hook_name"] = "blocks.0.hook_resid_pre".into();
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    let run = |process: &str| {
        glassbox(&[
            "--process",
            process,
            "eval-sae",
            "--model",
            fixtures().join("tiny-gpt2").to_str().unwrap(),
            "--sae",
            dir.path().to_str().unwrap(),
            "--tokens",
            "64",
        ])
    };
    let plain = stderr(&run("none"));
    assert!(
        plain.contains("warning")
            && plain.contains("fold_ln=true")
            && plain.contains("fold_ln=false"),
        "{plain}"
    );
    let processed = stderr(&run("tl"));
    assert!(!processed.contains("fold_ln=true but"), "{processed}");
    assert!(
        !processed.contains("was trained on a model opened with"),
        "{processed}"
    );
}

/// The help says what quickstart does: every stage it runs.
#[test]
fn quickstart_help_lists_its_stages() {
    let o = glassbox(&["--help"]);
    let help = stdout(&o);
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("quickstart"))
        .unwrap_or_else(|| panic!("no quickstart in {help}"));
    for stage in ["fetch", "train", "evaluate", "feature store", "serve"] {
        assert!(line.contains(stage), "`{stage}` missing from: {line}");
    }
}

/// Right-to-left tokens are isolated in `predict`'s table, so the columns after them stay
/// where they are, and every row pads to the same visible width.
#[test]
fn predict_keeps_its_columns_for_right_to_left_text() {
    let Some(model) = default_gguf() else { return };
    let o = glassbox(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "שלום עולם, קוראים לי",
        "--top",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(rows.len(), 10, "{out}");
    let visible = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| !matches!(c, '\u{2068}' | '\u{2069}'))
            .collect()
    };
    // the id column at the same visible place in every row (isolates are zero-width)
    for r in &rows {
        let v: String = visible(r).into_iter().collect();
        let id = v.chars().skip(27).take(7).collect::<String>();
        assert!(
            id.trim().parse::<u32>().is_ok(),
            "the id column moved: {r:?}"
        );
    }
    let isolated = rows.iter().filter(|r| r.contains('\u{2068}')).count();
    assert!(
        isolated > 0,
        "no right-to-left token among the top 10: {out}"
    );
}
