use crate::open::{atomic_write, encode, open_model};
use anyhow::{Context, Result};
use glassbox_model::chat::render_user_prompt;
use glassbox_model::{HookFilter, Run, SamplingOptions};
use glassbox_probes::dataset::read_csv;
use glassbox_probes::probe::Probe;
use glassbox_probes::store;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "csv"])))]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Probe directory (from `glassbox probe train`)
    #[arg(long)]
    probe: PathBuf,
    #[arg(long)]
    prompt: Option<String>,
    /// Batch mode: a CSV with statement,label; writes --report
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Report path for batch mode (JSON; an HTML page is written beside it)
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, default_value_t = 40)]
    max_tokens: usize,
    #[arg(long)]
    chat: bool,
    /// Flag a finished sentence when the probe's p(true) falls below this
    #[arg(long, default_value_t = 0.2)]
    threshold: f64,
}

/// One token of a monitored generation and the probe's reading there.
#[derive(serde::Serialize, Clone)]
struct Reading {
    token: String,
    p_true: f64,
    generated: bool,
}

struct Monitored {
    readings: Vec<Reading>,
    continuation: String,
    flags: Vec<String>,
}

fn monitor_one(
    model: &glassbox_model::Model,
    probe: &Probe,
    hook: &str,
    prompt: &str,
    a: &Args,
) -> Result<Monitored> {
    let tok = model.tokenizer()?;
    let text = if a.chat {
        render_user_prompt(tok, prompt)?
    } else {
        prompt.to_string()
    };
    let ids = encode(model, &text)?;
    let mut scores: Vec<f64> = Vec::new();
    let generated = {
        let scores = &mut scores;
        let mut run = Run::new().hook(HookFilter::parse(hook, model.config())?, move |_, x| {
            // x [1, new positions, width]: read the probe at every new token
            let rows: Vec<Vec<f32>> = x.get(0)?.to_vec2()?;
            scores.extend(rows.iter().map(|r| probe.prob(r)));
            Ok(x)
        });
        let opts = SamplingOptions {
            max_new_tokens: a.max_tokens,
            stop_tokens: tok.stop_tokens(),
            ..Default::default()
        };
        model.transformer.generate(&ids, &opts, &mut run, |_| {})?
    };
    {
        let all: Vec<u32> = ids.iter().chain(&generated).copied().collect();
        // the last generated token is never run through the model, so it has no reading
        let mut readings = Vec::new();
        for (i, &t) in all.iter().enumerate().take(scores.len()) {
            readings.push(Reading {
                token: tok.token_text(t),
                p_true: scores[i],
                generated: i >= ids.len(),
            });
        }
        let continuation = tok.decode(&generated)?;
        // a finished sentence of the model's own that the probe reads as false
        let mut flags = Vec::new();
        let mut sentence = String::new();
        for r in readings.iter().filter(|r| r.generated) {
            sentence.push_str(&r.token);
            let end = r.token.trim_end().ends_with(['.', '!', '?']) || r.token.contains('\n');
            if end && !sentence.trim().is_empty() {
                if r.p_true < a.threshold {
                    flags.push(format!(
                        "{:?} (p(true) = {:.2} at its end)",
                        sentence.trim(),
                        r.p_true
                    ));
                }
                sentence.clear();
            }
        }
        Ok(Monitored {
            readings,
            continuation,
            flags,
        })
    }
}

fn colour(p: f64) -> &'static str {
    if p < 0.3 {
        "\x1b[41;97m"
    } else if p < 0.7 {
        "\x1b[43;30m"
    } else {
        "\x1b[42;30m"
    }
}

