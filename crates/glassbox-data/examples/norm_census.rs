//! The measurement behind the massive-activation rule (`glassbox_model::rows`): the
//! distribution of row norms at a few hooks, as multiples of each batch's median, over
//! packed corpus windows, with the token-position rule already applied.
//!
//!     cargo run --release -p glassbox-data --example norm_census -- MODEL CORPUS [WINDOWS] [HOOK…]
//!
//! Prints, per hook, quantiles of norm / median and every row above 5× with its token.

use glassbox_data::{harvest_with, pack, read_corpus, HarvestOptions};
use glassbox_model::{load_model, RowRule};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, corpus) = match (args.first(), args.get(1)) {
        (Some(m), Some(c)) => (m, c),
        _ => return Err("usage: norm_census MODEL CORPUS [WINDOWS] [HOOK…]".into()),
    };
    let n_windows: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let model = load_model(Path::new(model))?;
    let hooks: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        [3, 8, 15, 22, 28]
            .iter()
            .map(|l| format!("blocks.{l}.hook_resid_pre"))
            .filter(|h| glassbox_model::hooks::layer_of(h).unwrap_or(0) < model.config().n_layers)
            .collect()
    };
    let texts = read_corpus(Path::new(corpus), "text")?.texts;
    let bos = model.tokenizer()?.bos_token_id;
    let (mut windows, _) = pack(&model, &texts, 128, bos, 0, 0.01)?;
    windows.truncate(n_windows);
    let tok = model.tokenizer()?;
    let rule = RowRule::for_model(&model);
    // what each row is: (window, position)
    let places: Vec<(usize, usize)> = windows
        .iter()
        .enumerate()
        .flat_map(|(w, win)| rule.positions(win).map(move |p| (w, p)))
        .collect();
    for hook in &hooks {
        let opts = HarvestOptions {
            batch_windows: 8,
            rows: rule.clone(),
        };
        let (rows, width) = harvest_with(&model, &windows, hook, &opts, |_| {})?;
        let norms: Vec<f32> = rows
            .chunks_exact(width)
            .map(glassbox_model::MassiveNorm::row_norm)
            .collect();
        let mut sorted = norms.clone();
        sorted.sort_by(f32::total_cmp);
        let median = sorted[sorted.len() / 2];
        let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f) as usize] / median;
        println!(
            "{hook}: {} rows, median norm {median:.1}; norm/median p50 1.00 p90 {:.2} p99 {:.2} p99.9 {:.2} p99.99 {:.2} max {:.1}",
            norms.len(),
            q(0.9),
            q(0.99),
            q(0.999),
            q(0.9999),
            sorted[sorted.len() - 1] / median
        );
        let mut big: Vec<(f32, usize)> = norms
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 5.0 * median)
            .map(|(i, &n)| (n / median, i))
            .collect();
        big.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (ratio, i) in big {
            let (w, p) = places[i];
            println!(
                "  {ratio:>8.1}×  window {w:>4} position {p:>3}  {:?} after {:?}",
                tok.token_text(windows[w][p]),
                tok.token_text(windows[w][p - 1])
            );
        }
    }
    Ok(())
}
