//! Every job on the second real model, Gemma-3-270M (GGUF, Q4_K_M): train-sae, eval-sae,
//! features build, serve (units, a page, the live prompt view, steering), patch, ioi,
//! steer, ablate, probe train, train-transcoders, trace and intervene — at tiny sizes,
//! each checked for what it must print or write.

use glassbox_fixtures::gemma3_gguf;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn glassbox(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "glassbox {args:?} failed:\n{err}");
    format!("{out}{err}")
}

fn corpus(dir: &Path) -> String {
    let names = ["Mary", "John", "Alice", "the city", "the river", "Congress"];
    let text: String = (0..300)
        .map(|i| {
            format!(
                "Sentence {i}: {} went to {} in the year {}, and the union grew.\n",
                names[i % 6],
                names[(i * 5 + 1) % 6],
                1700 + i
            )
        })
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// One HTTP/1.1 request to the local server; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

#[test]
fn every_job_runs_on_gemma3_270m() {
    let Some(_) = gemma3_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let run = dir.path().join("run").display().to_string();
    let m = "gemma3-270m";

    let out = glassbox(&[
        "train-sae",
        "--model",
        m,
        "--hook",
        "blocks.6.hook_resid_pre",
        "--d-sae",
        "256",
        "--k",
        "8",
        "--tokens",
        "1024",
        "--batch",
        "256",
        "--context-size",
        "32",
        "--eval-tokens",
        "128",
        "--corpus",
        &corpus,
        "--out",
        &run,
    ]);
    assert!(out.contains("held-out ("), "{out}");
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&run).join("metrics.json")).unwrap(),
    )
    .unwrap();
    let train_fvu = metrics["eval"]["fvu"].as_f64().unwrap();
    assert!(train_fvu.is_finite() && train_fvu > 0.0);

    // eval-sae on the same held-out windows measures what train-sae measured
    let eval: serde_json::Value = serde_json::from_str(&glassbox(&[
        "eval-sae",
        "--model",
        m,
        "--sae",
        &run,
        "--corpus",
        &corpus,
        "--tokens",
        "128",
        "--context-size",
        "32",
        "--json",
    ]))
    .unwrap();
    let fvu = eval["fvu"].as_f64().unwrap();
    assert!(
        (fvu - train_fvu).abs() < 1e-6,
        "eval-sae FVU {fvu} vs train-sae {train_fvu}"
    );

    glassbox(&[
        "features",
        "build",
        "--run",
        &run,
        "--corpus",
        &corpus,
        "--tokens",
        "2048",
        "--context-size",
        "32",
    ]);
    assert!(Path::new(&run).join("features.sqlite").is_file());

    // the dashboard server: units, a feature page, the live prompt view and steering
    let mut server = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["serve", &run, "--port", "0"])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("http://127.0.0.1:")
                .nth(1)
                .and_then(|r| r.trim_end_matches('/').parse().ok())
        })
        .expect("the server prints its address");
    let (status, units) = http(port, "GET", "/api/units", "");
    assert_eq!(status, 200, "{units}");
    assert!(units.contains("\"total\":256"), "{units}");
    let (status, page) = http(port, "GET", "/api/units/feature/0", "");
    assert_eq!(status, 200, "{page}");
    let (status, prompt) = http(
        port,
        "POST",
        "/api/prompt",
        &format!(r#"{{"text":"{IOI}"}}"#),
    );
    assert_eq!(status, 200, "{prompt}");
    assert!(prompt.contains("<bos>"), "Gemma's BOS is shown: {prompt}");
    let (status, steer) = http(
        port,
        "POST",
        "/api/steer",
        r#"{"prompt":"The weather is","features":[{"id":0,"strength":10}],"max_new_tokens":4}"#,
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, 200, "{steer}");

    let patch = dir.path().join("patch.json").display().to_string();
    let out = glassbox(&[
        "patch",
        "--model",
        m,
        "--clean",
        IOI,
        "--corrupt",
        "When Mary and John went to the store, Mary gave a drink to",
        "--answer",
        " Mary",
        "--wrong",
        " John",
        "--site",
        "resid_pre",
        "--no-compare",
        "--json",
        &patch,
    ]);
    assert!(out.contains("L16"), "a row per layer: {out}");
    assert!(Path::new(&patch).is_file());
    let out = glassbox(&["ioi", "--model", m, "--n", "4", "--site", "resid_pre"]);
    assert!(
        out.contains("4/4 prompts prefer the indirect object"),
        "{out}"
    );
    let out = glassbox(&[
        "steer",
        "--model",
        m,
        "--sae",
        &run,
        "--feature",
        "0",
        "--strength",
        "20",
        "--prompt",
        "The weather today is",
        "--max-tokens",
        "4",
    ]);
    assert!(out.contains("--- steered") && out.contains("KL("), "{out}");
    let out = glassbox(&[
        "ablate", "--model", m, "--prompt", IOI, "--heads", "3.0,5.1",
    ]);
    assert!(out.contains("KL(clean ‖ ablated)"), "{out}");
    let out = glassbox(&[
        "ablate",
        "--model",
        m,
        "--sae",
        &run,
        "--features",
        "0,1",
        "--prompt",
        IOI,
    ]);
    assert!(out.contains("next-token loss"), "{out}");
    let probe = dir.path().join("probe").display().to_string();
    let out = glassbox(&[
        "probe",
        "train",
        "--model",
        m,
        "--data",
        "builtin:capitals",
        "--layer",
        "9",
        "--out",
        &probe,
    ]);
    assert!(out.contains("held-out accuracy"), "{out}");

    let tc = dir.path().join("tc").display().to_string();
    let out = glassbox(&[
        "train-transcoders",
        "--model",
        m,
        "--layers",
        "0,1",
        "--d-sae",
        "128",
        "--k",
        "8",
        "--tokens",
        "1024",
        "--context-size",
        "32",
        "--corpus",
        &corpus,
        "--out",
        &tc,
    ]);
    assert!(out.contains("all spliced at once"), "{out}");
    let graph = dir.path().join("graph.json").display().to_string();
    let out = glassbox(&[
        "trace",
        "--model",
        m,
        "--transcoders",
        &tc,
        "--prompt",
        "The capital of France is",
        "--out",
        &graph,
    ]);
    assert!(out.contains("graph written"), "{out}");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&graph).unwrap()).unwrap();
    assert!(!g["nodes"].as_array().unwrap().is_empty());
    let out = glassbox(&[
        "intervene",
        "--model",
        m,
        "--transcoders",
        &tc,
        "--prompt",
        "The capital of France is",
        "--edit",
        "0/1@1*0",
    ]);
    assert!(out.contains("KL(clean ‖ edited)"), "{out}");
}
