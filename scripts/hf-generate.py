"""HF transformers' `generate` throughput on CPU in f32, the baseline of scripts/bench-serve.

usage: python hf-generate.py MODEL.gguf BATCH NEW_TOKENS [THREADS] [ROUNDS]
prints one line per round: 'hf-generate batch=B: N tokens/s' (B sequences × NEW_TOKENS,
sampled at temperature 0.8, left-padded prompts, min_new_tokens forcing the full length)
"""
import os, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, batch, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
starts = ["Once upon a time", "The history of the city", "In a small village", "The best way to learn"]
prompts = [f"{starts[i % 4]} ({i})" for i in range(batch)]
enc = tok(prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    m.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
    for r in range(rounds):
        torch.manual_seed(r)
        t = time.perf_counter()
        out = m.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=0.8,
                         top_p=1.0, pad_token_id=tok.pad_token_id)
        dt = time.perf_counter() - t
        n = (out.shape[1] - enc["input_ids"].shape[1]) * batch
        print(f"hf-generate batch={batch}: {n / dt:.1f} tokens/s", flush=True)
