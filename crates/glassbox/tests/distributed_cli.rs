//! Harvesting once and training from the folder, alone and across MPI ranks, on
//! SmolLM2's first blocks.
//!
//! In every build: `train-sae --acts` on a folder `glassbox harvest` wrote gives the
//! same dictionary, bit for bit, as a run that harvests for itself; a missing or changed
//! shard is named; `--distributed` and an MPI launcher are refused with the build
//! command. With `--features mpi` (scripts/test runs this file again so, under
//! `mpirun --oversubscribe -np 2` on loopback): two ranks harvest the same shards as one;
//! data-parallel and latent-sharded training on two ranks equal one process; a rank
//! killed mid-run ends the job within a timeout and the run resumes from rank 0's
//! checkpoint; ranks started with different options refuse, every one of them; bad
//! splits and combinations are named.

use glassbox_fixtures::default_gguf;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.txt");
    let text = (0..400)
        .map(|i| {
            format!(
                "Line {i} speaks of rivers, {} bridges and the town. ",
                i % 37
            )
        })
        .collect::<String>();
    std::fs::write(&p, text).unwrap();
    p
}

/// The options a harvest fixes, shared by the harvests and the runs that do their own.
fn data_args(model: &Path, corpus: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["--model", model.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(
        [
            "--hook",
            "blocks.1.hook_resid_pre",
            "--tokens",
            "2560",
            "--context-size",
            "32",
            "--buffer-tokens",
            "1024",
            "--corpus",
            corpus.to_str().unwrap(),
        ]
        .map(String::from),
    );
    v
}

/// What a training run adds, with `batch` rows a step.
const fn train_opts(batch: &'static str) -> [&'static str; 10] {
    [
        "--d-sae",
        "256",
        "--k",
        "8",
        "--batch",
        batch,
        "--eval-tokens",
        "256",
        "--checkpoint-every-tokens",
        "1024",
    ]
}

const TRAIN: [&str; 10] = train_opts("256");

fn glassbox() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    c.env_remove("GLASSBOX_KILL_AT");
    c
}

