//! Writing the feature store: one SQLite file following `schema.sql`, filled in one
//! transaction inside a temporary sibling file that is renamed over the target only
//! when complete — a failed build leaves whatever was there before.

use crate::accumulate::{Example, UnitGroup};
use crate::describe::{label, Summary};
use crate::effects::TokenEffects;
use crate::pass::Analysis;
use crate::{hist_edges, sql_err, Result, SCHEMA, STORE_VERSION};
use rusqlite::{params, Connection};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Everything the store holds.
pub struct StoreInput<'a> {
    /// the pass's statistics: units, examples, options, hooks
    pub analysis: &'a Analysis,
    /// per feature
    pub feature_summaries: &'a [Summary],
    /// per neuron (when the analysis has neurons)
    pub neuron_summaries: Option<&'a [Summary]>,
    /// per feature, its direct logit effects (`None`: table `logit_effects` left empty)
    pub logit_effects: Option<&'a [TokenEffects]>,
    /// per feature, its nearest features: (id, cosine)
    pub neighbours: &'a [Vec<(u32, f32)>],
    /// the same for MLP neurons, from their output weights (tables `neuron_…`)
    pub neuron_logit_effects: Option<&'a [TokenEffects]>,
    /// per neuron, its nearest neurons (empty without neurons)
    pub neuron_neighbours: &'a [Vec<(u32, f32)>],
    /// the `comparison` table's rows: (key, value)
    pub comparison: &'a [(String, f64)],
    /// the analysed windows (the `window` of every example indexes them)
    pub windows: &'a [Vec<u32>],
    /// the display text of a token id (stored in `windows`, `top_tokens`, effects)
    pub token_text: &'a dyn Fn(u32) -> String,
    /// extra `meta` entries (model, sae_dir, corpus, ...); they win over computed ones
    pub meta: Vec<(String, String)>,
    /// when the build started: `built_seconds` is the time up to the commit
    pub started: Instant,
}

/// Writes `path` atomically (temporary sibling + rename). On any error nothing is left
/// behind and an existing `path` is untouched.
pub fn write_store(path: &Path, input: &StoreInput) -> Result<()> {
    glassbox_atomic::write_with(path, |tmp| fill(tmp, input))
}

/// Activations for display: 4 significant digits.
fn round_sig(a: f32) -> f32 {
    if a == 0.0 || !a.is_finite() {
        return 0.0;
    }
    let e = (a.abs() as f64).log10().floor() as i32;
    let scale = 10f64.powi(3 - e);
    ((a as f64 * scale).round() / scale) as f32
}

fn acts_json(acts: &[f32]) -> String {
    let mut s = String::with_capacity(acts.len() * 7 + 2);
    s.push('[');
    for (i, &a) in acts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}", round_sig(a));
    }
    s.push(']');
    s
}

