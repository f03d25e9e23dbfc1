"""The Python package against HF transformers' and SAELens' references (the fixtures) and
against the glassbox CLI's own results on the default model."""

import json
import resource

import numpy as np
import pytest
from safetensors.numpy import load_file

import glassbox
from conftest import FIXTURES

TINY = sorted(p.name for p in FIXTURES.glob("tiny-*") if (p / "reference.safetensors").exists())
IOI = "When Mary and John went to the store, John gave a drink to"


def rel_err(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def test_the_fixtures_are_there():
    assert len(TINY) >= 10, TINY


@pytest.mark.parametrize("family", TINY)
def test_run_with_cache_matches_hf_transformers_on_every_tiny_architecture(family):
    ref = load_file(str(FIXTURES / family / "reference.safetensors"))
    model = glassbox.Model.from_pretrained(str(FIXTURES / family))
    names = [k for k in ref if k not in ("input_ids", "logits")]
    logits, cache = model.run_with_cache(ref["input_ids"], names_filter=names)
    assert sorted(cache.keys()) == sorted(names)
    for name in names:
        assert cache[name].shape == ref[name].shape, name
        assert rel_err(cache[name], ref[name]) < 1e-4, f"{family}: {name}"
    if "logits" in ref:
        assert rel_err(logits, ref["logits"]) < 1e-4, f"{family}: logits"


@pytest.mark.parametrize("kind", ["sae-standard", "sae-topk", "sae-jumprelu", "sae-gated"])
def test_sae_matches_saelens(kind):
    folder = FIXTURES / "saelens" / kind
    ref = load_file(str(folder / "reference.safetensors"))
    sae = glassbox.SAE.load(str(folder))
    assert sae.cfg.d_in == ref["x"].shape[1]
    f = sae.encode(ref["x"])
    assert f.shape == ref["feature_acts"].shape
    assert rel_err(f, ref["feature_acts"]) < 1e-5
    assert rel_err(sae.forward(ref["x"]), ref["sae_out"]) < 1e-5
    # leading dimensions are kept: [batch, pos, d_in] in, [batch, pos, d_sae] out
    assert sae.encode(ref["x"].reshape(4, 8, -1)).shape == (4, 8, sae.cfg.d_sae)


def test_smollm2_matches_hf_transformers(default_model):
    ref = load_file(str(FIXTURES / "smollm2" / "smollm2_reference.safetensors"))
    prompts = json.loads((FIXTURES / "smollm2" / "smollm2_reference.json").read_text())["prompts"]
    for i, p in enumerate(prompts):
        tokens = default_model.to_tokens(p["text"])
        assert tokens[0].tolist() == p["input_ids"]
        names = [f"blocks.{l}.hook_resid_pre" for l in (0, 10, 29)]
        logits, cache = default_model.run_with_cache(tokens, names_filter=names)
        assert rel_err(logits[0], ref[f"prompt{i}.logits"]) < 1e-3
        for n in names:
            assert rel_err(cache[n][0], ref[f"prompt{i}.{n}"]) < 1e-3, n


def test_the_cache_equals_the_cli_cache(default_model, cli, tmp_path):
    out = tmp_path / "cache.safetensors"
    hooks = "blocks.3.hook_resid_post,blocks.7.attn.hook_pattern,blocks.12.mlp.hook_post"
    cli("cache", "--model", "default", "--prompt", IOI, "--hooks", hooks, "--out", out)
    want = load_file(str(out))
    logits, cache = default_model.run_with_cache(IOI, names_filter=hooks.split(","))
    for name in hooks.split(","):
        np.testing.assert_array_equal(cache[name], want[name])
    np.testing.assert_array_equal(logits, want["logits"])


def test_tokens_follow_the_clis_bos_rule(default_model, cli):
    got = json.loads(cli("predict", "--model", "default", "--prompt", IOI, "--json"))
    assert default_model.to_tokens(IOI)[0].tolist() == got["input_ids"]
    assert default_model.to_str_tokens("Hello world") == ["Hello", " world"]
    assert default_model.to_string(default_model.to_tokens(IOI)) == [IOI]
    assert default_model.to_single_token(" Mary") == default_model.to_tokens(" Mary")[0, 0]


def _next_token_loss(logits, tokens):
    lp = logits[0, :-1] - logits[0, :-1].max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    return float(-lp[np.arange(tokens.shape[1] - 1), tokens[0, 1:]].mean())


def test_a_python_hook_that_zeroes_a_head_equals_the_builtin_ablation(default_model, cli):
    got = json.loads(cli("ablate", "--model", "default", "--heads", "L9.H6", "--prompt", IOI, "--json"))
    tokens = default_model.to_tokens(IOI)
    clean = default_model(tokens)

    def zero_head_6(z, hook):
        assert hook.name == "blocks.9.attn.hook_z"
        z = z.copy()
        z[:, :, 6, :] = 0.0
        return z

    ablated = default_model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.attn.hook_z", zero_head_6)])
    assert abs(_next_token_loss(clean, tokens) - got["loss_clean"]) < 1e-4
    assert abs(_next_token_loss(ablated, tokens) - got["loss_ablated"]) < 1e-4
    assert abs(float(np.abs(ablated - clean).max()) - got["max_abs_logit_change"]) < 1e-3

    # TransformerLens' idiom: edit in place, return nothing — the edit must count
    def zero_head_6_in_place(z, hook):
        z[:, :, 6, :] = 0.0

    in_place = default_model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.attn.hook_z", zero_head_6_in_place)])
    np.testing.assert_array_equal(in_place, ablated)


def test_hooks_see_every_layer_and_none_leaves_activations_alone(default_model):
    tokens = default_model.to_tokens(IOI)
    seen = []
    logits = default_model.run_with_hooks(
        tokens,
        fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), lambda a, hook: seen.append(hook.layer()))],
    )
    assert seen == list(range(default_model.cfg.n_layers))
    np.testing.assert_array_equal(logits, default_model(tokens))


