//! The feature store (`features.sqlite`) as the dashboards' JSON: a thin face over the
//! one typed reader, [`glassbox_features::store::FeatureStore`]. Read-only: the server
//! never writes to it.

use crate::svg::histogram_svg;
use anyhow::{bail, Result};
use glassbox_features::store::{FeatureStore, StoredExample, Unit, UnitQuery};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the unit list is ordered by.
pub use glassbox_features::store::Order as Sort;
/// The two kinds of unit the store describes.
pub use glassbox_features::UnitKind as Kind;

/// A query over the unit list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// features or neurons
    pub kind: Kind,
    /// matched (case-insensitively, as a substring) against the label and the top
    /// tokens; a number also matches the unit's id
    pub q: Option<String>,
    /// the order of the list
    pub sort: Sort,
    /// largest first
    pub descending: bool,
    /// units per page (the API takes 1 to 1000, 50 by default)
    pub limit: usize,
    /// units skipped before the page
    pub offset: usize,
}

/// The name of the feature store inside a run directory.
pub use glassbox_features::STORE_FILE;

/// An open feature store.
pub struct Store {
    inner: Mutex<FeatureStore>,
    /// the `features.sqlite` file
    pub path: PathBuf,
}

fn summary(u: &Unit) -> Value {
    json!({
        "kind": u.kind,
        "id": u.id,
        "density": u.density,
        "max_act": u.max_act,
        "mean_act": u.mean_act,
        "label": u.label,
        "top_tokens": u.top_tokens,
        "concentration": u.concentration,
        "explanation": u.explanation,
    })
}

fn example(e: &StoredExample) -> Value {
    let focus = e.position as i64 - e.context_start as i64;
    json!({
        "band": e.band,
        "rank": e.rank,
        "act": e.act,
        "window": e.window,
        "position": e.position,
        "context_start": e.context_start,
        "focus": if focus >= 0 && (focus as usize) < e.acts.len() { json!(focus) } else { Value::Null },
        "tokens": e.tokens,
        "acts": e.acts,
    })
}

