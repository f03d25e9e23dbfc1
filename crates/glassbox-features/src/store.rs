//! Reading a feature store (read-only): the one reader of `features.sqlite`, for the CLI,
//! the dashboard server (which turns these types into its JSON) and the Python package.
//! The schema (`schema.sql`) is the contract.

use crate::{bad, sql_err, FeaturesError, Result, UnitKind};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One row of `units`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// feature or neuron
    pub kind: UnitKind,
    /// the feature's or neuron's index
    pub id: u32,
    /// fraction of evaluated tokens with activation > 0 (0: dead)
    pub density: f64,
    /// largest activation (0 if it never fired)
    pub max_act: f64,
    /// mean activation over the tokens where it fired
    pub mean_act: f64,
    /// the automatic label ([`crate::describe::label`])
    pub label: String,
    /// (token text, count) over the top examples
    pub top_tokens: Vec<(String, u64)>,
    /// share of the top examples on the most common token
    pub concentration: f64,
    /// the histogram's bin edges, log10 units (`histogram.len() + 1` of them)
    pub log10_edges: Vec<f64>,
    /// counts of positive activations per log10 bin
    pub histogram: Vec<u64>,
    /// the feature's best explanation (`glassbox explain`), if it has one
    pub explanation: Option<String>,
}

/// One example with the tokens it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExample {
    /// -1: top activations; 0..: band
    pub band: i64,
    /// order within its band (0: strongest among top activations)
    pub rank: u32,
    /// the unit's activation at the example's token
    pub act: f64,
    /// the window's id in the store
    pub window: u32,
    /// the token's position in its window
    pub position: u32,
    /// the first position shown
    pub context_start: u32,
    /// the shown tokens, from `context_start`
    pub tokens: Vec<String>,
    /// the unit's activation at each shown token, rounded to 4 significant digits
    /// (0 at left-out positions)
    pub acts: Vec<f64>,
}

/// A unit with everything the store holds about it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitDetail {
    /// its summary row
    pub unit: Unit,
    /// top examples (band -1) first, then bands in order, each by rank
    pub examples: Vec<StoredExample>,
    /// (token, value), most promoted first (features only)
    pub promoted: Vec<(String, f64)>,
    /// (token, value), most suppressed first (features only)
    pub suppressed: Vec<(String, f64)>,
    /// nearest units by decoder (or output-weight) cosine, nearest first
    pub neighbours: Vec<Neighbour>,
    /// whether the store holds logit effects and neighbours for this kind (neurons' only
    /// in stores built since session 6)
    pub effects_available: bool,
    /// its explanations, best first (features explained by `glassbox explain`)
    pub explanations: Vec<crate::explanations::Explanation>,
    /// the ids before and after this one that exist (for paging through units)
    pub prev: Option<u32>,
    /// the next id of this kind in the store, if any
    pub next: Option<u32>,
}

/// A unit's neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// the neighbour's id (same kind)
    pub id: u32,
    /// cosine of the two units' decoder (or output-weight) directions
    pub cosine: f64,
    /// its label, if the store has that unit
    pub label: Option<String>,
}

/// A search over the unit list.
#[derive(Debug, Clone)]
pub struct UnitQuery<'a> {
    /// which units
    pub kind: UnitKind,
    /// matched case-insensitively as a substring of the label or the top tokens, and
    /// as words (the last one a prefix, English stems matched) of a feature's
    /// explanations; a number (or `#number`) also matches the unit's id
    pub search: Option<&'a str>,
    /// the sort column
    pub order: Order,
    /// largest first (ties by id, ascending)
    pub descending: bool,
    /// units per page
    pub limit: usize,
    /// matching units skipped before the page
    pub offset: usize,
}

/// Summary statistics of one kind of unit (what the comparison page shows).
#[derive(Debug, Clone, PartialEq)]
pub struct KindStats {
    /// units of the kind
    pub count: u64,
    /// units that never fired
    pub dead: u64,
    /// mean density over all units of the kind, dead ones included (`None`: no units)
    pub mean_density: Option<f64>,
    /// means over units that fired
    pub mean_concentration: Option<f64>,
    /// mean of the units' maximum activation, over units that fired
    pub mean_max_act: Option<f64>,
    /// mean of the units' mean activation, over units that fired
    pub mean_mean_act: Option<f64>,
}

