"""Training dictionaries from Python: `train_sae` is glassbox_train::train_sae (the same run
as `glassbox train-sae`: run directory, checkpoints, resume, held-out evaluation) and
`build_features` is `glassbox features build --run DIR`."""

from __future__ import annotations

import json
import os
from typing import Optional

from . import _glassbox, _progress

# TrainConfig fields a caller may set by keyword (glassbox_sae::train::TrainConfig)
_TRAIN_FIELDS = {
    "d_sae", "k", "l1_recipe", "sparsity_coefficient", "sparsity_warmup_steps", "lr",
    "lr_warmup_steps", "lr_decay_fraction", "adam_beta1", "adam_beta2", "grad_clip",
    "aux_k_coefficient", "aux_k", "dead_window_tokens", "resample_every_steps",
    "jumprelu_bandwidth", "jumprelu_init_threshold", "b_dec_init", "normalize", "skip",
    "seed", "dense_above",
}


def train_sae(
    model,
    hook: str,
    *,
    out,
    tokens: int = 2_000_000,
    arch: str = "topk",
    batch: int = 4096,
    hook_out: Optional[str] = None,
    corpus=None,
    text_field: Optional[str] = None,
    context_size: Optional[int] = None,
    buffer_tokens: Optional[int] = None,
    cache_dir=None,
    checkpoint_every_tokens: Optional[int] = None,
    eval_tokens: Optional[int] = None,
    resume: bool = False,
    progress=True,
    **train,
):
    """Trains a dictionary on `model`'s activations at `hook` (an SAE, or a transcoder
    predicting `hook_out`) and writes the run directory `out`, exactly as
    `glassbox train-sae` does. Keywords beyond these are the trainer's (`d_sae`, `k`,
    `lr`, `seed`, `sparsity_coefficient`, ...; the CLI's `--help` documents each); an
    unknown one raises `ValueError`. Ctrl-C stops after saving a checkpoint
    (`resume=True` continues it). Returns `(sae, metrics)`: the trained `SAE` and
    `metrics.json` as a dict."""
    from . import SAE  # the package's class, defined in __init__

    unknown = sorted(set(train) - _TRAIN_FIELDS)
    if unknown:
        raise ValueError(
            f"train_sae() got unknown option(s) {', '.join(unknown)}; "
            f"the trainer's are: {', '.join(sorted(_TRAIN_FIELDS))}"
        )
    options = {
        "arch": arch,
        "tokens": int(tokens),
        "batch": int(batch),
        "corpus": None if corpus is None else os.fspath(corpus),
        "text_field": text_field,
        "context_size": context_size,
        "buffer_tokens": buffer_tokens,
        "cache_dir": None if cache_dir is None else os.fspath(cache_dir),
        "checkpoint_every_tokens": checkpoint_every_tokens,
        "eval_tokens": eval_tokens,
        "hook_out": hook_out,
        "resume": bool(resume),
        "train": train,
    }
    bars = _progress.make(progress)
    try:
        native, metrics = _glassbox.train_sae(
            model._native, hook, os.fspath(out), json.dumps(options), bars
        )
    finally:
        if isinstance(bars, _progress.Progress):
            bars.close()
    return SAE(native), json.loads(metrics)


def build_features(model, run_dir, *, tokens: Optional[int] = None, top_k: int = 20,
                   neurons: bool = True, progress=True) -> dict:
    """Builds `run_dir/features.sqlite` (every feature's statistics, top and sampled
    contexts, logit effects, neighbours; the MLP-neuron baseline unless
    `neurons=False`) over `tokens` held-out tokens of the run's corpus, as
    `glassbox features build --run DIR` does. Returns the build's summary."""
    bars = _progress.make(progress)
    try:
        report = _glassbox.build_features(
            model._native, os.fspath(run_dir), tokens, int(top_k), bool(neurons), bars
        )
    finally:
        if isinstance(bars, _progress.Progress):
            bars.close()
    return json.loads(report)
