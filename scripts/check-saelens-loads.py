"""Loads dictionaries glassbox wrote with SAELens itself and writes SAELens' own
outputs, so `glassbox sae apply` can be compared with them.

usage: python check-saelens-loads.py DIR [DIR ...]
For each DIR: loads it with sae_lens.SAE.load_from_disk (any registered architecture,
transcoders included), draws x ~ N(0, s²) with s matching the dictionary's scale, and
writes DIR/saelens-reference.safetensors with x, feature_acts, sae_out.
"""
import sys, torch
from safetensors.torch import save_file
from sae_lens import SAE

torch.manual_seed(0)
for d in sys.argv[1:]:
    sae = SAE.load_from_disk(d)
    n, d_in = 64, sae.cfg.d_in
    scale = 1.0 / sae.W_enc.norm(dim=0).mean().item()  # pre-activations of order 1
    x = torch.randn(n, d_in) * scale
    with torch.no_grad():
        f = sae.encode(x)
        out = sae(x)  # decode, plus the skip connection for skip transcoders
    save_file({"x": x, "feature_acts": f, "sae_out": out}, f"{d}/saelens-reference.safetensors")
    print(f"{d}: {type(sae).__name__} d_in={d_in} d_sae={sae.cfg.d_sae} L0={(f > 0).float().sum(-1).mean():.1f}")
