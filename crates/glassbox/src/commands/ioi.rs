use crate::open::{atomic_write, open_model, progress};
use anyhow::Result;
use glassbox_analysis::ioi;
use glassbox_analysis::patching::PatchSite;
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
    let site = PatchSite::parse(&a.site)?;
    let bar = progress(a.n, "patching IOI prompts");
    let report = ioi::study(&model, a.n, a.seed, site, a.template, |p, r| {
        bar.inc(1);
        // suspend, not println: a hidden bar (stderr not a terminal) would drop the line
        bar.suspend(|| {
            println!(
                "{:>7.3} {:>7.3}  {}  ->{} (not{})",
                r.logit_diff_clean, r.logit_diff_corrupt, p.clean, p.answer, p.wrong
            )
        });
    })
    .map_err(|e| match &e {
        glassbox_analysis::AnalysisError::BadInput(m) if m.starts_with("the template") => {
            anyhow::anyhow!("--template must be below {}", ioi::TEMPLATES.len())
        }
        _ => e.into(),
    })?;
    bar.finish_and_clear();
    println!(
        "\n{}/{} prompts prefer the indirect object (logit diff > 0)",
        report.correct,
        report.prompts.len()
    );
    let Some(r) = &report.mean else {
        return Ok(());
    };
    let columns = &report.column_labels;
    let cells = glassbox_analysis::patching::cells_by_effect(&report.mean_grid);
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
        atomic_write(path, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(&report)?)?)
        })?;
        let svg = path.with_extension("svg");
        super::patch::write_heatmap(&svg, r, columns)?;
        println!("wrote {} and {}", path.display(), svg.display());
    }
    Ok(())
}
