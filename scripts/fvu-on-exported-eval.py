#!/usr/bin/env python3
# usage: python scripts/fvu-on-exported-eval.py ACTS.safetensors DICTIONARY_DIR  (needs sae-lens)
# FVU of glassbox's saved dictionary on the exported eval tensor, with the formula
# saelens_train_on_acts.py uses, loaded through SAELens itself.
import sys, torch
from safetensors.torch import load_file
from sae_lens import SAE
t = load_file(sys.argv[1]); ev = t["eval"].float()
sae = SAE.load_from_disk(sys.argv[2], device="cpu")
with torch.no_grad():
    f = torch.cat([sae.encode(ev[j:j+4096]) for j in range(0, ev.shape[0], 4096)])
    xh = torch.cat([sae.decode(f[j:j+4096]) for j in range(0, ev.shape[0], 4096)])
    fvu = ((ev - xh) ** 2).sum(-1).mean() / ev.var(0, unbiased=False).sum()
    l0 = (f > 0).float().sum(-1).mean(); dead = (f.max(0).values <= 0).float().mean() * 100
print(f"{sys.argv[2]}: FVU={fvu:.4f} L0={l0:.1f} dead={dead:.1f}% eval_tokens={ev.shape[0]}")
