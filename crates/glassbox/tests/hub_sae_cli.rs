//! `--sae hf:ORG/REPO[/SUB/FOLDER]`, driven through the real binary against a local
//! stand-in for the HF hub (the few endpoints hf-hub calls), and with the hub
//! unreachable. No test here touches the network.

use candle_core::Tensor;
use glassbox_fixtures::{fixtures, load_reference, max_abs_diff};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const COMMIT: &str = "1111111111111111111111111111111111111111";
const REPO: &str = "test-org/dicts";
const UNREACHABLE: &str = "http://127.0.0.1:9";

/// The binary with a private HF cache and `endpoint` as the hub; no proxy, no token,
/// no offline flag from the caller's environment.
fn glassbox(hf_home: &Path, endpoint: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    for v in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_TOKEN",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .args(args)
        .output()
        .expect("run glassbox")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_refused(o: &Output, what: &str, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "{what} should fail");
    for n in needles {
        assert!(err.contains(n), "{what}: expected {n:?} in {err}");
    }
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
}

/// Every file under `root`, as repo paths.
fn repo_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy();
                out.push(rel.replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// `Range: bytes=START-[END]`
type ByteRange = (usize, Option<usize>);

/// One request: the path and its byte range.
fn read_request(stream: &TcpStream) -> Option<(String, Option<ByteRange>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                let spec = value.trim().strip_prefix("bytes=")?;
                let (s, e) = spec.split_once('-')?;
                range = Some((s.parse().ok()?, e.parse().ok()));
            }
        }
    }
    Some((path, range))
}

fn respond(mut stream: TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// Answers hf-hub's calls for one repo whose files are the tree under `root`: the
/// file list (`/api/models/REPO/revision/main`) and ranged downloads
/// (`/REPO/resolve/main/PATH`, with the etag and commit headers it reads). Anything else
/// is a 404. Returns the endpoint URL; the server lives as long as the test process.
fn fake_hub(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let Some((path, range)) = read_request(&stream) else {
                    return;
                };
                let not_found = |s| respond(s, "404 Not Found", &[], b"{\"error\":\"not found\"}");
                if path == format!("/api/models/{REPO}/revision/main") {
                    let siblings: Vec<_> = repo_files(&root)
                        .into_iter()
                        .map(|f| serde_json::json!({ "rfilename": f }))
                        .collect();
                    let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings });
                    let headers = [("Content-Type", "application/json".to_string())];
                    return respond(stream, "200 OK", &headers, body.to_string().as_bytes());
                }
                let Some(rel) = path.strip_prefix(&format!("/{REPO}/resolve/main/")) else {
                    return not_found(stream);
                };
                let Ok(bytes) = std::fs::read(root.join(rel)) else {
                    return not_found(stream);
                };
                let etag = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    format!("\"{:016x}\"", h.finish())
                };
                let (start, end) = match range {
                    Some((s, e)) => (s, e.unwrap_or(usize::MAX).min(bytes.len() - 1)),
                    None => (0, bytes.len() - 1),
                };
                let headers = [
                    ("ETag", etag),
                    ("X-Repo-Commit", COMMIT.to_string()),
                    (
                        "Content-Range",
                        format!("bytes {start}-{end}/{}", bytes.len()),
                    ),
                ];
                respond(stream, "206 Partial Content", &headers, &bytes[start..=end]);
            });
        }
    });
    url
}

/// A repo with a SAELens folder (the SAELens TopK fixture, plus a `sparsity.safetensors`),
/// the same dictionary in sparsify's layout, a folder with only a config, and a README.
fn make_repo(root: &Path) {
    let src = fixtures().join("saelens/sae-topk");
    let saelens = root.join("sae-topk");
    std::fs::create_dir_all(&saelens).unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(src.join(f), saelens.join(f)).unwrap();
    }
    let d = glassbox_sae::format::load(&src).unwrap();
    let sparsity = Tensor::full(-2f32, d.d_sae, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([("sparsity".to_string(), sparsity)]),
        saelens.join("sparsity.safetensors"),
    )
    .unwrap();
    let sparsify = root.join("layers.0");
    std::fs::create_dir_all(&sparsify).unwrap();
    let tensors = HashMap::from([
        (
            "encoder.weight".to_string(),
            d.w_enc.t().unwrap().contiguous().unwrap(),
        ),
        ("encoder.bias".to_string(), d.b_enc.clone().unwrap()),
        ("W_dec".to_string(), d.w_dec.clone()),
        ("b_dec".to_string(), d.b_dec.clone()),
    ]);
    candle_core::safetensors::save(&tensors, sparsify.join("sae.safetensors")).unwrap();
    let cfg = format!(
        r#"{{"expansion_factor": 4, "normalize_decoder": true, "num_latents": {}, "k": {}, "d_in": {}}}"#,
        d.d_sae,
        d.k.unwrap(),
        d.d_in
    );
    std::fs::write(sparsify.join("cfg.json"), cfg).unwrap();
    std::fs::create_dir_all(root.join("half")).unwrap();
    std::fs::write(root.join("half/cfg.json"), "{}").unwrap();
    std::fs::write(root.join("README.md"), "test dictionaries\n").unwrap();
}

