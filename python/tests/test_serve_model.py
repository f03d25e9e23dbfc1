"""`glassbox serve-model` against a real server on loopback, through the official `openai`
client (and raw HTTP for what the client hides): the same text as `glassbox generate`,
the same logprobs as `predict`, batching that changes nothing, a probe monitor that blocks
a false statement and passes a true one, a feature clamp equal to `glassbox steer
--clamp`, and bad input answered with OpenAI's error object.
"""

import concurrent.futures
import json
import pathlib
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import DEFAULT_GGUF, _missing

import os

EXE = pathlib.Path(os.environ.get("GLASSBOX_BIN", pathlib.Path(__file__).resolve().parents[2] / "target" / "debug" / "glassbox"))


def _need():
    if not EXE.exists():
        _missing(f"the glassbox CLI is not built ({EXE})")
    if not DEFAULT_GGUF.exists():
        _missing(f"the default model is not fetched ({DEFAULT_GGUF})")
    try:
        import openai  # noqa: F401
    except ImportError:
        _missing("the openai client is not installed (python/requirements-test.txt)")


class Server:
    def __init__(self, *args, env=None):
        _need()
        self.p = subprocess.Popen(
            [str(EXE), "serve-model", "--model", "default", "--port", "0", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.p.stdout.readline()
        if "serving" not in line:
            err = self.p.stderr.read()
            raise RuntimeError(f"serve-model did not start: {line}{err}")
        self.base = line.split(" at ")[1].split(" ")[0]  # http://127.0.0.1:PORT/v1

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base, api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def post(self, path, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())

    def get(self, path):
        with urllib.request.urlopen(self.base.removesuffix("/v1") + path, timeout=30) as r:
            return r.read().decode()

    def close(self):
        self.p.terminate()
        self.p.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    s = Server("--audit", audit, "--log-content")
    s.audit = audit
    yield s
    s.close()


def cli(*args):
    p = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


PROMPT = "What is the capital of France?"


def test_chat_equals_glassbox_generate_greedy_and_sampled(server):
    c = server.client()
    for temperature, seed in [(0.0, 0), (0.9, 7)]:
        r = c.chat.completions.create(
            model="default", messages=[{"role": "user", "content": PROMPT}],
            max_tokens=24, temperature=temperature, seed=seed,
        )
        want = cli("generate", "--model", "default", "--chat", "--prompt", PROMPT, "--max-tokens", 24,
                   "--temperature", temperature, "--seed", seed)
        assert r.choices[0].message.content == want.removesuffix("\n"), (temperature, r.choices[0].message.content, want)
        assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 5
    # streaming gives the same text, chunk by chunk, and says why it ended
    chunks = list(c.chat.completions.create(
        model="default", messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24, temperature=0.0, seed=0, stream=True,
    ))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r_text(c)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def r_text(c):
    return c.chat.completions.create(
        model="default", messages=[{"role": "user", "content": PROMPT}], max_tokens=24, temperature=0.0, seed=0,
    ).choices[0].message.content


def test_completion_logprobs_equal_predict(server):
    prompt = "The capital of France is"
    r = server.client().completions.create(model="default", prompt=prompt, max_tokens=1, temperature=0, logprobs=3)
    want = json.loads(cli("predict", "--model", "default", "--prompt", prompt, "--top", 3, "--json"))["top"]
    lp = r.choices[0].logprobs
    assert lp.tokens[0] == want[0]["token"]
    # a JSON object: compare in the order of probability
    got = sorted(lp.top_logprobs[0].items(), key=lambda kv: -kv[1])
    assert [t for t, _ in got] == [w["token"] for w in want]
    np.testing.assert_allclose([v for _, v in got], [np.log(w["prob"]) for w in want], atol=2e-4)


def test_two_concurrent_requests_give_the_tokens_each_gives_alone(server):
    c = server.client()
    prompts = ["Once upon a time", "The three primary colours are"]

    def one(p):
        return c.completions.create(model="default", prompt=p, max_tokens=32, temperature=0).choices[0].text

    alone = [one(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        together = list(ex.map(one, prompts + prompts))
    assert together == alone + alone


def test_many_clients_at_once_all_get_whole_answers(server):
    # a small load test (scripts/load-test-serve-model is the 32 x 20 one): chat and
    # completions, streamed and not, sharing the batch; greedy, so each answer must
    # equal the same request sent alone
    c = server.client()
    before = server.get("/metrics")

    def one(i):
        kw = dict(model="default", max_tokens=6, temperature=0)
        if i % 2:
            r = c.chat.completions.create(messages=[{"role": "user", "content": f"Count to {i}."}], stream=i % 3 == 0, **kw)
            parts = [ch.choices[0].delta.content or "" for ch in r if ch.choices] if i % 3 == 0 else [r.choices[0].message.content]
        else:
            r = c.completions.create(prompt=f"Item {i}:", stream=i % 3 == 0, **kw)
            parts = [ch.choices[0].text for ch in r if ch.choices] if i % 3 == 0 else [r.choices[0].text]
        return "".join(parts)

    ids = list(range(12)) * 2
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        together = list(ex.map(one, ids))
    alone = [one(i) for i in range(12)]
    assert together == alone + alone
    assert all(together), together

    def served(metrics):
        return sum(float(l.split()[-1]) for l in metrics.splitlines()
                   if l.startswith("glassbox_requests_total") and 'status="200"' in l)
    assert served(server.get("/metrics")) - served(before) == 36


def test_bad_input_gets_openai_error_objects_and_the_server_goes_on(server):
    cases = [
        (b"{not json", 400, None),
        ({"model": "gpt-9", "prompt": "hi"}, 404, "model"),
        ({"model": "default", "prompt": "hi", "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "default", "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
        ({"model": "default", "prompt": 5}, 400, "prompt"),
        ({"model": "default", "prompt": "x" * (2 << 20)}, 413, None),
    ]
    for body, status, param in cases:
        code, _, err = server.post("/completions", body)
        assert code == status, (body if isinstance(body, bytes) else str(body)[:80], code, err)
        assert set(err["error"]) >= {"message", "type", "param", "code"} and err["error"]["message"]
        assert err["error"]["param"] == param
    code, _, err = server.post("/chat/completions", {"model": "default", "messages": [{"role": "tool", "content": "x"}]})
    assert code == 400 and "role" in err["error"]["message"]
    code, _, err = server.post("/chat/completions", {"model": "default", "messages": "hello"})
    assert code == 400 and err["error"]["param"] == "messages"
    # undisturbed
    assert server.client().models.list().data[0].id == "default"
    metrics = server.get("/metrics")
    assert 'glassbox_requests_total{endpoint="completions",status="400"}' in metrics
    assert "glassbox_generated_tokens_total" in metrics


def test_the_audit_trail_has_a_line_per_request(server):
    server.client().completions.create(model="default", prompt="Hello", max_tokens=3, temperature=0)
    lines = [json.loads(l) for l in server.audit.read_text().splitlines()]
    assert lines, "no audit records"
    last = lines[-1]
    assert last["policy"] == "none" and last["completion_tokens"] == 3 and last["completion"] is not None
    assert {"id", "time", "monitors", "action_taken"} <= set(last)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    _need()
    d = tmp_path_factory.mktemp("probe") / "numbers"
    cli("probe", "train", "--model", "default", "--data", "builtin:numbers", "--layer", 3, "--out", d)
    return d


def random_sae(dir: pathlib.Path, d_sae=32, seed=0):
    """A SAELens-format SAE at blocks.3.hook_resid_post: clamping does not need a trained one."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    dir.mkdir(parents=True, exist_ok=True)
    w_dec = rng.standard_normal((d_sae, 576)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    save_file({"W_enc": np.ascontiguousarray(w_dec.T), "W_dec": w_dec, "b_enc": np.zeros(d_sae, np.float32),
               "b_dec": np.zeros(576, np.float32)}, str(dir / "sae_weights.safetensors"))
    (dir / "cfg.json").write_text(json.dumps({"d_in": 576, "d_sae": d_sae, "architecture": "standard",
                                              "hook_name": "blocks.3.hook_resid_post", "dtype": "float32",
                                              "apply_b_dec_to_input": True, "normalize_activations": "none"}))
    return dir


def test_a_probe_monitor_blocks_a_false_statement_and_passes_a_true_one(tmp_path, probe_dir):
    policy = tmp_path / "policy.toml"
    policy.write_text(f'''
refusal = "Blocked: the model's own reading says this is false."
[[monitor]]
name = "truth"
probe = "{probe_dir}"
threshold = 0.5
action = "block"
''')
    s = Server("--policy", policy)
    try:
        c = s.client()
        false = c.completions.create(model="default", prompt="3 is larger than 90.", max_tokens=8, temperature=0)
        true = c.completions.create(model="default", prompt="90 is larger than 3.", max_tokens=8, temperature=0)
        assert false.choices[0].finish_reason == "content_filter"
        assert false.choices[0].text.startswith("Blocked")
        g = false.model_extra["glassbox"]
        assert g["blocked"]["monitor"] == "truth" and g["blocked"]["score"] < 0.5
        assert true.choices[0].finish_reason in ("stop", "length")
        tg = true.model_extra["glassbox"]
        assert tg["blocked"] is None and tg["monitors"][0]["verdict"] == "passed"
        assert tg["monitors"][0]["scores"][0] > 0.5
        # a streamed block ends with content_filter too
        chunks = list(c.completions.create(model="default", prompt="3 is larger than 90.", max_tokens=8,
                                           temperature=0, stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        metrics = s.get("/metrics")
        assert 'glassbox_monitor_verdicts_total{monitor="truth",verdict="fired"}' in metrics
    finally:
        s.close()


def clamp_edit(sae):
    """A policy's edit clamping feature 5 of `sae` to 40, off unless switched on."""
    return f'''
[[edit]]
name = "clamp-5"
kind = "clamp"
sae = "{sae}"
feature = 5
value = 40.0
enabled = false
'''


def steer_clamp_cli(sae, prompt):
    """`glassbox steer`'s greedy 12-token continuations of `prompt`: plain, and with
    feature 5 clamped to 40."""
    out = cli("steer", "--model", "default", "--sae", sae, "--feature", 5, "--clamp", 40, "--strength", 0,
              "--prompt", prompt, "--max-tokens", 12)
    plain = out.split("--- plain ---\n")[1].split("\n--- feature")[0].removeprefix(prompt)
    clamped = out.split("clamped to 40 at blocks.3.hook_resid_post ---\n")[1].rstrip("\n").removeprefix(prompt)
    return plain, clamped


def test_a_clamp_policy_equals_glassbox_steer_clamp(tmp_path):
    sae = random_sae(tmp_path / "sae")
    policy = tmp_path / "policy.toml"
    policy.write_text(clamp_edit(sae) + f'''
[requests]
allow = ["clamp-5"]
''')
    s = Server("--policy", policy)
    try:
        c = s.client()
        prompt = "The weather today is"
        plain = c.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
        clamped = c.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0,
                                       extra_body={"glassbox": {"edits": {"clamp-5": True}}})
        want_plain, want_clamped = steer_clamp_cli(sae, prompt)
        assert plain == want_plain
        assert clamped.choices[0].text == want_clamped
        assert clamped.model_extra["glassbox"]["edits"] == ["clamp-5"]
        assert want_clamped != want_plain, "the clamp should change the continuation"
    finally:
        s.close()


def test_a_steer_action_switches_its_edit_on_and_a_flag_names_itself_in_a_header(tmp_path):
    sae = random_sae(tmp_path / "sae")
    policy = tmp_path / "policy.toml"
    # a feature's activation is never below 0, so threshold -1 fires at the first token
    policy.write_text(clamp_edit(sae) + f'''
[[monitor]]
name = "always"
sae = "{sae}"
feature = 0
threshold = -1.0
action = "steer"
edit = "clamp-5"
[[monitor]]
name = "watch"
sae = "{sae}"
feature = 1
threshold = -1.0
action = "flag"
''')
    s = Server("--policy", policy)
    try:
        prompt = "The weather today is"
        status, headers, r = s.post("/completions", {"model": "default", "prompt": prompt, "max_tokens": 12,
                                                     "temperature": 0, "logprobs": 1})
        assert status == 200
        g = r["glassbox"]
        assert g["edits"] == ["clamp-5"], g
        fired = {m["monitor"]: m for m in g["monitors"]}
        assert fired["always"]["verdict"] == "fired" and fired["always"]["fired_at_token"] == 0
        assert "watch" in headers.get("x-glassbox-flagged", ""), headers
        plain, _ = steer_clamp_cli(sae, prompt)
        # the first token comes before the monitor reads; the edit is on from then on
        first = r["choices"][0]["logprobs"]["tokens"][0]
        assert plain.startswith(first)
        assert r["choices"][0]["text"] != plain, "switching the clamp on should change the continuation"
    finally:
        s.close()


def test_head_and_neuron_ablation_policies_equal_zeroing_them_in_a_hook(tmp_path, default_model):
    policy = tmp_path / "policy.toml"
    policy.write_text('''
[[edit]]
name = "heads"
kind = "ablate-heads"
units = "3.0,3.2,3.4,L3.H6"
[[edit]]
name = "neurons"
kind = "ablate-neurons"
units = "5.10,5.200,L5.N1000"
''')
    prompt = "The weather today is"
    s = Server("--policy", policy)
    try:
        r = s.client().completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0)
    finally:
        s.close()
    assert r.model_extra["glassbox"]["edits"] == ["heads", "neurons"]

    def zero_heads(z, hook):
        z[:, :, [0, 2, 4, 6]] = 0

    def zero_neurons(post, hook):
        post[:, :, [10, 200, 1000]] = 0

    want = default_model.generate(prompt, max_new_tokens=12, fwd_hooks=[
        ("blocks.3.attn.hook_z", zero_heads), ("blocks.5.mlp.hook_post", zero_neurons)])
    plain = default_model.generate(prompt, max_new_tokens=12)
    assert prompt + r.choices[0].text == want
    assert want != plain, "the ablation should change the continuation"


def test_a_bad_policy_refuses_to_start_and_names_the_line(tmp_path, probe_dir):
    sae = random_sae(tmp_path / "sae")
    for body, want in [
        (f'[[edit]]\nname = "x"\nkind = "clamp"\nsae = "{sae}"\nfeature = 99\nvalue = 1.0\n', "beyond the dictionary"),
        (f'\n\n[[monitor]]\nname = "t"\nprobe = "{probe_dir}"\nthreshold = 0.5\naction = "explode"\n', "unknown action"),
        (f'[[monitor]]\nname = "t"\nprobe = "{probe_dir}"\nhook = "blocks.5.hook_resid_post"\nthreshold = 0.5\naction = "flag"\n', "trained at"),
    ]:
        policy = tmp_path / "p.toml"
        policy.write_text(body)
        p = subprocess.run([str(EXE), "serve-model", "--model", "default", "--port", "0", "--policy", policy],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and want in p.stderr and "line" in p.stderr, p.stderr


def test_an_api_key_is_required_when_set(tmp_path):
    s = Server("--api-key-env", "GB_TEST_KEY", env={**os.environ, "GB_TEST_KEY": "sekrit"})
    try:
        import openai

        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert s.client(api_key="sekrit").models.list().data[0].id == "default"
    finally:
        s.close()


def test_a_full_queue_answers_429(tmp_path):
    s = Server("--max-batch", 1, "--queue", 1)
    try:
        body = {"model": "default", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            codes = [r[0] for r in ex.map(lambda _: s.post("/completions", body), range(6))]
        assert 429 in codes and 200 in codes, codes
    finally:
        s.close()
