//! Reading a feature store (read-only). The schema (`schema.sql`) is the contract; this
//! is a small typed view of it for the CLI and tests.

use crate::{bad, sql_err, FeaturesError, Result, UnitKind};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One row of `units`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub kind: UnitKind,
    pub id: u32,
    pub density: f64,
    pub max_act: f64,
    pub mean_act: f64,
    pub label: String,
    /// (token text, count) over the top examples
    pub top_tokens: Vec<(String, u64)>,
    pub concentration: f64,
    pub log10_edges: Vec<f64>,
    pub histogram: Vec<u64>,
}

/// One example with the tokens it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExample {
    /// -1: top activations; 0..: band
    pub band: i64,
    pub rank: u32,
    pub act: f64,
    pub window: u32,
    pub position: u32,
    pub context_start: u32,
    /// the shown tokens, from `context_start`
    pub tokens: Vec<String>,
    pub acts: Vec<f64>,
}

/// A unit with everything the store holds about it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitDetail {
    pub unit: Unit,
    /// top examples (band -1) first, then bands in order, each by rank
    pub examples: Vec<StoredExample>,
    /// (token, value), most promoted first (features only)
    pub promoted: Vec<(String, f64)>,
    /// (token, value), most suppressed first (features only)
    pub suppressed: Vec<(String, f64)>,
    /// (feature, cosine), nearest first (features only)
    pub neighbours: Vec<(u32, f64)>,
}

/// Orders of [`FeatureStore::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Id,
    /// densest first
    Density,
    /// largest maximum first
    MaxAct,
    /// most concentrated first
    Concentration,
}

/// An open, read-only feature store.
pub struct FeatureStore {
    conn: Connection,
    pub path: PathBuf,
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
        let store = FeatureStore { conn, path };
        store.meta()?; // fails early on a file that is not a store
        Ok(store)
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
            Order::Id => "id ASC",
            Order::Density => "density DESC, id ASC",
            Order::MaxAct => "max_act DESC, id ASC",
            Order::Concentration => "concentration DESC, id ASC",
        };
        let alive = if alive_only { "AND density > 0" } else { "" };
        let sql = format!(
            "SELECT kind, id, density, max_act, mean_act, label, top_tokens, concentration, histogram \
             FROM units WHERE kind = ?1 {alive} ORDER BY {order} LIMIT ?2 OFFSET ?3"
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
                "SELECT kind, id, density, max_act, mean_act, label, top_tokens, concentration, histogram \
                 FROM units WHERE kind = ?1 AND id = ?2",
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
            let s = (start.max(0) as usize).min(toks.len());
            let e = (s + acts.len()).min(toks.len());
            examples.push(StoredExample {
                band,
                rank: rank as u32,
                act,
                window: window as u32,
                position: position as u32,
                context_start: start as u32,
                tokens: toks[s..e].to_vec(),
                acts,
            });
        }
        let (mut promoted, mut suppressed, mut near) = (Vec::new(), Vec::new(), Vec::new());
        if kind == UnitKind::Feature {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT sign, token, value FROM logit_effects WHERE feature = ?1 \
                     ORDER BY sign DESC, rank",
                )
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
                .prepare("SELECT other, cosine FROM neighbours WHERE feature = ?1 ORDER BY rank")
                .map_err(self.e())?;
            let rows = stmt
                .query_map([id as i64], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))
                .map_err(self.e())?;
            near = rows.collect::<rusqlite::Result<_>>().map_err(self.e())?;
        }
        Ok(Some(UnitDetail {
            unit,
            examples,
            promoted,
            suppressed,
            neighbours: near,
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
        })
    }
}