/// `sae apply` with `spec` reproduces SAELens' feature activations of the TopK fixture.
fn apply_matches_reference(hf_home: &Path, endpoint: &str, spec: &str, out: &Path) {
    let reference = fixtures().join("saelens/sae-topk/reference.safetensors");
    let o = glassbox(
        hf_home,
        endpoint,
        &[
            "sae",
            "apply",
            "--sae",
            spec,
            "--input",
            reference.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{spec}: {}", stderr(&o));
    let r = load_reference(&reference);
    let got = load_reference(out);
    let e = max_abs_diff(&got["feature_acts"], &r["feature_acts"]);
    assert!(e < 1e-5, "{spec}: feature_acts differ by {e}");
}

#[test]
fn hub_dictionaries_are_fetched_cached_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    make_repo(&root);
    let hub = fake_hub(root);
    let hf_home = tmp.path().join("hf");
    let snapshot = hf_home
        .join("hub/models--test-org--dicts/snapshots")
        .join(COMMIT);

    // SAELens layout, with its optional sparsity file
    let spec = format!("hf:{REPO}/sae-topk");
    apply_matches_reference(&hf_home, &hub, &spec, &tmp.path().join("a.safetensors"));
    for f in [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ] {
        assert!(snapshot.join("sae-topk").join(f).exists(), "{f} not cached");
    }
    // sparsify layout: the same dictionary, the same activations
    let sparsify = format!("hf:{REPO}/layers.0");
    apply_matches_reference(&hf_home, &hub, &sparsify, &tmp.path().join("b.safetensors"));
    assert!(snapshot.join("layers.0/sae.safetensors").exists());
    assert!(!snapshot.join("layers.0/sae_weights.safetensors").exists());

    // from the cache with the hub gone, for both layouts
    apply_matches_reference(
        &hf_home,
        UNREACHABLE,
        &spec,
        &tmp.path().join("c.safetensors"),
    );
    apply_matches_reference(
        &hf_home,
        UNREACHABLE,
        &sparsify,
        &tmp.path().join("d.safetensors"),
    );

    // a folder without a dictionary says what it looked for and what the repo holds
    let input = fixtures().join("saelens/sae-topk/reference.safetensors");
    let input = input.to_str().unwrap();
    let out = tmp.path().join("e.safetensors");
    let out = out.to_str().unwrap();
    let apply = |endpoint: &str, spec: &str| {
        glassbox(
            &hf_home,
            endpoint,
            &[
                "sae", "apply", "--sae", spec, "--input", input, "--out", out,
            ],
        )
    };
    let listed = [
        "cfg.json",
        "sae_weights.safetensors",
        "sae.safetensors",
        "hf:test-org/dicts/layers.0",
        "hf:test-org/dicts/sae-topk",
    ];
    let o = apply(&hub, &format!("hf:{REPO}"));
    assert_refused(&o, "the repo root", &listed);
    assert!(
        stderr(&o).contains("the root of test-org/dicts"),
        "{}",
        stderr(&o)
    );
    let o = apply(&hub, &format!("hf:{REPO}/half"));
    assert_refused(&o, "a config alone", &listed);
    assert!(stderr(&o).contains("cfg.json is there"), "{}", stderr(&o));
    assert_refused(
        &apply(&hub, &format!("hf:{REPO}/nowhere")),
        "a missing folder",
        &listed,
    );
    // a repo the hub does not have
    assert_refused(
        &apply(&hub, "hf:test-org/nope"),
        "an unknown repo",
        &["no model repo `test-org/nope`", "HTTP 404"],
    );
    // an uncached folder with the hub gone
    assert_refused(
        &apply(UNREACHABLE, &format!("hf:{REPO}/nowhere")),
        "offline",
        &["offline", "127.0.0.1:9"],
    );
    assert!(!Path::new(out).exists(), "nothing written on failure");

    // features build writes no store into the HF cache
    let tiny = fixtures().join("tiny-llama");
    let o = glassbox(
        &hf_home,
        UNREACHABLE,
        &[
            "features",
            "build",
            "--sae",
            &spec,
            "--model",
            tiny.to_str().unwrap(),
        ],
    );
    assert_refused(&o, "features build into the cache", &["--out", "HF cache"]);
    assert!(!snapshot.join("sae-topk/features.sqlite").exists());
}

#[test]
fn eval_sae_offline_fails_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = fixtures().join("tiny-llama");
    let args = [
        "eval-sae",
        "--model",
        tiny.to_str().unwrap(),
        "--sae",
        "hf:org/repo",
    ];
    let started = Instant::now();
    let o = glassbox(tmp.path(), UNREACHABLE, &args);
    assert_refused(
        &o,
        "unreachable hub",
        &["offline", "hf:org/repo", "127.0.0.1:9"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // HF_HUB_OFFLINE=1 stops before any connection
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .env("HF_HOME", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    assert_refused(&o, "HF_HUB_OFFLINE", &["offline", "HF_HUB_OFFLINE=1"]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn every_dictionary_flag_takes_the_hub_form() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let tiny = fixtures().join("tiny-llama");
    let m = tiny.to_str().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    for bad in ["hf:", "hf:org", "hf:org/"] {
        let commands: [Vec<&str>; 5] = [
            vec!["sae", "apply", "--sae", bad, "--input", out, "--out", out],
            vec!["eval-sae", "--model", m, "--sae", bad],
            vec![
                "steer",
                "--model",
                m,
                "--sae",
                bad,
                "--feature",
                "0",
                "--strength",
                "1",
                "--prompt",
                "hi",
            ],
            vec![
                "ablate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--sae",
                bad,
                "--features",
                "0",
            ],
            vec!["features", "build", "--sae", bad, "--model", m],
        ];
        for args in commands {
            let o = glassbox(home, UNREACHABLE, &args);
            let what = format!("{} {bad}", args[0]);
            assert_refused(&o, &what, &["hf:ORG/REPO", &format!("`{bad}`")]);
        }
    }
    assert!(!Path::new(out).exists());
}
