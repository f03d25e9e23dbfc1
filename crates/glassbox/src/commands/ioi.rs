use crate::open::{atomic_write, encode_quiet, open_model, progress};
use anyhow::Result;
use glassbox_analysis::ioi;
use glassbox_analysis::metric::single_token;
use glassbox_analysis::patching::{PatchProblem, PatchResult, PatchSite};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Number of prompt pairs
    #[arg(long, default_value_t = 12)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// attn_head (averaged over every prompt) or resid_pre / mlp_out (one template, same positions)
    #[arg(long, default_value = "attn_head")]
    site: String,
    /// Template index for position-wise sites (0–5)
    #[arg(long, default_value_t = 0)]
    template: usize,
    /// Write the dataset, per-prompt logit diffs and the mean patching grid here
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let model = open_model(&a.model)?;
    let tok = model.tokenizer()?;
    let site = PatchSite::parse(&a.site)?;
    anyhow::ensure!(
        a.template < ioi::TEMPLATES.len(),
        "--template must be below {}",
        ioi::TEMPLATES.len()
    );
    let mut prompts = ioi::generate(
        tok,
        a.n * if site == PatchSite::AttnHead {
            1
        } else {
            ioi::TEMPLATES.len()
        },
        a.seed,
    )?;
    if site != PatchSite::AttnHead {
        prompts.retain(|p| p.template == a.template);
    }
    prompts.truncate(a.n);
    let mut sum: Option<Vec<Vec<f32>>> = None;
    let mut rows = Vec::new();
    let mut correct = 0;
    let mut last: Option<PatchResult> = None;
    let bar = progress(prompts.len(), "patching IOI prompts");
    for p in &prompts {
        bar.inc(1);
        let problem = PatchProblem {
            model: &model.transformer,
            clean: encode_quiet(&model, &p.clean)?,
            corrupt: encode_quiet(&model, &p.corrupt)?,
            answer: single_token(tok, &p.answer)?,
            wrong: single_token(tok, &p.wrong)?,
            context: Vec::new(),
        };
        let r = problem.exact(site)?;
        if r.logit_diff_clean > 0.0 {
            correct += 1;
        }
        // suspend, not println: a hidden bar (stderr not a terminal) would drop the line
        bar.suspend(|| {
            println!(
                "{:>7.3} {:>7.3}  {}  ->{} (not{})",
                r.logit_diff_clean, r.logit_diff_corrupt, p.clean, p.answer, p.wrong
            )
        });
        rows.push(serde_json::json!({"prompt": p, "logit_diff_clean": r.logit_diff_clean, "logit_diff_corrupt": r.logit_diff_corrupt}));
        sum = Some(match sum {
            None => r.grid.clone(),
            Some(s) => s
                .iter()
                .zip(&r.grid)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
                .collect(),
        });
        last = Some(r);
    }
    bar.finish_and_clear();
    let n = prompts.len().max(1) as f32;
    let mean: Vec<Vec<f32>> = sum
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v / n).collect())
        .collect();
    println!(
        "\n{correct}/{} prompts prefer the indirect object (logit diff > 0)",
        prompts.len()
    );
    if let Some(mut r) = last {
        r.grid = mean.clone();
        let columns: Vec<String> = match site {
            PatchSite::AttnHead => (0..model.config().n_heads)
                .map(|h| format!("H{h}"))
                .collect(),
            _ => encode_quiet(&model, &prompts[0].clean)?
                .iter()
                .enumerate()
                .map(|(i, &t)| format!("{i}:{}", tok.token_text(t)))
                .collect(),
        };
        let mut cells: Vec<(usize, usize, f32)> = mean
            .iter()
            .enumerate()
            .flat_map(|(l, row)| row.iter().enumerate().map(move |(c, &v)| (l, c, v)))
            .collect();
        cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        println!(
            "mean normalised patching effect, largest cells ({}):",
            r.columns
        );
        for (l, c, v) in cells.iter().take(10) {
            println!(
                "  {:<24} {v:+.3}",
                super::patch::cell_name(*l, &columns[*c], r.columns)
            );
        }
        if let Some(path) = &a.json {
            let v = serde_json::json!({"site": site, "prompts": rows, "mean_grid": mean, "column_labels": columns, "correct": correct});
            atomic_write(path, |tmp| {
                Ok(std::fs::write(tmp, serde_json::to_string_pretty(&v)?)?)
            })?;
            let svg = path.with_extension("svg");
            super::patch::write_heatmap(&svg, &r, &columns)?;
            println!("wrote {} and {}", path.display(), svg.display());
        }
    }
    Ok(())
}