/// Orders of [`FeatureStore::units`] (largest first, except `Id`) and
/// [`FeatureStore::search`] (the direction is the query's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// by id (ascending in [`FeatureStore::units`])
    Id,
    /// densest first
    Density,
    /// largest maximum first
    MaxAct,
    /// most concentrated first
    Concentration,
}

impl Order {
    /// The names the CLI, the server's `sort=` and the Python package use.
    pub fn parse(s: &str) -> Option<Order> {
        Some(match s {
            "id" => Order::Id,
            "density" => Order::Density,
            "max_act" => Order::MaxAct,
            "concentration" => Order::Concentration,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Order::Id => "id",
            Order::Density => "density",
            Order::MaxAct => "max_act",
            Order::Concentration => "concentration",
        }
    }
}

/// The tables every store has (older stores lack only the neurons' effect tables).
const REQUIRED_TABLES: [&str; 7] = [
    "meta",
    "units",
    "examples",
    "windows",
    "logit_effects",
    "neighbours",
    "comparison",
];

const UNIT_COLUMNS: &str =
    "kind, id, density, max_act, mean_act, label, top_tokens, concentration, histogram";

/// The feature's best explanation, as a tenth column of a query over `units`.
const BEST_EXPLANATION: &str = "(SELECT e.explanation FROM explanations e \
     WHERE units.kind = 'feature' AND e.feature = units.id AND e.explanation IS NOT NULL \
     ORDER BY e.detection IS NULL, e.detection DESC, e.created DESC, e.id DESC LIMIT 1)";

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

/// An open, read-only feature store.
pub struct FeatureStore {
    conn: Connection,
    /// the `features.sqlite` file
    pub path: PathBuf,
    neuron_effects: bool,
    explained: bool,
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| bad(format!("the store's {what} is not valid: {e}")))
}

