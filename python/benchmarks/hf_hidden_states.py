"""HF transformers' forward with output_hidden_states=True (the residual stream after
every layer: what run_with_cache("blocks.*.hook_resid_post") returns), float32 on CPU,
same protocol as ../shared/bench/hf_forward.py.

usage: python hf_hidden_states.py MODEL.gguf BATCH SEQ [THREADS]
"""
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
m = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), dtype=torch.float32
).eval()
ids = torch.randint(0, m.config.vocab_size, (batch, seq))
times = []
with torch.no_grad():
    m(ids[:1, :8], output_hidden_states=True)
    for _ in range(3):
        t = time.perf_counter()
        out = m(ids, output_hidden_states=True)
        # as numpy, as a Python user would read them (a view: no copy)
        hidden = [h.numpy() for h in out.hidden_states]
        times.append(time.perf_counter() - t)
print(f"hf-transformers forward+hidden_states batch={batch} seq={seq}: {batch * seq / sorted(times)[1]:.0f} tokens/s")