def test_stop_at_layer_returns_the_residual_entering_that_block(default_model):
    tokens = default_model.to_tokens(IOI)
    resid, cache = default_model.run_with_cache(tokens, names_filter="blocks.3.hook_resid_post", stop_at_layer=4)
    np.testing.assert_array_equal(resid, cache["resid_post", 3])
    _, full = default_model.run_with_cache(tokens, names_filter=["blocks.*.hook_resid_pre", "blocks.29.hook_resid_post"])
    stack = full.accumulated_resid()
    assert stack.shape == (31, 1, tokens.shape[1], default_model.cfg.d_model)
    np.testing.assert_array_equal(stack[4], resid)


def test_a_default_cache_holds_every_hook_but_the_per_head_copies(default_model):
    _, cache = default_model.run_with_cache("Hi there")
    names = default_model.hook_names()
    assert "blocks.0.attn.hook_result" not in cache and "blocks.0.attn.hook_pattern" in cache
    assert len(cache) == len([n for n in names if not n.endswith(("hook_result", "_input"))])
    assert default_model.hook_shapes()["blocks.0.hook_resid_pre"] == ["batch", "pos", "d_model=576"]


def test_two_hundred_calls_leave_memory_flat(default_model):
    tokens = default_model.to_tokens(IOI)

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    for _ in range(20):
        default_model.run_with_cache(tokens, names_filter=["blocks.*.hook_resid_post"])
    before = rss_mb()
    for _ in range(200):
        logits, cache = default_model.run_with_cache(tokens, names_filter=["blocks.*.hook_resid_post"])
    grown = rss_mb() - before
    assert grown < 32, f"RSS grew {grown:.1f} MiB over 200 calls"


