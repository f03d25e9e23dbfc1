//! The native half of the Python package `glassbox` (`python/glassbox`): models, forward
//! passes with caches and hooks, and dictionaries, over numpy arrays. The Python half
//! (`python/glassbox/__init__.py`) gives them TransformerLens' and SAELens' names.
//!
//! Rules kept here: every error becomes a Python exception with glassbox's message
//! (`ValueError` for bad input, `KeyError` for an unknown hook, `FileNotFoundError` for
//! a missing model or dictionary); the GIL is released while a pass runs (a Python hook
//! takes it back for its own call only); a finished pass's logits and cache reach numpy
//! without a copy (the array views the tensor's storage and keeps it alive); inputs, and
//! the arrays handed to Python hooks (which may write to them), are copies.

mod features;
mod jobs;

use candle_core::{Device, Tensor};
use glassbox_model::{hook_points, Batch, HookFilter, Model, ModelError, Run, TlProcessing};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

/// A glassbox error as the Python exception a notebook user expects.
fn model_err(e: ModelError) -> PyErr {
    match e {
        ModelError::UnknownHook { .. } => PyKeyError::new_err(e.to_string()),
        ModelError::Tensor(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn tensor_err(e: candle_core::Error) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

fn open_err(e: glassbox_hub::OpenError) -> PyErr {
    use glassbox_hub::OpenError;
    match &e {
        OpenError::NotFound { .. } => PyFileNotFoundError::new_err(e.to_string()),
        // a path that is not there (a repo id would have been NotFound)
        OpenError::Load { spec, .. } if !std::path::Path::new(spec).exists() => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Keeps a tensor's storage alive for the numpy array that views it.
#[pyclass(module = "glassbox._glassbox", frozen)]
struct TensorOwner {
    _tensor: Tensor,
}

/// A pass's output as a numpy array without a copy: the array views the tensor's own
/// storage and keeps the tensor alive. Only for tensors nothing in Rust uses any more
/// (a finished pass's logits and cache); anything else goes through [`to_numpy`].
fn into_numpy<'py>(py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let view = {
        let (storage, layout) = t.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => {
                Some(v[a..b].as_ptr())
            }
            _ => None,
        }
    };
    let Some(ptr) = view else {
        return to_numpy(py, &t);
    };
    let dims = numpy::ndarray::IxDyn(t.dims());
    // SAFETY: `ptr` points at the tensor's contiguous f32 data, `dims` elements long.
    // The storage is a Vec that only in-place tensor ops could move or change; the
    // owner holds the last handle to it (the pass that made it has finished), so it
    // lives, unmoved, as long as the array.
    let array = unsafe { numpy::ndarray::ArrayViewD::from_shape_ptr(dims, ptr) };
    let owner = Bound::new(py, TensorOwner { _tensor: t })?;
    Ok(unsafe { PyArrayDyn::borrow_from_array(&array, owner.into_any()) })
}

/// A tensor as a new numpy array of its shape (f32; one copy).
fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = t.dims().to_vec();
    let data: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(tensor_err)?;
    data.into_pyarray(py)
        .reshape(shape)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A numpy array (any float dtype numpy can cast to f32) as a tensor (one copy).
fn from_numpy(a: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    // no numpy-side copy when it already is float32
    let kwargs = pyo3::types::PyDict::new(a.py());
    kwargs.set_item("copy", false)?;
    let cast = a
        .call_method("astype", ("float32",), Some(&kwargs))
        .map_err(|_| PyValueError::new_err("expected a numpy array of numbers"))?;
    let a: PyReadonlyArrayDyn<f32> = cast
        .extract()
        .map_err(|_| PyValueError::new_err("expected a numpy array of numbers"))?;
    let shape = a.shape().to_vec();
    let data = a
        .as_slice()
        .map(<[f32]>::to_vec)
        .unwrap_or_else(|_| a.as_array().iter().copied().collect());
    Tensor::from_vec(data, shape, &Device::Cpu).map_err(tensor_err)
}

/// What `run` returns: the logits (when computed) and the cache by hook name.
type RunResult<'py> = (Option<Bound<'py, PyArrayDyn<f32>>>, Bound<'py, PyDict>);

/// A loaded model.
#[pyclass(module = "glassbox._glassbox", frozen)]
struct NativeModel {
    model: Arc<Model>,
}

#[pymethods]
impl NativeModel {
    /// Opens `spec` (a HF directory, a `.gguf`, a HF repo id, `default`), with
    /// TransformerLens' weight processing when `process` is true.
    #[staticmethod]
    #[pyo3(signature = (spec, process=false))]
    fn open(py: Python<'_>, spec: String, process: bool) -> PyResult<Self> {
        let opts = glassbox_hub::OpenOptions {
            processing: if process {
                TlProcessing::default()
            } else {
                TlProcessing::none()
            },
            ..Default::default()
        };
        let model = py
            .detach(|| glassbox_hub::open_model(&spec, &opts))
            .map_err(open_err)?;
        Ok(NativeModel {
            model: Arc::new(model),
        })
    }

    /// The configuration as a dict (TransformerLens' `cfg` names where they exist).
    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.model.config();
        let d = PyDict::new(py);
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_key_value_heads", c.n_kv_heads)?;
        d.set_item("d_head", c.d_head)?;
        d.set_item("d_mlp", c.d_mlp)?;
        d.set_item("d_vocab", c.d_vocab)?;
        d.set_item("n_ctx", c.n_ctx)?;
        d.set_item("architecture", format!("{:?}", c.architecture))?;
        d.set_item("source", self.model.source.display().to_string())?;
        Ok(d)
    }

    /// Every hook point, in execution order, with its named dimensions.
    fn hook_points(&self) -> Vec<(String, Vec<String>)> {
        hook_points(self.model.config())
            .into_iter()
            .map(|h| (h.name.clone(), h.shape_strings()))
            .collect()
    }

    /// A prompt's ids by glassbox's one rule (HF's `tokenizer(text)`: BOS first when
    /// the tokenizer asks for it); `prepend_bos` overrides it.
    #[pyo3(signature = (text, prepend_bos=None))]
    fn encode(&self, text: &str, prepend_bos: Option<bool>) -> PyResult<Vec<u32>> {
        let tok = self.model.tokenizer().map_err(model_err)?;
        let ids = match prepend_bos {
            None => tok.encode_prompt(text),
            Some(false) => tok.encode(text),
            Some(true) => tok.encode(text).map(|ids| tok.with_bos(ids)),
        }
        .map_err(model_err)?;
        if ids.is_empty() {
            return Err(PyValueError::new_err("the prompt is empty: nothing to run"));
        }
        Ok(ids)
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        let tok = self.model.tokenizer().map_err(model_err)?;
        tok.decode(&ids).map_err(model_err)
    }

    /// Each id's text as the tokenizer spells it (TransformerLens' `to_str_tokens`).
    fn token_texts(&self, ids: Vec<u32>) -> PyResult<Vec<String>> {
        let tok = self.model.tokenizer().map_err(model_err)?;
        ids.iter()
            .map(|&i| tok.decode(&[i]).map_err(model_err))
            .collect()
    }

    /// The hook names `patterns` (globs) match, checked: an unknown one is a `KeyError`
    /// naming the nearest hook.
    fn match_hooks(&self, patterns: Vec<String>) -> PyResult<Vec<String>> {
        let filter = HookFilter::new(patterns, self.model.config()).map_err(model_err)?;
        Ok(hook_points(self.model.config())
            .into_iter()
            .map(|h| h.name)
            .filter(|n| filter.matches(n))
            .collect())
    }

    /// One forward pass over `tokens` (`[batch, seq]` ids). Returns `(logits or None,
    /// cache)`: the activations of the hooks `cache` names, and `hooks` — a list of
    /// `(hook names, fn(name, array) -> array or None)` — called where they match, their
    /// returned arrays flowing on. `stop_at_layer` runs blocks `0..layer` only (no logits;
    /// the residual entering block `layer` is returned as `"resid"`).
    #[pyo3(signature = (tokens, cache=None, hooks=None, stop_at_layer=None, logits=true))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<Vec<u32>>,
        cache: Option<Vec<String>>,
        hooks: Option<Vec<(Vec<String>, Py<PyAny>)>>,
        stop_at_layer: Option<usize>,
        logits: bool,
    ) -> PyResult<RunResult<'py>> {
        let cfg = self.model.config();
        if let Some(l) = stop_at_layer {
            if l > cfg.n_layers {
                return Err(PyValueError::new_err(format!(
                    "stop_at_layer {l} is past the model's {} layers",
                    cfg.n_layers
                )));
            }
        }
        let cache_filter = match cache {
            Some(names) if !names.is_empty() => {
                Some(HookFilter::new(names, cfg).map_err(model_err)?)
            }
            _ => None,
        };
        let py_hooks = self.hook_filters(hooks)?;
        let batch = Batch::new(tokens);
        let model = Arc::clone(&self.model);
        let out = py.detach(move || -> Result<_, PyErr> {
            let mut run = Run::new();
            if let Some(f) = cache_filter {
                run = run.cache(f);
            }
            for (filter, f) in py_hooks {
                run = run.hook(filter, move |name, x| call_hook(&f, name, x));
            }
            if let Some(l) = stop_at_layer {
                run = run.stop_at_layer(l);
            }
            if !logits {
                run = run.logits(glassbox_model::LogitsMode::None);
            }
            model.transformer.run(&batch, &mut run).map_err(pass_err)
        })?;
        // the pass is over: its tensors are handed to numpy without a copy
        let d = PyDict::new(py);
        let glassbox_model::RunOutput {
            logits,
            residual,
            cache,
            ..
        } = out;
        for (name, t) in cache {
            d.set_item(name, into_numpy(py, t)?)?;
        }
        if stop_at_layer.is_some() {
            d.set_item("resid", into_numpy(py, residual)?)?;
        }
        let logits = match logits {
            Some(l) => Some(into_numpy(py, l)?),
            None => None,
        };
        Ok((logits, d))
    }

    /// The logits of a pass that starts at block `start_at_layer` from `resid`
    /// (`[batch, pos, d_model]`, the residual entering that block); `start_at_layer =
    /// n_layers` applies only the final norm and the unembedding (a logit lens).
    /// `tokens` (`[batch, pos]`) only matter for padding; zeros by default.
    #[pyo3(signature = (resid, start_at_layer, tokens=None))]
    fn run_from<'py>(
        &self,
        py: Python<'py>,
        resid: &Bound<'py, PyAny>,
        start_at_layer: usize,
        tokens: Option<Vec<Vec<u32>>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let cfg = self.model.config();
        if start_at_layer > cfg.n_layers {
            return Err(PyValueError::new_err(format!(
                "start_at_layer {start_at_layer} is past the model's {} layers",
                cfg.n_layers
            )));
        }
        let t = from_numpy(resid)?;
        let (b, s) = match t.dims() {
            &[b, s, d] if d == cfg.d_model && b > 0 && s > 0 => (b, s),
            dims => {
                return Err(PyValueError::new_err(format!(
                "start_at_layer needs a residual of shape [batch, pos, d_model = {}], got {dims:?}",
                cfg.d_model
            )))
            }
        };
        let tokens = tokens.unwrap_or_else(|| vec![vec![0; s]; b]);
        if tokens.len() != b || tokens.iter().any(|r| r.len() != s) {
            return Err(PyValueError::new_err(format!(
                "tokens must be [batch, pos] = [{b}, {s}] to go with the residual"
            )));
        }
        let model = Arc::clone(&self.model);
        let batch = Batch::new(tokens);
        let out = py.detach(move || {
            model
                .transformer
                .run(&batch, &mut Run::new().start_at_layer(start_at_layer, t))
                .map_err(pass_err)
        })?;
        let logits = out
            .logits
            .ok_or_else(|| PyRuntimeError::new_err("the pass returned no logits"))?;
        into_numpy(py, logits)
    }

    /// Generates after `prompt` (ids) until a stop token (EOS, the chat turn's end) or
    /// `max_new_tokens`; temperature 0 is greedy. `hooks` (as in `run`) act at every
    /// step. Returns the new ids, the stop token left out.
    #[pyo3(signature = (prompt, max_new_tokens=32, temperature=0.0, top_p=1.0, seed=0, hooks=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        temperature: f64,
        top_p: f64,
        seed: u64,
        hooks: Option<Vec<(Vec<String>, Py<PyAny>)>>,
    ) -> PyResult<Vec<u32>> {
        if prompt.is_empty() {
            return Err(PyValueError::new_err("the prompt is empty: nothing to run"));
        }
        let stop_tokens = self
            .model
            .tokenizer()
            .map(|t| t.stop_tokens())
            .unwrap_or_default();
        let opts = glassbox_model::SamplingOptions {
            max_new_tokens,
            temperature,
            top_p,
            seed,
            stop_tokens: stop_tokens.clone(),
        };
        let filters = self.hook_filters(hooks)?;
        let model = Arc::clone(&self.model);
        let mut ids = py.detach(move || {
            let mut run = Run::new();
            for (filter, f) in filters {
                run = run.hook(filter, move |name, x| call_hook(&f, name, x));
            }
            model
                .transformer
                .generate(&prompt, &opts, &mut run, |_| {})
                .map_err(pass_err)
        })?;
        if ids.last().is_some_and(|t| stop_tokens.contains(t)) {
            ids.pop();
        }
        Ok(ids)
    }

    /// The gradient of a linear metric of the logits, `sum(c * logits[b, p, t])` over
    /// `terms` `(b, p, t, c)` (a logit, a logit difference), at every hook `hooks`
    /// names. Returns `(metric, {hook: gradient})`.
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<Vec<u32>>,
        hooks: Vec<String>,
        terms: Vec<(usize, usize, u32, f32)>,
    ) -> PyResult<(f32, Bound<'py, PyDict>)> {
        let cfg = self.model.config();
        if terms.is_empty() {
            return Err(PyValueError::new_err(
                "the metric has no terms: give (batch, pos, token, coefficient) tuples",
            ));
        }
        let filter = HookFilter::new(hooks, cfg).map_err(model_err)?;
        let (b, s, v) = (
            tokens.len(),
            tokens.first().map_or(0, Vec::len),
            cfg.d_vocab,
        );
        for &(tb, tp, tt, _) in &terms {
            if tb >= b || tp >= s || tt as usize >= v {
                return Err(PyValueError::new_err(format!(
                    "metric term (batch {tb}, pos {tp}, token {tt}) is outside the logits [{b}, {s}, {v}]"
                )));
            }
        }
        let batch = Batch::new(tokens);
        let model = Arc::clone(&self.model);
        let (metric, grads) = py.detach(move || -> PyResult<_> {
            let out = model
                .transformer
                .run(&batch, &mut Run::new().grads(filter))
                .map_err(pass_err)?;
            let logits = out
                .logits()
                .map_err(model_err)?
                .flatten_all()
                .map_err(tensor_err)?;
            let idx: Vec<u32> = terms
                .iter()
                .map(|&(tb, tp, tt, _)| ((tb * s + tp) * v + tt as usize) as u32)
                .collect();
            let coef: Vec<f32> = terms.iter().map(|t| t.3).collect();
            let n = idx.len();
            let picked = logits
                .index_select(
                    &Tensor::from_vec(idx, n, &Device::Cpu).map_err(tensor_err)?,
                    0,
                )
                .map_err(tensor_err)?;
            let metric = (picked * Tensor::from_vec(coef, n, &Device::Cpu).map_err(tensor_err)?)
                .and_then(|t| t.sum_all())
                .map_err(tensor_err)?;
            let grads = out.gradients(&metric).map_err(model_err)?;
            let m = metric.to_scalar::<f32>().map_err(tensor_err)?;
            Ok((m, grads))
        })?;
        let d = PyDict::new(py);
        for (name, g) in grads {
            d.set_item(name, into_numpy(py, g)?)?;
        }
        Ok((metric, d))
    }
}

