"""Python's side of BENCHMARKS.md "From Python": run_with_cache on random tokens, the
same shape and median-of-runs protocol as `glassbox bench forward --cache ...`.

    python run_with_cache.py --mode cache|forward|hooks [--batch 8] [--seq 256] [--runs 3]

cache: run_with_cache(names_filter="blocks.*.hook_resid_post"); forward: model(tokens);
hooks: run_with_hooks with a no-op Python hook on every hook_resid_post (each call still
hands the hook a numpy copy of the activation).
"""

import argparse
import time

import numpy as np

import glassbox

p = argparse.ArgumentParser()
p.add_argument("--model", default="default")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--mode", choices=["cache", "forward", "hooks"], default="cache")
a = p.parse_args()

model = glassbox.Model.from_pretrained(a.model)
rng = np.random.default_rng(0)
tokens = rng.integers(0, model.cfg.d_vocab, size=(a.batch, a.seq))
names = "blocks.*.hook_resid_post"
hooks = [(lambda n: n.endswith("hook_resid_post"), lambda x, hook: None)]


def once():
    if a.mode == "hooks":
        return model.run_with_hooks(tokens, fwd_hooks=hooks)
    if a.mode == "forward":
        return model(tokens)
    return model.run_with_cache(tokens, names_filter=names)


model(tokens[:1, :8])
once()
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    once()
    times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
what = {"cache": f"run_with_cache({names})", "forward": "model(tokens)", "hooks": "run_with_hooks(no-op on every hook_resid_post)"}[a.mode]
print(f"python {what} batch={a.batch} seq={a.seq}: {a.batch * a.seq / med:.0f} tokens/s (median of {a.runs}: {med:.3f} s)")