fn ids_u32(ids: &[i64]) -> Vec<u32> {
    ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect()
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

    /// Opens a feature store read-only: a `features.sqlite` file, or a folder holding one.
    pub fn open(path: &Path) -> Result<Store> {
        let inner = FeatureStore::open(path)?;
        Ok(Store {
            path: inner.path.clone(),
            inner: Mutex::new(inner),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&FeatureStore) -> Result<T>) -> Result<T> {
        let s = self
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("the feature store connection was poisoned"))?;
        f(&s)
    }

    /// The `meta` table as key → value.
    pub fn meta(&self) -> Result<BTreeMap<String, String>> {
        self.with(|s| Ok(s.meta()?))
    }

    /// Number of units of each kind.
    pub fn counts(&self) -> Result<BTreeMap<&'static str, i64>> {
        self.with(|s| {
            let mut out = BTreeMap::new();
            for k in Kind::ALL {
                out.insert(k.as_str(), s.count(k)? as i64);
            }
            Ok(out)
        })
    }

    /// One page of the unit list: `{"total", "units": [...]}`.
    pub fn list(&self, q: &ListQuery) -> Result<Value> {
        let (total, units) = self.with(|s| {
            Ok(s.search(&UnitQuery {
                kind: q.kind,
                search: q.q.as_deref(),
                order: q.sort,
                descending: q.descending,
                limit: q.limit,
                offset: q.offset,
            })?)
        })?;
        Ok(json!({
            "kind": q.kind,
            "total": total,
            "offset": q.offset,
            "limit": q.limit,
            "units": units.iter().map(summary).collect::<Vec<_>>(),
        }))
    }

    /// Every unit of a kind, summary fields only, in id order (the static export's list).
    pub fn all_summaries(&self, kind: Kind) -> Result<Vec<Value>> {
        self.with(|s| {
            let n = s.count(kind)? as usize;
            Ok(s.units(kind, Sort::Id, false, n, 0)?
                .iter()
                .map(summary)
                .collect())
        })
    }

    /// The labels of some units (absent ids are left out).
    pub fn labels(&self, kind: Kind, ids: &[i64]) -> Result<HashMap<i64, String>> {
        let found = self.with(|s| Ok(s.labels(kind, &ids_u32(ids))?))?;
        Ok(found.into_iter().map(|(k, v)| (k as i64, v)).collect())
    }

    /// The largest recorded activation of each of `ids` that exists.
    pub fn max_acts(&self, kind: Kind, ids: &[i64]) -> Result<HashMap<i64, f64>> {
        let found = self.with(|s| Ok(s.max_acts(kind, &ids_u32(ids))?))?;
        Ok(found.into_iter().map(|(k, v)| (k as i64, v)).collect())
    }

    /// A unit's summary fields (those of the list); `None` if the store has no such unit.
    pub fn summary(&self, kind: Kind, id: i64) -> Result<Option<Value>> {
        let Ok(id) = u32::try_from(id) else {
            return Ok(None);
        };
        let found = self.with(|s| Ok(s.summary(kind, id)?))?;
        Ok(found.as_ref().map(summary))
    }

    /// Everything a unit page shows; `None` if the store has no such unit.
    pub fn unit(&self, kind: Kind, id: i64) -> Result<Option<Value>> {
        let Ok(id) = u32::try_from(id) else {
            return Ok(None);
        };
        let Some(d) = self.with(|s| Ok(s.unit(kind, id)?))? else {
            return Ok(None);
        };
        let counts: Vec<f64> = d.unit.histogram.iter().map(|&c| c as f64).collect();
        let svg = histogram_svg(&d.unit.log10_edges, &counts, "activation (log scale)", true);
        let top: Vec<Value> = d
            .examples
            .iter()
            .filter(|e| e.band < 0)
            .map(example)
            .collect();
        let mut bands: BTreeMap<i64, Vec<&StoredExample>> = BTreeMap::new();
        for e in d.examples.iter().filter(|e| e.band >= 0) {
            bands.entry(e.band).or_default().push(e);
        }
        let bands: Vec<Value> = bands
            .into_iter()
            .map(|(band, examples)| {
                let lo = examples.iter().map(|e| e.act).fold(f64::INFINITY, f64::min);
                let hi = examples
                    .iter()
                    .map(|e| e.act)
                    .fold(f64::NEG_INFINITY, f64::max);
                json!({"band": band, "min_act": if lo.is_finite() { json!(lo) } else { Value::Null },
                       "max_act": if hi.is_finite() { json!(hi) } else { Value::Null },
                       "examples": examples.into_iter().map(example).collect::<Vec<_>>()})
            })
            .collect();
        let effects = |v: &[(String, f64)]| -> Vec<Value> {
            v.iter()
                .map(|(token, value)| json!({"token": token, "value": value}))
                .collect()
        };
        let mut unit = summary(&d.unit);
        let obj = unit.as_object_mut().expect("a summary is an object");
        obj.insert(
            "histogram".into(),
            json!({"log10_edges": d.unit.log10_edges, "counts": d.unit.histogram}),
        );
        obj.insert("histogram_svg".into(), Value::String(svg));
        obj.insert("top_examples".into(), Value::Array(top));
        obj.insert("bands".into(), Value::Array(bands));
        obj.insert(
            "logit_effects".into(),
            json!({"available": d.effects_available, "positive": effects(&d.promoted),
                   "negative": effects(&d.suppressed)}),
        );
        obj.insert(
            "neighbours".into(),
            Value::Array(
                d.neighbours
                    .iter()
                    .map(|n| json!({"id": n.id, "cosine": n.cosine, "label": n.label}))
                    .collect(),
            ),
        );
        obj.insert(
            "explanations".into(),
            Value::Array(
                d.explanations
                    .iter()
                    .map(|e| {
                        json!({"explanation": e.explanation, "failure": e.failure,
                               "detection": e.detection, "fuzzing": e.fuzzing,
                               "explainer_model": e.explainer_model, "scorer_model": e.scorer_model,
                               "prompt_version": e.prompt_version, "created": e.created,
                               "held_out": e.details.get("held_out"),
                               "non_activating": e.details.get("non_activating")})
                    })
                    .collect(),
            ),
        );
        obj.insert("prev".into(), json!(d.prev));
        obj.insert("next".into(), json!(d.next));
        Ok(Some(unit))
    }

    /// The features-vs-neurons comparison: the stored `comparison` values, summary
    /// statistics per kind, and the distribution of concentration per kind as SVG.
    pub fn comparison(&self) -> Result<Value> {
        self.with(|s| {
            let values: Map<String, Value> = s
                .comparison()?
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect();
            let mut kinds = Map::new();
            let mut svgs = Map::new();
            for k in Kind::ALL {
                let st = s.kind_stats(k)?;
                let conc = s.concentrations(k)?;
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
                kinds.insert(
                    k.as_str().into(),
                    json!({
                        "count": st.count,
                        "dead": st.dead,
                        "mean_density": st.mean_density,
                        "mean_concentration": st.mean_concentration,
                        "median_concentration": median(conc),
                        "mean_max_act": st.mean_max_act,
                        "mean_mean_act": st.mean_mean_act,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