fn ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn harvest(model: &Path, corpus: &Path, out: &Path) -> Output {
    glassbox()
        .arg("harvest")
        .args(data_args(model, corpus))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[cfg(not(feature = "mpi"))]
mod alone {
    use super::*;

    #[test]
    fn training_from_a_harvested_folder_equals_harvesting_while_training() {
        let Some(model) = default_gguf() else { return };
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus(dir.path());
        let acts = dir.path().join("acts");
        let o = harvest(&model, &corpus, &acts);
        ok("harvest", &o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("on 1 rank(s)"), "{out}");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(acts.join("manifest.json")).unwrap())
                .unwrap();
        let shards = manifest["shards"].as_array().unwrap();
        assert!(
            shards.len() >= 2,
            "one shard cannot show the cut: {manifest}"
        );

        let own = dir.path().join("own");
        let o = glassbox()
            .arg("train-sae")
            .args(data_args(&model, &corpus))
            .args(TRAIN)
            .arg("--out")
            .arg(&own)
            .output()
            .unwrap();
        ok("train-sae", &o);
        let from_acts = dir.path().join("from-acts");
        // model, hook, corpus, context, buffer and seed come from the manifest
        let o = glassbox()
            .args(["train-sae", "--acts"])
            .arg(&acts)
            .args(TRAIN)
            .arg("--out")
            .arg(&from_acts)
            .output()
            .unwrap();
        ok("train-sae --acts", &o);
        assert_eq!(
            std::fs::read(own.join("sae_weights.safetensors")).unwrap(),
            std::fs::read(from_acts.join("sae_weights.safetensors")).unwrap(),
            "training from the folder gave another dictionary than harvesting while training"
        );

        // a contradicting option is refused, naming both values
        let o = glassbox()
            .args(["train-sae", "--acts"])
            .arg(&acts)
            .args(["--context-size", "64"])
            .args(TRAIN)
            .arg("--out")
            .arg(dir.path().join("bad-context"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("--context-size 64 differs") && err.contains("32"),
            "{err}"
        );

        // a changed shard, then a missing one, named before training reads a row
        let first = acts.join(shards[0]["file"].as_str().unwrap());
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&first, &bytes).unwrap();
        let train_acts = |out: &str| {
            glassbox()
                .args(["train-sae", "--acts"])
                .arg(&acts)
                .args(TRAIN)
                .arg("--out")
                .arg(dir.path().join(out))
                .output()
                .unwrap()
        };
        let o = train_acts("changed");
        let err = stderr(&o);
        assert!(
            !o.status.success()
                && err.contains("does not match the manifest")
                && err.contains("chunk-000000"),
            "{err}"
        );
        std::fs::remove_file(&first).unwrap();
        let o = train_acts("missing");
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("is missing") && err.contains("chunk-000000"),
            "{err}"
        );
        // harvesting again rewrites only the missing shard
        let o = harvest(&model, &corpus, &acts);
        ok("harvest again", &o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("rank 0 wrote 1 and kept {}", shards.len() - 1)),
            "{out}"
        );
        ok("train-sae --acts after the repair", &train_acts("repaired"));

        // an unfinished harvest (no manifest) is named as one
        std::fs::remove_file(acts.join("manifest.json")).unwrap();
        let err = stderr(&train_acts("unfinished"));
        assert!(err.contains("did not finish"), "{err}");
    }

    #[test]
    fn a_build_without_mpi_refuses_distributed_work_with_the_build_command() {
        let Some(model) = default_gguf() else { return };
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus(dir.path());
        let o = glassbox()
            .args(["train-sae", "--distributed", "--acts"])
            .arg(dir.path().join("acts"))
            .args(TRAIN)
            .arg("--out")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("--features mpi") && err.contains("libopenmpi-dev"),
            "{err}"
        );
        // started by a launcher as one of two ranks: refused, not run twice
        let o = glassbox()
            .arg("harvest")
            .args(data_args(&model, &corpus))
            .arg("--out")
            .arg(dir.path().join("acts"))
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("one of 2 ranks") && err.contains("--features mpi"),
            "{err}"
        );
        assert!(!dir.path().join("acts").join("manifest.json").exists());
    }
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::time::{Duration, Instant};

    /// `mpirun --oversubscribe` on loopback (as root too: a CI container runs as root).
    fn mpirun() -> Command {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "--mca", "btl_tcp_if_include", "lo"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env_remove("GLASSBOX_KILL_AT");
        c
    }

    /// Waits at most `limit` for `child`; kills it and fails the test past that.
    fn wait_within(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let o = child.wait_with_output().unwrap();
                panic!(
                    "{what} still running after {limit:?}: the job hangs\n{}",
                    stderr(&o)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_glassbox")
    }

    fn weights(run: &Path) -> (Vec<f32>, Vec<f32>) {
        let d = glassbox_sae::format::load(run).unwrap();
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&d.w_enc), flat(&d.w_dec))
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn train_distributed(acts: &Path, out: &Path, extra: &[&str]) -> Output {
        mpirun()
            .args(["-np", "2", bin(), "train-sae", "--distributed", "--acts"])
            .arg(acts)
            .args(TRAIN)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    }

    #[test]
    fn two_ranks_harvest_and_train_as_one_process_does() {
        let Some(model) = default_gguf() else { return };
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus(dir.path());
        let one = dir.path().join("acts-1");
        ok("harvest", &harvest(&model, &corpus, &one));
        let two = dir.path().join("acts-2");
        let o = mpirun()
            .args(["-np", "2", bin(), "harvest"])
            .args(data_args(&model, &corpus))
            .arg("--out")
            .arg(&two)
            .output()
            .unwrap();
        ok("mpirun -np 2 glassbox harvest", &o);
        let read = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap())
                .unwrap()
        };
        let (m1, m2) = (read(&one), read(&two));
        assert_eq!(m2["ranks"], 2);
        let (s1, s2) = (
            m1["shards"].as_array().unwrap(),
            m2["shards"].as_array().unwrap(),
        );
        assert!(s1.len() >= 2 && s1.len() == s2.len(), "{m1}\n{m2}");
        let by_rank: Vec<u64> = s2.iter().map(|s| s["rank"].as_u64().unwrap()).collect();
        assert!(by_rank.contains(&0) && by_rank.contains(&1), "{by_rank:?}");
        for (a, b) in s1.iter().zip(s2) {
            assert_eq!(a["xxh64"], b["xxh64"], "chunk {}", a["chunk"]);
            let file = a["file"].as_str().unwrap();
            assert_eq!(
                std::fs::read(one.join(file)).unwrap(),
                std::fs::read(two.join(file)).unwrap(),
                "{file} differs between one rank's harvest and two ranks'"
            );
        }

        // one process on the whole batches, two ranks on halves
        let single = dir.path().join("single");
        let o = glassbox()
            .args(["train-sae", "--acts"])
            .arg(&two)
            .args(TRAIN)
            .arg("--out")
            .arg(&single)
            .output()
            .unwrap();
        ok("train-sae --acts", &o);
        let dist = dir.path().join("dist");
        let o = train_distributed(&two, &dist, &[]);
        ok("mpirun -np 2 train-sae --distributed", &o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("data-parallel over 2 ranks: 128 per rank"),
            "{out}"
        );
        assert_eq!(
            out.matches("held-out").count(),
            1,
            "only rank 0 evaluates and prints: {out}"
        );
        let (enc1, dec1) = weights(&single);
        let (enc2, dec2) = weights(&dist);
        let (de, dd) = (max_abs_diff(&enc1, &enc2), max_abs_diff(&dec1, &dec2));
        assert!(
            de < 1e-4 && dd < 1e-4,
            "two ranks differ from one process: W_enc by {de}, W_dec by {dd}"
        );
        // and the comparison has teeth: training moved the weights far more than that
        let fresh = dir.path().join("fresh");
        ok(
            "train-sae --acts --tokens 256",
            &glassbox()
                .args(["train-sae", "--acts"])
                .arg(&two)
                .args(TRAIN)
                .args(["--tokens", "256", "--lr", "1e-9", "--out"])
                .arg(&fresh)
                .output()
                .unwrap(),
        );
        let (_, dec0) = weights(&fresh);
        assert!(max_abs_diff(&dec0, &dec2) > 1e-2, "training moved nothing");

        // the latents split over two ranks, each on every row: the same dictionary again
        let sharded = dir.path().join("sharded");
        let o = mpirun()
            .args(["-np", "2", bin(), "train-sae", "--shard-latents", "--acts"])
            .arg(&two)
            .args(TRAIN)
            .arg("--out")
            .arg(&sharded)
            .output()
            .unwrap();
        ok("mpirun -np 2 train-sae --shard-latents", &o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("latents sharded over 2 ranks: 128 latents per rank"),
            "{out}"
        );
        let recorded = std::fs::read_to_string(sharded.join("config.toml")).unwrap();
        assert!(
            recorded.contains("ranks = 2")
                && recorded.contains("split = \"latents\"")
                && recorded.contains("acts = "),
            "config.toml records how the run was split: {recorded}"
        );
        assert!(
            sharded.join("checkpoint/latents-1-of-2").exists(),
            "rank 1 checkpoints its own latents"
        );
        let (enc4, dec4) = weights(&sharded);
        let (de, dd) = (max_abs_diff(&enc1, &enc4), max_abs_diff(&dec1, &dec4));
        assert!(
            de < 1e-4 && dd < 1e-4,
            "latents on two ranks differ from one process: W_enc by {de}, W_dec by {dd}"
        );

        // rank 1 killed at its 6th step (checkpoints at step 4), and, latent-sharded,
        // while writing its second checkpoint (rank 0 may have finished its own): the job
        // ends within the timeout, and resuming with two ranks reaches the same
        // dictionary, from the last step every rank holds
        for (mode, point, uninterrupted) in [
            ("--distributed", "step:6", (enc2.clone(), dec2.clone())),
            ("--shard-latents", "step:6", (enc4.clone(), dec4.clone())),
            ("--shard-latents", "checkpoint-state:2", (enc4, dec4)),
        ] {
            let killed = dir.path().join(format!("killed{mode}-{point}"));
            let started = Instant::now();
            let child = mpirun()
                .args(["-np", "1", bin(), "train-sae", mode, "--acts"])
                .arg(&two)
                .args(TRAIN)
                .arg("--out")
                .arg(&killed)
                .args([
                    ":",
                    "-np",
                    "1",
                    "env",
                    &format!("GLASSBOX_KILL_AT={point}"),
                    bin(),
                ])
                .args(["train-sae", mode, "--acts"])
                .arg(&two)
                .args(TRAIN)
                .arg("--out")
                .arg(&killed)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let o = wait_within(child, Duration::from_secs(90), "the job with a killed rank");
            assert!(
                !o.status.success(),
                "{mode}: a job with a killed rank succeeded"
            );
            eprintln!(
                "{mode}, {point}: the job with a killed rank ended after {:?}",
                started.elapsed()
            );
            assert!(
                killed.join("checkpoint").exists(),
                "{mode}: no checkpoint before the kill"
            );
            let o = mpirun()
                .args(["-np", "2", bin(), "train-sae", mode, "--resume", "--acts"])
                .arg(&two)
                .args(TRAIN)
                .arg("--out")
                .arg(&killed)
                .output()
                .unwrap();
            ok(&format!("resume {mode} on two ranks"), &o);
            assert!(String::from_utf8_lossy(&o.stdout).contains("run directory"));
            assert!(
                weights(&killed) == uninterrupted,
                "{mode}: resumed after a kill, the dictionary differs from the uninterrupted run"
            );
        }
    }

    #[test]
    fn ranks_started_differently_and_bad_splits_are_refused() {
        let Some(model) = default_gguf() else { return };
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus(dir.path());
        let acts = dir.path().join("acts");
        ok("harvest", &harvest(&model, &corpus, &acts));
        // rank 1 asks for another learning rate: every rank refuses at the start
        let run = dir.path().join("mixed");
        let child = mpirun()
            .args(["-np", "1", bin(), "train-sae", "--distributed", "--acts"])
            .arg(&acts)
            .args(TRAIN)
            .arg("--out")
            .arg(&run)
            .args([
                ":",
                "-np",
                "1",
                bin(),
                "train-sae",
                "--distributed",
                "--acts",
            ])
            .arg(&acts)
            .args(TRAIN)
            .args(["--lr", "0.0005", "--out"])
            .arg(&run)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_within(
            child,
            Duration::from_secs(90),
            "ranks with different options",
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert_eq!(
            err.matches("rank 1's configuration differs from rank 0's")
                .count(),
            2,
            "both ranks should say why they stop:\n{err}"
        );
        assert!(!run.join("sae_weights.safetensors").exists());

        // a batch two ranks cannot split
        let o = mpirun()
            .args(["-np", "2", bin(), "train-sae", "--distributed", "--acts"])
            .arg(&acts)
            .args(train_opts("255"))
            .arg("--out")
            .arg(dir.path().join("odd"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("does not split over 2 ranks"),
            "{err}"
        );
        // latents that two ranks cannot split evenly, and both modes at once
        let mut odd_width = TRAIN;
        odd_width[1] = "255";
        let o = mpirun()
            .args(["-np", "2", bin(), "train-sae", "--shard-latents", "--acts"])
            .arg(&acts)
            .args(odd_width)
            .arg("--out")
            .arg(dir.path().join("odd-width"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("d_sae (255) into 2 equal shares"),
            "{err}"
        );
        let o = train_distributed(&acts, &dir.path().join("both"), &["--shard-latents"]);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("cannot be combined yet"),
            "{err}"
        );
        // distributed training without a harvested folder
        let o = mpirun()
            .args(["-np", "2", bin(), "train-sae", "--distributed"])
            .args(data_args(&model, &corpus))
            .args(TRAIN)
            .arg("--out")
            .arg(dir.path().join("no-acts"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("glassbox harvest") && err.contains("--acts"),
            "{err}"
        );
        // two ranks without --distributed would each train alone: refused
        let o = mpirun()
            .args(["-np", "2", bin(), "train-sae", "--acts"])
            .arg(&acts)
            .args(TRAIN)
            .arg("--out")
            .arg(dir.path().join("twice"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("pass --distributed"),
            "{err}"
        );
    }
}
