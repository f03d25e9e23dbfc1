//! The JSON API and the page routes, on a fixture run (schema.sql, a random dictionary):
//! through the router directly (tower's oneshot) and over a real TCP port.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use glassbox_server::{router, App};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        Self::on(run_dir())
    }

    fn on(dir: tempfile::TempDir) -> Self {
        let app = Arc::new(App::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Fixture { _dir: dir, app, rt }
    }

    fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        let r = router(self.app.clone());
        self.rt.block_on(async move {
            let resp = r.oneshot(req).await.unwrap();
            let status = resp.status();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, ctype, body) = self.call("GET", uri, None);
        assert!(ctype.starts_with("application/json"), "{uri}: {ctype}");
        (s, serde_json::from_str(&body).unwrap())
    }

    fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let (s, _, body) = self.call("POST", uri, Some(body));
        (s, serde_json::from_str(&body).unwrap())
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn meta_describes_the_run() {
    let f = Fixture::new();
    let (s, v) = f.get("/api/meta");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["meta"]["hook"], "blocks.1.hook_resid_pre");
    assert_eq!(v["counts"]["feature"], N_FEATURES as i64);
    assert_eq!(v["counts"]["neuron"], N_NEURONS as i64);
    assert_eq!(v["dictionary"]["d_sae"], N_FEATURES as i64);
    assert_eq!(v["live"]["max_prompt_tokens"], 256);
    assert_eq!(v["live"]["model_loaded"], false);
}

#[test]
fn unit_list_sorts_searches_and_pages() {
    let f = Fixture::new();
    let (s, v) = f.get("/api/units");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["total"], N_FEATURES as i64);
    assert_eq!(ids(&v), (0..N_FEATURES as i64).collect::<Vec<_>>());
    assert_eq!(v["units"][3]["label"], "cat and kitten");
    assert_eq!(v["units"][3]["top_tokens"][0][0], " cat");

    let (_, v) = f.get("/api/units?kind=feature&sort=max_act&order=desc");
    assert_eq!(ids(&v), vec![5, 4, 3, 2, 1, 0]);
    let (_, v) = f.get("/api/units?sort=density&order=asc&limit=2");
    assert_eq!(ids(&v), vec![4, 0], "dead feature 4 has density 0");
    assert_eq!(v["total"], N_FEATURES as i64);
    let (_, v) = f.get("/api/units?sort=concentration");
    assert_eq!(ids(&v)[0], 0, "concentration defaults to descending");
    let (_, v) = f.get("/api/units?limit=2&offset=2");
    assert_eq!(ids(&v), vec![2, 3]);

    // search: label, top tokens (case-insensitive), id; wildcards are literal
    let (_, v) = f.get("/api/units?q=KITTEN");
    assert_eq!(ids(&v), vec![3]);
    let (_, v) = f.get("/api/units?q=%20cat");
    assert_eq!(ids(&v), vec![3], "matches the top token ' cat'");
    let (_, v) = f.get("/api/units?q=tok1");
    assert_eq!(ids(&v), vec![1]);
    let (_, v) = f.get("/api/units?q=2");
    assert!(ids(&v).contains(&2));
    let (_, v) = f.get("/api/units?q=%25");
    assert_eq!(v["total"], 0, "a literal % matches nothing");

    let (_, v) = f.get("/api/units?kind=neuron");
    assert_eq!(ids(&v), vec![0, 1, 2]);
    assert_eq!(v["units"][1]["label"], "neuron label 1");
}

/// An explanation row as `glassbox explain` writes it.
fn explanation(
    feature: u32,
    model: &str,
    text: Option<&str>,
    detection: Option<f64>,
) -> glassbox_features::explanations::Explanation {
    glassbox_features::explanations::Explanation {
        feature,
        explainer_model: model.into(),
        prompt_version: "glassbox-explain-1".into(),
        scorer_model: model.into(),
        explanation: text.map(str::to_string),
        failure: text.is_none().then(|| "unreadable".to_string()),
        detection,
        fuzzing: detection.map(|d| d - 0.1),
        details: serde_json::json!({"held_out": [3, 2], "non_activating": 5}),
        prompt_tokens: 100,
        completion_tokens: 10,
        seconds: 1.0,
        created: 1,
    }
}

