//! The one streaming pass: the model over token windows, the dictionary's hook and the
//! MLP neurons cached together, the dictionary encoding the hook, and both groups of
//! units updated batch by batch.

use crate::accumulate::{BatchActs, GroupOptions, UnitGroup, NO_ROW};
use crate::{bad, BuildOptions, Result, UnitKind};
use candle_core::{DType, Device, Tensor};
use glassbox_model::hooks::{hook_points, layer_of, HookLayout};
use glassbox_model::{Batch, HookFilter, LogitsMode, Run, Transformer};
use glassbox_sae::Dictionary;
use std::time::Instant;

/// Where the pass reads.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// the hook the dictionary encodes
    pub hook: String,
    /// `blocks.L.mlp.hook_post` at the dictionary's layer, when neurons are analysed
    pub neuron_hook: Option<String>,
    /// width of `hook` (= the dictionary's `d_in`)
    pub d_in: usize,
    /// MLP width (0 without neurons)
    pub d_mlp: usize,
}

/// Width of one row of a hook (heads flattened), from the model's hook table.
fn hook_width(model: &Transformer, hook: &str) -> Result<usize> {
    if hook.contains('*') || hook.contains(',') {
        return Err(bad(format!(
            "`{hook}` is a pattern; a dictionary reads one hook point"
        )));
    }
    // an unknown name gets the runtime's "did you mean" message
    HookFilter::new(vec![hook.to_string()], &model.config)?;
    if HookLayout::of(hook) == HookLayout::Pattern {
        return Err(bad(format!(
            "`{hook}` is an attention pattern, not one vector per token"
        )));
    }
    let info = hook_points(&model.config)
        .into_iter()
        .find(|h| h.name == hook)
        .ok_or_else(|| bad(format!("`{hook}` is not a hook point of this model")))?;
    info.row_width().ok_or_else(|| {
        bad(format!(
            "cannot tell the width of `{hook}` from {:?}",
            info.shape_strings()
        ))
    })
}

/// Checks that `dict` reads `hook` of `model` (widths agree) and picks the neuron hook.
/// The error for a wrong width names both widths.
pub fn check_hooks(
    model: &Transformer,
    dict: &Dictionary,
    hook: &str,
    neurons: bool,
) -> Result<Hooks> {
    let w = hook_width(model, hook)?;
    if w != dict.d_in {
        return Err(bad(format!(
            "width mismatch: the dictionary reads vectors of width d_in = {}, but `{hook}` of this model has width {w}",
            dict.d_in
        )));
    }
    let neuron_hook = if neurons {
        let layer = match layer_of(hook) {
            Some(l) => l,
            None if hook.starts_with("ln_final") => model.config.n_layers - 1,
            None => 0,
        };
        Some(format!("blocks.{layer}.mlp.hook_post"))
    } else {
        None
    };
    let d_mlp = match &neuron_hook {
        Some(h) => hook_width(model, h)?,
        None => 0,
    };
    Ok(Hooks {
        hook: hook.to_string(),
        neuron_hook,
        d_in: w,
        d_mlp,
    })
}