impl NativeModel {
    /// The checked filters of a list of `(hook names, fn)`.
    fn hook_filters(
        &self,
        hooks: Option<Vec<(Vec<String>, Py<PyAny>)>>,
    ) -> PyResult<Vec<(HookFilter, Py<PyAny>)>> {
        let cfg = self.model.config();
        hooks
            .unwrap_or_default()
            .into_iter()
            .map(|(names, f)| Ok((HookFilter::new(names, cfg).map_err(model_err)?, f)))
            .collect()
    }
}

/// A failed pass's error: a Python hook's own exception when that is what stopped it.
fn pass_err(e: ModelError) -> PyErr {
    match e {
        ModelError::BadIntervention { ref problem, .. } if problem.starts_with(PY_ERR_TAG) => {
            take_hook_error().unwrap_or_else(|| model_err(e))
        }
        e => model_err(e),
    }
}

const PY_ERR_TAG: &str = "a Python hook raised";

thread_local! {
    /// The exception a Python hook raised, carried across the Rust pass that called it.
    static HOOK_ERROR: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

fn take_hook_error() -> Option<PyErr> {
    HOOK_ERROR.with(|e| e.borrow_mut().take())
}

/// Calls a Python hook with the GIL held for that call only. An array returned replaces
/// the activation (same shape); `None` keeps the array the hook was given, edits made in
/// place included — TransformerLens' hooks often write `act[:, :, h] = 0` and return
/// nothing, and those edits must count.
fn call_hook(f: &Py<PyAny>, name: &str, x: Tensor) -> glassbox_model::Result<Tensor> {
    let result = Python::attach(|py| -> PyResult<Tensor> {
        let arr = to_numpy(py, &x)?;
        let back = f.call1(py, (&arr, name))?;
        let t = if back.is_none(py) {
            from_numpy(arr.as_any())?
        } else {
            from_numpy(back.bind(py))?
        };
        if t.dims() != x.dims() {
            return Err(PyValueError::new_err(format!(
                "the hook at `{name}` returned shape {:?}; the activation is {:?}",
                t.dims(),
                x.dims()
            )));
        }
        Ok(t)
    });
    match result {
        Ok(t) => Ok(t),
        Err(e) => {
            HOOK_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            Err(ModelError::BadIntervention {
                hook: name.to_string(),
                problem: PY_ERR_TAG.into(),
            })
        }
    }
}

/// A sparse dictionary (SAE or transcoder) in SAELens' or sparsify's format.
#[pyclass(module = "glassbox._glassbox", frozen)]
struct NativeDictionary {
    dict: Arc<glassbox_sae::Dictionary>,
    dir: String,
}

#[pymethods]
impl NativeDictionary {
    /// Loads a dictionary folder or `hf:ORG/REPO[/SUB]`.
    #[staticmethod]
    fn open(py: Python<'_>, spec: String) -> PyResult<Self> {
        let path = std::path::PathBuf::from(&spec);
        let dir = py
            .detach(|| glassbox_hub::resolve_dictionary(&path))
            .map_err(|e| PyFileNotFoundError::new_err(format!("cannot find {spec}: {e}")))?;
        if !dir.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "{} does not exist",
                dir.display()
            )));
        }
        let dict = glassbox_sae::format::load(&dir).map_err(|e| {
            PyValueError::new_err(format!("cannot open dictionary {}: {e}", dir.display()))
        })?;
        Ok(NativeDictionary {
            dict: Arc::new(dict),
            dir: dir.display().to_string(),
        })
    }

    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("d_in", self.dict.d_in)?;
        d.set_item("d_sae", self.dict.d_sae)?;
        d.set_item("d_out", self.dict.d_out)?;
        d.set_item("architecture", self.dict.architecture.name())?;
        d.set_item("hook_name", self.dict.hook_name.clone())?;
        d.set_item("hook_name_out", self.dict.hook_name_out.clone())?;
        d.set_item("path", self.dir.clone())?;
        Ok(d)
    }

    /// Feature activations of rows `x` (`[..., d_in]`).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (t, lead) = rows(x, self.dict.d_in, "d_in")?;
        let dict = Arc::clone(&self.dict);
        let f = py
            .detach(move || dict.encode(&t))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        unrows(py, f, lead)
    }

    /// Reconstructions from feature activations `f` (`[..., d_sae]`); a transcoder with a
    /// skip connection also needs its input `x`.
    #[pyo3(signature = (f, x=None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        f: &Bound<'py, PyAny>,
        x: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (ft, lead) = rows(f, self.dict.d_sae, "d_sae")?;
        let xt = match x {
            Some(x) => Some(rows(x, self.dict.d_in, "d_in")?.0),
            None => None,
        };
        let dict = Arc::clone(&self.dict);
        let y = py
            .detach(move || dict.decode(&ft, xt.as_ref()))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        unrows(py, y, lead)
    }

    /// The decoder's rows `[d_sae, d_out]` (SAELens' `W_dec`).
    fn w_dec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        to_numpy(py, &self.dict.w_dec)
    }
}