#[test]
fn explanations_show_in_the_list_and_on_the_page_and_are_searchable() {
    let dir = run_dir();
    let mut w = glassbox_features::explanations::ExplanationWriter::open(dir.path()).unwrap();
    w.put(&explanation(
        3,
        "big",
        Some("Whiskers and purring of house cats"),
        Some(0.9),
    ))
    .unwrap();
    w.put(&explanation(3, "small", Some("animals"), Some(0.6)))
        .unwrap();
    w.put(&explanation(1, "big", None, None)).unwrap();
    // written again: replaced, not doubled (and its search entry with it)
    w.put(&explanation(2, "big", Some("dates in spring"), Some(0.7)))
        .unwrap();
    w.put(&explanation(
        2,
        "big",
        Some("months of the year"),
        Some(0.8),
    ))
    .unwrap();
    drop(w);
    let f = Fixture::on(dir);

    let (_, v) = f.get("/api/units");
    assert_eq!(
        v["units"][3]["explanation"], "Whiskers and purring of house cats",
        "the best scored"
    );
    assert_eq!(
        v["units"][1]["explanation"],
        Value::Null,
        "a failure is not an explanation"
    );
    // words of an explanation, stemmed, or the last one a prefix
    let (_, v) = f.get("/api/units?q=whisker");
    assert_eq!(ids(&v), vec![3]);
    let (_, v) = f.get("/api/units?q=cat");
    assert_eq!(ids(&v), vec![3]);
    let (_, v) = f.get("/api/units?q=mont");
    assert_eq!(ids(&v), vec![2]);
    let (_, v) = f.get("/api/units?q=house%20cat");
    assert_eq!(ids(&v), vec![3]);
    let (_, v) = f.get("/api/units?q=month");
    assert_eq!(ids(&v), vec![2]);
    let (_, v) = f.get("/api/units?q=spring");
    assert_eq!(v["total"], 0, "the replaced explanation is no longer found");
    for q in ["%22", "cat%22%20OR", "NEAR(", "*", "a%20AND"] {
        let (s, _) = f.get(&format!("/api/units?q={q}"));
        assert_eq!(
            s,
            StatusCode::OK,
            "{q}: FTS syntax in a query is text, not an error"
        );
    }
    let (_, v) = f.get("/api/units?kind=neuron&q=whisker");
    assert_eq!(v["total"], 0, "explanations belong to features");

    let (_, v) = f.get("/api/units/feature/3");
    let e = v["explanations"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0]["explainer_model"], "big");
    assert_eq!(e[0]["detection"], 0.9);
    assert_eq!(e[1]["explanation"], "animals");
    assert_eq!(e[0]["held_out"], serde_json::json!([3, 2]));
    let (_, v) = f.get("/api/units/feature/1");
    assert_eq!(v["explanations"][0]["failure"], "unreadable");
}

#[test]
fn bad_list_parameters_are_400_with_a_message() {
    let f = Fixture::new();
    for (uri, needle) in [
        ("/api/units?kind=head", "kind"),
        ("/api/units?sort=loudness", "sort"),
        ("/api/units?order=sideways", "order"),
        ("/api/units?limit=0", "limit"),
        ("/api/units?limit=5000", "limit"),
        ("/api/units?limit=ten", "limit"),
        ("/api/units?offset=-1", "offset"),
        ("/api/units?sortt=id", "sortt"),
    ] {
        let (s, v) = f.get(uri);
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{uri}: {msg}");
    }
}