impl FeatureStore {
    /// Opens a `features.sqlite` file, or `DIR/features.sqlite` for a directory.
    pub fn open(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join(crate::STORE_FILE)
        } else {
            path.to_path_buf()
        };
        if !path.is_file() {
            return Err(bad(format!(
                "no feature store at {}: build one with `glassbox features build`",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(&path))?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|_| bad(format!("{} is not a SQLite database", path.display())))?;
        if let Some(t) = REQUIRED_TABLES
            .iter()
            .find(|t| !tables.iter().any(|n| n == *t))
        {
            return Err(bad(format!(
                "{} has no `{t}` table: not a glassbox feature store (rebuild it with `glassbox features build`)",
                path.display()
            )));
        }
        let neuron_effects = ["neuron_logit_effects", "neuron_neighbours"]
            .iter()
            .all(|t| tables.iter().any(|n| n == *t));
        let explained = ["explanations", "explanation_text"]
            .iter()
            .all(|t| tables.iter().any(|n| n == *t));
        let store = FeatureStore {
            conn,
            path,
            neuron_effects,
            explained,
        };
        store.meta()?; // fails early on a file that is not a store
        Ok(store)
    }

    /// Whether the store holds the neurons' logit effects and neighbours.
    pub fn has_neuron_effects(&self) -> bool {
        self.neuron_effects
    }

    /// Whether `glassbox explain` has written into the store.
    pub fn has_explanations(&self) -> bool {
        self.explained
    }

    /// The columns of a [`RawUnit`] query over `units`.
    fn unit_columns(&self) -> String {
        let best = if self.explained {
            BEST_EXPLANATION
        } else {
            "NULL"
        };
        format!("{UNIT_COLUMNS}, {best}")
    }

    /// A feature's explanations, best first (readable ones, then by detection score).
    pub fn explanations(&self, feature: u32) -> Result<Vec<crate::explanations::Explanation>> {
        self.query_explanations("WHERE feature = ?1 ORDER BY", [feature as i64])
    }

    /// Every explanation in the store, by feature, each feature's best first.
    pub fn all_explanations(&self) -> Result<Vec<crate::explanations::Explanation>> {
        self.query_explanations("ORDER BY feature,", [])
    }

    /// Explanations selected by `filter` (SQL ending where the best-first order goes on);
    /// none in a store `glassbox explain` never wrote to.
    fn query_explanations(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<crate::explanations::Explanation>> {
        if !self.explained {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {{COLUMNS}} FROM explanations {filter} {}",
            crate::explanations::BEST_FIRST
        );
        crate::explanations::query(&self.conn, &self.path, &sql, args)
    }

    /// One page of units matching `q`, and how many match in all.
    pub fn search(&self, q: &UnitQuery) -> Result<(u64, Vec<Unit>)> {
        let pattern = q.search.map(str::trim).filter(|s| !s.is_empty());
        let like = pattern.map(like_pattern);
        let id_match: Option<i64> = pattern.and_then(|p| p.trim_start_matches('#').parse().ok());
        let words = pattern
            .filter(|_| self.explained)
            .and_then(crate::explanations::fts_phrase);
        let explained = if self.explained {
            // MATCH NULL is an error, not false: only with words to match
            " OR (?6 IS NOT NULL AND kind = 'feature' AND id IN (SELECT e.feature \
             FROM explanations e JOIN explanation_text t ON t.rowid = e.id \
             WHERE explanation_text MATCH ?6))"
        } else {
            // keeps ?6 in the statement (its parameters are numbered), matching nothing
            " OR (?6 IS NOT NULL AND 0)"
        };
        let filter = format!(
            "kind = ?1 AND (?2 IS NULL OR label LIKE ?2 ESCAPE '\\' \
             OR top_tokens LIKE ?2 ESCAPE '\\' OR id = ?3{explained})"
        );
        let total: i64 = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM units WHERE {filter}"),
                params![q.kind.as_str(), like, id_match, 0, 0, words],
                |r| r.get(0),
            )
            .map_err(self.e())?;
        let sql = format!(
            "SELECT {} FROM units WHERE {filter} ORDER BY {} {}, id ASC LIMIT ?4 OFFSET ?5",
            self.unit_columns(),
            q.order.column(),
            if q.descending { "DESC" } else { "ASC" }
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.e())?;
        let raw: Vec<RawUnit> = stmt
            .query_map(
                params![
                    q.kind.as_str(),
                    like,
                    id_match,
                    q.limit.min(i64::MAX as usize) as i64,
                    q.offset.min(i64::MAX as usize) as i64,
                    words
                ],
                raw_unit,
            )
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        let units = raw.into_iter().map(RawUnit::parse).collect::<Result<_>>()?;
        Ok((total as u64, units))
    }

    /// One unit's summary row; `None` if the store has no such unit.
    pub fn summary(&self, kind: UnitKind, id: u32) -> Result<Option<Unit>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM units WHERE kind = ?1 AND id = ?2",
                    self.unit_columns()
                ),
                params![kind.as_str(), id as i64],
                raw_unit,
            )
            .optional()
            .map_err(self.e())?
            .map(RawUnit::parse)
            .transpose()
    }

    /// The labels of those of `ids` the store has.
    pub fn labels(&self, kind: UnitKind, ids: &[u32]) -> Result<HashMap<u32, String>> {
        self.unit_column("label", kind, ids)
    }

    /// The largest recorded activation of those of `ids` the store has.
    pub fn max_acts(&self, kind: UnitKind, ids: &[u32]) -> Result<HashMap<u32, f64>> {
        self.unit_column("max_act", kind, ids)
    }

    fn unit_column<T: rusqlite::types::FromSql>(
        &self,
        column: &'static str,
        kind: UnitKind,
        ids: &[u32],
    ) -> Result<HashMap<u32, T>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {column} FROM units WHERE kind = ?1 AND id = ?2"
            ))
            .map_err(self.e())?;
        let mut out = HashMap::new();
        for &id in ids {
            if let Some(v) = stmt
                .query_row(params![kind.as_str(), id as i64], |r| r.get::<_, T>(0))
                .optional()
                .map_err(self.e())?
            {
                out.insert(id, v);
            }
        }
        Ok(out)
    }

    /// Summary statistics of one kind.
    pub fn kind_stats(&self, kind: UnitKind) -> Result<KindStats> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(density <= 0), 0), AVG(density), \
                 AVG(CASE WHEN density > 0 THEN concentration END), \
                 AVG(CASE WHEN density > 0 THEN max_act END), \
                 AVG(CASE WHEN density > 0 THEN mean_act END) FROM units WHERE kind = ?1",
                [kind.as_str()],
                |r| {
                    Ok(KindStats {
                        count: r.get::<_, i64>(0)? as u64,
                        dead: r.get::<_, i64>(1)? as u64,
                        mean_density: r.get(2)?,
                        mean_concentration: r.get(3)?,
                        mean_max_act: r.get(4)?,
                        mean_mean_act: r.get(5)?,
                    })
                },
            )
            .map_err(self.e())
    }

    /// The concentration of every unit of a kind that fired.
    pub fn concentrations(&self, kind: UnitKind) -> Result<Vec<f64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT concentration FROM units WHERE kind = ?1 AND density > 0")
            .map_err(self.e())?;
        let rows = stmt
            .query_map([kind.as_str()], |r| r.get(0))
            .map_err(self.e())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.e())
    }

    fn e(&self) -> impl Fn(rusqlite::Error) -> FeaturesError + '_ {
        sql_err(&self.path)
    }

    /// The `meta` table.
    pub fn meta(&self) -> Result<BTreeMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM meta")
            .map_err(self.e())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.e())
    }

    /// The `comparison` table, in key order.
    pub fn comparison(&self) -> Result<Vec<(String, f64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM comparison ORDER BY key")
            .map_err(self.e())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.e())
    }

    /// Number of units of a kind.
    pub fn count(&self, kind: UnitKind) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM units WHERE kind = ?1",
                [kind.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.e())
    }

    /// A page of units of a kind; `alive_only` leaves out units that never fired.
    pub fn units(
        &self,
        kind: UnitKind,
        order: Order,
        alive_only: bool,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Unit>> {
        let order = match order {
            Order::Id => "id ASC".to_string(),
            o => format!("{} DESC, id ASC", o.column()),
        };
        let alive = if alive_only { "AND density > 0" } else { "" };
        let sql = format!(
            "SELECT {} FROM units WHERE kind = ?1 {alive} ORDER BY {order} LIMIT ?2 OFFSET ?3",
            self.unit_columns()
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.e())?;
        let rows = stmt
            .query_map(
                params![kind.as_str(), limit as i64, offset as i64],
                raw_unit,
            )
            .map_err(self.e())?;
        let raw: Vec<RawUnit> = rows.collect::<rusqlite::Result<_>>().map_err(self.e())?;
        raw.into_iter().map(RawUnit::parse).collect()
    }

    /// One unit with its examples (and, for a feature, logit effects and neighbours);
    /// `None` if the store has no such unit.
    pub fn unit(&self, kind: UnitKind, id: u32) -> Result<Option<UnitDetail>> {
        let raw = self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM units WHERE kind = ?1 AND id = ?2",
                    self.unit_columns()
                ),
                params![kind.as_str(), id as i64],
                raw_unit,
            )
            .optional()
            .map_err(self.e())?;
        let Some(raw) = raw else { return Ok(None) };
        let unit = raw.parse()?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT band, rank, act, window, position, context_start, acts FROM examples \
                 WHERE kind = ?1 AND unit = ?2 ORDER BY band, rank",
            )
            .map_err(self.e())?;
        type Row = (i64, i64, f64, i64, i64, i64, String);
        let rows: Vec<Row> = stmt
            .query_map(params![kind.as_str(), id as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        let mut windows: HashMap<i64, Vec<String>> = HashMap::new();
        let mut examples = Vec::with_capacity(rows.len());
        for (band, rank, act, window, position, start, acts) in rows {
            if let std::collections::hash_map::Entry::Vacant(slot) = windows.entry(window) {
                let text: String = self
                    .conn
                    .query_row("SELECT tokens FROM windows WHERE id = ?1", [window], |r| {
                        r.get(0)
                    })
                    .map_err(self.e())?;
                slot.insert(json(&text, "window tokens")?);
            }
            let acts: Vec<f64> = json(&acts, "example activations")?;
            let toks = &windows[&window];
            let s = start.max(0) as usize;
            // one token per activation; a window shorter than the record shows blanks
            let tokens = (0..acts.len())
                .map(|i| toks.get(s + i).cloned().unwrap_or_default())
                .collect();
            examples.push(StoredExample {
                band,
                rank: rank as u32,
                act,
                window: window as u32,
                position: position as u32,
                context_start: start as u32,
                tokens,
                acts,
            });
        }
        // features' effects come from their decoder rows, neurons' (tables `neuron_…`,
        // absent from older stores) from their output weights
        let prefix = match kind {
            UnitKind::Feature => Some(""),
            UnitKind::Neuron if self.neuron_effects => Some("neuron_"),
            UnitKind::Neuron => None,
        };
        let (mut promoted, mut suppressed, mut near) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(t) = prefix {
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT sign, token, value FROM {t}logit_effects WHERE feature = ?1 \
                     ORDER BY sign DESC, rank"
                ))
                .map_err(self.e())?;
            let rows = stmt
                .query_map([id as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                })
                .map_err(self.e())?;
            for row in rows {
                let (sign, token, value) = row.map_err(self.e())?;
                if sign > 0 {
                    promoted.push((token, value));
                } else {
                    suppressed.push((token, value));
                }
            }
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT n.other, n.cosine, u.label FROM {t}neighbours n \
                     LEFT JOIN units u ON u.kind = ?2 AND u.id = n.other \
                     WHERE n.feature = ?1 ORDER BY n.rank"
                ))
                .map_err(self.e())?;
            let rows = stmt
                .query_map(params![id as i64, kind.as_str()], |r| {
                    Ok(Neighbour {
                        id: r.get::<_, i64>(0)? as u32,
                        cosine: r.get(1)?,
                        label: r.get(2)?,
                    })
                })
                .map_err(self.e())?;
            near = rows.collect::<rusqlite::Result<_>>().map_err(self.e())?;
        }
        let adjacent = |sql: &str| -> Result<Option<u32>> {
            self.conn
                .query_row(sql, params![kind.as_str(), id as i64], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .map(|v| v.map(|v| v as u32))
                .map_err(self.e())
        };
        Ok(Some(UnitDetail {
            unit,
            examples,
            promoted,
            suppressed,
            neighbours: near,
            effects_available: prefix.is_some(),
            explanations: match kind {
                UnitKind::Feature => self.explanations(id)?,
                UnitKind::Neuron => Vec::new(),
            },
            prev: adjacent("SELECT MAX(id) FROM units WHERE kind = ?1 AND id < ?2")?,
            next: adjacent("SELECT MIN(id) FROM units WHERE kind = ?1 AND id > ?2")?,
        }))
    }
}

