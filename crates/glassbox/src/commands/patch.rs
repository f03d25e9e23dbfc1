use crate::open::{atomic_write, encode, open_model, with_spinner};
use anyhow::{Context, Result};
use glassbox_analysis::metric::single_token;
use glassbox_analysis::patching::{PatchMethod, PatchResult, PatchSite};
use glassbox_plot::Heatmap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    clean: String,
    /// Same token length as --clean
    #[arg(long)]
    corrupt: String,
    /// The clean run's answer, one token (e.g. " Mary")
    #[arg(long)]
    answer: String,
    /// The competing answer, one token (e.g. " John")
    #[arg(long)]
    wrong: String,
    /// resid_pre (layer × position), attn_head (layer × head) or mlp_out (layer × position)
    #[arg(long, default_value = "resid_pre")]
    site: String,
    /// exact (rerun per cell) or attribution (first order, one forward/backward)
    #[arg(long, default_value = "exact")]
    method: String,
    /// With --method attribution: skip the exact grid used for the correlation
    #[arg(long)]
    no_compare: bool,
    #[arg(long)]
    json: PathBuf,
    /// Heatmap path (default: the JSON path with .svg)
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let model = open_model(&a.model)?;
    let tok = model.tokenizer()?;
    let site = PatchSite::parse(&a.site)?;
    let method = PatchMethod::parse(&a.method, !a.no_compare)?;
    // echo both prompts' tokens and check the answers before the work starts
    for (what, text) in [("clean", &a.clean), ("corrupt", &a.corrupt)] {
        encode(&model, text).with_context(|| format!("--{what}"))?;
    }
    for (flag, text) in [("--answer", &a.answer), ("--wrong", &a.wrong)] {
        single_token(tok, text).context(flag)?;
    }
    let label = match method {
        PatchMethod::Exact => "exact patching, one batch per layer",
        PatchMethod::Attribution { compare: false } => "attribution patching",
        PatchMethod::Attribution { compare: true } => {
            "attribution patching, and exact patching for the comparison"
        }
    };
    let report = with_spinner(label, || {
        Ok(glassbox_analysis::patching::patch_prompts(
            &model, &a.clean, &a.corrupt, &a.answer, &a.wrong, site, method,
        )?)
    })?;
    atomic_write(&a.json, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string_pretty(&report)?)?)
    })?;
    let svg_path = a
        .svg
        .clone()
        .unwrap_or_else(|| a.json.with_extension("svg"));
    write_heatmap(&svg_path, &report.result, &report.column_labels)?;
    print_summary(
        &report.result,
        &report.column_labels,
        report.correlation_with_exact,
    );
    println!("wrote {} and {}", a.json.display(), svg_path.display());
    Ok(())
}

pub fn cell_name(layer: usize, column: &str, columns: &str) -> String {
    if columns == "head" {
        format!("L{layer}.{column}")
    } else {
        format!("L{layer:<3} {column}")
    }
}

pub fn write_heatmap(path: &Path, r: &PatchResult, columns: &[String]) -> Result<()> {
    let rows: Vec<String> = (0..r.grid.len()).map(|l| format!("L{l}")).collect();
    let title = format!(
        "{} patching of {} (clean {:.2}, corrupt {:.2}): normalised logit diff",
        r.method,
        r.site.name(),
        r.logit_diff_clean,
        r.logit_diff_corrupt
    );
    let svg = Heatmap {
        title: &title,
        values: &r.grid,
        row_labels: &rows,
        col_labels: columns,
        row_axis: "layer",
        col_axis: r.columns,
    }
    .to_svg();
    atomic_write(path, |tmp| Ok(std::fs::write(tmp, svg)?))
}

fn print_summary(r: &PatchResult, columns: &[String], correlation: Option<f32>) {
    println!(
        "logit diff: clean {:.3}, corrupt {:.3} ({} patching, site {})",
        r.logit_diff_clean,
        r.logit_diff_corrupt,
        r.method,
        r.site.name()
    );
    let cells = glassbox_analysis::patching::cells_by_effect(&r.grid);
    println!("largest effects (layer, {}: normalised):", r.columns);
    for (l, c, v) in cells.iter().take(8) {
        let column = columns.get(*c).cloned().unwrap_or_default();
        println!("  {:<28} {v:+.3}", cell_name(*l, &column, r.columns));
    }
    if let Some(rho) = correlation {
        println!("correlation of attribution with exact patching over the grid: {rho:.3}");
    }
}
