//! Dictionary files. Reads SAELens v6 (`cfg.json` + `sae_weights.safetensors`), legacy
//! SAELens configs (`activation_fn_str`, `activation_fn_kwargs.k`, top-level
//! `hook_name`) and EleutherAI sparsify (`cfg.json` + `sae.safetensors`); writes
//! SAELens v6.

use crate::dictionary::{Architecture, Dictionary};
use crate::{Result, SaeError};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

fn bad(path: &Path, problem: impl Into<String>) -> SaeError {
    SaeError::BadFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn read_json(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(path, "expected a JSON object")),
        Err(e) => Err(bad(path, format!("not valid JSON: {e}"))),
    }
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        bad(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    t.into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect()
}

fn take(
    t: &mut HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
    path: &Path,
) -> Result<Tensor> {
    let v = t
        .remove(name)
        .ok_or_else(|| bad(path, format!("no tensor `{name}`")))?;
    if v.dims() != shape {
        return Err(bad(
            path,
            format!(
                "`{name}` has shape {:?}, the config implies {shape:?}",
                v.dims()
            ),
        ));
    }
    Ok(v)
}

fn take_opt(
    t: &mut HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
    path: &Path,
) -> Result<Option<Tensor>> {
    if t.contains_key(name) {
        take(t, name, shape, path).map(Some)
    } else {
        Ok(None)
    }
}