pub fn run(a: Args) -> Result<()> {
    let model = open_model(&a.model)?;
    let (probe, meta) = store::load(&a.probe)?;
    store::check_compatible(&meta, &probe, &model)?;
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold < 1.0,
        "--threshold must be between 0 and 1"
    );
    if let Some(prompt) = &a.prompt {
        let m = monitor_one(&model, &probe, &meta.hook, prompt, &a)?;
        let tty = std::io::stdout().is_terminal();
        println!(
            "{} probe at {} (held-out AUROC {:.3} on {}); green p(true) > 0.7, red < 0.3",
            meta.method.name(),
            meta.hook,
            meta.test_auroc,
            meta.data
        );
        let mut line = String::new();
        for r in &m.readings {
            if tty {
                line.push_str(&format!("{}{}\x1b[0m", colour(r.p_true), r.token));
            } else {
                line.push_str(&format!("{}[{:.2}]", r.token, r.p_true));
            }
        }
        println!("{line}");
        if m.flags.is_empty() {
            println!("no disagreement flagged (threshold {:.2})", a.threshold);
        }
        for f in &m.flags {
            println!("⚠ the model asserted {f}: the probe reads it as false");
        }
        return Ok(());
    }
    let csv = a.csv.as_ref().expect("clap requires --prompt or --csv");
    let report = a
        .report
        .clone()
        .context("batch mode needs --report OUT.json")?;
    let data = read_csv(csv)?;
    let mut rows = Vec::new();
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for s in &data.statements {
        let m = monitor_one(&model, &probe, &meta.hook, &s.text, &a)?;
        let n_prompt = m.readings.iter().filter(|r| !r.generated).count();
        let p = m.readings[n_prompt - 1].p_true;
        probs.push(p);
        labels.push(s.label);
        rows.push(serde_json::json!({"statement": s.text, "label": s.label, "p_true": p, "continuation": m.continuation, "flags": m.flags, "readings": m.readings}));
    }
    let auroc = glassbox_probes::metrics::auroc(&probs, &labels);
    let acc = glassbox_probes::metrics::accuracy(&probs, &labels, 0.5);
    let v = serde_json::json!({"probe": meta, "csv": csv, "statements": rows.len(), "auroc": auroc, "accuracy": acc, "rows": rows});
    atomic_write(&report, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string_pretty(&v)?)?)
    })?;
    let html_path = report.with_extension("html");
    atomic_write(&html_path, |tmp| Ok(std::fs::write(tmp, html(&v))?))?;
    println!(
        "{} statements: probe p(true) at the statement's end vs labels: AUROC {}, accuracy {acc:.3}; {} continuation(s) flagged",
        rows.len(),
        auroc.map_or("n/a".into(), |x| format!("{x:.3}")),
        v["rows"].as_array().map_or(0, |r| r.iter().filter(|x| !x["flags"].as_array().is_none_or(|f| f.is_empty())).count())
    );
    println!("wrote {} and {}", report.display(), html_path.display());
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A self-contained page: each statement and continuation with tokens shaded by p(true).
fn html(v: &serde_json::Value) -> String {
    let mut body = String::new();
    for r in v["rows"].as_array().into_iter().flatten() {
        let mut tokens = String::new();
        for t in r["readings"].as_array().into_iter().flatten() {
            let p = t["p_true"].as_f64().unwrap_or(0.5);
            let (red, green) = ((255.0 * (1.0 - p)) as u8, (255.0 * p) as u8);
            let weight = if t["generated"].as_bool() == Some(true) {
                "normal"
            } else {
                "bold"
            };
            tokens.push_str(&format!(
                r#"<span title="p(true) = {p:.3}" style="background: rgba({red},{green},80,0.35); font-weight: {weight}">{}</span>"#,
                esc(t["token"].as_str().unwrap_or(""))
            ));
        }
        let flags: Vec<String> = r["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(esc))
            .collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{:.3}</td><td class=t>{}</td><td>{}</td></tr>\n",
            r["label"],
            r["p_true"].as_f64().unwrap_or(f64::NAN),
            tokens,
            flags.join("<br>")
        ));
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>glassbox monitor report</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{border-bottom:1px solid #ddd;padding:4px;vertical-align:top}} .t{{font-family:monospace;white-space:pre-wrap}}</style></head>
<body><h1>Probe monitor report</h1><p>probe: {} at {} — AUROC against labels: {} ({} statements)</p>
<table><tr><th>label</th><th>p(true)</th><th>statement (bold) and continuation, shaded by p(true)</th><th>flags</th></tr>
{body}</table></body></html>
"#,
        esc(&format!("{:?}", v["probe"]["method"])),
        esc(v["probe"]["hook"].as_str().unwrap_or("")),
        v["auroc"],
        v["statements"]
    )
}
