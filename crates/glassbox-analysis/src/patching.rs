//! Activation patching (exact, by rerunning) and attribution patching (first order,
//! from one forward/backward pair), over a grid of sites.
//!
//! Denoising convention: the clean activation is put into the corrupted run and the
//! metric is normalised as (patched − corrupt) / (clean − corrupt): 1 means the site
//! alone restores the clean behaviour, 0 means it does nothing.

use crate::metric::{logit_diff_last, logit_diff_scalar, pearson};
use crate::{bad, Result};
use candle_core::{DType, Device, Tensor};
use glassbox_model::{
    ActivationCache, Batch, HookFilter, Intervention, LogitsMode, Run, Transformer,
};
use serde::Serialize;

/// What one cell of a patching grid patches: a hook per layer, split by position or by
/// head. Serialises as `resid_pre`, `attn_head`, `mlp_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchSite {
    /// `blocks.L.hook_resid_pre`, per (layer, position)
    ResidPre,
    /// `blocks.L.attn.hook_z`, per (layer, head), all positions
    AttnHead,
    /// `blocks.L.hook_mlp_out`, per (layer, position)
    MlpOut,
}

impl PatchSite {
    /// Reads a site's name (`resid_pre`, `attn_head`, `mlp_out`: the CLI's `--site`);
    /// any other is a [`BadInput`](crate::AnalysisError::BadInput) listing them.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "resid_pre" => Ok(PatchSite::ResidPre),
            "attn_head" => Ok(PatchSite::AttnHead),
            "mlp_out" => Ok(PatchSite::MlpOut),
            other => Err(bad(format!(
                "unknown patch site `{other}`; use resid_pre, attn_head or mlp_out"
            ))),
        }
    }
    /// The name `parse` reads (`--site`).
    pub fn name(self) -> &'static str {
        match self {
            PatchSite::ResidPre => "resid_pre",
            PatchSite::AttnHead => "attn_head",
            PatchSite::MlpOut => "mlp_out",
        }
    }
    /// The hook this site patches at `layer`, e.g. `blocks.3.hook_resid_pre`.
    pub fn hook(self, layer: usize) -> String {
        match self {
            PatchSite::ResidPre => format!("blocks.{layer}.hook_resid_pre"),
            PatchSite::AttnHead => format!("blocks.{layer}.attn.hook_z"),
            PatchSite::MlpOut => format!("blocks.{layer}.hook_mlp_out"),
        }
    }
    fn pattern(self) -> &'static str {
        match self {
            PatchSite::ResidPre => "blocks.*.hook_resid_pre",
            PatchSite::AttnHead => "blocks.*.attn.hook_z",
            PatchSite::MlpOut => "blocks.*.hook_mlp_out",
        }
    }
    /// What the grid's columns are: `head` for [`PatchSite::AttnHead`], else `position`.
    pub fn columns(self) -> &'static str {
        match self {
            PatchSite::AttnHead => "head",
            _ => "position",
        }
    }
}

/// A clean/corrupted prompt pair and the two answers whose logit difference is measured.
pub struct PatchProblem<'a> {
    /// the model every run uses
    pub model: &'a Transformer,
    /// the clean prompt's token ids (BOS included when the model wants it)
    pub clean: Vec<u32>,
    /// the corrupted prompt's token ids, as many as `clean`
    pub corrupt: Vec<u32>,
    /// the token whose logit counts positively (the clean answer)
    pub answer: u32,
    /// the token whose logit is subtracted (in IOI the subject, e.g. `" John"`)
    pub wrong: u32,
    /// interventions applied in every run (clean, corrupted and patched), e.g. an
    /// ablation under which to patch, or a frozen norm scale
    pub context: Vec<(HookFilter, Intervention)>,
}

/// One patching grid and the baselines it is normalised by.
#[derive(Debug, Clone, Serialize)]
pub struct PatchResult {
    /// what each cell patched
    pub site: PatchSite,
    /// `exact` or `attribution`
    pub method: &'static str,
    /// `logit[answer] − logit[wrong]` at the last position of the clean run
    pub logit_diff_clean: f32,
    /// the same for the corrupted run
    pub logit_diff_corrupt: f32,
    /// `grid[layer][position or head]`, normalised as (patched − corrupt)/(clean − corrupt)
    pub grid: Vec<Vec<f32>>,
    /// what the columns are ([`PatchSite::columns`])
    pub columns: &'static str,
}