#[test]
fn unit_detail_has_examples_effects_and_neighbours() {
    let f = Fixture::new();
    let (s, u) = f.get("/api/units/feature/3");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(u["label"], "cat and kitten");
    assert_eq!(u["max_act"], 4.0);
    let top = u["top_examples"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["tokens"][1], " cat");
    assert_eq!(top[0]["acts"][1], 4.0);
    assert_eq!(top[0]["focus"], 1);
    assert_eq!(top[1]["tokens"][2], " kitten");
    let bands = u["bands"].as_array().unwrap();
    assert_eq!(bands.len(), 2);
    // band examples show the window from context_start = 1
    assert_eq!(bands[0]["examples"][0]["tokens"][0], " rose");
    assert_eq!(bands[0]["examples"][0]["focus"], 1);
    assert_eq!(bands[1]["min_act"], 0.5);
    assert_eq!(u["logit_effects"]["positive"][0]["token"], " purr");
    assert_eq!(u["logit_effects"]["negative"][1]["token"], " woof");
    assert_eq!(u["neighbours"][0]["id"], 4);
    assert_eq!(u["neighbours"][0]["label"], "feature label 4");
    assert_eq!(u["prev"], 2);
    assert_eq!(u["next"], 4);
    let svg = u["histogram_svg"].as_str().unwrap();
    assert_eq!(svg.matches("<rect").count(), 5, "one bar per bin");

    // neurons: the same statistics, and logit effects and neighbours from their own
    // tables (their output weights)
    let (s, n) = f.get("/api/units/neuron/1");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(n["label"], "neuron label 1");
    assert_eq!(n["top_examples"].as_array().unwrap().len(), 2);
    assert_eq!(n["logit_effects"]["available"], true);
    assert_eq!(n["logit_effects"]["positive"][0]["token"], " sun");
    assert_eq!(n["logit_effects"]["negative"][0]["token"], " rain");
    assert_eq!(
        n["neighbours"][0]["label"], "neuron label 2",
        "a neuron's neighbour is a neuron"
    );
    assert_eq!(n["neighbours"][0]["cosine"], 0.25);
    assert_eq!(n["next"], 2);
    assert!(n["histogram_svg"].as_str().unwrap().contains("<svg"));
}

#[test]
fn unknown_units_are_404_and_malformed_ids_400() {
    let f = Fixture::new();
    let (s, v) = f.get("/api/units/feature/999");
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no feature 999"));
    let (s, _) = f.get("/api/units/neuron/3");
    assert_eq!(s, StatusCode::NOT_FOUND);
    for uri in [
        "/api/units/feature/abc",
        "/api/units/feature/-1",
        "/api/units/feature/1.5",
        "/api/units/head/1",
        "/api/units/feature/..%2F..",
        "/api/units/feature/%2e%2e",
    ] {
        let (s, v) = f.get(uri);
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert!(v["error"].is_string());
    }
    let (s, v) = f.get("/api/nothing");
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("/api/nothing"));
}

#[test]
fn comparison_summarises_both_kinds() {
    let f = Fixture::new();
    let (s, c) = f.get("/api/comparison");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["values"]["feature_mean_concentration"], 0.35);
    assert_eq!(c["kinds"]["feature"]["count"], N_FEATURES as i64);
    assert_eq!(c["kinds"]["feature"]["dead"], 1);
    assert_eq!(c["kinds"]["neuron"]["count"], N_NEURONS as i64);
    assert!(c["concentration_svg"]["neuron"]
        .as_str()
        .unwrap()
        .contains("<rect"));
}