def test_bad_input_raises_the_python_exception_with_glassboxs_message(default_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        glassbox.Model.from_pretrained(str(tmp_path / "no-such-model"))
    with pytest.raises(KeyError, match="did you mean"):
        default_model.run_with_cache("Hi", names_filter="blocks.99.hook_resid_post")
    with pytest.raises(ValueError, match="out of range"):
        default_model(np.array([[1, 2, 10**7]]))
    with pytest.raises(ValueError, match="non-negative"):
        default_model(np.array([[1, -2]]))
    with pytest.raises(ValueError, match="empty"):
        default_model.to_tokens("")
    with pytest.raises(ValueError, match="different lengths"):
        default_model.to_tokens(["a", "a b c d"])
    with pytest.raises(FileNotFoundError):
        glassbox.SAE.load(str(tmp_path / "no-such-sae"))
    sae = glassbox.SAE.load(str(FIXTURES / "saelens" / "sae-topk"))
    with pytest.raises(ValueError, match="d_in = 64"):
        sae.encode(np.zeros((3, 65), dtype=np.float32))

    def wrong_shape(a, hook):
        return a[:, :1]

    with pytest.raises(ValueError, match="returned shape"):
        default_model.run_with_hooks("Hi there", fwd_hooks=[("blocks.0.hook_resid_post", wrong_shape)])

    def raises(a, hook):
        raise ZeroDivisionError("from the hook")

    with pytest.raises(ZeroDivisionError, match="from the hook"):
        default_model.run_with_hooks("Hi there", fwd_hooks=[("blocks.0.hook_resid_post", raises)])
    # the model still works after a failed pass
    assert default_model("Hi there").shape[1] == 2


def test_generate_equals_the_cli_and_hooks_steer_it(default_model, cli):
    prompt = "The capital of France is"
    want = cli("generate", "--model", "default", "--prompt", prompt, "--max-tokens", "12")
    got = default_model.generate(prompt, max_new_tokens=12)
    assert got.strip() == want.strip()
    ids = default_model.generate(default_model.to_tokens(prompt), max_new_tokens=5)
    assert ids.shape == (default_model.to_tokens(prompt).shape[1] + 5,)

    def scramble(x, hook):
        return x * 0.0

    steered = default_model.generate(prompt, max_new_tokens=12, fwd_hooks=[("blocks.10.hook_resid_post", scramble)])
    assert steered != got


def test_gradients_of_a_logit_difference_match_finite_differences(default_model):
    tokens = default_model.to_tokens(IOI)
    hook = "blocks.20.hook_resid_post"
    metric = glassbox.logit_diff(-1, " Mary", " John")
    value, grads = default_model.gradients(tokens, metric=metric, hooks=hook)
    logits = default_model(tokens)
    mary, john = default_model.to_single_token(" Mary"), default_model.to_single_token(" John")
    assert abs(value - (logits[0, -1, mary] - logits[0, -1, john])) < 1e-3
    g = grads[hook]
    assert g.shape == (1, tokens.shape[1], 576)
    # d metric along the gradient's own direction at the last position, by central differences
    d = np.zeros_like(g)
    d[0, -1] = g[0, -1] / np.linalg.norm(g[0, -1])
    eps = 1e-2

    def shifted(sign):
        out = default_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda x, h: x + sign * eps * d)])
        return out[0, -1, mary] - out[0, -1, john]

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(fd - float((g * d).sum())) < 2e-2 * max(1.0, abs(fd)), (fd, float((g * d).sum()))
    with pytest.raises(ValueError, match="outside the logits"):
        default_model.gradients(tokens, metric=[(0, 99, 1, 1.0)], hooks=hook)


def test_outputs_reach_numpy_without_a_copy_and_outlive_the_pass(default_model):
    logits, cache = default_model.run_with_cache(IOI, names_filter=["blocks.3.hook_resid_post"])
    # a view of glassbox's own buffer (its base keeps the tensor alive), not a copy
    assert not logits.flags.owndata and logits.base is not None
    kept = cache["blocks.3.hook_resid_post"]
    want = kept.copy()
    del logits, cache
    for _ in range(3):
        default_model.run_with_cache(IOI, names_filter=["blocks.3.hook_resid_post"])
    np.testing.assert_array_equal(kept, want)
    kept[0, 0, 0] = 1.0  # writable, like any array


# --- training and feature stores: the library's jobs, equal to the CLI's -------------

HOOK1 = "blocks.1.hook_resid_pre"
RUN = dict(tokens=2560, batch=256, context_size=32, eval_tokens=256, checkpoint_every_tokens=1024)


def _corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(
        f"Sentence number {i} tells of the union, the people and the year {1790 + i}. "
        for i in range(400)
    ))
    return p


def _cli_train(cli, corpus, out):
    from conftest import DEFAULT_GGUF

    cli("train-sae", "--model", DEFAULT_GGUF, "--hook", HOOK1, "--d-sae", 256, "--k", 8,
        "--tokens", 2560, "--batch", 256, "--context-size", 32, "--eval-tokens", 256,
        "--checkpoint-every-tokens", 1024, "--corpus", corpus, "--out", out)


