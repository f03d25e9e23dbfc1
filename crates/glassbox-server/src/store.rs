//! Reading the feature store (`features.sqlite`, schema in
//! `crates/glassbox-features/src/schema.sql`). Read-only: the server never writes to it.

use crate::svg::histogram_svg;
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The two kinds of unit the store describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Feature,
    Neuron,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Feature, Kind::Neuron];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Feature => "feature",
            Kind::Neuron => "neuron",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "feature" => Some(Kind::Feature),
            "neuron" => Some(Kind::Neuron),
            _ => None,
        }
    }
}

/// What the unit list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Id,
    Density,
    MaxAct,
    Concentration,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "id" => Some(Sort::Id),
            "density" => Some(Sort::Density),
            "max_act" => Some(Sort::MaxAct),
            "concentration" => Some(Sort::Concentration),
            _ => None,
        }
    }

    fn column(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::Density => "density",
            Sort::MaxAct => "max_act",
            Sort::Concentration => "concentration",
        }
    }
}

/// A query over the unit list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub kind: Kind,
    /// matched (case-insensitively, as a substring) against the label and the top
    /// tokens; a number also matches the unit's id
    pub q: Option<String>,
    pub sort: Sort,
    pub descending: bool,
    pub limit: usize,
    pub offset: usize,
}

/// The name of the feature store inside a run directory.
pub const STORE_FILE: &str = "features.sqlite";

/// An open feature store.
pub struct Store {
    conn: Mutex<Connection>,
    pub path: PathBuf,
    /// the store has neurons' logit effects and neighbours (built since session 6)
    neuron_effects: bool,
}