fn usize_of(cfg: &Map<String, Value>, key: &str) -> Option<usize> {
    cfg.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

/// Loads a dictionary directory in any of the supported formats, told apart by its
/// weights file (`sae_weights.safetensors`: SAELens, `sae.safetensors`: sparsify). The
/// tensors are read as f32 on the CPU; a TopK `rescale_acts_by_decoder_norm` is folded
/// into the weights. [`SaeError::BadFile`] when a file is missing or corrupt, a tensor
/// is absent or misshapen, or the config asks for what is not supported (another
/// architecture, `normalize_activations` other than `none`).
pub fn load(dir: &Path) -> Result<Dictionary> {
    let cfg_path = dir.join("cfg.json");
    if !cfg_path.exists() {
        return Err(bad(dir, "no cfg.json: expected a SAELens (cfg.json + sae_weights.safetensors) or sparsify (cfg.json + sae.safetensors) dictionary"));
    }
    if dir.join("sae_weights.safetensors").exists() {
        load_saelens(dir, read_json(&cfg_path)?)
    } else if dir.join("sae.safetensors").exists() {
        load_sparsify(dir, read_json(&cfg_path)?)
    } else {
        Err(bad(
            dir,
            "cfg.json but neither sae_weights.safetensors (SAELens) nor sae.safetensors (sparsify)",
        ))
    }
}

fn load_saelens(dir: &Path, cfg: Map<String, Value>) -> Result<Dictionary> {
    let cfg_path = dir.join("cfg.json");
    let d_in = usize_of(&cfg, "d_in").ok_or_else(|| bad(&cfg_path, "missing `d_in`"))?;
    let d_sae = usize_of(&cfg, "d_sae").ok_or_else(|| bad(&cfg_path, "missing `d_sae`"))?;
    let d_out = usize_of(&cfg, "d_out").unwrap_or(d_in);
    let legacy_fn = cfg.get("activation_fn_str").and_then(Value::as_str);
    let arch_name = cfg.get("architecture").and_then(Value::as_str);
    let architecture = match (arch_name, legacy_fn) {
        (Some("topk" | "topk_transcoder" | "topk_skip_transcoder"), _)
        | (None | Some("standard"), Some("topk")) => Architecture::TopK,
        (Some("jumprelu" | "jumprelu_transcoder" | "jumprelu_skip_transcoder"), _) => {
            Architecture::JumpReLU
        }
        (Some("gated" | "gated_transcoder" | "gated_skip_transcoder"), _) => Architecture::Gated,
        (Some("standard" | "transcoder" | "skip_transcoder") | None, _) => Architecture::Standard,
        (Some(other), _) => {
            return Err(bad(
                &cfg_path,
                format!(
                    "architecture `{other}` is not supported (standard, topk, jumprelu, gated, and the transcoder forms)"
                ),
            ))
        }
    };
    let k = usize_of(&cfg, "k").or_else(|| {
        cfg.get("activation_fn_kwargs")
            .and_then(|v| v.get("k"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
    });
    if architecture == Architecture::TopK && k.is_none() {
        return Err(bad(&cfg_path, "a topk dictionary needs `k`"));
    }
    // SAELens' TopK scales pre-activations by ‖W_dec row‖ before the top-k and divides
    // them out again in decode; folded into the weights below (its `fold_W_dec_norm`).
    let rescale = cfg
        .get("rescale_acts_by_decoder_norm")
        .and_then(Value::as_bool)
        == Some(true);
    if rescale && architecture != Architecture::TopK {
        return Err(bad(
            &cfg_path,
            "rescale_acts_by_decoder_norm = true is defined for topk dictionaries only",
        ));
    }
    match cfg.get("normalize_activations").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(other) => {
            return Err(bad(&cfg_path, format!(
                "normalize_activations = `{other}`: the scaling factor is not in the file; save the dictionary with the normalisation folded into its weights (SAELens' `fold_activation_norm_scaling_factor`)"
            )))
        }
    }
    let meta = cfg.get("metadata");
    let hook_name = meta
        .and_then(|m| m.get("hook_name"))
        .or_else(|| cfg.get("hook_name"))
        .and_then(Value::as_str)
        .map(String::from);
    let hook_name_out = meta
        .and_then(|m| m.get("hook_name_out"))
        .or_else(|| cfg.get("hook_name_out"))
        .and_then(Value::as_str)
        .map(String::from);
    let model_name = meta
        .and_then(|m| m.get("model_name"))
        .or_else(|| cfg.get("model_name"))
        .and_then(Value::as_str)
        .map(String::from);
    let wpath = dir.join("sae_weights.safetensors");
    let mut t = read_tensors(&wpath)?;
    if arch_name.is_some_and(|n| n.contains("skip_transcoder")) && !t.contains_key("W_skip") {
        return Err(bad(
            &wpath,
            format!(
                "cfg.json says `{}` but there is no tensor `W_skip`",
                arch_name.unwrap_or_default()
            ),
        ));
    }
    let gated = architecture == Architecture::Gated;
    let mut d = Dictionary {
        architecture,
        d_in,
        d_sae,
        d_out,
        k,
        apply_b_dec_to_input: cfg
            .get("apply_b_dec_to_input")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        w_enc: take(&mut t, "W_enc", &[d_in, d_sae], &wpath)?,
        b_enc: if gated {
            None
        } else {
            Some(take(&mut t, "b_enc", &[d_sae], &wpath)?)
        },
        w_dec: take(&mut t, "W_dec", &[d_sae, d_out], &wpath)?,
        b_dec: take(&mut t, "b_dec", &[d_out], &wpath)?,
        threshold: if architecture == Architecture::JumpReLU {
            Some(take(&mut t, "threshold", &[d_sae], &wpath)?)
        } else {
            None
        },
        b_gate: if gated {
            Some(take(&mut t, "b_gate", &[d_sae], &wpath)?)
        } else {
            None
        },
        r_mag: if gated {
            Some(take(&mut t, "r_mag", &[d_sae], &wpath)?)
        } else {
            None
        },
        b_mag: if gated {
            Some(take(&mut t, "b_mag", &[d_sae], &wpath)?)
        } else {
            None
        },
        w_skip: take_opt(&mut t, "W_skip", &[d_out, d_in], &wpath)?,
        hook_name,
        hook_name_out,
        model_name,
        extra_cfg: cfg,
    };
    if rescale {
        fold_decoder_norms(&mut d)?;
    }
    Ok(d)
}

/// W_enc and b_enc columns times ‖W_dec row‖, W_dec rows divided by it: the same
/// feature activations and outputs as rescaling at run time, with unit decoder rows.
fn fold_decoder_norms(d: &mut Dictionary) -> Result<()> {
    let norms = d.w_dec.sqr()?.sum(1)?.sqrt()?;
    // a zero row stays zero (its feature can never contribute)
    let norms = norms.maximum(1e-30)?;
    d.w_enc = d.w_enc.broadcast_mul(&norms.unsqueeze(0)?)?;
    if let Some(b) = &d.b_enc {
        d.b_enc = Some(b.mul(&norms)?);
    }
    d.w_dec = d.w_dec.broadcast_div(&norms.unsqueeze(1)?)?;
    d.extra_cfg
        .insert("rescale_acts_by_decoder_norm".into(), Value::Bool(false));
    Ok(())
}

/// sparsify's `SparseCoder`: `encoder.weight [d_sae, d_in]`, `encoder.bias`, `W_dec`,
/// `b_dec`, and `W_skip [d_in, d_in]` with `skip_connection`. A transcoder
/// (`transcode: true`) does not subtract `b_dec` from its input.
fn load_sparsify(dir: &Path, mut cfg: Map<String, Value>) -> Result<Dictionary> {
    let cfg_path = dir.join("cfg.json");
    let wpath = dir.join("sae.safetensors");
    if let Some(act) = cfg.get("activation").and_then(Value::as_str) {
        if act != "topk" {
            return Err(bad(
                &cfg_path,
                format!("sparsify activation `{act}` is not supported (topk only)"),
            ));
        }
    }
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
    let transcode = flag("transcode");
    let skip = flag("skip_connection");
    if skip && !transcode {
        return Err(bad(
            &cfg_path,
            "a sparsify autoencoder with `skip_connection` is not supported (only transcoders may have a skip)",
        ));
    }
    let mut t = read_tensors(&wpath)?;
    let enc = t
        .get("encoder.weight")
        .ok_or_else(|| bad(&wpath, "no tensor `encoder.weight`"))?;
    let (d_sae, d_in) = enc.dims2()?;
    let k = usize_of(&cfg, "k").ok_or_else(|| bad(&cfg_path, "a sparsify config needs `k`"))?;
    let w_enc = take(&mut t, "encoder.weight", &[d_sae, d_in], &wpath)?
        .t()?
        .contiguous()?;
    let w_skip = take_opt(&mut t, "W_skip", &[d_in, d_in], &wpath)?;
    if skip != w_skip.is_some() {
        return Err(bad(
            &wpath,
            if skip {
                "cfg.json sets `skip_connection` but there is no tensor `W_skip`"
            } else {
                "a tensor `W_skip` but cfg.json does not set `skip_connection`"
            },
        ));
    }
    if transcode {
        // what makes `Dictionary::is_transcoder` true, and how SAELens names it
        let arch = if skip {
            "topk_skip_transcoder"
        } else {
            "topk_transcoder"
        };
        cfg.insert("architecture".into(), Value::String(arch.into()));
    }
    Ok(Dictionary {
        architecture: Architecture::TopK,
        d_in,
        d_sae,
        d_out: d_in,
        k: Some(k),
        apply_b_dec_to_input: !transcode,
        w_enc,
        b_enc: Some(take(&mut t, "encoder.bias", &[d_sae], &wpath)?),
        w_dec: take(&mut t, "W_dec", &[d_sae, d_in], &wpath)?,
        b_dec: take(&mut t, "b_dec", &[d_in], &wpath)?,
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip,
        // sparsify names the hook by the folder (e.g. `layers.6`)
        hook_name: None,
        hook_name_out: None,
        model_name: None,
        extra_cfg: cfg,
    })
}

/// Writes SAELens v6 files into `dir` (created if needed): `sae_weights.safetensors`
/// and `cfg.json`, replaced together ([`glassbox_atomic::write_many`]), so a failed save
/// leaves the dictionary that was there whole. Transcoders get SAELens' architecture names (`transcoder`,
/// `skip_transcoder`, `jumprelu_transcoder`, …) and `d_out`.
pub fn save_saelens(d: &Dictionary, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut tensors = HashMap::from([
        ("W_enc".to_string(), d.w_enc.clone()),
        ("W_dec".to_string(), d.w_dec.clone()),
        ("b_dec".to_string(), d.b_dec.clone()),
    ]);
    for (name, t) in [
        ("b_enc", &d.b_enc),
        ("threshold", &d.threshold),
        ("b_gate", &d.b_gate),
        ("r_mag", &d.r_mag),
        ("b_mag", &d.b_mag),
        ("W_skip", &d.w_skip),
    ] {
        if let Some(t) = t {
            tensors.insert(name.to_string(), t.contiguous()?);
        }
    }
    let mut metadata = d
        .extra_cfg
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(h) = &d.hook_name {
        metadata.insert("hook_name".into(), json!(h));
    }
    if let Some(h) = &d.hook_name_out {
        metadata.insert("hook_name_out".into(), json!(h));
    }
    if let Some(m) = &d.model_name {
        metadata.insert("model_name".into(), json!(m));
    }
    let mut cfg = json!({
        "d_in": d.d_in, "d_sae": d.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": d.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata, "architecture": d.architecture.name(),
    });
    if d.architecture == Architecture::TopK {
        cfg["k"] = json!(d.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    if d.is_transcoder() {
        // SAELens names transcoders by activation and skip connection (it has no TopK
        // transcoder: `topk_transcoder` is glassbox's own name, loadable here only).
        let skip = if d.w_skip.is_some() { "skip_" } else { "" };
        let base = match d.architecture {
            Architecture::Standard => "",
            Architecture::JumpReLU => "jumprelu_",
            Architecture::TopK => "topk_",
            Architecture::Gated => "gated_",
        };
        cfg["architecture"] = json!(format!("{base}{skip}transcoder"));
        cfg["d_out"] = json!(d.d_out);
    }
    let text = serde_json::to_string_pretty(&cfg).expect("json");
    let (weights, cfg_json) = (dir.join("sae_weights.safetensors"), dir.join("cfg.json"));
    glassbox_atomic::write_many(&[&weights, &cfg_json], |tmps| {
        candle_core::safetensors::save(&tensors, &tmps[0])?;
        std::fs::write(&tmps[1], &text)
            .map_err(|e| glassbox_atomic::Error::writing(&tmps[1], e))?;
        Ok::<_, SaeError>(())
    })
}
