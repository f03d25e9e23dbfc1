//! Attribution graphs over a transcoder-set directory built on the tiny llama (random
//! transcoders, a real graph from glassbox-circuits, a real feature store for layer 1):
//! listing, reading, refusing traversal, interventions through the real model, the
//! layers' feature pages, and a run directory with a graphs/ folder.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::graphs::*;
use common::*;
use glassbox_server::{router, App};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

struct Served {
    app: Arc<App>,
    rt: tokio::runtime::Runtime,
}

impl Served {
    fn new(dir: &std::path::Path) -> Self {
        Served {
            app: Arc::new(App::open(dir).unwrap()),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_time()
                .build()
                .unwrap(),
        }
    }

    fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String) {
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
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, body) = self.call("GET", uri, None);
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}"));
        (s, v)
    }

    fn post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        let (s, body) = self.call("POST", uri, Some(&body.to_string()));
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}"));
        (s, v)
    }
}

fn err(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[test]
fn a_transcoder_set_lists_and_serves_its_graphs() {
    let fx = graph_set();
    let s = Served::new(fx.dir.path());
    assert!(s.app.store.is_none() && s.app.live.is_none());

    let (st, v) = s.get("/api/meta");
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "transcoders");
    assert_eq!(v["graphs"], 1);
    assert_eq!(v["set"]["layers"][0]["features"], false);
    assert_eq!(v["set"]["layers"][1]["features"], true);

    let (st, v) = s.get("/api/graphs");
    assert_eq!(st, StatusCode::OK, "{v}");
    let list = v["graphs"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    let g = &list[0];
    let nodes = fx.graph["nodes"].as_array().unwrap();
    assert_eq!(g["name"], GRAPH_NAME);
    assert_eq!(g["prompt"], "a tiny prompt");
    assert_eq!(g["n_nodes"], nodes.len());
    assert_eq!(g["n_links"], fx.graph["links"].as_array().unwrap().len());
    assert_eq!(g["n_features"], feature_nodes(&fx.graph).len());
    assert!(g["n_features"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(
        g["replacement_score"],
        fx.graph["metadata"]["replacement_score"]
    );
    assert_eq!(
        g["completeness_score"],
        fx.graph["metadata"]["completeness_score"]
    );

    for uri in [
        format!("/api/graphs/{GRAPH_NAME}"),
        format!("/api/graphs/{GRAPH_NAME}.json"),
    ] {
        let (st, v) = s.get(&uri);
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(v == fx.graph, "{uri} is the file's JSON");
    }

    // the run's routes say what this directory is
    let (st, v) = s.get("/api/units");
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(err(&v).contains("transcoder set"), "{v}");

    // pages
    for page in [format!("/graph/{GRAPH_NAME}"), "/graphs".into(), "/".into()] {
        let (st, body) = s.call("GET", &page, None);
        assert_eq!(st, StatusCode::OK, "{page}");
        assert!(body.contains("static/app.js"), "{page}");
    }
    let (st, _) = s.call("GET", "/layer/1/feature/3", None);
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call("GET", "/layer/x/feature/3", None);
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[test]
fn graph_names_cannot_leave_the_graphs_folder() {
    let fx = graph_set();
    let root = fx.dir.path();
    // a file next to graphs/ and a link inside it pointing out
    std::fs::write(root.join("secret.json"), r#"{"secret": "do not serve"}"#).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("secret.json"), root.join("graphs/link.json")).unwrap();
    let s = Served::new(root);

    let (_, v) = s.get("/api/graphs");
    assert_eq!(
        v["graphs"].as_array().unwrap().len(),
        1,
        "no link listed: {v}"
    );

    for (uri, want) in [
        ("/api/graphs/..%2Fsecret", StatusCode::BAD_REQUEST),
        (
            "/api/graphs/..%2F..%2F..%2Fetc%2Fpasswd",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/graphs/%2Fetc%2Fpasswd", StatusCode::BAD_REQUEST),
        ("/api/graphs/..", StatusCode::BAD_REQUEST),
        ("/api/graphs/.hidden", StatusCode::BAD_REQUEST),
        ("/api/graphs/sub%5C..%5Csecret", StatusCode::BAD_REQUEST),
        ("/api/graphs/secret", StatusCode::NOT_FOUND),
        ("/api/graphs/index", StatusCode::NOT_FOUND),
        ("/api/graphs/link", StatusCode::NOT_FOUND),
        ("/api/graphs/nope", StatusCode::NOT_FOUND),
    ] {
        let (st, v) = s.get(uri);
        assert_eq!(st, want, "{uri}: {v}");
        assert!(!v.to_string().contains("do not serve"), "{uri}: {v}");
        assert!(!err(&v).is_empty());
    }
    let (st, v) = s.post(
        "/api/graphs/..%2Fsecret/intervene",
        &json!({"mode": "frozen", "edits": []}),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // over real TCP, with the target sent exactly as written
    let base = start_server(root);
    for target in [
        "/api/graphs/../secret.json",
        "/api/graphs/../../etc/passwd",
        "/api/graphs/..%2f..%2fetc%2fpasswd",
        "/graph/..%2fsecret",
    ] {
        let (st, body) = raw_request(&base, "GET", target, None);
        assert!(st == 400 || st == 404, "{target}: {st} {body}");
        assert!(
            !body.contains("do not serve") && !body.contains("root:"),
            "{target}: {body}"
        );
    }
}

#[test]
fn intervening_on_a_feature_moves_the_output_distribution() {
    let fx = graph_set();
    let s = Served::new(fx.dir.path());
    let uri = format!("/api/graphs/{GRAPH_NAME}/intervene");
    let f = feature_nodes(&fx.graph)[0].clone();
    let edit = |value: Value| json!({"layer": f["layer"], "position": f["ctx_idx"], "feature": f["feature"], "value": value});

    // no edit: the frozen replacement model reproduces the clean distribution
    let (st, v) = s.post(&uri, &json!({"mode": "frozen", "edits": [], "top": 5}));
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["kl"].as_f64().unwrap().abs() < 1e-4, "{v}");
    assert_eq!(v["before"].as_array().unwrap().len(), 5);

    for mode in ["frozen", "live"] {
        let (st, v) = s.post(
            &uri,
            &json!({"mode": mode, "edits": [edit(json!({"scale": 0.0}))], "top": 10}),
        );
        assert_eq!(st, StatusCode::OK, "{mode}: {v}");
        assert_eq!(v["mode"], mode);
        let (before, after) = (
            v["before"].as_array().unwrap(),
            v["after"].as_array().unwrap(),
        );
        assert_eq!(before.len(), 10);
        assert_eq!(after.len(), 10);
        for t in before.iter().chain(after) {
            assert!(
                t["token_str"].as_str().is_some_and(|s| !s.is_empty()),
                "{t}"
            );
            let p = t["prob"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p));
        }
        // the clean distribution is the graph's: its top token is the first logit node
        let top_logit = fx.graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["feature_type"] == "logit")
            .unwrap();
        assert_eq!(before[0]["token"], top_logit["token"], "{v}");
        let probs = |side: &[Value]| -> Vec<(u64, f64)> {
            side.iter()
                .map(|t| (t["token"].as_u64().unwrap(), t["prob"].as_f64().unwrap()))
                .collect()
        };
        assert_ne!(
            probs(before),
            probs(after),
            "{mode}: ablating a graph feature changes the output"
        );
        assert!(v["kl"].as_f64().unwrap() > 1e-7, "{mode}: {v}");
        let applied = &v["edits"][0];
        assert_eq!(applied["new_activation"], 0.0);
        let clean = applied["clean_activation"].as_f64().unwrap();
        let node_act = f["activation"].as_f64().unwrap();
        assert!(
            (clean - node_act).abs() < 1e-3 * node_act.abs().max(1.0),
            "{applied} vs {f}"
        );
    }

    // bad edits: the library's message, as a 400
    for (body, needle) in [
        (
            json!({"edits": [{"layer": 5, "position": 1, "feature": 0, "value": {"set": 1.0}}]}),
            "no transcoder for layer 5",
        ),
        (
            json!({"edits": [{"layer": 1, "position": 1, "feature": 999, "value": {"set": 1.0}}]}),
            "does not exist",
        ),
        (
            json!({"edits": [{"layer": 1, "position": 99, "feature": 0, "value": {"scale": 2.0}}]}),
            "position 99",
        ),
        (
            json!({"edits": [{"layer": 1, "position": 1, "feature": 0, "value": {"set": 1e39}}]}),
            "finite",
        ),
        (
            json!({"edits": [{"layer": 1, "position": 1, "feature": 0, "value": {"double": 1.0}}]}),
            "bad request body",
        ),
        (json!({"mode": "sideways"}), "bad request body"),
        (json!({"top": 0}), "`top`"),
        (json!({"top": 1000}), "`top`"),
        (json!({"edits": [], "extra": 1}), "bad request body"),
    ] {
        let (st, v) = s.post(&uri, &body);
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(err(&v).contains(needle), "{body}: {v}");
    }
    let (st, v) = s.post("/api/graphs/nope/intervene", &json!({}));
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
}

#[test]
fn layer_feature_pages_come_from_each_layers_store() {
    let fx = graph_set();
    let s = Served::new(fx.dir.path());
    let (st, v) = s.get("/api/layers");
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);

    // layer 1 has a store built by glassbox-features from the transcoder itself
    let mut found = false;
    for id in 0..D_SAE {
        let (st, v) = s.get(&format!("/api/layers/1/features/{id}"));
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["layer"], 1);
        assert_eq!(v["id"], id);
        assert_eq!(
            v["logit_effects"]["available"], true,
            "a transcoder writes d_model: {v}"
        );
        if !v["top_examples"].as_array().unwrap().is_empty() {
            found = true;
        }
    }
    assert!(found, "some layer-1 feature has top examples");

    // layer 0 has none: the message names the command that builds it
    let (st, v) = s.get("/api/layers/0/features/3");
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let e = err(&v);
    assert!(e.contains("glassbox features build --sae"), "{e}");
    assert!(e.contains("layer_00"), "{e}");
    assert!(e.contains("--model"), "{e}");

    let (st, v) = s.get("/api/layers/7/features/0");
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(err(&v).contains("no layer 7"), "{v}");
    let (st, v) = s.get(&format!("/api/layers/1/features/{}", D_SAE + 5));
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    for uri in [
        "/api/layers/x/features/0",
        "/api/layers/1/features/-1",
        "/api/layers/1/features/0?nope=1",
    ] {
        let (st, v) = s.get(uri);
        assert_eq!(st, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
}

#[test]
fn a_run_directory_lists_its_graphs_folder_too() {
    let fx = graph_set();
    let run = run_dir();
    let graphs = run.path().join("graphs");
    std::fs::create_dir(&graphs).unwrap();
    std::fs::copy(
        fx.dir.path().join(format!("graphs/{GRAPH_NAME}.json")),
        graphs.join("copied.json"),
    )
    .unwrap();
    std::fs::write(graphs.join("broken.json"), "{not json").unwrap();
    std::fs::write(graphs.join("notes.txt"), "not a graph").unwrap();
    let s = Served::new(run.path());
    let (_, v) = s.get("/api/meta");
    assert_eq!(v["mode"], "run");
    assert_eq!(v["graphs"], 2);
    let (st, v) = s.get("/api/graphs");
    assert_eq!(st, StatusCode::OK, "{v}");
    let list = v["graphs"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["name"], "broken");
    assert!(list[0]["error"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(list[1]["name"], "copied");
    let (st, v) = s.get("/api/graphs/copied");
    assert_eq!(st, StatusCode::OK);
    assert!(v == fx.graph, "the copied graph is served as it is");
    // the run's own routes still work
    let (st, _) = s.get("/api/units");
    assert_eq!(st, StatusCode::OK);
    // a layer's features through the graph's transcoder set (metadata.transcoders)
    let (st, v) = s.get("/api/layers/1/features/0?graph=copied");
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s.get("/api/layers/1/features/0");
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(err(&v).contains("?graph="), "{v}");
    // and interventions load the set the graph names
    let f = feature_nodes(&fx.graph)[0].clone();
    let (st, v) = s.post(
        "/api/graphs/copied/intervene",
        &json!({"edits": [{"layer": f["layer"], "position": f["ctx_idx"], "feature": f["feature"], "value": {"set": 0.0}}]}),
    );
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["kl"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_graphs_metadata_never_makes_the_server_download_a_model() {
    let fx = graph_set();
    let mut g = fx.graph.clone();
    // a HF repo id that is in no cache: resolving it online would start a download
    let repo = "glassbox-test/never-downloaded";
    g["metadata"]["model"] = json!(repo);
    std::fs::write(
        fx.dir.path().join("graphs").join("remote.json"),
        g.to_string(),
    )
    .unwrap();
    let s = Served::new(fx.dir.path());
    let started = std::time::Instant::now();
    let (st, v) = s.post("/api/graphs/remote/intervene", &json!({}));
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        err(&v).contains(repo) && err(&v).contains("never downloads"),
        "{v}"
    );
    // no reachability check, no request: the cache is all it looks at
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
    // the graph itself is still served
    let (st, _) = s.get("/api/graphs/remote");
    assert_eq!(st, StatusCode::OK);
}