const SUMMARY_COLUMNS: &str =
    "kind, id, density, max_act, mean_act, label, top_tokens, concentration";

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn summary_row(row: &rusqlite::Row) -> rusqlite::Result<Value> {
    let kind: String = row.get(0)?;
    let id: i64 = row.get(1)?;
    let top: String = row.get(6)?;
    Ok(json!({
        "kind": kind,
        "id": id,
        "density": row.get::<_, f64>(2)?,
        "max_act": row.get::<_, f64>(3)?,
        "mean_act": row.get::<_, f64>(4)?,
        "label": row.get::<_, String>(5)?,
        "top_tokens": parse_json(&top),
        "concentration": row.get::<_, f64>(7)?,
    }))
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// Opens `DIR/features.sqlite` read-only. A missing file is an error that says how
    /// to build it.
    pub fn open_run(run_dir: &Path) -> Result<Store> {
        let path = run_dir.join(STORE_FILE);
        if !path.is_file() {
            bail!(
                "no {STORE_FILE} in {dir}: build the feature store first with `glassbox features build --run {dir}`",
                dir = run_dir.display()
            );
        }
        Store::open(&path)
    }

    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the feature store {}", path.display()))?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()
            .with_context(|| format!("{} is not a SQLite database", path.display()))?;
        for t in [
            "meta",
            "units",
            "examples",
            "windows",
            "logit_effects",
            "neighbours",
            "comparison",
        ] {
            if !tables.iter().any(|n| n == t) {
                bail!(
                    "{} has no `{t}` table: not a glassbox feature store (rebuild it with `glassbox features build`)",
                    path.display()
                );
            }
        }
        let neuron_effects = tables.iter().any(|n| n == "neuron_logit_effects")
            && tables.iter().any(|n| n == "neuron_neighbours");
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            neuron_effects,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("the feature store connection was poisoned"))?;
        f(&conn)
    }

    /// The `meta` table as key → value.
    pub fn meta(&self) -> Result<BTreeMap<String, String>> {
        self.with(|c| {
            let rows = c
                .prepare("SELECT key, value FROM meta")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Number of units of each kind.
    pub fn counts(&self) -> Result<BTreeMap<&'static str, i64>> {
        self.with(|c| {
            let mut out = BTreeMap::new();
            for k in Kind::ALL {
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM units WHERE kind = ?1",
                    [k.as_str()],
                    |r| r.get(0),
                )?;
                out.insert(k.as_str(), n);
            }
            Ok(out)
        })
    }

    /// One page of the unit list: `{"total", "units": [...]}`.
    pub fn list(&self, q: &ListQuery) -> Result<Value> {
        let pattern = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let like = pattern.map(like_pattern);
        let id_match: Option<i64> = pattern.and_then(|p| p.trim_start_matches('#').parse().ok());
        let filter = "kind = ?1 AND (?2 IS NULL OR label LIKE ?2 ESCAPE '\\' \
                      OR top_tokens LIKE ?2 ESCAPE '\\' OR id = ?3)";
        let order = if q.descending { "DESC" } else { "ASC" };
        self.with(|c| {
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM units WHERE {filter}"),
                params![q.kind.as_str(), like, id_match],
                |r| r.get(0),
            )?;
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM units WHERE {filter} \
                 ORDER BY {} {order}, id ASC LIMIT ?4 OFFSET ?5",
                q.sort.column()
            );
            let units: Vec<Value> = c
                .prepare(&sql)?
                .query_map(
                    params![
                        q.kind.as_str(),
                        like,
                        id_match,
                        q.limit as i64,
                        q.offset as i64
                    ],
                    summary_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(json!({
                "kind": q.kind,
                "total": total,
                "offset": q.offset,
                "limit": q.limit,
                "units": units,
            }))
        })
    }

    /// Every unit of a kind, summary fields only, in id order (the static export's list).
    pub fn all_summaries(&self, kind: Kind) -> Result<Vec<Value>> {
        self.with(|c| {
            let rows = c
                .prepare(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM units WHERE kind = ?1 ORDER BY id"
                ))?
                .query_map([kind.as_str()], summary_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// The labels of some units (absent ids are left out).
    pub fn labels(&self, kind: Kind, ids: &[i64]) -> Result<HashMap<i64, String>> {
        self.unit_column("label", kind, ids)
    }

    /// The largest recorded activation of each of `ids` that exists.
    pub fn max_acts(&self, kind: Kind, ids: &[i64]) -> Result<HashMap<i64, f64>> {
        self.unit_column("max_act", kind, ids)
    }

    /// One column of `units` for each of `ids` that exists.
    fn unit_column<T: rusqlite::types::FromSql>(
        &self,
        column: &'static str,
        kind: Kind,
        ids: &[i64],
    ) -> Result<HashMap<i64, T>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {column} FROM units WHERE kind = ?1 AND id = ?2"
            ))?;
            let mut out = HashMap::new();
            for &id in ids {
                if let Some(v) = stmt
                    .query_row(params![kind.as_str(), id], |r| r.get::<_, T>(0))
                    .optional()?
                {
                    out.insert(id, v);
                }
            }
            Ok(out)
        })
    }

    pub fn summary(&self, kind: Kind, id: i64) -> Result<Option<Value>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {SUMMARY_COLUMNS} FROM units WHERE kind = ?1 AND id = ?2"),
                params![kind.as_str(), id],
                summary_row,
            )
            .optional()?)
        })
    }

    /// Everything a unit page shows; `None` if the store has no such unit.
    pub fn unit(&self, kind: Kind, id: i64) -> Result<Option<Value>> {
        let Some(mut unit) = self.summary(kind, id)? else {
            return Ok(None);
        };
        self.with(|c| {
            let hist_text: String = c.query_row(
                "SELECT histogram FROM units WHERE kind = ?1 AND id = ?2",
                params![kind.as_str(), id],
                |r| r.get(0),
            )?;
            let hist = parse_json(&hist_text);
            let edges = f64_array(&hist["log10_edges"]);
            let counts = f64_array(&hist["counts"]);
            let svg = histogram_svg(&edges, &counts, "activation (log scale)", true);

            // examples, with their windows' tokens
            let mut windows: HashMap<i64, Vec<String>> = HashMap::new();
            let mut top = Vec::new();
            let mut bands: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
            let mut stmt = c.prepare(
                "SELECT band, rank, act, window, position, context_start, acts FROM examples \
                 WHERE kind = ?1 AND unit = ?2 ORDER BY band, rank",
            )?;
            let rows = stmt.query_map(params![kind.as_str(), id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?;
            for row in rows {
                let (band, rank, act, window, position, start, acts) = row?;
                if let std::collections::hash_map::Entry::Vacant(e) = windows.entry(window) {
                    let text: Option<String> = c
                        .query_row("SELECT tokens FROM windows WHERE id = ?1", [window], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    let toks: Vec<String> = text
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    e.insert(toks);
                }
                let acts = f64_array(&parse_json(&acts));
                let window_tokens = &windows[&window];
                let start_u = start.max(0) as usize;
                let tokens: Vec<&str> = (0..acts.len())
                    .map(|i| {
                        window_tokens
                            .get(start_u + i)
                            .map(String::as_str)
                            .unwrap_or("")
                    })
                    .collect();
                let focus = position - start;
                let ex = json!({
                    "band": band,
                    "rank": rank,
                    "act": act,
                    "window": window,
                    "position": position,
                    "context_start": start,
                    "focus": if focus >= 0 && (focus as usize) < acts.len() { json!(focus) } else { Value::Null },
                    "tokens": tokens,
                    "acts": acts,
                });
                if band < 0 {
                    top.push(ex);
                } else {
                    bands.entry(band).or_default().push(ex);
                }
            }
            let bands: Vec<Value> = bands
                .into_iter()
                .map(|(band, examples)| {
                    let acts: Vec<f64> = examples
                        .iter()
                        .filter_map(|e| e["act"].as_f64())
                        .collect();
                    let lo = acts.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = acts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    json!({"band": band, "min_act": if lo.is_finite() { json!(lo) } else { Value::Null },
                           "max_act": if hi.is_finite() { json!(hi) } else { Value::Null },
                           "examples": examples})
                })
                .collect();

            // logit effects and neighbours: features' from their decoder rows, neurons'
            // (tables `neuron_…`, absent from older stores) from their output weights
            let (mut positive, mut negative, mut neighbours) = (Vec::new(), Vec::new(), Vec::new());
            let tables = match kind {
                Kind::Feature => Some(""),
                Kind::Neuron if self.neuron_effects => Some("neuron_"),
                Kind::Neuron => None,
            };
            if let Some(t) = tables {
                let mut stmt = c.prepare(&format!(
                    "SELECT sign, rank, token, value FROM {t}logit_effects WHERE feature = ?1 ORDER BY sign DESC, rank"
                ))?;
                let rows = stmt.query_map([id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(2)?, r.get::<_, f64>(3)?))
                })?;
                for row in rows {
                    let (sign, token, value) = row?;
                    let v = json!({"token": token, "value": value});
                    if sign > 0 {
                        positive.push(v);
                    } else {
                        negative.push(v);
                    }
                }
                let mut stmt = c.prepare(&format!(
                    "SELECT n.other, n.cosine, u.label FROM {t}neighbours n \
                     LEFT JOIN units u ON u.kind = ?2 AND u.id = n.other \
                     WHERE n.feature = ?1 ORDER BY n.rank"
                ))?;
                let rows = stmt.query_map(params![id, kind.as_str()], |r| {
                    Ok(json!({"id": r.get::<_, i64>(0)?, "cosine": r.get::<_, f64>(1)?,
                              "label": r.get::<_, Option<String>>(2)?}))
                })?;
                for row in rows {
                    neighbours.push(row?);
                }
            }
            let prev: Option<i64> = c
                .query_row(
                    "SELECT MAX(id) FROM units WHERE kind = ?1 AND id < ?2",
                    params![kind.as_str(), id],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            let next: Option<i64> = c
                .query_row(
                    "SELECT MIN(id) FROM units WHERE kind = ?1 AND id > ?2",
                    params![kind.as_str(), id],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();

            let obj = unit.as_object_mut().expect("a summary is an object");
            obj.insert("histogram".into(), hist);
            obj.insert("histogram_svg".into(), Value::String(svg));
            obj.insert("top_examples".into(), Value::Array(top));
            obj.insert("bands".into(), Value::Array(bands));
            obj.insert(
                "logit_effects".into(),
                json!({"available": tables.is_some(), "positive": positive, "negative": negative}),
            );
            obj.insert("neighbours".into(), Value::Array(neighbours));
            obj.insert("prev".into(), json!(prev));
            obj.insert("next".into(), json!(next));
            Ok(())
        })?;
        Ok(Some(unit))
    }

    /// The features-vs-neurons comparison: the stored `comparison` values, summary
    /// statistics per kind, and the distribution of concentration per kind as SVG.
    pub fn comparison(&self) -> Result<Value> {
        self.with(|c| {
            let values: Map<String, Value> = c
                .prepare("SELECT key, value FROM comparison ORDER BY key")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, json!(r.get::<_, f64>(1)?)))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut kinds = Map::new();
            let mut svgs = Map::new();
            for k in Kind::ALL {
                let (count, dead, mean_density, mean_conc, mean_max, mean_mean): (
                    i64,
                    i64,
                    Option<f64>,
                    Option<f64>,
                    Option<f64>,
                    Option<f64>,
                ) = c.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(density <= 0), 0), AVG(density), \
                     AVG(CASE WHEN density > 0 THEN concentration END), \
                     AVG(CASE WHEN density > 0 THEN max_act END), \
                     AVG(CASE WHEN density > 0 THEN mean_act END) FROM units WHERE kind = ?1",
                    [k.as_str()],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )?;
                let conc: Vec<f64> = c
                    .prepare("SELECT concentration FROM units WHERE kind = ?1 AND density > 0")?
                    .query_map([k.as_str()], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let bins = 10usize;
                let mut counts = vec![0f64; bins];
                for v in &conc {
                    let b = ((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
                    counts[b] += 1.0;
                }
                let edges: Vec<f64> = (0..=bins).map(|i| i as f64 / bins as f64).collect();
                svgs.insert(
                    k.as_str().into(),
                    Value::String(histogram_svg(&edges, &counts, "concentration", false)),
                );
                let median_conc = median(conc);
                kinds.insert(
                    k.as_str().into(),
                    json!({
                        "count": count,
                        "dead": dead,
                        "mean_density": mean_density,
                        "mean_concentration": mean_conc,
                        "median_concentration": median_conc,
                        "mean_max_act": mean_max,
                        "mean_mean_act": mean_mean,
                    }),
                );
            }
            Ok(json!({"values": values, "kinds": kinds, "concentration_svg": svgs}))
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn f64_array(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
