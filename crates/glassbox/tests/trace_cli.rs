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
            "Hi there",
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
            "Hi there",
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
            "Hi there",
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
            "Hi there",
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
            "Hi there",
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
            "Hi there",
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
            "Hi there",
            "--edit",
            "7/1@1*0",
        ],
        &["no transcoder for layer 7"],
    );
}

fn json_stdout(args: &[&str]) -> serde_json::Value {
    let o = glassbox(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
}

fn ids_of(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an id list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// One request to a local server; the response body.
fn http_post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    body.to_string()
}

/// The prompt view of `glassbox serve` on a run directory built by the CLI itself.
fn served_prompt_view(model: &str, tmp: &Path, prompt: &str) -> serde_json::Value {
    let run = tmp.join("run");
    glassbox_sae::format::save_saelens(&random_transcoder(1, 576, 64, 7), &run).unwrap();
    std::fs::write(run.join("config.toml"), format!("model = {model:?}\n")).unwrap();
    let corpus = tmp.join("corpus.txt");
    let words = "The river runs past the old mill and under the bridge to the sea. ";
    std::fs::write(&corpus, words.repeat(60)).unwrap();
    let run_s = run.to_str().unwrap();
    let o = glassbox(&[
        "features",
        "build",
        "--run",
        run_s,
        "--corpus",
        corpus.to_str().unwrap(),
        "--context-size",
        "32",
        "--tokens",
        "128",
        "--no-neurons",
    ]);
    assert!(o.status.success(), "features build: {}", text(&o));
    // the id as the dashboards print it is accepted where ids are typed
    let o = glassbox(&["features", "show", run_s, "--feature", "#3"]);
    assert!(
        o.status.success(),
        "features show --feature #3: {}",
        text(&o)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["serve", run_s, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let addr = lines
        .find_map(|l| {
            let l = l.ok()?;
            let at = l.split(" at http://").nth(1)?;
            Some(at.trim_end_matches('/').to_string())
        })
        .expect("serve prints its address");
    let body = serde_json::json!({ "text": prompt }).to_string();
    let reply = http_post(&addr, "/api/prompt", &body);
    let _ = child.kill();
    let _ = child.wait();
    serde_json::from_str(&reply).unwrap()
}

/// Issue "One prompt, one answer": predict, cache, trace, intervene, patch and the
/// server's prompt view see the same token ids, and the commands that run the real
/// model the same next-token distribution; what one prints, the next accepts.
#[test]
fn one_prompt_is_one_token_sequence_and_one_distribution_everywhere() {
    let Some(model) = default_gguf() else { return };
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prompt = "The Eiffel Tower is located in the city of";

    // predict: SmolLM2's tokenizer adds no BOS (HF's `tokenizer(text)` agrees)
    let p = json_stdout(&[
        "predict", "--model", model, "--prompt", prompt, "--json", "--top", "5",
    ]);
    let ids = ids_of(&p["input_ids"]);
    assert_eq!(p["bos"], "none");
    assert_eq!(ids.len(), 10);
    let top: Vec<(u64, f64)> = p["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["prob"].as_f64().unwrap()))
        .collect();
    assert_eq!(p["top"][0]["token"], " Paris");

    // cache: the same ids, and its logits give predict's probabilities
    let cached = tmp.path().join("cache.safetensors");
    let o = glassbox(&[
        "cache",
        "--model",
        model,
        "--prompt",
        prompt,
        "--hooks",
        "blocks.0.hook_resid_pre",
        "--out",
        cached.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("10 tokens, no BOS"),
        "cache echoes the prompt: {}",
        text(&o)
    );
    let t = glassbox_fixtures::load_reference(&cached);
    let cache_ids: Vec<i64> = t["input_ids"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(cache_ids.iter().map(|&i| i as u64).collect::<Vec<_>>(), ids);
    let logits: Vec<Vec<f32>> = t["logits"].get(0).unwrap().to_vec2().unwrap();
    let last = logits.last().unwrap();
    let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = last.iter().map(|&l| (l as f64 - max).exp()).sum();
    let prob = |id: u64| (last[id as usize] as f64 - max).exp() / z;
    for &(id, pr) in &top {
        assert!(
            (prob(id) - pr).abs() < 1e-5,
            "token {id}: cache {} vs predict {pr}",
            prob(id)
        );
    }

    // trace: the same ids in the graph, its logit nodes carry the same probabilities
    let set = tmp.path().join("set");
    write_set(&set, 30, 576);
    let set = set.to_str().unwrap();
    let graph = tmp.path().join("g.json");
    let o = glassbox(&[
        "trace",
        "--model",
        model,
        "--transcoders",
        set,
        "--prompt",
        prompt,
        "--out",
        graph.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("10 tokens, no BOS"), "{}", text(&o));
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&graph).unwrap()).unwrap();
    assert_eq!(ids_of(&g["metadata"]["prompt_token_ids"]), ids);
    let mut logit_nodes = 0;
    for n in g["nodes"].as_array().unwrap() {
        if n["feature_type"] == "logit" {
            let id = n["token"].as_u64().unwrap();
            let pr = n["token_prob"].as_f64().unwrap();
            assert!(
                (prob(id) - pr).abs() < 1e-4,
                "logit node {id}: {pr} vs {}",
                prob(id)
            );
            logit_nodes += 1;
        }
    }
    assert!(logit_nodes >= 1);
    // the feature as trace prints it, pasted into intervene (scaled by 1: a no-op)
    let stdout = String::from_utf8_lossy(&o.stdout);
    let printed = stdout
        .split_whitespace()
        .find(|w| w.starts_with('L') && w.contains('/') && w.contains('@'))
        .unwrap_or_else(|| panic!("trace prints no feature: {stdout}"))
        .to_string();
    let edit = format!("{printed}*1");
    let v = json_stdout(&[
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
        "--top",
        "5",
    ]);
    assert_eq!(ids_of(&v["input_ids"]), ids);
    assert_eq!(v["bos"], "none");
    for (b, &(id, pr)) in v["before"].as_array().unwrap().iter().zip(&top) {
        assert_eq!(b["token"].as_u64().unwrap(), id);
        assert!(
            (b["prob"].as_f64().unwrap() - pr).abs() < 1e-4,
            "{b} vs {pr}"
        );
    }
    assert!(
        v["kl"].as_f64().unwrap().abs() < 1e-6,
        "scaling by 1 changes nothing: {v}"
    );

    // patch: the same clean ids, and its clean logit difference is the cache's
    let patched = tmp.path().join("patch.json");
    let o = glassbox(&[
        "patch",
        "--model",
        model,
        "--clean",
        prompt,
        "--corrupt",
        "The Eiffel Tower is located in the town of",
        "--answer",
        " Paris",
        "--wrong",
        " London",
        "--site",
        "resid_pre",
        "--method",
        "attribution",
        "--no-compare",
        "--json",
        patched.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&patched).unwrap()).unwrap();
    assert_eq!(ids_of(&pj["clean_input_ids"]), ids);
    assert_eq!(pj["bos"], "none");
    let paris = top[0].0 as usize;
    let tok = glassbox_model::TextTokenizer::from_gguf_file(Path::new(model)).unwrap();
    let london = tok.encode(" London").unwrap()[0] as usize;
    let diff = (last[paris] - last[london]) as f64;
    let got = pj["logit_diff_clean"].as_f64().unwrap();
    assert!(
        (got - diff).abs() < 1e-3,
        "patch's clean logit diff {got} vs cache's {diff}"
    );

    // a head as patching prints it (`L9.H6`) is what ablate takes
    let o = glassbox(&[
        "ablate", "--model", model, "--prompt", prompt, "--heads", "L0.H1", "--json",
    ]);
    assert!(o.status.success(), "ablate --heads L0.H1: {}", text(&o));

    // the server's prompt view: the same ids, and position 0 left out as everywhere
    let view = served_prompt_view(model, tmp.path(), prompt);
    assert_eq!(ids_of(&view["input_ids"]), ids, "{view}");
    assert_eq!(view["bos"], "none");
    assert!(view["summary"]
        .as_str()
        .unwrap()
        .starts_with("10 tokens, no BOS"));
    assert!(view["tokens"][0]["excluded"].is_string(), "{view}");
}
