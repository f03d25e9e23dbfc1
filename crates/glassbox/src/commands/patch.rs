use crate::open::{atomic_write, encode, open_model, with_spinner};
use anyhow::{Context, Result};
use glassbox_analysis::metric::single_token;
use glassbox_analysis::patching::{grid_correlation, PatchProblem, PatchResult, PatchSite};
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
    let problem = PatchProblem {
        model: &model.transformer,
        clean: encode(&model, &a.clean)?,
        corrupt: encode(&model, &a.corrupt)?,
        answer: single_token(tok, &a.answer).context("--answer")?,
        wrong: single_token(tok, &a.wrong).context("--wrong")?,
        context: Vec::new(),
    };
    problem.validate()?;
    let (result, exact, correlation) = match a.method.as_str() {
        "exact" => (
            with_spinner("exact patching, one batch per layer", || {
                Ok(problem.exact(site)?)
            })?,
            None,
            None,
        ),
        "attribution" => {
            let attr = with_spinner("attribution patching", || Ok(problem.attribution(site)?))?;
            if a.no_compare {
                (attr, None, None)
            } else {
                let exact = with_spinner("exact patching for the comparison", || {
                    Ok(problem.exact(site)?)
                })?;
                let r = grid_correlation(&attr.grid, &exact.grid);
                (attr, Some(exact), Some(r))
            }
        }
        other => anyhow::bail!("unknown --method `{other}`; use exact or attribution"),
    };
    let tokens: Vec<String> = problem.clean.iter().map(|&t| tok.token_text(t)).collect();
    let columns: Vec<String> = match site {
        PatchSite::AttnHead => (0..model.config().n_heads)
            .map(|h| format!("H{h}"))
            .collect(),
        _ => tokens
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{i}:{t}"))
            .collect(),
    };
    let mut json = serde_json::to_value(&result)?;
    json["model"] = serde_json::json!(model.source);
    json["clean"] = serde_json::json!(a.clean);
    json["corrupt"] = serde_json::json!(a.corrupt);
    json["answer"] = serde_json::json!(a.answer);
    json["wrong"] = serde_json::json!(a.wrong);
    json["clean_tokens"] = serde_json::json!(tokens);
    json["clean_input_ids"] = serde_json::json!(problem.clean);
    json["corrupt_input_ids"] = serde_json::json!(problem.corrupt);
    json["bos"] = serde_json::json!(tok.bos_status(&problem.clean));
    json["column_labels"] = serde_json::json!(columns);
    if let (Some(e), Some(r)) = (&exact, correlation) {
        json["exact_grid"] = serde_json::json!(e.grid);
        json["correlation_with_exact"] = serde_json::json!(r);
    }
    atomic_write(&a.json, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string_pretty(&json)?)?)
    })?;
    let svg_path = a
        .svg
        .clone()
        .unwrap_or_else(|| a.json.with_extension("svg"));
    write_heatmap(&svg_path, &result, &columns)?;
    print_summary(&result, &columns, correlation);
    println!("wrote {} and {}", a.json.display(), svg_path.display());
    Ok(())
}

/// A grid cell as users type it: a head as `ablate --heads` takes it (`L9.H6`), a
/// position as `L9 3:" Mary"`.
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
    let mut cells: Vec<(usize, usize, f32)> = r
        .grid
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(c, &v)| (l, c, v)))
        .collect();
    cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    println!("largest effects (layer, {}: normalised):", r.columns);
    for (l, c, v) in cells.iter().take(8) {
        let column = columns.get(*c).cloned().unwrap_or_default();
        println!("  {:<28} {v:+.3}", cell_name(*l, &column, r.columns));
    }
    if let Some(rho) = correlation {
        println!("correlation of attribution with exact patching over the grid: {rho:.3}");
    }
}
