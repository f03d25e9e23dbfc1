//! The report as one self-contained HTML page: tables and inline SVG plots, no script,
//! no network (it opens from disk, and prints).

use crate::Report;
use serde_json::Value;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) => format!("{v:.3e}"),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn seconds(s: f64) -> String {
    if s >= 86_400.0 {
        format!("{:.1} days", s / 86_400.0)
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{s:.1} s")
    }
}

/// Horizontal bars, one per (label, value), scaled to `max` (or the largest value);
/// every label inside the box.
fn bars(id: &str, title: &str, rows: &[(String, f64)], max: Option<f64>) -> String {
    let (w, row_h, left, top) = (560.0, 24.0, 170.0, 28.0);
    let h = top + row_h * rows.len() as f64 + 10.0;
    let hi = max
        .unwrap_or_else(|| rows.iter().map(|r| r.1).fold(0.0, f64::max))
        .max(1e-12);
    let mut s = format!(
        "<svg id=\"{id}\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\"><text x=\"4\" y=\"16\" class=\"title\">{t}</text>",
        t = esc(title)
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let bw = ((v / hi).clamp(0.0, 1.0)) * (w - left - 90.0);
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{l}</text><rect x=\"{left}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{bh}\" class=\"bar\"/><text x=\"{vx:.1}\" y=\"{ty}\">{v}</text>",
            x = left - 6.0,
            ty = y + 14.0,
            l = esc(label),
            bh = row_h - 6.0,
            vx = left + bw + 4.0,
            v = num(Some(*v))
        );
    }
    s.push_str("</svg>");
    s
}

