//! Running the model over token windows and keeping the rows that training should see.

use crate::{bad, DataError, Result};
use candle_core::DType;
use glassbox_model::hooks::{hook_points, layer_of, HookLayout};
use glassbox_model::{Batch, HookFilter, LogitsMode, MassiveNorm, Model, RowRule, Run};

/// What to harvest besides the hook names.
#[derive(Debug, Clone)]
pub struct HarvestOptions {
    /// Windows per forward pass: larger is faster until memory runs out.
    pub batch_windows: usize,
    /// Which positions become rows ([`RowRule::for_model`]: position 0 and BOS/EOS).
    pub rows: RowRule,
}

impl HarvestOptions {
    /// 8 windows a batch, the model's row rule.
    pub fn for_model(model: &Model) -> Self {
        HarvestOptions {
            batch_windows: 8,
            rows: RowRule::for_model(model),
        }
    }
}

/// Rows harvested at several hooks in one pass; row `i` of every hook comes from the
/// same token position.
#[derive(Debug, Clone)]
pub struct Harvest {
    /// per hook, `[n_rows, widths[h]]` row-major
    pub rows: Vec<Vec<f32>>,
    /// each hook's row width (e.g. `d_model` for `hook_resid_post`, `d_mlp` for
    /// `mlp.hook_post`, `n_heads × d_head` for `attn.hook_z`), in the order of the hooks
    pub widths: Vec<usize>,
    /// rows per hook (the same for every hook)
    pub n_rows: usize,
    /// rows the token rule kept but the massive-activation rule left out
    pub n_massive: usize,
}

/// Windows the massive-activation threshold is measured on (~8,000 rows at 128 tokens).
pub const CALIBRATION_WINDOWS: usize = 64;

/// The massive-activation criterion for a dictionary reading `hook`, measured on the
/// first [`CALIBRATION_WINDOWS`] of `windows` (training windows: deterministic, so a
/// resumed run measures the same) with the token rule `rule`: the residual stream
/// entering the hook's block ([`MassiveNorm::hook_for`]), threshold
/// [`MassiveNorm::calibrate`]. `None` for hooks outside the blocks.
pub fn calibrate_massive(
    model: &Model,
    windows: &[Vec<u32>],
    hook: &str,
    rule: &RowRule,
) -> Result<Option<MassiveNorm>> {
    let Some(resid) = MassiveNorm::hook_for(hook) else {
        return Ok(None);
    };
    let opts = HarvestOptions {
        batch_windows: 8,
        rows: RowRule::new(rule.excluded_tokens().iter().copied()),
    };
    let take = &windows[..windows.len().min(CALIBRATION_WINDOWS)];
    let (rows, width) = harvest_with(model, take, &resid, &opts, |_| {})?;
    let norms: Vec<f32> = rows
        .chunks_exact(width.max(1))
        .map(MassiveNorm::row_norm)
        .collect();
    Ok(MassiveNorm::calibrate(&resid, &norms))
}

/// One hook's activations over `windows`, as rows `[n, width]`; see [`harvest_hooks`].
pub fn harvest_with(
    model: &Model,
    windows: &[Vec<u32>],
    hook: &str,
    opts: &HarvestOptions,
    on_batch: impl FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let mut h = harvest_hooks(model, windows, &[hook.to_string()], opts, on_batch)?;
    Ok((h.rows.remove(0), h.widths[0]))
}

/// Activations at every hook in `hooks` over `windows`, all from one forward pass per
/// batch (a transcoder needs its input and output rows to be the same tokens), leaving
/// out the positions `opts.rows` excludes. The pass stops after the
/// deepest hook's block. `on_batch` gets the number of windows of each finished batch.
pub fn harvest_hooks(
    model: &Model,
    windows: &[Vec<u32>],
    hooks: &[String],
    opts: &HarvestOptions,
    mut on_batch: impl FnMut(usize),
) -> Result<Harvest> {
    let plan = HookPlan::new(model, hooks)?;
    let mut rows = vec![Vec::new(); hooks.len()];
    let (mut n_rows, mut n_massive) = (0, 0);
    let step = opts.batch_windows.max(1);
    for (i, batch) in windows.chunks(step).enumerate() {
        let first = i * step;
        let (kept, massive) =
            plan.forward_rows(model, batch, &opts.rows, &mut rows, None, || {
                format!("windows {first}..{}", first + batch.len())
            })?;
        n_rows += kept;
        n_massive += massive;
        on_batch(batch.len());
    }
    Ok(Harvest {
        rows,
        widths: plan.widths,
        n_rows,
        n_massive,
    })
}

/// The hooks to read, checked against the model, with their row widths and where the
/// forward pass may stop.
pub(crate) struct HookPlan {
    pub hooks: Vec<String>,
    pub widths: Vec<usize>,
    filter: HookFilter,
    stop_at_layer: Option<usize>,
    logits: LogitsMode,
}