def test_train_sae_and_build_features_equal_the_cli(default_model, cli, tmp_path):
    corpus = _corpus(tmp_path)
    sae, metrics = glassbox.train_sae(default_model, HOOK1, out=tmp_path / "py", corpus=corpus,
                                      d_sae=256, k=8, progress=False, **RUN)
    _cli_train(cli, corpus, tmp_path / "cli")
    want = glassbox.SAE.load(tmp_path / "cli")
    # the same code on the same rows: bit for bit
    assert np.array_equal(sae.W_dec, want.W_dec)
    assert metrics == json.loads((tmp_path / "py" / "metrics.json").read_text())
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["steps"] == cli_metrics["steps"] == 10
    assert metrics["eval"] == cli_metrics["eval"]
    assert 0 < metrics["eval"]["fvu"] < 1

    summary = glassbox.build_features(default_model, tmp_path / "py", tokens=2000, progress=False)
    assert summary["tokens"] > 0 and summary["path"].endswith("features.sqlite")
    cli("features", "build", "--run", tmp_path / "cli", "--tokens", 2000)
    mine, theirs = glassbox.FeatureStore(tmp_path / "py"), glassbox.FeatureStore(tmp_path / "cli")
    assert len(mine) == 256
    rows = mine.features(order="density", alive_only=True)
    assert _records(rows) == _records(theirs.features(order="density", alive_only=True))
    top = _records(rows)[0]["id"]
    contexts = _records(mine.top_contexts(top))
    assert contexts and contexts == _records(theirs.top_contexts(top))
    assert all("<<" in c["context"] and c["act"] > 0 for c in contexts)
    assert [c["act"] for c in contexts] == sorted((c["act"] for c in contexts), reverse=True)
    edges, counts = mine.histogram(top)
    assert len(edges) == len(counts) + 1 and counts.sum() > 0
    assert _records(mine.neurons(limit=3))[0]["kind"] == "neuron"
    with pytest.raises(KeyError, match="no feature 256"):
        mine.feature(256)


def _records(table):
    """A DataFrame (pandas installed) or a list of dicts, as a list of dicts."""
    return table.to_dict("records") if hasattr(table, "to_dict") else table


def test_ctrl_c_stops_training_at_a_checkpoint_and_resume_finishes_it(default_model, cli, tmp_path):
    import os
    import signal

    class InterruptAtStep3:
        """A progress sink that presses Ctrl-C on the third training step."""
        steps = 0

        def begin(self, stage, label, total, done): pass
        def status(self, stage, text): pass
        def note(self, text): pass
        def end(self, stage): pass

        def advance(self, stage, n):
            if stage == "train":
                self.steps += n
                if self.steps == 3:
                    os.kill(os.getpid(), signal.SIGINT)

    corpus = _corpus(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="cancelled at step 3"):
        glassbox.train_sae(default_model, HOOK1, out=out, corpus=corpus, d_sae=256, k=8,
                           progress=InterruptAtStep3(), **RUN)
    assert (out / "checkpoint").is_dir() and not (out / "cfg.json").exists()
    with pytest.raises(FileExistsError, match="resume=True"):
        glassbox.train_sae(default_model, HOOK1, out=out, corpus=corpus, d_sae=256, k=8,
                           progress=False, **RUN)
    sae, _ = glassbox.train_sae(default_model, HOOK1, out=out, corpus=corpus, d_sae=256, k=8,
                                progress=False, resume=True, **RUN)
    _cli_train(cli, corpus, tmp_path / "straight")
    assert np.array_equal(sae.W_dec, glassbox.SAE.load(tmp_path / "straight").W_dec)