impl PatchProblem<'_> {
    /// Refuses prompts of different lengths (cells would not line up) and empty ones.
    pub fn validate(&self) -> Result<()> {
        if self.clean.len() != self.corrupt.len() {
            return Err(bad(format!(
                "clean and corrupted prompts must have the same number of tokens: clean has {}, corrupted has {}",
                self.clean.len(),
                self.corrupt.len()
            )));
        }
        if self.clean.is_empty() {
            return Err(bad("the prompts are empty"));
        }
        Ok(())
    }

    /// A run with the problem's context interventions.
    fn base_run(&self) -> Run<'static> {
        self.context
            .iter()
            .cloned()
            .fold(Run::new(), |r, (f, iv)| r.intervene(f, iv))
    }

    fn filter(&self, site: PatchSite) -> Result<HookFilter> {
        Ok(HookFilter::parse(site.pattern(), &self.model.config)?)
    }

    /// Baseline logit differences (clean, corrupt), the clean run's cache of `site`, and
    /// the corrupted run's residual entering each block (patched runs start there).
    #[allow(clippy::type_complexity)]
    fn baselines(&self, site: PatchSite) -> Result<(f32, f32, ActivationCache, ActivationCache)> {
        let clean = self.model.run(
            &Batch::single(&self.clean),
            &mut self
                .base_run()
                .cache(self.filter(site)?)
                .logits(LogitsMode::Last),
        )?;
        let resid = HookFilter::parse("blocks.*.hook_resid_pre", &self.model.config)?;
        let corrupt = self.model.run(
            &Batch::single(&self.corrupt),
            &mut self.base_run().cache(resid).logits(LogitsMode::Last),
        )?;
        let lc = logit_diff_last(clean.logits()?, self.answer, self.wrong)?[0];
        let lr = logit_diff_last(corrupt.logits()?, self.answer, self.wrong)?[0];
        Ok((lc, lr, clean.cache, corrupt.cache))
    }

    /// Exact denoising patching: one batched forward per layer, each row patching one
    /// position (or head) with the clean activation, starting from the corrupted run's
    /// residual at that layer (the blocks before it are unaffected).
    pub fn exact(&self, site: PatchSite) -> Result<PatchResult> {
        self.validate()?;
        let (lc, lr, clean_cache, corrupt_resid) = self.baselines(site)?;
        let cfg = &self.model.config;
        let s = self.clean.len();
        let cols = if site == PatchSite::AttnHead {
            cfg.n_heads
        } else {
            s
        };
        let mut grid = Vec::with_capacity(cfg.n_layers);
        for layer in 0..cfg.n_layers {
            let name = site.hook(layer);
            let clean_act = clean_cache[&name].clone();
            // row r patches column r: a one-hot selection over rows × columns
            let mut sel = vec![0u8; cols * cols];
            for r in 0..cols {
                sel[r * cols + r] = 1;
            }
            let sel = Tensor::from_vec(sel, (cols, cols), &Device::Cpu)?;
            let batch = Batch::new(vec![self.corrupt.clone(); cols]);
            let filter = HookFilter::parse(&name, cfg)?;
            // Nothing before block `layer` changes: every patched row starts there from
            // the corrupted run's residual.
            let start = corrupt_resid[&format!("blocks.{layer}.hook_resid_pre")]
                .broadcast_as((cols, s, cfg.d_model))?
                .contiguous()?;
            let mut run = self
                .base_run()
                .logits(LogitsMode::Last)
                .start_at_layer(layer, start)
                .hook(filter, move |_, x| {
                    let dims = x.dims().to_vec();
                    let mask = match site {
                        // x [rows, pos, head, d_head]: select head r on row r
                        PatchSite::AttnHead => sel.reshape((cols, 1, cols, 1))?,
                        // x [rows, pos, d]: select position r on row r
                        _ => sel.reshape((cols, cols, 1))?,
                    };
                    let mask = mask.broadcast_as(dims.as_slice())?;
                    let clean = clean_act.broadcast_as(dims.as_slice())?;
                    Ok(mask.where_cond(&clean, &x)?)
                });
            let out = self.model.run(&batch, &mut run)?;
            let diffs = logit_diff_last(out.logits()?, self.answer, self.wrong)?;
            grid.push(diffs.iter().map(|&d| normalise(d, lc, lr)).collect());
        }
        Ok(PatchResult {
            site,
            method: "exact",
            logit_diff_clean: lc,
            logit_diff_corrupt: lr,
            grid,
            columns: site.columns(),
        })
    }

    /// Attribution patching: (a_clean − a_corrupt) · ∂metric/∂a at the clean run, summed
    /// over each cell, normalised like the exact grid. Exact where the metric is linear
    /// in the activation; one clean forward/backward and one corrupted forward in all.
    pub fn attribution(&self, site: PatchSite) -> Result<PatchResult> {
        self.validate()?;
        let cfg = &self.model.config;
        let filter = self.filter(site)?;
        let clean = self.model.run(
            &Batch::single(&self.clean),
            &mut self
                .base_run()
                .grads(filter.clone())
                .cache(filter.clone())
                .logits(LogitsMode::Last),
        )?;
        let metric = logit_diff_scalar(clean.logits()?, self.answer, self.wrong)?;
        let lc = metric.to_scalar::<f32>()?;
        let grads = clean.gradients(&metric)?;
        let corrupt = self.model.run(
            &Batch::single(&self.corrupt),
            &mut self.base_run().cache(filter).logits(LogitsMode::Last),
        )?;
        let lr = logit_diff_last(corrupt.logits()?, self.answer, self.wrong)?[0];
        let mut grid = Vec::with_capacity(cfg.n_layers);
        for layer in 0..cfg.n_layers {
            let name = site.hook(layer);
            let delta = (&clean.cache[&name] - &corrupt.cache[&name])?;
            let contrib = (delta * &grads[&name])?.squeeze(0)?;
            let cells = match site {
                // [pos, head, d_head] → per head
                PatchSite::AttnHead => contrib.sum(2)?.sum(0)?,
                // [pos, d] → per position
                _ => contrib.sum(1)?,
            };
            let cells: Vec<f32> = cells.to_dtype(DType::F32)?.to_vec1()?;
            // first-order estimate of (patched − corrupt), normalised
            grid.push(cells.iter().map(|&c| c / (lc - lr)).collect());
        }
        Ok(PatchResult {
            site,
            method: "attribution",
            logit_diff_clean: lc,
            logit_diff_corrupt: lr,
            grid,
            columns: site.columns(),
        })
    }
}

