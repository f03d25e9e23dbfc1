//! `glassbox train-sae` end to end on SmolLM2's first blocks: the run directory's
//! contents, runs killed with SIGKILL anywhere and resumed reaching the same dictionary as an
//! uninterrupted one, a TOML config, and bad input.

use glassbox_fixtures::default_gguf;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.txt");
    let text = (0..400)
        .map(|i| {
            format!(
                "Sentence number {i} tells of the union, the people and the year {}. ",
                1790 + i
            )
        })
        .collect::<String>();
    std::fs::write(&p, text).unwrap();
    p
}

fn train(model: &Path, corpus: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    train_killed_at(None, model, corpus, out, extra)
}

/// The binary, to be SIGKILLed by itself at the named point (`GLASSBOX_KILL_AT`), if any.
fn glassbox_killed_at(point: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    match point {
        Some(p) => cmd.env("GLASSBOX_KILL_AT", p),
        None => cmd.env_remove("GLASSBOX_KILL_AT"),
    };
    cmd
}

/// `train`, SIGKILLed by the process itself at the named point (`GLASSBOX_KILL_AT`).
fn train_killed_at(
    point: Option<&str>,
    model: &Path,
    corpus: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = glassbox_killed_at(point);
    cmd.args(["train-sae", "--model"]).arg(model);
    if !extra.contains(&"--hook") {
        cmd.args(["--hook", "blocks.1.hook_resid_pre"]);
    }
    cmd.args(["--d-sae", "256", "--k", "8"])
        .args(["--tokens", "2560", "--batch", "256", "--context-size", "32"])
        .args(["--eval-tokens", "256", "--checkpoint-every-tokens", "1024"])
        .arg("--corpus")
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "train-sae failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_run_directory_holds_the_dictionary_and_its_records() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let straight = dir.path().join("straight");
    ok(&train(&model, &corpus, &straight, &[]));
    for f in [
        "cfg.json",
        "sae_weights.safetensors",
        "config.toml",
        "metrics.jsonl",
        "metrics.json",
    ] {
        assert!(
            straight.join(f).is_file(),
            "{f} missing from the run directory"
        );
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("metrics.json")).unwrap())
            .unwrap();
    let fvu = metrics["eval"]["fvu"].as_f64().unwrap();
    assert!(fvu > 0.0 && fvu < 1.0, "held-out FVU {fvu}");
    assert_eq!(metrics["eval"]["l0"].as_f64().unwrap().round(), 8.0);
    let log = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "one log line per 10 steps: {log}");

    // a finished run is not overwritten by accident
    let o = train(&model, &corpus, &straight, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

#[test]
fn a_toml_config_sets_the_run_and_is_recorded() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "arch = \"standard\"\nsparsity_coefficient = 2.0\nl1_recipe = \"unit-norm\"\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = train(&model, &corpus, &out, &["--config", cfg.to_str().unwrap()]);
    ok(&o);
    let recorded = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        recorded.contains("arch = \"standard\"") && recorded.contains("unit-norm"),
        "{recorded}"
    );
    let dict = glassbox_sae::format::load(&out).unwrap();
    assert_eq!(dict.architecture, glassbox_sae::Architecture::Standard);
    assert_eq!(dict.hook_name.as_deref(), Some("blocks.1.hook_resid_pre"));

    std::fs::write(&cfg, "arch = \"standard\"\nlearning_rate = 2.0\n").unwrap();
    let o = train(
        &model,
        &corpus,
        &dir.path().join("bad"),
        &["--config", cfg.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("learning_rate"),
        "{err}"
    );
}

#[test]
fn a_transcoder_trains_from_mlp_input_to_mlp_output() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let out = dir.path().join("tc");
    let o = train(
        &model,
        &corpus,
        &out,
        &[
            "--hook",
            "blocks.1.ln2.hook_normalized",
            "--hook-out",
            "blocks.1.hook_mlp_out",
            "--skip",
            "true",
            "--arch",
            "jumprelu",
        ],
    );
    ok(&o);
    let dict = glassbox_sae::format::load(&out).unwrap();
    assert!(dict.is_transcoder() && dict.w_skip.is_some());
    assert_eq!(dict.hook_name_out.as_deref(), Some("blocks.1.hook_mlp_out"));
    let cfg = std::fs::read_to_string(out.join("cfg.json")).unwrap();
    assert!(cfg.contains("jumprelu_skip_transcoder"), "{cfg}");
}