/// A histogram of scores in [0, 1], ten bins.
fn score_histogram(id: &str, title: &str, scores: &[f64]) -> String {
    if scores.is_empty() {
        return format!("<p id=\"{id}\" class=\"muted\">No scores: the scorer answered no batch in a readable form (a small model as the scorer rarely does; see the README).</p>");
    }
    let mut counts = [0usize; 10];
    for &s in scores {
        counts[((s * 10.0).floor() as usize).min(9)] += 1;
    }
    let rows: Vec<(String, f64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            (
                format!("{:.1}–{:.1}", i as f64 / 10.0, (i + 1) as f64 / 10.0),
                c as f64,
            )
        })
        .collect();
    bars(id, title, &rows, None)
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// The page.
pub fn render(r: &Report) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>glassbox audit — {run}</title><style>{CSS}</style></head><body><h1>Audit report</h1><p class=\"muted\">{run} · {schema} · glassbox {v}</p>",
        run = esc(&r.run),
        schema = esc(&r.schema),
        v = esc(&r.provenance.glassbox)
    );
    // thresholds first: the verdict
    b.push_str("<section id=\"thresholds\"><h2>Thresholds</h2>");
    match &r.thresholds {
        None => b.push_str("<p class=\"muted\">No policy given (--policy THRESHOLDS.toml).</p>"),
        Some(c) => {
            let failed = c.iter().filter(|c| !c.pass).count();
            let _ = write!(
                b,
                "<p class=\"verdict {cls}\">{}</p>",
                if failed == 0 {
                    "PASS: every criterion holds".to_string()
                } else {
                    format!("FAIL: {failed} of {} criteria", c.len())
                },
                cls = if failed == 0 { "pass" } else { "fail" }
            );
            let rows: Vec<Vec<String>> = c
                .iter()
                .map(|c| {
                    vec![
                        esc(&c.key),
                        format!(
                            "{} {}",
                            if c.bound == "min" { "≥" } else { "≤" },
                            num(Some(c.limit))
                        ),
                        num(c.value),
                        format!(
                            "<span class=\"{}\">{}</span>",
                            if c.pass { "pass" } else { "fail" },
                            if c.pass { "pass" } else { "fail" }
                        ),
                        esc(c.note.as_deref().unwrap_or("")),
                    ]
                })
                .collect();
            b.push_str(&table(
                &["criterion", "bound", "measured", "verdict", "note"],
                &rows,
            ));
        }
    }
    b.push_str("</section>");

    b.push_str("<section id=\"coverage\"><h2>Coverage</h2>");
    if r.coverage.is_empty() {
        b.push_str("<p class=\"muted\">No held-out evaluation in the run.</p>");
    }
    for (i, c) in r.coverage.iter().enumerate() {
        let _ = write!(
            b,
            "<h3>{} → {} ({}, {} features, {} held-out tokens)</h3>",
            esc(&c.hook),
            esc(&c.hook_out),
            esc(&c.architecture),
            c.d_sae,
            c.tokens
        );
        let rows: Vec<Vec<String>> = c
            .metrics
            .iter()
            .map(|(k, v)| vec![esc(k), num(*v)])
            .collect();
        b.push_str(&table(&["metric", "value"], &rows));
        let shares: Vec<(String, f64)> = [
            "explained_variance",
            "ce_recovered",
            "kl_recovered",
            "dead_fraction",
            "dense_fraction",
        ]
        .iter()
        .filter_map(|k| {
            c.metrics
                .get(*k)
                .copied()
                .flatten()
                .map(|v| (k.to_string(), v))
        })
        .collect();
        b.push_str(&bars(
            &format!("coverage-plot-{i}"),
            "shares (0 to 1)",
            &shares,
            Some(1.0),
        ));
    }
    b.push_str("</section>");

    b.push_str("<section id=\"explanations\"><h2>Explanations</h2>");
    match &r.explanations {
        None => b.push_str("<p class=\"muted\">No explanations in the run's feature store.</p>"),
        Some(e) => {
            let _ = write!(
                b,
                "<p>{} of {} features explained ({} failed), {} scored by {}; {} at or above detection {:.2}. Median detection {}, fuzzing {}. {} prompt + {} completion tokens.</p>",
                e.explained, e.features, e.failed, e.scored, esc(&e.explainer_models.join(", ")),
                e.explained_share.map_or("–".into(), |s| format!("{:.1} %", s * 100.0)),
                e.threshold, num(e.detection_median), num(e.fuzzing_median), e.prompt_tokens, e.completion_tokens
            );
            b.push_str(&score_histogram(
                "detection-plot",
                "detection scores (features)",
                &e.detection_scores,
            ));
        }
    }
    b.push_str("</section>");

    b.push_str("<section id=\"dark-matter\"><h2>Dark matter</h2>");
    let rows: Vec<Vec<String>> = r
        .dark_matter
        .iter()
        .map(|d| {
            let f = |k: &str| num(d.get(k).and_then(Value::as_f64));
            vec![
                esc(d.get("hook").and_then(Value::as_str).unwrap_or("")),
                f("unexplained_variance"),
                f("ce_gap_nats_per_token"),
                f("ce_not_recovered"),
            ]
        })
        .collect();
    b.push_str(&table(
        &[
            "hook",
            "unexplained variance",
            "CE gap (nats/token)",
            "CE not recovered",
        ],
        &rows,
    ));
    if !r.traced_prompts.is_empty() {
        b.push_str("<h3>The prompt suite through the transcoder set (least explained first)</h3>");
        let rows: Vec<Vec<String>> = r
            .traced_prompts
            .iter()
            .map(|p| {
                let dark = p
                    .darkest
                    .as_ref()
                    .map_or("–".to_string(), |(l, pos, t, s)| {
                        format!(
                            "L{l} @{pos} {} ({:.1} %)",
                            esc(&format!("{t:?}")),
                            s * 100.0
                        )
                    });
                vec![
                    esc(&p.prompt),
                    p.tokens.to_string(),
                    num(Some(p.replacement_score)),
                    num(Some(p.completeness_score)),
                    num(Some(p.error_influence_share)),
                    dark,
                ]
            })
            .collect();
        b.push_str(&table(
            &[
                "prompt",
                "tokens",
                "replacement",
                "completeness",
                "error share",
                "darkest error node",
            ],
            &rows,
        ));
        let scores: Vec<(String, f64)> = r
            .traced_prompts
            .iter()
            .map(|p| (p.prompt.chars().take(24).collect(), p.replacement_score))
            .collect();
        b.push_str(&bars(
            "replacement-plot",
            "replacement score per prompt",
            &scores,
            Some(1.0),
        ));
    }
    b.push_str("</section>");

    b.push_str("<section id=\"lie-detector\"><h2>The lie detector</h2>");
    if r.lie_detector.is_empty() {
        b.push_str("<p class=\"muted\">No probes given.</p>");
    } else {
        let rows: Vec<Vec<String>> = r
            .lie_detector
            .iter()
            .map(|p| {
                vec![
                    esc(&p.data),
                    esc(&p.hook),
                    num(p.test_auroc),
                    num(p.test_accuracy),
                    esc(&p.dir),
                ]
            })
            .collect();
        b.push_str(&table(
            &["dataset", "hook", "held-out AUROC", "accuracy", "folder"],
            &rows,
        ));
        let au: Vec<(String, f64)> = r
            .lie_detector
            .iter()
            .filter_map(|p| p.test_auroc.map(|a| (p.data.clone(), a)))
            .collect();
        b.push_str(&bars("probe-plot", "held-out AUROC", &au, Some(1.0)));
    }
    if let Some(g) = &r.generalisation {
        b.push_str("<h3>Generalisation (AUROC of each probe on each dataset)</h3>");
        let mut head: Vec<&str> = vec!["probe"];
        head.extend(g.datasets.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = g
            .probes
            .iter()
            .zip(&g.auroc)
            .map(|(p, row)| {
                let mut cells = vec![esc(p)];
                cells.extend(row.iter().map(|v| {
                                        let shade = v.map_or(0.0, |v| ((v - 0.5) * 2.0).clamp(0.0, 1.0));
                    // white text on the darker half, so every value stays readable
                    let ink = if shade > 0.55 { "#fff" } else { "inherit" };
                    format!("<span class=\"cell\" style=\"background: rgba(74, 120, 194, {shade:.2}); color: {ink}\">{}</span>", num(*v))
                }));
                cells
            })
            .collect();
        b.push_str(&table(&head, &rows));
        let rows: Vec<Vec<String>> = g
            .false_flags
            .iter()
            .map(|f| {
                vec![
                    esc(&f.probe),
                    esc(&f.dataset),
                    format!("{} of {}", f.flagged, f.true_statements),
                    num(Some(f.rate)),
                    format!("p(true) < {}", f.threshold),
                ]
            })
            .collect();
        if !rows.is_empty() {
            b.push_str("<h3>False flags on held-out true statements</h3>");
            b.push_str(&table(
                &["probe", "dataset", "flagged", "rate", "flag when"],
                &rows,
            ));
        }
    }
    b.push_str("</section>");

    b.push_str("<section id=\"cost\"><h2>Cost</h2>");
    let c = &r.cost;
    let rows: Vec<Vec<String>> = c
        .stages
        .iter()
        .map(|s| {
            vec![
                esc(&s.stage),
                seconds(s.wall_s),
                s.cpu_s.map_or("–".into(), seconds),
                s.peak_rss_bytes
                    .map_or("–".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
                s.tokens.map_or("–".into(), |t| t.to_string()),
                num(s.flops),
                format!("{:.3}", s.watt_hours),
                esc(&s.source),
            ]
        })
        .collect();
    b.push_str(&table(
        &[
            "stage", "wall", "CPU", "peak RSS", "tokens", "FLOPs", "Wh", "from",
        ],
        &rows,
    ));
    let _ = write!(
        b,
        "<p>In all {} and {:.3} Wh at {} W.</p>",
        seconds(c.total_wall_s),
        c.total_watt_hours,
        c.watts
    );
    let walls: Vec<(String, f64)> = c
        .stages
        .iter()
        .map(|s| (s.stage.clone(), s.wall_s))
        .collect();
    if !walls.is_empty() {
        b.push_str(&bars("cost-plot", "wall seconds per stage", &walls, None));
    }
    if let Some(p) = &c.projection {
        let _ = write!(
            b,
            "<h3>Projection</h3><p>The same study on {} ({} features, {:.2e} tokens): {:.3e} FLOPs per token against {:.3e} here → about {} and {:.1} kWh on this machine.</p><p class=\"muted\">{}</p>",
            esc(&p.target.name), p.d_sae, p.tokens, p.flops_per_token_target, p.flops_per_token_measured, seconds(p.seconds), p.watt_hours / 1000.0, esc(&p.formula)
        );
    }
    b.push_str("</section>");

    b.push_str("<section id=\"provenance\"><h2>Provenance</h2>");
    let p = &r.provenance;
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("–"));
    let rows = vec![
        vec!["glassbox".into(), esc(&p.glassbox)],
        vec!["model".into(), opt(&p.model)],
        vec![
            "model sha256".into(),
            format!("<code>{}</code>", opt(&p.model_sha256)),
        ],
        vec!["corpus".into(), opt(&p.corpus)],
        vec![
            "corpus sha256".into(),
            format!("<code>{}</code>", opt(&p.corpus_sha256)),
        ],
        vec![
            "seeds".into(),
            format!(
                "<code>{}</code>",
                esc(&serde_json::to_string(&p.seeds).unwrap_or_default())
            ),
        ],
    ];
    b.push_str(&table(&["", ""], &rows));
    if !p.commands.is_empty() {
        b.push_str("<h3>Commands</h3><ol class=\"commands\">");
        for (stage, cmd, v) in &p.commands {
            let _ = write!(
                b,
                "<li><b>{}</b> <code>{}</code> <span class=\"muted\">{}</span></li>",
                esc(stage),
                esc(&cmd.join(" ")),
                esc(v)
            );
        }
        b.push_str("</ol>");
    }
    b.push_str("</section>");

    b.push_str("<section id=\"missing\"><h2>Not in this report</h2>");
    if r.missing.is_empty() {
        b.push_str("<p>Nothing: every section is filled.</p>");
    } else {
        b.push_str("<ul>");
        for m in &r.missing {
            let _ = write!(b, "<li>{}</li>", esc(m));
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");

    b.push_str("<section id=\"compliance\"><h2>Documentation requirements</h2><p class=\"muted\">Which fields of this report hold facts a requirement asks about. Not a claim of compliance.</p>");
    let rows: Vec<Vec<String>> = r
        .compliance
        .iter()
        .map(|c| vec![esc(&c.source), esc(&c.asks_for), esc(&c.fields.join(", "))])
        .collect();
    b.push_str(&table(&["requirement", "asks for", "report fields"], &rows));
    b.push_str("</section></body></html>\n");
    b
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#1d1d1f}\
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left;vertical-align:top}\
.muted{color:#666}.pass{color:#0a7d32;font-weight:600}.fail{color:#b3261e;font-weight:600}.verdict{font-size:1.2em}\
svg.plot{display:block;margin:.5em 0 1.5em;font-size:12px}svg .bar{fill:#4a78c2}svg .title{font-weight:600}code{font-size:12px;word-break:break-all}";