impl HookPlan {
    pub fn new(model: &Model, hooks: &[String]) -> Result<Self> {
        let cfg = model.config();
        if hooks.is_empty() {
            return Err(bad("no hook to harvest: name at least one hook point"));
        }
        let known = hook_points(cfg);
        let mut widths = Vec::new();
        // `Some(n)`: run blocks 0..n only; `None`: the hook is after the last block.
        let mut stop: Option<usize> = Some(0);
        for (i, h) in hooks.iter().enumerate() {
            if h.contains('*') || h.contains(',') {
                return Err(bad(format!(
                    "`{h}` is a pattern; the store needs exact hook names, one per hook"
                )));
            }
            if hooks[..i].contains(h) {
                return Err(bad(format!("hook `{h}` is named twice")));
            }
            // The runtime's own check: an unknown name errors with the nearest hook.
            HookFilter::new(vec![h.clone()], cfg)?;
            if HookLayout::of(h) == HookLayout::Pattern {
                return Err(bad(format!(
                    "`{h}` is an attention pattern [batch, head, query, key], not one row \
                     per token; choose a hook with a position axis (e.g. hook_z, hook_resid_post)"
                )));
            }
            let info = known
                .iter()
                .find(|k| &k.name == h)
                .ok_or_else(|| bad(format!("hook `{h}` is not a hook point of this model")))?;
            widths.push(info.row_width().ok_or_else(|| {
                bad(format!(
                    "cannot tell the row width of `{h}` from {:?}",
                    info.shape_strings()
                ))
            })?);
            stop = match (stop, layer_of(h)) {
                (None, _) => None,
                (Some(s), Some(l)) => Some(s.max(l + 1)),
                // hook_embed / hook_pos_embed: before the first block
                (Some(s), None) if !h.starts_with("ln_final") => Some(s),
                (Some(_), None) => None,
            };
        }
        Ok(HookPlan {
            hooks: hooks.to_vec(),
            widths,
            filter: HookFilter::new(hooks.to_vec(), cfg)?,
            stop_at_layer: stop,
            // The final norm runs only on the way to the logits.
            logits: if stop.is_some() {
                LogitsMode::None
            } else {
                LogitsMode::All
            },
        })
    }

    /// Runs one batch and appends the kept rows of every hook to `out[h]`; returns the
    /// number of rows appended and of massive rows (`rule.massive()`) among the rows the
    /// token rule keeps. Massive rows are left out, unless `massive_out` is given: then
    /// every row the token rule keeps is appended and `massive_out` gets one flag per
    /// row (the activation store serves around them, so that its row counts stay known
    /// from the tokens). `place` describes the batch for error messages.
    pub fn forward_rows(
        &self,
        model: &Model,
        windows: &[Vec<u32>],
        rule: &RowRule,
        out: &mut [Vec<f32>],
        mut massive_out: Option<&mut Vec<bool>>,
        place: impl Fn() -> String,
    ) -> Result<(usize, usize)> {
        if windows.is_empty() {
            return Ok((0, 0));
        }
        let filter = match rule.massive() {
            Some(_) => HookFilter::new(rule.hooks_with_norm(&self.hooks), model.config())?,
            None => self.filter.clone(),
        };
        let mut run = Run::new().cache(filter).logits(self.logits);
        if let Some(l) = self.stop_at_layer {
            run = run.stop_at_layer(l);
        }
        let res = model
            .transformer
            .run(&Batch::new(windows.to_vec()), &mut run)?;
        let s_all = windows[0].len();
        let massive = rule.massive_flags(&res.cache, windows.len() * s_all)?;
        let keep_massive = massive_out.is_some();
        let mut n_massive = 0;
        for (w, win) in windows.iter().enumerate() {
            for p in rule.positions(win) {
                let m = massive[w * s_all + p];
                n_massive += usize::from(m);
                if let Some(flags) = massive_out.as_deref_mut() {
                    flags.push(m);
                }
            }
        }
        let mut kept = 0;
        for (h, hook) in self.hooks.iter().enumerate() {
            let a = res.cache.get(hook).ok_or_else(|| {
                bad(format!(
                    "the forward pass recorded no `{hook}` (a runtime bug: please report it)"
                ))
            })?;
            let dims = a.dims().to_vec();
            let (b, s) = (dims[0], dims.get(1).copied().unwrap_or(0));
            let width = self.widths[h];
            if b != windows.len() || b * s * width != a.elem_count() {
                return Err(bad(format!(
                    "`{hook}` has shape {dims:?}; expected [{}, seq, {width}]",
                    windows.len()
                )));
            }
            let data = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let dst = &mut out[h];
            kept = 0;
            for (w, win) in windows.iter().enumerate() {
                for p in rule.positions(win) {
                    if !keep_massive && massive[w * s_all + p] {
                        continue;
                    }
                    let row = &data[(w * s + p) * width..][..width];
                    if row.iter().any(|x| !x.is_finite()) {
                        return Err(DataError::NonFinite {
                            hook: hook.clone(),
                            place: format!("{}, position {p} of window {w} in the batch", place()),
                        });
                    }
                    dst.extend_from_slice(row);
                    kept += 1;
                }
            }
        }
        Ok((kept, n_massive))
    }
}
