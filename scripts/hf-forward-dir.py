#!/usr/bin/env python3
"""HF transformers forward throughput and peak RSS on a HF checkpoint directory, in
float32 (the baseline glassbox's stored-precision runtime is compared with).

usage: hf-forward-dir.py MODEL_DIR BATCH SEQ [THREADS] [RUNS]
prints: 'hf-transformers forward batch=B seq=S: N tokens/s (median of R: T s; peak RSS M MiB)'
"""
import resource, sys, time, torch
from transformers import AutoModelForCausalLM

path, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
ids = torch.randint(0, m.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
times = []
with torch.no_grad():
    m(ids[:1, :8])
    for _ in range(runs):
        t = time.perf_counter()
        m(ids)
        times.append(time.perf_counter() - t)
med = sorted(times)[len(times) // 2]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"hf-transformers forward batch={batch} seq={seq}: {batch * seq / med:.0f} tokens/s "
      f"(median of {runs}: {med:.3f} s; peak RSS {rss} MiB)")
