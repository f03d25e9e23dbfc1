//! `glassbox trace`: the attribution graph of a prompt through a transcoder set, pruned,
//! written as JSON (circuit-tracer's shape); `glassbox intervene`: set or scale features
//! and compare the output distribution.

use crate::open::{atomic_write, open_model};
use anyhow::{Context, Result};
use glassbox_circuits::{
    intervene, trace_prompt, AttributionOptions, EditValue, FeatureEdit, InterventionMode,
    NodeKind, PruneOptions, TraceOptions, TranscoderSet,
};
use glassbox_model::Model;
use std::path::PathBuf;

/// Longest prompt `trace` accepts: the dense adjacency grows with the square of
/// (features per token × tokens).
pub use glassbox_circuits::MAX_TRACE_TOKENS;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// A transcoder set (`glassbox train-transcoders --out`)
    #[arg(long)]
    transcoders: PathBuf,
    #[arg(long)]
    prompt: String,
    /// The graph file to write
    #[arg(long)]
    out: PathBuf,
    /// Logit targets (repeatable; each must be one token), instead of the most probable
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Most probable tokens up to this cumulative probability…
    #[arg(long, default_value_t = 0.95)]
    logit_probability: f32,
    /// …but at most this many logit nodes
    #[arg(long, default_value_t = 10)]
    max_logits: usize,
    /// Active features beyond this many (the weakest by activation × decoder norm) are
    /// folded into the error nodes
    #[arg(long, default_value_t = 8192)]
    max_feature_nodes: usize,
    #[arg(long, default_value_t = 0.8)]
    node_threshold: f32,
    #[arg(long, default_value_t = 0.98)]
    edge_threshold: f32,
    /// Targets per batched backward pass
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Longest prompt in tokens (BOS included, when the tokenizer adds one)
    #[arg(long, default_value_t = MAX_TRACE_TOKENS)]
    max_tokens: usize,
}

/// The prompt's ids by the one rule (`open::encode`), within the length limit. Position 0
/// is the attention sink whose features training left out: when it is a word, not BOS,
/// say so, since that word's features cannot appear in the graph.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn open_set(model: &Model, dir: &std::path::Path) -> Result<TranscoderSet> {
    TranscoderSet::load(dir, model.config())
        .with_context(|| format!("transcoder set {}", dir.display()))
}

pub fn run(a: Args) -> Result<()> {
    let model = open_model(&a.model)?;
    let set = open_set(&model, &a.transcoders)?;
    let set_dir = a.transcoders.display().to_string();
    let opts = TraceOptions {
        targets: a.targets.clone(),
        attribution: AttributionOptions {
            max_feature_nodes: a.max_feature_nodes,
            logit_probability: a.logit_probability,
            max_logits: a.max_logits,
            targets: Vec::new(),
            batch: a.batch,
        },
        prune: PruneOptions {
            node_threshold: a.node_threshold,
            edge_threshold: a.edge_threshold,
        },
        max_tokens: a.max_tokens,
    };
    let trace = trace_prompt(&model, &a.model, &set, &set_dir, &a.prompt, &opts)?;
    for note in &trace.notes {
        eprintln!("note: {note}");
    }
    let (graph, pruned, tokens, json) = (&trace.graph, &trace.pruned, &trace.tokens, &trace.json);
    let total_s = trace.seconds;
    let tok = model.tokenizer()?;
    let text = |id: u32| tok.token_text(id);
    let label = model.label();
    atomic_write(&a.out, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string(&json)?)?)
    })?;

    println!("prompt: {:?} → {}", a.prompt, tok.prompt_summary(tokens));
    println!("model {label}; transcoders {set_dir}");
    for i in 0..graph.n_logits {
        if let NodeKind::Logit {
            token, probability, ..
        } = graph.nodes[graph.logit_index(i)].kind
        {
            println!(
                "  logit target {:<16} p = {:.3}",
                format!("{:?}", text(token)),
                probability
            );
        }
    }
    let kept = pruned.node_mask.iter().filter(|&&k| k).count();
    let kept_features = (0..graph.n_features)
        .filter(|&i| pruned.node_mask[i])
        .count();
    println!(
        "graph: {} nodes ({} features) → pruned to {} nodes ({} features), {} edges; nodes kept hold {:.1} % of influence",
        graph.n(),
        graph.n_features,
        kept,
        kept_features,
        pruned.edges.len(),
        pruned.final_influence * 100.0
    );
    println!(
        "replacement score {:.3}, completeness score {:.3}",
        pruned.replacement_score, pruned.completeness_score
    );
    let mut top: Vec<usize> = (0..graph.n_features)
        .filter(|&i| pruned.node_mask[i])
        .collect();
    top.sort_by(|&x, &y| pruned.influence[y].total_cmp(&pruned.influence[x]));
    println!("most influential features (layer/feature@position token: activation, influence):");
    for &i in top.iter().take(12) {
        if let NodeKind::Feature {
            layer,
            position,
            feature,
            activation,
        } = graph.nodes[i].kind
        {
            println!(
                "  L{layer}/{feature}@{position} {:<14} {activation:>8.3}  {:.4}",
                format!("{:?}", text(tokens[position])),
                pruned.influence[i]
            );
        }
    }
    println!(
        "time: attribution {:.1} s, total {:.1} s; peak memory {} MiB",
        graph.seconds,
        total_s,
        peak_rss_mib().map_or("?".into(), |m| format!("{m:.0}"))
    );
    println!("graph written to {}", a.out.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct InterveneArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    transcoders: PathBuf,
    #[arg(long)]
    prompt: String,
    /// `LAYER/FEATURE@POSITION=VALUE` sets an activation, `…*FACTOR` scales it
    /// (`*0` ablates); repeatable. The layer may carry trace's `L` (`L12/345@7*0`).
    /// Positions count the prompt's tokens from 0 as every command does (BOS, when the
    /// tokenizer adds one, is 0), as in the graph.
    #[arg(long = "edit", required = true)]
    edits: Vec<String>,
    /// frozen: the local replacement model (attention, norms, errors fixed at the
    /// prompt's values); live: the real model, edits added through the transcoders
    #[arg(long, default_value = "live")]
    mode: String,
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[arg(long)]
    json: bool,
}

