"""A feature store (`features.sqlite`, written by `build_features` or
`glassbox features build`) as tables: pandas DataFrames when pandas is installed, lists
of dicts otherwise."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from . import _glassbox


def _table(rows: list):
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


class FeatureStore:
    """Read-only view of a feature store: `FeatureStore("runs/quickstart")`."""

    def __init__(self, path):
        self._native = _glassbox.NativeFeatureStore.open(os.fspath(path))
        self.path = self._native.path()
        self.meta = dict(self._native.meta())

    def __len__(self) -> int:
        return self._native.count("feature")

    @property
    def comparison(self) -> dict:
        """Features against MLP neurons: monosemanticity proxies over units that fired."""
        return dict(self._native.comparison())

    def features(self, order: str = "id", alive_only: bool = False,
                 limit: Optional[int] = None, offset: int = 0):
        """Every feature's summary (id, density, max_act, mean_act, label, top_tokens,
        concentration), ordered by `order` (id | density | max_act | concentration)."""
        return _table(self._native.units("feature", order, alive_only, limit, offset))

    def neurons(self, order: str = "id", alive_only: bool = False,
                limit: Optional[int] = None, offset: int = 0):
        """The MLP-neuron baseline's summaries, as `features`."""
        return _table(self._native.units("neuron", order, alive_only, limit, offset))

    def feature(self, id: int, kind: str = "feature") -> dict:
        """Everything about one feature (`kind="neuron"` for a neuron): its summary,
        examples, promoted and suppressed tokens, neighbours, histogram, and the
        explanations `glassbox explain` stored (best first)."""
        return dict(self._native.unit(kind, int(id)))

    def top_contexts(self, id: int, kind: str = "feature"):
        """The top-activating contexts: activation, the activating token, the shown text
        with that token marked `<<like this>>`, and the per-token activations."""
        rows = []
        for e in self._native.unit(kind, int(id))["examples"]:
            if e["band"] != -1:
                continue
            at = e["position"] - e["context_start"]
            shown = [f"<<{t}>>" if i == at else t for i, t in enumerate(e["tokens"])]
            rows.append({
                "rank": e["rank"],
                "act": e["act"],
                "token": e["tokens"][at] if 0 <= at < len(e["tokens"]) else "",
                "context": "".join(shown),
                "window": e["window"],
                "position": e["position"],
                "acts": e["acts"],
            })
        return _table(rows)

    def histogram(self, id: int, kind: str = "feature"):
        """`(log10_edges, counts)`: the activation histogram over log10(activation)."""
        edges, counts = self._native.unit(kind, int(id))["histogram"]
        return np.asarray(edges), np.asarray(counts)

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}: {len(self)} features)"