fn fill(tmp: &Path, input: &StoreInput) -> Result<()> {
    let e = sql_err(tmp);
    let mut conn = Connection::open(tmp).map_err(&e)?;
    // The file is private until renamed: no journal needed, the rename is the commit.
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(&e)?;
    conn.execute_batch(SCHEMA).map_err(&e)?;
    let tx = conn.transaction().map_err(&e)?;
    let a = input.analysis;
    let mut texts: HashMap<u32, String> = HashMap::new();
    let mut text = |t: u32| -> String {
        texts
            .entry(t)
            .or_insert_with(|| (input.token_text)(t))
            .clone()
    };
    let mut windows: BTreeSet<u32> = BTreeSet::new();
    let hist_edges = hist_edges();
    {
        let mut unit_stmt = tx
            .prepare(
                "INSERT INTO units (kind, id, density, max_act, mean_act, label, top_tokens, \
                 concentration, histogram) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(&e)?;
        let mut ex_stmt = tx
            .prepare(
                "INSERT INTO examples (kind, unit, band, rank, act, window, position, \
                 context_start, acts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(&e)?;
        let groups: Vec<(&UnitGroup, &[Summary])> =
            std::iter::once((&a.features, input.feature_summaries))
                .chain(a.neurons.as_ref().zip(input.neuron_summaries))
                .collect();
        for (g, sums) in groups {
            let kind = g.kind.as_str();
            let tokens = g.tokens.max(1) as f64;
            for (id, (u, s)) in g.units.iter().zip(sums).enumerate() {
                let top_tokens: Vec<(String, usize)> =
                    s.top_tokens.iter().map(|&(t, c)| (text(t), c)).collect();
                let histogram = serde_json::json!({
                    "log10_edges": hist_edges,
                    "counts": u.histogram,
                });
                unit_stmt
                    .execute(params![
                        kind,
                        id as i64,
                        u.fired as f64 / tokens,
                        u.max as f64,
                        u.mean(),
                        label(s, &mut text),
                        serde_json::to_string(&top_tokens).expect("json"),
                        s.concentration,
                        histogram.to_string(),
                    ])
                    .map_err(&e)?;
                let mut put = |band: i64, rank: usize, x: &Example| -> Result<()> {
                    windows.insert(x.window);
                    ex_stmt
                        .execute(params![
                            kind,
                            id as i64,
                            band,
                            rank as i64,
                            x.act as f64,
                            x.window as i64,
                            x.position as i64,
                            x.context_start as i64,
                            acts_json(&x.acts),
                        ])
                        .map_err(&e)?;
                    Ok(())
                };
                for (r, x) in u.top().iter().enumerate() {
                    put(-1, r, x)?;
                }
                for (b, band) in u.bands().iter().enumerate() {
                    for (r, x) in band.iter().enumerate() {
                        put(b as i64, r, x)?;
                    }
                }
            }
        }
        let mut win_stmt = tx
            .prepare("INSERT INTO windows (id, tokens) VALUES (?1, ?2)")
            .map_err(&e)?;
        for &w in &windows {
            let toks: Vec<String> = input.windows[w as usize].iter().map(|&t| text(t)).collect();
            win_stmt
                .execute(params![
                    w as i64,
                    serde_json::to_string(&toks).expect("json")
                ])
                .map_err(&e)?;
        }
        for (table, effects, near) in [
            ("", input.logit_effects, input.neighbours),
            (
                "neuron_",
                input.neuron_logit_effects,
                input.neuron_neighbours,
            ),
        ] {
            if let Some(effects) = effects {
                let mut stmt = tx
                    .prepare(&format!(
                        "INSERT INTO {table}logit_effects (feature, sign, rank, token, value) \
                         VALUES (?1, ?2, ?3, ?4, ?5)"
                    ))
                    .map_err(&e)?;
                for (f, fx) in effects.iter().enumerate() {
                    for (sign, list) in [(1i64, &fx.top), (-1, &fx.bottom)] {
                        for (r, &(t, v)) in list.iter().enumerate() {
                            stmt.execute(params![f as i64, sign, r as i64, text(t), v as f64])
                                .map_err(&e)?;
                        }
                    }
                }
            }
            let mut stmt = tx
                .prepare(&format!(
                    "INSERT INTO {table}neighbours (feature, rank, other, cosine) VALUES (?1, ?2, ?3, ?4)"
                ))
                .map_err(&e)?;
            for (f, list) in near.iter().enumerate() {
                for (r, &(o, c)) in list.iter().enumerate() {
                    stmt.execute(params![f as i64, r as i64, o as i64, c as f64])
                        .map_err(&e)?;
                }
            }
        }
        let mut stmt = tx
            .prepare("INSERT INTO comparison (key, value) VALUES (?1, ?2)")
            .map_err(&e)?;
        for (k, v) in input.comparison {
            stmt.execute(params![k, v]).map_err(&e)?;
        }
        let o = &a.features.opts;
        let mut meta: Vec<(String, String)> = vec![
            ("version".into(), STORE_VERSION.into()),
            ("hook".into(), a.hooks.hook.clone()),
            (
                "neuron_hook".into(),
                a.hooks.neuron_hook.clone().unwrap_or_default(),
            ),
            ("d_sae".into(), a.features.units.len().to_string()),
            ("d_mlp".into(), a.hooks.d_mlp.to_string()),
            ("tokens".into(), a.tokens.to_string()),
            ("windows".into(), a.windows.to_string()),
            ("context_size".into(), a.context_size.to_string()),
            ("context_radius".into(), o.context_radius.to_string()),
            ("top_k".into(), o.top_k.to_string()),
            ("bands".into(), o.bands.to_string()),
            ("per_band".into(), o.per_band.to_string()),
            (
                "band_rule".into(),
                "band b holds activations in [b/bands, (b+1)/bands) of the unit's max; seeded uniform samples".into(),
            ),
            ("seed".into(), o.seed.to_string()),
            (
                "excluded".into(),
                "position 0 of every window (attention sink) and special tokens; they show 0 in contexts".into(),
            ),
            ("logit_effects".into(), input.logit_effects.is_some().to_string()),
        ];
        meta.extend(input.meta.iter().cloned());
        meta.push((
            "built_seconds".into(),
            format!("{:.3}", input.started.elapsed().as_secs_f64()),
        ));
        let mut stmt = tx
            .prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .map_err(&e)?;
        for (k, v) in &meta {
            stmt.execute(params![k, v]).map_err(&e)?;
        }
    }
    tx.commit().map_err(&e)?;
    conn.close().map_err(|(_, err)| e(err))?;
    Ok(())
}