#[test]
fn bad_input_is_refused_clearly() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let o = train(
        &model,
        &corpus,
        &dir.path().join("a"),
        &["--hook", "blocks.99.hook_resid_pre"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("blocks.99"), "{err}");
    let o = train(&model, &corpus, &dir.path().join("b"), &["--arch", "relu6"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("topk, batchtopk"),
        "{err}"
    );
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "Too short a corpus for 2560 tokens. ".repeat(30)).unwrap();
    let o = train(&model, &small, &dir.path().join("c"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("training tokens"),
        "{err}"
    );
}

#[test]
fn a_transcoder_set_trains_from_one_pass_and_is_spliced_at_once() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let out = dir.path().join("set");
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["train-transcoders", "--model"])
        .arg(&model)
        .args([
            "--layers", "0,2", "--d-sae", "128", "--k", "8", "--tokens", "1024",
        ])
        .args([
            "--batch",
            "256",
            "--context-size",
            "32",
            "--eval-windows",
            "4",
        ])
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    let layers = index["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (l, entry) in [0, 2].iter().zip(layers) {
        let d = glassbox_sae::format::load(&out.join(entry["path"].as_str().unwrap())).unwrap();
        assert_eq!(
            d.hook_name.as_deref(),
            Some(format!("blocks.{l}.ln2.hook_normalized").as_str())
        );
        assert_eq!(
            d.hook_name_out.as_deref(),
            Some(format!("blocks.{l}.hook_mlp_out").as_str())
        );
        assert!(entry["eval_fvu"].as_f64().unwrap().is_finite());
        // one massive-activation rule for the whole set, recorded with each layer so
        // that features, eval and the server leave out the rows training left out
        let m = glassbox_model::MassiveNorm::from_cfg(&d.extra_cfg)
            .unwrap_or_else(|| panic!("layer {l} records no massive-activation threshold"));
        assert_eq!(m.hook, "blocks.2.hook_resid_pre");
        assert_eq!(m.to_json(), index["massive_norm"]);
    }
    assert!(index["train_massive_rows_excluded"].as_u64().is_some());
    let ce = &index["splice_all"];
    assert!(
        ce["ce_spliced"].as_f64().unwrap() > 0.0
            && ce["ce_recovered"].as_f64().unwrap().is_finite()
    );

    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["train-transcoders", "--model"])
        .arg(&model)
        .args(["--layers", "0..99", "--out"])
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("0..30"), "{err}");
}

/// The store harvests the windows the token budget needs, not whole buffers (a
/// 300,000-token quickstart harvested 524,288 rows), and says how far it got.
#[test]
fn the_harvest_takes_what_the_token_budget_needs() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let cache = dir.path().join("cache");
    let out = dir.path().join("run");
    let cache_arg = cache.display().to_string();
    let o = glassbox_killed_at(None)
        .env("GLASSBOX_PROGRESS_EVERY", "0.02")
        .args(["train-sae", "--model"])
        .arg(&model)
        .args([
            "--hook",
            "blocks.1.hook_resid_pre",
            "--d-sae",
            "256",
            "--k",
            "8",
        ])
        .args(["--tokens", "2560", "--batch", "256", "--context-size", "32"])
        .args(["--eval-tokens", "256", "--buffer-tokens", "2048"])
        .args(["--cache-dir", &cache_arg, "--corpus"])
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    // off a terminal, the harvest logs its own progress (rate and ETA), and the
    // trainer's line never stands in for it
    let err = String::from_utf8_lossy(&o.stderr);
    let harvest_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("harvesting blocks.1.hook_resid_pre (windows) "))
        .collect();
    assert!(!harvest_lines.is_empty(), "no harvest progress in:\n{err}");
    for l in &harvest_lines {
        assert!(l.contains("/s, ") && l.contains(" s, eta "), "{l}");
    }
    let folder = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let desc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("store.json")).unwrap()).unwrap();
    let rows = desc["rows"].as_u64().unwrap();
    // 2,560 tokens and a 1 % margin (massive rows are passed over, not served); windows
    // of 32 give at most 31 rows each
    assert!(
        (2560..2560 + 2560 / 100 + 31).contains(&rows),
        "harvested {rows} rows for 2,560 tokens"
    );
}

