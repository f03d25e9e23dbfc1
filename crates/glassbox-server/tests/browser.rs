//! End to end in a real headless Chromium: the server on a real port, the page's script
//! rendering from the API, assertions on the DOM Chromium dumps.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`). Without it the tests fail
//! under CI and print SKIPPED elsewhere.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> Option<PathBuf> {
    let p = PathBuf::from(CHROMIUM);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI needs chromium for the browser tests: {CHROMIUM} is missing; install it with `apt-get install -y chromium`");
    }
    eprintln!("SKIPPED: chromium not installed ({CHROMIUM}); `apt-get install -y chromium` to run the browser tests");
    None
}

/// Loads `url` in headless Chromium and returns the DOM after the page's script ran.
fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 180 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = out.join().unwrap();
    let err = err.join().unwrap();
    assert!(
        dom.contains("</html>"),
        "chromium produced no DOM for {url}; stderr:\n{err}"
    );
    for junk in ["[object ", ">null<", ">undefined<", "NaN"] {
        assert!(!dom.contains(junk), "{url} renders {junk:?}:\n{dom}");
    }
    dom
}

/// The text between `<tag ... id="id" ...>` and the tag's end (no nesting of the same tag).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in:\n{dom}"));
    &dom[at..]
}

#[test]
fn feature_page_list_and_compare_render_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let run = run_dir();
    let base = start_server(run.path());

    let dom = dump_dom(&chromium, &format!("{base}/unit/feature/3"));
    assert!(
        dom.contains(r#"data-state="ready""#),
        "page did not finish:\n{dom}"
    );
    assert!(dom.contains("Feature 3"), "{dom}");
    assert!(dom.contains("cat and kitten"), "the label");
    let top = element(&dom, "top-examples");
    // example tokens, highlighted by activation, value on hover
    assert!(top.contains(r#"data-act="4""#), "{top}");
    assert!(top.contains("> cat</span>"), "{top}");
    assert!(top.contains(" kitten</span>"), "{top}");
    assert!(
        top.contains("act 4.00"),
        "hover title with the value: {top}"
    );
    assert!(
        top.contains("rgba(232, 121, 12"),
        "background intensity: {top}"
    );
    assert!(
        dom.contains(r#"<svg class="histogram""#),
        "inline SVG histogram"
    );
    // every label inside the plot's box (the last tick label was cut off), checked by
    // the page once laid out; and the activation-weighted overlay
    assert!(dom.contains(r#"data-layout="ok""#), "{dom}");
    assert!(!dom.contains(r#"data-layout="overflow""#), "{dom}");
    assert!(dom.contains(r#"<polyline class="mass""#), "{dom}");
    assert!(element(&dom, "bands").contains(" rose</span>"));
    let effects = element(&dom, "logit-effects");
    assert!(effects.contains(" purr") && effects.contains(" woof"));
    assert!(element(&dom, "neighbours").contains(r#"href="/unit/feature/4""#));

    // neurons: same page, same statistics
    let dom = dump_dom(&chromium, &format!("{base}/unit/neuron/1"));
    assert!(
        dom.contains("Neuron 1") && dom.contains("neuron label 1"),
        "{dom}"
    );
    assert!(element(&dom, "top-examples").contains(r#"class="tok focus on""#));

    // the list, with a search from the URL
    let dom = dump_dom(&chromium, &format!("{base}/?q=kitten"));
    let table = element(&dom, "list-table");
    assert!(table.contains("cat and kitten"), "{table}");
    // a token chip shows its leading space, so " kitten" and "kitten" cannot look alike
    assert!(table.contains(">␣kitten</span>"), "{table}");
    assert!(
        !table.contains("feature label 1"),
        "the search filters: {table}"
    );
    assert!(table.contains(r#"href="/unit/feature/3""#));

    let dom = dump_dom(&chromium, &format!("{base}/compare"));
    let cmp = element(&dom, "compare-table");
    assert!(cmp.contains("mean concentration"), "{cmp}");
    // no raw dump of the stored table after it (snake_case keys, "4096.0")
    assert!(!dom.contains("Stored comparison"), "{dom}");
    assert!(!dom.contains("mean_concentration"), "{dom}");

    // a neuron page: logit effects and neighbours from its output weights, linking neurons
    let dom = dump_dom(&chromium, &format!("{base}/unit/neuron/1"));
    let effects = element(&dom, "logit-effects");
    assert!(
        effects.contains(" sun") && effects.contains(" rain"),
        "{effects}"
    );
    let near = element(&dom, "neighbours");
    assert!(near.contains("Nearest neurons"), "{near}");
    assert!(near.contains(r#"href="/unit/neuron/2""#), "{near}");

    // an unknown unit: the API's message shown, not a blank page
    let dom = dump_dom(&chromium, &format!("{base}/unit/feature/999"));
    assert!(dom.contains("no feature 999"), "{dom}");
}

#[test]
fn explanations_and_the_audit_report_render_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let run = run_dir();
    let mut w = glassbox_features::explanations::ExplanationWriter::open(run.path()).unwrap();
    w.put(&glassbox_features::explanations::Explanation {
        feature: 3,
        explainer_model: "judge-7b".into(),
        prompt_version: "glassbox-explain-1".into(),
        scorer_model: "judge-7b".into(),
        explanation: Some("the word cat and other small pets".into()),
        failure: None,
        detection: Some(0.875),
        fuzzing: Some(0.75),
        details: serde_json::json!({"seed": 1, "held_out": [2], "non_activating": 2}),
        prompt_tokens: 900,
        completion_tokens: 40,
        seconds: 2.0,
        created: 1,
    })
    .unwrap();
    drop(w);
    // a run's held-out evaluation as train-sae writes it, and one ledger line
    std::fs::write(
        run.path().join("metrics.json"),
        serde_json::json!({"d_in": 16, "d_sae": 6, "d_out": 16, "hook": "blocks.1.hook_resid_pre",
            "train_tokens": 4096, "train_seconds_this_session": 3.0,
            "eval": {"hook": "blocks.1.hook_resid_pre", "hook_out": "blocks.1.hook_resid_pre",
                     "architecture": "topk", "d_sae": 6, "tokens": 512, "fvu": 0.21,
                     "explained_variance": 0.79, "l0": 3.0, "dead_fraction": 1.0 / 6.0,
                     "dense_fraction": 0.0, "ce_clean": 3.1, "ce_spliced": 3.3,
                     "ce_recovered": 0.9, "kl_recovered": 0.85, "context_size": 64}})
        .to_string(),
    )
    .unwrap();
    let meter = glassbox_audit::ledger::Meter::start("train");
    glassbox_audit::ledger::append(run.path(), &meter.finish(4096, 1e9)).unwrap();
    let input = glassbox_audit::AuditInput {
        run: run.path().to_path_buf(),
        probes: Vec::new(),
        transcoders: None,
        model_path: None,
        model_shape: None,
        watts: 65.0,
        explained_threshold: 0.7,
        target: glassbox_audit::cost::ModelShape::llama_3_2_1b(),
        target_tokens: 1e9,
        generalisation: None,
        traced: None,
    };
    let mut report = glassbox_audit::gather(&input).unwrap();
    let policy = glassbox_audit::policy::Policy::parse(
        "[thresholds]\nmin_ce_recovered = 0.8\nmax_dead_fraction = 0.1\n",
    )
    .unwrap();
    report.thresholds = Some(policy.judge(&report.metrics(), &|m| report.why_missing(m)));
    glassbox_audit::write(&report, &run.path().join("audit")).unwrap();
    let base = start_server(run.path());

    let dom = dump_dom(&chromium, &format!("{base}/unit/feature/3"));
    let expl = element(&dom, "explanations");
    assert!(expl.contains("the word cat and other small pets"), "{expl}");
    assert!(
        expl.contains("0.875") && expl.contains("judge-7b"),
        "{expl}"
    );
    // the nav links the report once the run has one
    assert!(dom.contains(r#"<a href="/audit">Audit</a>"#), "{dom}");
    let dom = dump_dom(&chromium, &format!("{base}/?q=pets"));
    let table = element(&dom, "list-table");
    assert!(
        table.contains("cat and kitten") && table.contains("small pets"),
        "{table}"
    );

    let dom = dump_dom(&chromium, &format!("{base}/audit"));
    for id in [
        "thresholds",
        "coverage",
        "explanations",
        "dark-matter",
        "lie-detector",
        "cost",
        "provenance",
        "missing",
        "compliance",
    ] {
        element(&dom, id);
    }
    assert!(dom.contains("FAIL: 1 of 2 criteria"), "{dom}");
    for plot in ["coverage-plot-0", "detection-plot", "cost-plot"] {
        let svg = element(&dom, plot);
        assert!(svg.contains("<rect"), "{plot} has bars: {svg}");
    }
    assert!(
        element(&dom, "coverage").contains("0.2100"),
        "FVU as metrics.json has it"
    );
    assert!(element(&dom, "compliance").contains("MEASURE 2.9"));
}

#[test]
fn static_export_renders_from_disk_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let run = run_dir();
    let out = tempfile::tempdir().unwrap();
    glassbox_server::export_static(run.path(), out.path()).unwrap();

    let url = format!(
        "file://{}",
        out.path().join("unit/feature/3.html").display()
    );
    let dom = dump_dom(&chromium, &url);
    assert!(dom.contains(r#"data-state="ready""#), "{dom}");
    assert!(dom.contains("cat and kitten"));
    assert!(element(&dom, "top-examples").contains("> cat</span>"));
    assert!(dom.contains(r#"<svg class="histogram""#));
    // links stay inside the export
    assert!(
        dom.contains(r#"<a href="../../compare.html">Compare</a>"#),
        "nav stays relative"
    );
    assert!(element(&dom, "neighbours").contains(r#"href="../../unit/feature/4.html""#));

    let url = format!("file://{}", out.path().join("index.html").display());
    let dom = dump_dom(&chromium, &url);
    let t = element(&dom, "list-table");
    assert!(t.contains(r#"href="./unit/feature/3.html""#), "{dom}");

    let url = format!("file://{}", out.path().join("prompt.html").display());
    let dom = dump_dom(&chromium, &url);
    assert!(dom.contains("glassbox serve"), "{dom}");
}

#[test]
fn prompt_view_renders_tokens_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let Some(gguf) = glassbox_fixtures::default_gguf() else {
        return;
    };
    let run = run_dir_with_model(&gguf);
    let base = start_server(run.path());
    // load the model first so the page's request is quick
    let (s, body) = raw_request(&base, "POST", "/api/prompt", Some(r#"{"text": "warm up"}"#));
    assert_eq!(s, 200, "{body}");

    let dom = dump_dom(
        &chromium,
        &format!("{base}/prompt?text=The%20cat%20sat%20on%20the%20mat&feature=2"),
    );
    assert!(dom.contains(r#"data-state="ready""#), "{dom}");
    let toks = element(&dom, "prompt-tokens");
    let toks = &toks[..toks.find("</div>").unwrap()];
    for t in [
        ">The</span>",
        "> cat</span>",
        "> sat</span>",
        "> mat</span>",
    ] {
        assert!(toks.contains(t), "token {t} missing: {toks}");
    }
    // position 0 is left out of every statistic: greyed, its reason on hover, no colour
    assert_eq!(toks.matches("data-act=\"").count(), 5, "{toks}");
    assert!(toks.contains("data-index=\"5\""));
    let first = &toks[toks
        .find("data-excluded")
        .expect("position 0 marked as excluded")..];
    assert!(first.contains("data-index=\"0\""), "{first}");
    assert!(toks.contains("position 0: the attention sink"), "{toks}");
    assert_eq!(toks.matches("data-excluded").count(), 1, "{toks}");
    assert!(
        dom.contains("feature label 2"),
        "the selected feature's label"
    );
    assert!(dom.contains("most active features"));
    assert!(
        dom.contains(r#"href="/unit/feature/"#),
        "top features link to pages"
    );
}

#[test]
fn steering_playground_renders_side_by_side_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let Some(gguf) = glassbox_fixtures::default_gguf() else {
        return;
    };
    let run = run_dir_with_model(&gguf);
    let base = start_server(run.path());
    let (s, body) = raw_request(&base, "POST", "/api/prompt", Some(r#"{"text": "warm up"}"#));
    assert_eq!(s, 200, "{body}");
    let dom = dump_dom(
        &chromium,
        &format!("{base}/steer?prompt=The%20weather%20today%20is&feature=1&strength=200&max_new_tokens=5"),
    );
    assert!(dom.contains(r#"data-state="ready""#), "{dom}");
    let baseline = element(&dom, "steer-baseline");
    let steered = element(&dom, "steer-steered");
    assert!(baseline.contains("The weather today is"), "{baseline}");
    assert!(steered.contains(r#"class="generated""#), "{steered}");
    // what is added, said in words, with the feature's label
    let summary = element(&dom, "steer-summary");
    assert!(
        summary.contains("the decoder row of feature #1") && summary.contains("feature label 1"),
        "{summary}"
    );
    assert!(summary.contains("the added vector’s norm is"), "{summary}");
    // the next-token effect, as the CLI reports it
    assert!(
        element(&dom, "steer-kl").contains("KL(baseline ‖ steered) = "),
        "{dom}"
    );
    let effect = element(&dom, "steer-effect");
    assert!(
        effect.contains("Δ log p") && effect.matches("<tr>").count() >= 6,
        "{effect}"
    );
    // the label and strengths worth trying, next to the feature's input
    assert!(
        dom.contains(r#"class="label f-label">feature label 1"#),
        "{dom}"
    );
    assert_eq!(dom.matches(r#"class="f-suggest""#).count(), 4, "{dom}");
}

#[test]
fn attribution_graph_renders_every_node_and_opens_a_feature_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let fx = common::graphs::graph_set();
    let base = start_server(fx.dir.path());
    let nodes = fx.graph["nodes"].as_array().unwrap();
    let features = common::graphs::feature_nodes(&fx.graph);
    let name = common::graphs::GRAPH_NAME;
    let pick = |layer: i64| {
        features
            .iter()
            .find(|n| n["layer"] == layer)
            .unwrap_or_else(|| panic!("the graph has no layer-{layer} feature"))
            .clone()
    };
    let (f1, f0) = (pick(1), pick(0));
    let id1 = f1["node_id"].as_str().unwrap();
    let title1 = format!(
        "L1/{}@{}",
        f1["feature"].as_u64().unwrap(),
        f1["ctx_idx"].as_u64().unwrap()
    );
    // load the model and the set first so the page's intervention is quick
    let (s, body) = raw_request(
        &base,
        "POST",
        &format!("/api/graphs/{name}/intervene"),
        Some("{}"),
    );
    assert_eq!(s, 200, "{body}");

    // a click on a layer-1 feature (its layer has a feature store), then Run
    let dom = dump_dom(
        &chromium,
        &format!("{base}/graph/{name}?select={id1}&run=1"),
    );
    assert!(
        dom.contains(r#"data-state="ready""#),
        "page did not finish:\n{dom}"
    );
    assert_eq!(
        dom.matches(r#"class="gnode "#).count(),
        nodes.len(),
        "one element per node of the JSON"
    );
    assert!(dom.contains(r#"id="graph-svg""#));
    assert!(dom.contains(r#"class="gedge "#), "edges drawn");
    assert!(dom.contains(">Graphs</a>"), "nav link");
    assert!(dom.contains(r#"id="score-replacement""#));
    assert!(dom.contains(r#"id="score-completeness""#));
    assert!(
        dom.contains(&format!(r#"class="gnode t-feature sel" data-id="{id1}""#)),
        "the clicked node is selected"
    );
    let panel = element(&dom, "graph-panel");
    let panel = &panel[..panel.find("</aside>").unwrap()];
    assert!(panel.contains(&format!(r#"data-node="{id1}""#)), "{panel}");
    assert!(panel.contains(&title1), "{panel}");
    assert!(panel.contains("strongest inputs"), "{panel}");
    assert!(panel.contains("strongest outputs"), "{panel}");
    assert!(
        panel.contains(r#"id="panel-dashboard" data-state="ready""#),
        "the layer's feature store answered: {panel}"
    );
    assert!(panel.contains("Top activations"), "{panel}");
    // the intervention panel lists the feature and ran
    let iv = element(&dom, "intervene-panel");
    assert!(iv.contains(&format!(r#"data-node="{id1}""#)), "{iv}");
    assert!(iv.contains(r#"id="iv-out" data-state="ready""#), "{iv}");
    assert!(
        iv.contains(r#"id="iv-kl""#)
            && iv.contains(r#"id="iv-before""#)
            && iv.contains(r#"id="iv-after""#),
        "{iv}"
    );

    // a layer-0 feature: no store there, the panel says how to build it; shift-click adds
    let id0 = f0["node_id"].as_str().unwrap();
    let dom = dump_dom(
        &chromium,
        &format!("{base}/graph/{name}?select={id1},{id0}"),
    );
    let panel = element(&dom, "graph-panel");
    let panel = &panel[..panel.find("</aside>").unwrap()];
    assert!(panel.contains(&format!(r#"data-node="{id0}""#)), "{panel}");
    assert!(panel.contains("glassbox features build --sae"), "{panel}");
    assert!(dom.contains("2 selected"), "shift-click keeps both");

    // the graph list and a layer's feature page
    let dom = dump_dom(&chromium, &format!("{base}/"));
    assert!(
        element(&dom, "graph-list").contains(&format!(r#"href="/graph/{name}""#)),
        "{dom}"
    );
    let dom = dump_dom(
        &chromium,
        &format!("{base}/layer/1/feature/{}", f1["feature"].as_u64().unwrap()),
    );
    assert!(dom.contains(r#"data-state="ready""#), "{dom}");
    assert!(dom.contains("Layer 1 · feature"), "{dom}");
}