def test_training_bad_input_raises_with_glassboxs_message(default_model, tmp_path):
    corpus = _corpus(tmp_path)
    with pytest.raises(ValueError, match="unknown option.*d_sea"):
        glassbox.train_sae(default_model, HOOK1, out=tmp_path / "a", corpus=corpus, d_sea=64)
    with pytest.raises(ValueError, match="arch"):
        glassbox.train_sae(default_model, HOOK1, out=tmp_path / "a", corpus=corpus, arch="relu6")
    with pytest.raises(ValueError, match="at least one batch"):
        glassbox.train_sae(default_model, HOOK1, out=tmp_path / "a", corpus=corpus,
                           tokens=100, batch=256, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        glassbox.train_sae(default_model, HOOK1, out=tmp_path / "a", corpus=tmp_path / "nope.txt",
                           progress=False, **RUN)
    with pytest.raises(KeyError, match="blocks.99"):
        glassbox.train_sae(default_model, "blocks.99.hook_resid_pre", out=tmp_path / "a",
                           corpus=corpus, progress=False, **RUN)
    with pytest.raises(FileNotFoundError, match="no feature store"):
        glassbox.FeatureStore(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        glassbox.build_features(default_model, tmp_path / "nowhere", progress=False)


def test_start_at_layer_and_the_logit_lens_reproduce_the_logits(default_model):
    logits, cache = default_model.run_with_cache(IOI, names_filter=["blocks.20.hook_resid_pre",
                                                                    "blocks.29.hook_resid_post"])
    # the last block's output through the final norm and the unembedding is the logits
    lens = default_model.unembed(cache["blocks.29.hook_resid_post"])
    assert lens.shape == logits.shape and rel_err(lens, logits) < 1e-5
    # the last ten blocks from the residual entering block 20
    rest = default_model(cache["blocks.20.hook_resid_pre"], start_at_layer=20)
    assert rel_err(rest, logits) < 1e-4
    with pytest.raises(ValueError, match="d_model = 576"):
        default_model(np.zeros((1, 3, 5), np.float32), start_at_layer=3)
    with pytest.raises(ValueError, match="past the model's 30 layers"):
        default_model(cache["blocks.20.hook_resid_pre"], start_at_layer=31)


def test_patch_and_ioi_equal_the_clis_json(default_model, cli, tmp_path):
    from conftest import DEFAULT_GGUF

    corrupt = IOI.replace("John gave", "Tom gave")
    # attribution (one forward and backward pass) keeps the test quick; exact patching is
    # the same report through the same function
    got = glassbox.patch(default_model, IOI, corrupt, " Mary", " John", site="mlp_out",
                         method="attribution", compare=False)
    cli("patch", "--model", DEFAULT_GGUF, "--clean", IOI, "--corrupt", corrupt, "--answer", " Mary",
        "--wrong", " John", "--site", "mlp_out", "--method", "attribution", "--no-compare",
        "--json", tmp_path / "patch.json")
    want = json.loads((tmp_path / "patch.json").read_text())
    assert got.pop("model").endswith(".gguf") and want.pop("model").endswith(".gguf")
    assert got == want
    assert np.asarray(got["grid"]).shape == (30, len(got["clean_tokens"]))
    assert got["logit_diff_clean"] > got["logit_diff_corrupt"]

    got = glassbox.ioi(default_model, 1, site="attn_head")
    cli("ioi", "--model", DEFAULT_GGUF, "--n", 1, "--site", "attn_head", "--json", tmp_path / "ioi.json")
    assert got == json.loads((tmp_path / "ioi.json").read_text())
    assert len(got["prompts"]) == 1 and np.asarray(got["mean_grid"]).shape == (30, 9)

    with pytest.raises(ValueError, match="single token"):
        glassbox.patch(default_model, IOI, corrupt, " Maryanne Smith", " John")
    with pytest.raises(ValueError, match="same number of tokens"):
        glassbox.patch(default_model, IOI, IOI + " and", " Mary", " John")
    with pytest.raises(ValueError, match="template"):
        glassbox.ioi(default_model, 2, site="resid_pre", template=99)


def test_probe_sweep_equals_the_clis_json(default_model, cli, tmp_path):
    from conftest import DEFAULT_GGUF

    got = glassbox.probe_sweep(default_model, "builtin:capitals", layers=[3, 15], cache_dir=tmp_path)
    out = cli("probe", "sweep", "--model", DEFAULT_GGUF, "--data", "builtin:capitals",
              "--layers", "3,15", "--cache-dir", tmp_path, "--json")
    assert got == json.loads(out)
    assert [r["layer"] for r in got["layers"]] == [3, 15]
    assert all(0.5 <= r["test"]["auroc"] <= 1.0 for r in got["layers"])
    with pytest.raises(ValueError, match="beyond the model's 30 layers"):
        glassbox.probe_sweep(default_model, "builtin:capitals", layers=[30])
    with pytest.raises(ValueError):
        glassbox.probe_sweep(default_model, "builtin:capitals", method="svm", layers=[3])


def test_trace_equals_the_clis_graph(default_model, cli, tmp_path):
    from conftest import DEFAULT_GGUF

    corpus = _corpus(tmp_path)
    cli("train-transcoders", "--model", DEFAULT_GGUF, "--layers", "0..2", "--d-sae", 64, "--k", 4,
        "--tokens", 2048, "--batch", 256, "--context-size", 32, "--eval-windows", 2,
        "--corpus", corpus, "--out", tmp_path / "set")
    prompt = "The capital of Texas is"
    got = glassbox.trace(default_model, tmp_path / "set", prompt, targets=[" Austin"])
    cli("trace", "--model", DEFAULT_GGUF, "--transcoders", tmp_path / "set", "--prompt", prompt,
        "--target", " Austin", "--out", tmp_path / "graph.json")
    want = json.loads((tmp_path / "graph.json").read_text())
    for g in (got, want):  # wall time and the model as each was given differ
        g["metadata"].pop("attribution_seconds")
        g["metadata"].pop("model")
    assert got == want
    logits = [n for n in got["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == 1 and got["links"]
    with pytest.raises(ValueError, match="not one token"):
        glassbox.trace(default_model, tmp_path / "set", prompt, targets=[" Austin Texas"])
    with pytest.raises(FileNotFoundError, match="no transcoder set"):
        glassbox.trace(default_model, tmp_path / "nowhere", prompt)


# --- other array libraries: DLPack in, torch out -------------------------------------

class _DLPackOnly:
    """An array that numpy can read only through DLPack (as a torch tensor is read)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_arrays_are_accepted_without_a_copy(default_model):
    import glassbox

    tokens = default_model.to_tokens(IOI)
    np.testing.assert_array_equal(default_model(_DLPackOnly(tokens)), default_model(tokens))
    _, cache = default_model.run_with_cache(tokens, names_filter="blocks.11.hook_resid_post")
    resid = cache["blocks.11.hook_resid_post"]
    assert np.shares_memory(glassbox._in(_DLPackOnly(resid)), resid)
    np.testing.assert_array_equal(default_model.unembed(_DLPackOnly(resid)), default_model.unembed(resid))


def _torch_or_skip():
    try:
        import torch
    except ImportError:
        # PyPI's Linux torch needs ~3 GB of CUDA wheels, so the test command does not
        # install it; the DLPack path above is what torch's tensors go through.
        print("\nSKIPPED: torch is not installed; as_torch=True is untested here")
        pytest.skip("torch is not installed")
    return torch


def test_without_torch_as_torch_says_what_to_install(default_model):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed: the missing-torch message cannot show")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install torch"):
        default_model(IOI, as_torch=True)


def test_as_torch_shares_memory_and_torch_hooks_edit_in_place(default_model):
    torch = _torch_or_skip()
    tokens = default_model.to_tokens(IOI)
    logits, cache = default_model.run_with_cache(tokens, names_filter="blocks.9.attn.hook_z", as_torch=True)
    assert isinstance(logits, torch.Tensor)
    np.testing.assert_array_equal(logits.numpy(), default_model(tokens))
    z = cache["blocks.9.attn.hook_z"]
    assert isinstance(z, torch.Tensor) and np.shares_memory(z.numpy(), cache._np("blocks.9.attn.hook_z"))

    def zero_head_6(z, hook):
        assert isinstance(z, torch.Tensor)
        z[:, :, 6, :] = 0.0

    def zero_head_6_np(z, hook):
        z[:, :, 6, :] = 0.0

    hooked = default_model.run_with_hooks(torch.from_numpy(tokens), fwd_hooks=[("blocks.9.attn.hook_z", zero_head_6)],
                                          as_torch=True)
    want = default_model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.attn.hook_z", zero_head_6_np)])
    np.testing.assert_array_equal(hooked.numpy(), want)