#[test]
fn pages_and_assets_come_from_the_binary() {
    let f = Fixture::new();
    for uri in [
        "/",
        "/index.html",
        "/unit/feature/3",
        "/unit/neuron/0",
        "/prompt",
        "/prompt?text=hi&feature=2",
        "/steer",
        "/compare",
    ] {
        let (s, ctype, body) = f.call("GET", uri, None);
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(ctype.starts_with("text/html"), "{uri}");
        assert!(body.contains(r#"<script src="/static/app.js">"#));
        assert!(!body.contains("{{"), "template placeholders left in {uri}");
    }
    let (s, ctype, js) = f.call("GET", "/static/app.js", None);
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/javascript"));
    assert!(js.contains("/api/units"));
    let (s, ctype, _) = f.call("GET", "/static/style.css", None);
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/css"));
    for uri in [
        "/static/nope.js",
        "/unit/feature/abc",
        "/unit/head/1",
        "/nowhere",
    ] {
        let (s, _, _) = f.call("GET", uri, None);
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
    }
}

/// Paths that try to leave the embedded assets: every one is 404/400 and no response
/// carries a file's contents.
const TRAVERSALS: &[&str] = &[
    "/static/../../etc/passwd",
    "/static/..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/%252e%252e%252fetc%252fpasswd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/static/....//....//etc/passwd",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/../../etc/passwd",
    "/..%2F..%2Fetc%2Fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",
    "/unit/feature/..%2F..%2Fetc%2Fpasswd",
    "/unit/feature/../../../etc/passwd",
    "/api/units/feature/..%2F..",
    "/api/units/feature/../../../etc/passwd",
    "/api/units/..%2F..%2Fetc/passwd",
    "/features.sqlite",
    "/static/features.sqlite",
    "/static/..%2Ffeatures.sqlite",
    "/static/cfg.json",
    "/config.toml",
    "/static/..%2Fconfig.toml",
    "/sae_weights.safetensors",
];

fn assert_no_file_contents(uri: &str, status: u16, body: &str) {
    assert!(
        status == 404 || status == 400,
        "{uri}: status {status}, body {body:.200}"
    );
    for leak in [
        "root:",
        "SQLite format",
        "d_sae",
        "hook_resid_pre",
        "model =",
    ] {
        assert!(!body.contains(leak), "{uri} leaked {leak:?}: {body:.200}");
    }
}

#[test]
fn path_traversal_never_serves_files_via_the_router() {
    let f = Fixture::new();
    for uri in TRAVERSALS {
        let (s, _, body) = f.call("GET", uri, None);
        assert_no_file_contents(uri, s.as_u16(), &body);
    }
}

#[test]
fn path_traversal_never_serves_files_over_tcp() {
    let dir = run_dir();
    let base = start_server(dir.path());
    for uri in TRAVERSALS {
        let (s, body) = raw_request(&base, "GET", uri, None);
        assert_no_file_contents(uri, s, &body);
    }
    // and a sane request on the same server works
    let (s, body) = raw_request(&base, "GET", "/api/units/feature/3", None);
    assert_eq!(s, 200);
    assert!(body.contains("cat and kitten"));
}

#[test]
fn live_requests_validate_before_touching_the_model() {
    let f = Fixture::new();
    for (uri, body, needle) in [
        ("/api/prompt", "{}", "text"),
        ("/api/prompt", "not json", "body"),
        ("/api/prompt", r#"{"text": ""}"#, "empty"),
        (
            "/api/prompt",
            r#"{"text": "hi", "feature": 99}"#,
            "feature 99",
        ),
        ("/api/prompt", r#"{"text": "hi", "feature": -1}"#, "body"),
        ("/api/prompt", r#"{"text": "hi", "colour": 1}"#, "colour"),
        (
            "/api/steer",
            r#"{"prompt": "hi", "features": []}"#,
            "at least one",
        ),
        (
            "/api/steer",
            r#"{"prompt": "hi", "features": [{"id": 99, "strength": 1}]}"#,
            "feature 99",
        ),
        (
            "/api/steer",
            r#"{"prompt": "hi", "features": [{"id": 1, "strength": 1}], "max_new_tokens": 0}"#,
            "max_new_tokens",
        ),
        (
            "/api/steer",
            r#"{"prompt": "hi", "features": [{"id": 1, "strength": 1}], "max_new_tokens": 100000}"#,
            "max_new_tokens",
        ),
        (
            "/api/steer",
            r#"{"prompt": "hi", "features": [{"id": 1, "strength": 1e9}]}"#,
            "strength",
        ),
        (
            "/api/steer",
            r#"{"prompt": "", "features": [{"id": 1, "strength": 1}]}"#,
            "empty",
        ),
    ] {
        let (s, v) = f.post(uri, body);
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{uri} {body}: {msg}");
    }
    // no config.toml and no model in the store's meta that resolves: a clear 503
    let (s, v) = f.post("/api/prompt", r#"{"text": "hello"}"#);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("fixture-model"),
        "{v}"
    );
}

#[test]
fn opening_a_run_without_a_store_or_dictionary_fails_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let e = App::open(empty.path()).err().unwrap().to_string();
    assert!(e.contains("glassbox features build --run"), "{e}");
    assert!(e.contains("features.sqlite"), "{e}");

    let no_dict = tempfile::tempdir().unwrap();
    write_store(no_dict.path());
    let e = format!("{:#}", App::open(no_dict.path()).err().unwrap());
    assert!(e.contains("no dictionary"), "{e}");
    assert!(e.contains("cfg.json"), "{e}");

    // a dictionary found through the store's sae_dir works
    let with_sub = tempfile::tempdir().unwrap();
    write_store(with_sub.path());
    let sub = with_sub.path().join("sae");
    std::fs::create_dir(&sub).unwrap();
    write_dictionary(&sub, 16, "blocks.1.hook_resid_pre");
    let c = rusqlite::Connection::open(with_sub.path().join("features.sqlite")).unwrap();
    c.execute("INSERT INTO meta VALUES ('sae_dir', 'sae')", [])
        .unwrap();
    drop(c);
    let app = App::open(with_sub.path()).unwrap();
    assert_eq!(app.live.as_ref().unwrap().dictionary.d_sae, N_FEATURES);
}

#[test]
fn live_prompt_and_steer_on_the_default_model() {
    let Some(gguf) = glassbox_fixtures::default_gguf() else {
        return;
    };
    let dir = run_dir_with_model(&gguf);
    let app = Arc::new(App::open(dir.path()).unwrap());
    let f = Fixture {
        _dir: dir,
        app,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
    };
    let (s, v) = f.post(
        "/api/prompt",
        r#"{"text": "The cat sat on the mat", "feature": 2}"#,
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let toks = v["tokens"].as_array().unwrap();
    let texts: Vec<&str> = toks.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts.concat(), "The cat sat on the mat");
    assert_eq!(v["truncated"], false);
    assert!(v["message"].is_null());
    assert_eq!(v["feature_label"], "feature label 2");
    // the feature store's rule: position 0 is left out, and says why
    assert!(toks[0]["excluded"].as_str().unwrap().contains("position 0"));
    assert!(toks[1..].iter().all(|t| t["excluded"].is_null()), "{v}");
    let mut any_active = false;
    for t in toks {
        let act = t["act"].as_f64().unwrap();
        assert!(act >= 0.0 && act.is_finite());
        let top = t["top"].as_array().unwrap();
        assert!(top.len() <= 5);
        for w in top.windows(2) {
            assert!(w[0]["act"].as_f64() >= w[1]["act"].as_f64());
        }
        any_active |= !top.is_empty();
    }
    assert!(any_active, "a random ReLU dictionary fires somewhere: {v}");
    assert!(f.app.live.as_ref().unwrap().model_loaded());

    // an overlong prompt is capped with a message, not an error
    let long = "word ".repeat(400);
    let (s, v) = f.post(
        "/api/prompt",
        &serde_json::json!({"text": long}).to_string(),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["n_tokens"], 256);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 256);
    assert!(v["message"].as_str().unwrap().contains("256"));
    assert!(v["tokens"][0]["act"].is_null(), "no feature selected");

    // steering: baseline and steered side by side; a huge push changes the text
    let (s, v) = f.post(
        "/api/steer",
        r#"{"prompt": "The weather today is", "features": [{"id": 1, "strength": 200}], "max_new_tokens": 6}"#,
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let (b, st) = (
        v["baseline"].as_str().unwrap(),
        v["steered"].as_str().unwrap(),
    );
    assert!(!b.is_empty());
    assert_ne!(
        b, st,
        "strength 200 along a random direction changes the output"
    );
    assert_eq!(v["hook"], "blocks.1.hook_resid_pre");
    assert_eq!(v["features"][0]["label"], "feature label 1");
    // zero strength: identical continuations
    let (_, v) = f.post(
        "/api/steer",
        r#"{"prompt": "The weather today is", "features": [{"id": 1, "strength": 0}], "max_new_tokens": 6}"#,
    );
    assert_eq!(v["baseline"], v["steered"]);
    assert_eq!(v["baseline"].as_str().unwrap(), b);
}

/// What the server's greedy continuation must equal: the model's own `generate`.
fn greedy(model: &std::path::Path, prompt: &str, n: usize) -> String {
    let m = glassbox_model::load_model(model).unwrap();
    let tok = m.tokenizer().unwrap();
    let ids = tok.with_bos(tok.encode(prompt).unwrap());
    let opts = glassbox_model::SamplingOptions {
        max_new_tokens: n,
        stop_tokens: tok.eos_token_id.into_iter().collect(),
        ..Default::default()
    };
    let out = m
        .transformer
        .generate(&ids, &opts, &mut glassbox_model::Run::new(), |_| {})
        .unwrap();
    tok.decode(&out).unwrap()
}

#[test]
fn live_views_on_the_tiny_model_match_the_model_run_directly() {
    let model = tiny_text_model();
    let f = Fixture::on(run_dir_on(model.path(), 64, "blocks.1.hook_resid_pre"));
    let (s, v) = f.post(
        "/api/prompt",
        r#"{"text": "The cat sat on the mat", "feature": 1}"#,
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 6);
    let (s, v) = f.post(
        "/api/steer",
        r#"{"prompt": "The weather today is", "features": [{"id": 1, "strength": 0}], "max_new_tokens": 12}"#,
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["baseline"].as_str().unwrap(),
        greedy(model.path(), "The weather today is", 12)
    );
    assert_eq!(v["baseline"], v["steered"], "strength 0 changes nothing");
}

/// A dictionary on `blocks.0.attn.hook_z` (`[seq, 4 heads, 16]` in the tiny llama, 64
/// values per token, heads flattened as the feature store and eval-sae read them).
#[test]
fn live_views_read_a_per_head_dictionary() {
    let hook = "blocks.0.attn.hook_z";
    let model = tiny_text_model();
    let f = Fixture::on(run_dir_on(model.path(), 64, hook));
    let text = "The cat sat on the mat";
    let (s, v) = f.post(
        "/api/prompt",
        &serde_json::json!({"text": text, "feature": 2}).to_string(),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hook"], hook);
    let toks = v["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 6);

    // the same activations computed here: run to the hook, [seq, head·d_head], encode
    let m = glassbox_model::load_model(model.path()).unwrap();
    let ids = m.tokenizer().unwrap().encode(text).unwrap();
    let filter = glassbox_model::HookFilter::parse(hook, &m.transformer.config).unwrap();
    let mut run = glassbox_model::Run::new().cache(filter);
    let out = m
        .transformer
        .run(&glassbox_model::Batch::single(&ids), &mut run)
        .unwrap();
    let x = out.cache.get(hook).unwrap().get(0).unwrap();
    assert_eq!(x.dims(), [6, 4, 16]);
    let x = x.reshape((6, 64)).unwrap();
    let d = &f.app.live.as_ref().unwrap().dictionary;
    let acts: Vec<Vec<f32>> = d.encode(&x).unwrap().to_vec2().unwrap();
    for (t, row) in toks.iter().zip(&acts) {
        let got = t["act"].as_f64().unwrap() as f32;
        assert!(
            (got - row[2]).abs() <= 1e-5 * row[2].abs().max(1.0),
            "{t} vs {row:?}"
        );
    }

    // steering writes the decoder row back split into its heads
    let steer = |strength: f64| {
        f.post(
            "/api/steer",
            &serde_json::json!({"prompt": "The weather today is",
                "features": [{"id": 3, "strength": strength}], "max_new_tokens": 8})
            .to_string(),
        )
    };
    let (s, zero) = steer(0.0);
    assert_eq!(s, StatusCode::OK, "{zero}");
    assert_eq!(zero["hook"], hook);
    assert_eq!(zero["baseline"], zero["steered"]);
    assert_eq!(
        zero["baseline"].as_str().unwrap(),
        greedy(model.path(), "The weather today is", 8)
    );
    let (s, big) = steer(1e4);
    assert_eq!(s, StatusCode::OK, "{big}");
    assert_eq!(big["baseline"], zero["baseline"]);
    assert_ne!(
        big["baseline"], big["steered"],
        "10 000 × a unit row in every head's output changes the continuation"
    );
}

/// A store built before neurons had logit effects and neighbours still opens; its neuron
/// pages say those are missing instead of failing.
#[test]
fn an_older_store_without_neuron_effects_still_opens() {
    let t = tempfile::tempdir().unwrap();
    common::write_store(t.path());
    let p = t.path().join(glassbox_server::STORE_FILE);
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch("DROP TABLE neuron_logit_effects; DROP TABLE neuron_neighbours;")
        .unwrap();
    drop(c);
    let s = glassbox_server::Store::open(&p).unwrap();
    let u = s.unit(glassbox_server::Kind::Neuron, 1).unwrap().unwrap();
    assert_eq!(u["logit_effects"]["available"], false);
    assert!(u["neighbours"].as_array().unwrap().is_empty());
    let f = s.unit(glassbox_server::Kind::Feature, 1).unwrap().unwrap();
    assert_eq!(f["logit_effects"]["available"], true);
}
