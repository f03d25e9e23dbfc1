//! A feature store (`features.sqlite`) from Python, read through the one typed reader
//! ([`glassbox_features::store::FeatureStore`]); rows come back as dicts the package
//! turns into pandas DataFrames when pandas is installed.

use glassbox_features::store::{FeatureStore, Order, StoredExample, Unit};
use glassbox_features::UnitKind;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::Mutex;

fn store_err(e: glassbox_features::FeaturesError) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

fn kind(name: &str) -> PyResult<UnitKind> {
    UnitKind::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!("kind {name:?} is not one of: feature, neuron"))
    })
}

fn order(name: &str) -> PyResult<Order> {
    Order::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "order {name:?} is not one of: id, density, max_act, concentration"
        ))
    })
}

fn unit_dict<'py>(py: Python<'py>, u: &Unit) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("kind", u.kind.as_str())?;
    d.set_item("id", u.id)?;
    d.set_item("density", u.density)?;
    d.set_item("max_act", u.max_act)?;
    d.set_item("mean_act", u.mean_act)?;
    d.set_item("label", &u.label)?;
    d.set_item("top_tokens", u.top_tokens.clone())?;
    d.set_item("concentration", u.concentration)?;
    d.set_item("explanation", &u.explanation)?;
    Ok(d)
}

fn example_dict<'py>(py: Python<'py>, e: &StoredExample) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("band", e.band)?;
    d.set_item("rank", e.rank)?;
    d.set_item("act", e.act)?;
    d.set_item("window", e.window)?;
    d.set_item("position", e.position)?;
    d.set_item("context_start", e.context_start)?;
    d.set_item("tokens", e.tokens.clone())?;
    d.set_item("acts", e.acts.clone())?;
    Ok(d)
}

/// An open, read-only feature store.
#[pyclass(module = "glassbox._glassbox", frozen)]
pub struct NativeFeatureStore {
    store: Mutex<FeatureStore>,
}

impl NativeFeatureStore {
    fn with<T>(&self, f: impl FnOnce(&FeatureStore) -> PyResult<T>) -> PyResult<T> {
        let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&s)
    }
}

#[pymethods]
impl NativeFeatureStore {
    /// Opens `features.sqlite`, or a run directory that holds one.
    #[staticmethod]
    fn open(path: String) -> PyResult<Self> {
        let p = std::path::Path::new(&path);
        if !p.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "no feature store at {path}: build one with glassbox.build_features(model, run_dir) or `glassbox features build --run DIR`"
            )));
        }
        let store = FeatureStore::open(p).map_err(|e| match &e {
            glassbox_features::FeaturesError::BadInput(m) if m.contains("no feature store") => {
                PyFileNotFoundError::new_err(e.to_string())
            }
            _ => PyValueError::new_err(e.to_string()),
        })?;
        Ok(NativeFeatureStore {
            store: Mutex::new(store),
        })
    }

    fn path(&self) -> PyResult<String> {
        self.with(|s| Ok(s.path.display().to_string()))
    }

    fn meta(&self) -> PyResult<std::collections::BTreeMap<String, String>> {
        self.with(|s| s.meta().map_err(store_err))
    }

    fn comparison(&self) -> PyResult<Vec<(String, f64)>> {
        self.with(|s| s.comparison().map_err(store_err))
    }

    fn count(&self, kind_name: &str) -> PyResult<u64> {
        let k = kind(kind_name)?;
        self.with(|s| s.count(k).map_err(store_err))
    }

    /// A page of units as dicts (id, density, max_act, mean_act, label, top_tokens,
    /// concentration).
    #[pyo3(signature = (kind_name, order_name="id", alive_only=false, limit=None, offset=0))]
    fn units<'py>(
        &self,
        py: Python<'py>,
        kind_name: &str,
        order_name: &str,
        alive_only: bool,
        limit: Option<usize>,
        offset: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let (k, o) = (kind(kind_name)?, order(order_name)?);
        let units = self.with(|s| {
            let limit = match limit {
                Some(l) => l,
                None => s.count(k).map_err(store_err)? as usize,
            };
            s.units(k, o, alive_only, limit, offset).map_err(store_err)
        })?;
        let out = PyList::empty(py);
        for u in &units {
            out.append(unit_dict(py, u)?)?;
        }
        Ok(out)
    }

    /// One unit with everything the store holds: `unit`, `examples`, `promoted`,
    /// `suppressed`, `neighbours`, `histogram` (log10 edges, counts), `explanations`
    /// (best first, from `glassbox explain`). `KeyError` when
    /// the store has no such unit.
    fn unit<'py>(&self, py: Python<'py>, kind_name: &str, id: u32) -> PyResult<Bound<'py, PyDict>> {
        let k = kind(kind_name)?;
        let detail = self
            .with(|s| s.unit(k, id).map_err(store_err))?
            .ok_or_else(|| {
                let n = self.with(|s| s.count(k).map_err(store_err)).unwrap_or(0);
                PyKeyError::new_err(format!(
                    "the store has no {} {id} (it holds {n}: ids 0..{n})",
                    k.as_str()
                ))
            })?;
        let d = PyDict::new(py);
        d.set_item("unit", unit_dict(py, &detail.unit)?)?;
        let examples = PyList::empty(py);
        for e in &detail.examples {
            examples.append(example_dict(py, e)?)?;
        }
        d.set_item("examples", examples)?;
        d.set_item("promoted", detail.promoted.clone())?;
        d.set_item("suppressed", detail.suppressed.clone())?;
        let near: Vec<(u32, f64, Option<String>)> = detail
            .neighbours
            .iter()
            .map(|n| (n.id, n.cosine, n.label.clone()))
            .collect();
        d.set_item("neighbours", near)?;
        let explanations = PyList::empty(py);
        for e in &detail.explanations {
            let x = PyDict::new(py);
            x.set_item("explanation", &e.explanation)?;
            x.set_item("failure", &e.failure)?;
            x.set_item("detection", e.detection)?;
            x.set_item("fuzzing", e.fuzzing)?;
            x.set_item("explainer_model", &e.explainer_model)?;
            x.set_item("scorer_model", &e.scorer_model)?;
            x.set_item("prompt_version", &e.prompt_version)?;
            x.set_item("prompt_tokens", e.prompt_tokens)?;
            x.set_item("completion_tokens", e.completion_tokens)?;
            explanations.append(x)?;
        }
        d.set_item("explanations", explanations)?;
        d.set_item("prev", detail.prev)?;
        d.set_item("next", detail.next)?;
        d.set_item(
            "histogram",
            (
                detail.unit.log10_edges.clone(),
                detail.unit.histogram.clone(),
            ),
        )?;
        Ok(d)
    }
}