struct RawUnit {
    kind: String,
    id: i64,
    density: f64,
    max_act: f64,
    mean_act: f64,
    label: String,
    top_tokens: String,
    concentration: f64,
    histogram: String,
    explanation: Option<String>,
}

fn raw_unit(r: &rusqlite::Row) -> rusqlite::Result<RawUnit> {
    Ok(RawUnit {
        kind: r.get(0)?,
        id: r.get(1)?,
        density: r.get(2)?,
        max_act: r.get(3)?,
        mean_act: r.get(4)?,
        label: r.get(5)?,
        top_tokens: r.get(6)?,
        concentration: r.get(7)?,
        histogram: r.get(8)?,
        explanation: r.get(9)?,
    })
}

#[derive(serde::Deserialize)]
struct Histogram {
    log10_edges: Vec<f64>,
    counts: Vec<u64>,
}

impl RawUnit {
    fn parse(self) -> Result<Unit> {
        let kind = UnitKind::parse(&self.kind)
            .ok_or_else(|| bad(format!("unknown unit kind `{}` in the store", self.kind)))?;
        let h: Histogram = json(&self.histogram, "histogram")?;
        Ok(Unit {
            kind,
            id: self.id as u32,
            density: self.density,
            max_act: self.max_act,
            mean_act: self.mean_act,
            label: self.label,
            top_tokens: json(&self.top_tokens, "top_tokens")?,
            concentration: self.concentration,
            log10_edges: h.log10_edges,
            histogram: h.counts,
            explanation: self.explanation,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(super::like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}
