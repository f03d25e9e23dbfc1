"""Causal experiments and probes from Python, as the CLI runs them: `patch` is
`glassbox patch`, `ioi` is `glassbox ioi`, `probe_sweep` is `glassbox probe sweep`,
`trace` is `glassbox trace`; each returns the dict the CLI writes with `--json` (grids as nested
lists; `np.asarray(report["grid"])` for an array)."""

from __future__ import annotations

import json

from . import _glassbox


def patch(model, clean: str, corrupt: str, answer: str, wrong: str, *, site: str = "resid_pre",
          method: str = "exact", compare: bool = True) -> dict:
    """Patches the clean run's activations at `site` (resid_pre, mlp_out or
    attn_head) into the corrupted run, one layer × position (or head)
    at a time. `grid[layer][column]` is (patched − corrupt) / (clean − corrupt) of the
    logit difference `answer − wrong`. `method="attribution"` estimates it from one
    forward and backward pass (with `compare`, also exactly, and reports the correlation)."""
    return json.loads(_glassbox.patch(model._native, clean, corrupt, answer, wrong, site, method, compare))


def ioi(model, n: int = 12, *, seed: int = 0, site: str = "attn_head", template: int = 0) -> dict:
    """Indirect-object identification: `n` generated prompts (seeded), exact patching at
    `site` on each, and the mean grid; `correct` counts prompts whose clean logit
    difference prefers the indirect object."""
    return json.loads(_glassbox.ioi(model._native, int(n), int(seed), site, int(template)))


def probe_sweep(model, data: str, *, hook: str = "resid_post", position: str = "last",
                method: str = "lr", layers=None, seed: int = 0, cache_dir=None) -> dict:
    """A truth probe (`method`: lr | mass-mean | mass-mean-cov | ccs) trained at every
    layer in `layers` (all when None) on `data` (`builtin:capitals`, `builtin:numbers`, …,
    or a CSV of statement,label),
    read at `hook` (`resid_post`, or a name with `{L}`) and `position` (last | mean);
    held-out accuracy and AUROC per layer on a stratified 25 % split."""
    import os

    return json.loads(_glassbox.probe_sweep(
        model._native, str(data), hook, position, method,
        None if layers is None else [int(l) for l in layers], int(seed),
        None if cache_dir is None else os.fspath(cache_dir),
    ))


def trace(model, transcoders, prompt: str, *, targets=(), max_feature_nodes=None,
          logit_probability=None, max_logits=None, node_threshold=None, edge_threshold=None,
          max_tokens=None) -> dict:
    """The attribution graph of `prompt` through the transcoder set in `transcoders`
    (from `glassbox train-transcoders`), pruned, in circuit-tracer's JSON shape — what
    `glassbox trace --out` writes and `glassbox serve` draws. `targets`: logit tokens to
    explain (single tokens such as " Austin"); by default the most probable ones. The
    CLI's notes (layers without a transcoder, the BOS rule) go to stderr."""
    import os
    import sys

    graph, notes = _glassbox.trace(
        model._native, os.fspath(transcoders), prompt, [str(t) for t in targets],
        max_feature_nodes, logit_probability, max_logits, node_threshold, edge_threshold,
        max_tokens,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return json.loads(graph)