fn assert_sigkilled(o: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(9),
        "the run should have been SIGKILLed: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// kill -9 during the harvest (before any checkpoint, and of a later chunk mid-training),
/// during training, and in the middle of either file of a checkpoint write: `--resume`
/// reaches the dictionary of an uninterrupted run, bit for bit.
#[test]
fn a_run_killed_anywhere_resumes_to_the_same_dictionary() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    // chunks of 1,024 rows: the store harvests again mid-training
    let opts = ["--buffer-tokens", "1024"];
    let straight = dir.path().join("straight");
    ok(&train(&model, &corpus, &straight, &opts));
    let want = std::fs::read(straight.join("sae_weights.safetensors")).unwrap();
    for point in [
        "harvest:2",
        "harvest:9",
        "step:6",
        "checkpoint-weights:1",
        "checkpoint-state:2",
    ] {
        let out = dir.path().join(point.replace(':', "-"));
        assert_sigkilled(&train_killed_at(Some(point), &model, &corpus, &out, &opts));
        let mut resume = opts.to_vec();
        resume.push("--resume");
        let o = train(&model, &corpus, &out, &resume);
        ok(&o);
        let got = std::fs::read(out.join("sae_weights.safetensors")).unwrap();
        assert!(
            got == want,
            "killed at {point}: the resumed dictionary differs from the uninterrupted one\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn train_set(
    point: Option<&str>,
    model: &Path,
    corpus: &Path,
    out: &Path,
    resume: bool,
) -> std::process::Output {
    let mut cmd = glassbox_killed_at(point);
    cmd.args(["train-transcoders", "--model"])
        .arg(model)
        .args([
            "--layers", "0,1", "--d-sae", "128", "--k", "8", "--tokens", "2048",
        ])
        .args([
            "--batch",
            "256",
            "--context-size",
            "32",
            "--eval-windows",
            "2",
        ])
        .args([
            "--buffer-tokens",
            "1024",
            "--checkpoint-every-tokens",
            "512",
        ])
        .arg("--corpus")
        .arg(corpus)
        .arg("--out")
        .arg(out);
    if resume {
        cmd.arg("--resume");
    }
    cmd.output().unwrap()
}

/// train-transcoders checkpoints every layer's trainer as one set; killed with SIGKILL
/// mid-harvest, mid-training, or inside a layer's checkpoint files, `--resume` reaches the
/// uninterrupted run's transcoders bit for bit.
#[test]
fn a_killed_transcoder_run_resumes_to_the_same_set() {
    let Some(model) = default_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let straight = dir.path().join("straight");
    ok(&train_set(None, &model, &corpus, &straight, false));
    let weights = |d: &Path| {
        ["layer_00", "layer_01"]
            .map(|l| std::fs::read(d.join(l).join("sae_weights.safetensors")).unwrap())
    };
    let want = weights(&straight);
    // 2 layers a set: the 3rd weights file and the 4th state file are the second set's
    for point in [
        "harvest:3",
        "step:5",
        "checkpoint-weights:3",
        "checkpoint-state:4",
    ] {
        let out = dir.path().join(point.replace(':', "-"));
        assert_sigkilled(&train_set(Some(point), &model, &corpus, &out, false));
        let o = train_set(None, &model, &corpus, &out, true);
        ok(&o);
        assert!(
            weights(&out) == want,
            "killed at {point}: the resumed set differs\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // a finished run is not overwritten by accident
    let o = train_set(None, &model, &corpus, &straight, false);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
}