fn normalise(patched: f32, clean: f32, corrupt: f32) -> f32 {
    (patched - corrupt) / (clean - corrupt)
}

/// Pearson correlation between two grids of the same shape.
pub fn grid_correlation(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let fa: Vec<f32> = a.iter().flatten().copied().collect();
    let fb: Vec<f32> = b.iter().flatten().copied().collect();
    pearson(&fa, &fb)
}

/// How `patch_prompts` patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchMethod {
    /// one clean activation patched into the corrupted run per cell
    Exact,
    /// the first-order estimate from one forward and backward pass; `compare` also runs
    /// exact patching and reports the grids' correlation
    Attribution {
        /// also run exact patching and correlate the two grids
        compare: bool,
    },
}

impl PatchMethod {
    /// Reads `exact` or `attribution` (the CLI's `--method`); `compare` applies to
    /// attribution only. Any other name is a [`BadInput`](crate::AnalysisError::BadInput).
    pub fn parse(name: &str, compare: bool) -> Result<PatchMethod> {
        match name {
            "exact" => Ok(PatchMethod::Exact),
            "attribution" => Ok(PatchMethod::Attribution { compare }),
            other => Err(bad(format!(
                "unknown patching method `{other}`; use exact or attribution"
            ))),
        }
    }
}