fn parse_edit(spec: &str) -> Result<FeatureEdit> {
    let err = || {
        anyhow::anyhow!(
            "--edit `{spec}`: expected LAYER/FEATURE@POSITION=VALUE or LAYER/FEATURE@POSITION*FACTOR, e.g. L12/345@7*0 (as trace prints features) or 12/345@7*0"
        )
    };
    let (lf, rest) = spec.split_once('@').ok_or_else(err)?;
    let (l, f) = lf.split_once('/').ok_or_else(err)?;
    // `trace` prints features as `L12/345@7`: accept that form as well as the bare one
    let l = l.trim();
    let l = l.strip_prefix(['L', 'l']).unwrap_or(l);
    let (p, value) = if let Some((p, v)) = rest.split_once('=') {
        (p, EditValue::Set(v.trim().parse().map_err(|_| err())?))
    } else if let Some((p, v)) = rest.split_once('*') {
        (p, EditValue::Scale(v.trim().parse().map_err(|_| err())?))
    } else {
        return Err(err());
    };
    Ok(FeatureEdit {
        layer: l.trim().parse().map_err(|_| err())?,
        feature: f.trim().parse().map_err(|_| err())?,
        position: p.trim().parse().map_err(|_| err())?,
        value,
    })
}

pub fn run_intervene(a: InterveneArgs) -> Result<()> {
    let mode = match a.mode.as_str() {
        "frozen" => InterventionMode::Frozen,
        "live" => InterventionMode::Live,
        m => anyhow::bail!("--mode `{m}`: use frozen or live"),
    };
    let edits = a
        .edits
        .iter()
        .map(|s| parse_edit(s))
        .collect::<Result<Vec<_>>>()?;
    let model = open_model(&a.model)?;
    let set = open_set(&model, &a.transcoders)?;
    let (tokens, note) = glassbox_circuits::trace::prompt_tokens(&model, &a.prompt, usize::MAX)?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let state =
        glassbox_circuits::ReplacementState::new(&model.transformer, &set, &tokens, usize::MAX)?;
    let out = intervene(&model.transformer, &set, &state, &edits, mode, a.top)?;
    let tok = model.tokenizer()?;
    if a.json {
        let with_text = |v: &[glassbox_circuits::TokenProb]| {
            v.iter()
                .map(|t| serde_json::json!({"token": t.token, "token_str": tok.token_text(t.token), "prob": t.prob, "logit": t.logit}))
                .collect::<Vec<_>>()
        };
        let v = serde_json::json!({
            "prompt": a.prompt, "input_ids": tokens, "bos": tok.bos_status(&tokens),
            "mode": out.mode, "edits": out.edits, "kl": out.kl,
            "before": with_text(&out.before), "after": with_text(&out.after),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("prompt: {:?} → {}", a.prompt, tok.prompt_summary(&tokens));
    for e in &out.edits {
        println!(
            "L{}/{}@{} ({:?}): activation {:.3} → {:.3}",
            e.edit.layer,
            e.edit.feature,
            e.edit.position,
            tok.token_text(tokens[e.edit.position]),
            e.clean_activation,
            e.new_activation
        );
    }
    println!("{:<24} {:>8}   {:<24} {:>8}", "before", "p", "after", "p");
    for (b, f) in out.before.iter().zip(&out.after) {
        println!(
            "{:<24} {:>8.4}   {:<24} {:>8.4}",
            format!("{:?}", tok.token_text(b.token)),
            b.prob,
            format!("{:?}", tok.token_text(f.token)),
            f.prob
        );
    }
    println!(
        "KL(clean ‖ edited) = {:.4} nats ({:?} mode)",
        out.kl, out.mode
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `trace` prints (`L29/23@10`), `intervene --edit` accepts, as well as the bare form.
    #[test]
    fn an_edit_accepts_the_printed_feature_form() {
        for spec in ["L29/23@10*0", "29/23@10*0", " l29 / 23 @ 10 * 0"] {
            let e = parse_edit(spec).unwrap();
            assert_eq!((e.layer, e.feature, e.position), (29, 23, 10), "{spec}");
            assert!(matches!(e.value, EditValue::Scale(v) if v == 0.0), "{spec}");
        }
        let e = parse_edit("L3/7@2=1.5").unwrap();
        assert!(matches!(e.value, EditValue::Set(v) if v == 1.5));
        for bad in ["X29/23@10*0", "L/23@10*0", "29/23@10", "LL29/23@10*0"] {
            let msg = parse_edit(bad).unwrap_err().to_string();
            assert!(msg.contains("e.g. L12/345@7*0"), "{bad}: {msg}");
        }
    }
}