/// `x` as rows `[n, width]` and its leading shape, checking the last dimension.
fn rows(x: &Bound<'_, PyAny>, width: usize, what: &str) -> PyResult<(Tensor, Vec<usize>)> {
    let t = from_numpy(x)?;
    let dims = t.dims().to_vec();
    match dims.last() {
        Some(&w) if w == width => {}
        _ => {
            return Err(PyValueError::new_err(format!(
                "expected an array whose last dimension is {what} = {width}, got shape {dims:?}"
            )))
        }
    }
    let lead = dims[..dims.len() - 1].to_vec();
    let n: usize = lead.iter().product();
    Ok((t.reshape((n, width)).map_err(tensor_err)?, lead))
}

fn unrows<'py>(
    py: Python<'py>,
    t: Tensor,
    mut lead: Vec<usize>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    lead.push(t.dims()[1]);
    into_numpy(py, t.reshape(lead).map_err(tensor_err)?)
}

#[pymodule]
fn _glassbox(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // as the CLI does at start-up: without it every large buffer is a fresh mapping
    // that the kernel faults in and zeroes on each pass (15–20 % of a pass measured);
    // freed memory then stays with the process for reuse
    glassbox_model::kernels::keep_freed_buffers_for_reuse();
    m.add_class::<NativeModel>()?;
    m.add_class::<NativeDictionary>()?;
    m.add_class::<TensorOwner>()?;
    m.add_class::<features::NativeFeatureStore>()?;
    m.add_function(wrap_pyfunction!(jobs::train_sae, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::build_features, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::patch, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::ioi, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::probe_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::trace, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