/// The result of the pass.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// where the pass read
    pub hooks: Hooks,
    /// the dictionary's features
    pub features: UnitGroup,
    /// the MLP neurons at its layer (`None` without [`BuildOptions::neurons`])
    pub neurons: Option<UnitGroup>,
    /// statistics rows (tokens) evaluated
    pub tokens: u64,
    /// rows the token rule keeps but the massive-activation rule left out
    pub massive_excluded: u64,
    /// windows run
    pub windows: usize,
    /// window length
    pub context_size: usize,
    /// seconds spent in: the model's forward passes, encoding, feature statistics,
    /// neuron statistics
    pub seconds: [(&'static str, f64); 4],
}

/// Runs `model` over `windows` (all the same length) and gathers the statistics of
/// every feature of `dict` at `hook` and, with `opts.neurons`, of every MLP neuron at
/// its layer. `on_batch` gets the number of windows of each finished batch.
pub fn analyse(
    model: &Transformer,
    dict: &Dictionary,
    hook: &str,
    windows: &[Vec<u32>],
    opts: &BuildOptions,
    mut on_batch: impl FnMut(usize),
) -> Result<Analysis> {
    let hooks = check_hooks(model, dict, hook, opts.neurons)?;
    let seq = windows.first().map_or(0, Vec::len);
    if windows.is_empty() || seq < 2 {
        return Err(bad(
            "no token windows to analyse (need windows of at least 2 tokens)",
        ));
    }
    if let Some((i, w)) = windows.iter().enumerate().find(|(_, w)| w.len() != seq) {
        return Err(bad(format!(
            "window {i} has {} tokens; every window must have {seq}",
            w.len()
        )));
    }
    if seq > model.config.n_ctx {
        return Err(bad(format!(
            "windows of {seq} tokens exceed the model's context of {}",
            model.config.n_ctx
        )));
    }
    let vocab = model.config.d_vocab as u32;
    if let Some(t) = windows.iter().flatten().find(|&&t| t >= vocab) {
        return Err(bad(format!(
            "token id {t} is outside the model's vocabulary of {vocab}"
        )));
    }
    let group_opts = GroupOptions {
        top_k: opts.top_k,
        context_radius: opts.context_radius,
        bands: opts.bands,
        per_band: opts.per_band,
        seed: opts.seed,
    };
    let mut features = UnitGroup::new(UnitKind::Feature, dict.d_sae, group_opts.clone());
    let mut neurons = hooks
        .neuron_hook
        .as_ref()
        .map(|_| UnitGroup::new(UnitKind::Neuron, hooks.d_mlp, group_opts));

    let mut names = vec![hooks.hook.clone()];
    names.extend(
        hooks
            .neuron_hook
            .iter()
            .filter(|h| **h != hooks.hook)
            .cloned(),
    );
    // the massive-activation rule reads the residual stream at the hook's block
    let filter = HookFilter::new(opts.rows.hooks_with_norm(&names), &model.config)?;
    // Run only the blocks the hooks need, unless one needs the final norm.
    let stop = if names.iter().any(|h| h.starts_with("ln_final")) {
        None
    } else {
        Some(
            names
                .iter()
                .filter_map(|h| layer_of(h))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0),
        )
    };

    let step = opts.batch_windows.max(1);
    let (mut tokens, mut massive_excluded) = (0u64, 0u64);
    let mut seconds = [
        ("forward", 0.0),
        ("encode", 0.0),
        ("feature stats", 0.0),
        ("neuron stats", 0.0),
    ];
    let mut clock = Instant::now();
    let mut lap = |i: usize, seconds: &mut [(&'static str, f64); 4]| {
        seconds[i].1 += clock.elapsed().as_secs_f64();
        clock = Instant::now();
    };
    for (bi, batch) in windows.chunks(step).enumerate() {
        let first = bi * step;
        let mut run = Run::new().cache(filter.clone());
        run = match stop {
            Some(l) => run.stop_at_layer(l).logits(LogitsMode::None),
            None => run.logits(LogitsMode::Last),
        };
        lap(3, &mut seconds);
        let out = model.run(&Batch::new(batch.to_vec()), &mut run)?;
        // statistics rows: the positions the row rule keeps
        let mut rows: Vec<(u32, u32, u32)> = Vec::new();
        let mut slots = vec![NO_ROW; batch.len() * seq];
        let massive = opts.rows.massive_flags(&out.cache, batch.len() * seq)?;
        for (w, win) in batch.iter().enumerate() {
            let flags = &massive[w * seq..(w + 1) * seq];
            massive_excluded += opts.rows.positions(win).filter(|&p| flags[p]).count() as u64;
            for p in opts.rows.positions_after(win, flags) {
                slots[w * seq + p] = rows.len() as u32;
                rows.push(((first + w) as u32, p as u32, win[p]));
            }
        }
        tokens += rows.len() as u64;
        if rows.is_empty() {
            on_batch(batch.len());
            continue;
        }
        // flat (window, position) index of each row, in row order
        let flat: Vec<u32> = slots
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != NO_ROW)
            .map(|(i, _)| i as u32)
            .collect();
        let flat = Tensor::from_vec(flat, rows.len(), &Device::Cpu)?;
        let take = |name: &str, width: usize| -> Result<Tensor> {
            let a = out.cache.get(name).ok_or_else(|| {
                bad(format!(
                    "the forward pass recorded no `{name}` (a runtime bug)"
                ))
            })?;
            let x = a
                .to_dtype(DType::F32)?
                .reshape((batch.len() * seq, width))?
                .index_select(&flat.to_device(a.device())?, 0)?;
            Ok(x)
        };
        let x = take(&hooks.hook, hooks.d_in)?;
        lap(0, &mut seconds);
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            let (w, p, _) = rows[i / hooks.d_in];
            return Err(bad(format!(
                "the activations at `{}` hold NaN or Inf (window {w}, position {p}): check the model file",
                hooks.hook
            )));
        }
        let f = dict.encode(&x)?;
        let fs: Vec<f32> = f.flatten_all()?.to_vec1()?;
        lap(1, &mut seconds);
        features.observe(&BatchActs {
            acts: &fs,
            width: dict.d_sae,
            rows: &rows,
            slots: &slots,
            seq,
            first_window: first as u32,
        });
        drop(fs);
        lap(2, &mut seconds);
        if let (Some(group), Some(nh)) = (neurons.as_mut(), hooks.neuron_hook.as_ref()) {
            let n: Vec<f32> = take(nh, hooks.d_mlp)?.flatten_all()?.to_vec1()?;
            group.observe(&BatchActs {
                acts: &n,
                width: hooks.d_mlp,
                rows: &rows,
                slots: &slots,
                seq,
                first_window: first as u32,
            });
        }
        on_batch(batch.len());
    }
    lap(3, &mut seconds);
    Ok(Analysis {
        hooks,
        features,
        neurons,
        tokens,
        massive_excluded,
        windows: windows.len(),
        context_size: seq,
        seconds,
    })
}