/// A patching study of one prompt pair: what `glassbox patch --json` writes and the
/// Python package's `glassbox.patch` returns.
#[derive(Debug, Clone, Serialize)]
pub struct PatchReport {
    /// the grid and its baselines (flattened into the report's JSON)
    #[serde(flatten)]
    pub result: PatchResult,
    /// the model's file or folder ([`glassbox_model::Model::source`])
    pub model: std::path::PathBuf,
    /// the clean prompt's text
    pub clean: String,
    /// the corrupted prompt's text
    pub corrupt: String,
    /// the answer token's text, e.g. `" Mary"`
    pub answer: String,
    /// the wrong answer's text, e.g. `" John"`
    pub wrong: String,
    /// the text of each clean token
    pub clean_tokens: Vec<String>,
    /// the clean prompt's ids, as run
    pub clean_input_ids: Vec<u32>,
    /// the corrupted prompt's ids, as run
    pub corrupt_input_ids: Vec<u32>,
    /// how the clean ids begin: `added`, `in prompt` or `none`
    /// ([`glassbox_model::TextTokenizer::bos_status`])
    pub bos: &'static str,
    /// `H0…` for heads, `position:token` otherwise
    pub column_labels: Vec<String>,
    /// attribution compared with exact patching
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_grid: Option<Vec<Vec<f32>>>,
    /// Pearson correlation of the attribution grid with `exact_grid`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_with_exact: Option<f32>,
}

/// A prompt's ids by the one rule (BOS as the tokenizer asks), refusing an empty prompt.
pub fn prompt_ids(model: &glassbox_model::Model, text: &str) -> Result<Vec<u32>> {
    let ids = model.tokenizer()?.encode_prompt(text)?;
    if ids.is_empty() {
        return Err(bad("the prompt is empty: nothing to run"));
    }
    Ok(ids)
}

/// The grid's column labels: heads, or each clean position with its token.
pub fn column_labels(
    model: &glassbox_model::Model,
    site: PatchSite,
    clean: &[u32],
) -> Result<Vec<String>> {
    let tok = model.tokenizer()?;
    Ok(match site {
        PatchSite::AttnHead => (0..model.config().n_heads)
            .map(|h| format!("H{h}"))
            .collect(),
        _ => clean
            .iter()
            .enumerate()
            .map(|(i, &t)| format!("{i}:{}", tok.token_text(t)))
            .collect(),
    })
}

/// Patches `clean`'s activations at `site` into the run of `corrupt`, measuring the
/// logit difference `answer − wrong` (single tokens, e.g. `" Mary"`). Both prompts are
/// tokenized by [`prompt_ids`] and must come out the same length. What `glassbox patch`
/// and the Python package's `glassbox.patch` run; needs the model's tokenizer.
pub fn patch_prompts(
    model: &glassbox_model::Model,
    clean: &str,
    corrupt: &str,
    answer: &str,
    wrong: &str,
    site: PatchSite,
    method: PatchMethod,
) -> Result<PatchReport> {
    let tok = model.tokenizer()?;
    let problem = PatchProblem {
        model: &model.transformer,
        clean: prompt_ids(model, clean)?,
        corrupt: prompt_ids(model, corrupt)?,
        answer: crate::metric::single_token(tok, answer)?,
        wrong: crate::metric::single_token(tok, wrong)?,
        context: Vec::new(),
    };
    problem.validate()?;
    let (result, exact_grid, correlation) = match method {
        PatchMethod::Exact => (problem.exact(site)?, None, None),
        PatchMethod::Attribution { compare: false } => (problem.attribution(site)?, None, None),
        PatchMethod::Attribution { compare: true } => {
            let attr = problem.attribution(site)?;
            let exact = problem.exact(site)?;
            let r = grid_correlation(&attr.grid, &exact.grid);
            (attr, Some(exact.grid), Some(r))
        }
    };
    Ok(PatchReport {
        result,
        model: model.source.clone(),
        clean: clean.into(),
        corrupt: corrupt.into(),
        answer: answer.into(),
        wrong: wrong.into(),
        clean_tokens: problem.clean.iter().map(|&t| tok.token_text(t)).collect(),
        column_labels: column_labels(model, site, &problem.clean)?,
        bos: tok.bos_status(&problem.clean),
        clean_input_ids: problem.clean,
        corrupt_input_ids: problem.corrupt,
        exact_grid,
        correlation_with_exact: correlation,
    })
}

/// A grid's cells as `(layer, column, value)`, the largest effect (in absolute value)
/// first.
pub fn cells_by_effect(grid: &[Vec<f32>]) -> Vec<(usize, usize, f32)> {
    let mut cells: Vec<(usize, usize, f32)> = grid
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(c, &v)| (l, c, v)))
        .collect();
    cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    cells
}
