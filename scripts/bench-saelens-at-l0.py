"""SAELens' standard (ReLU + L1) training step with the encoder bias shifted so that
L0 latents fire per token, as in a trained dictionary; glassbox's counterpart is
`glassbox bench sae --arch standard --l0 L0`. Dense PyTorch ops cost the same at any
density; this measures it rather than assuming it.

usage: python bench-saelens-at-l0.py D_IN D_SAE BATCH L0 [THREADS]
"""
import sys, time, torch
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

d_in, d_sae, batch, l0 = map(int, sys.argv[1:5])
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 2)
torch.manual_seed(0)
x = torch.randn(batch, d_in)
sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae))
with torch.no_grad():
    pre = (x - sae.b_dec) @ sae.W_enc
    q = torch.quantile(pre.flatten()[:2_000_000], 1 - l0 / d_sae)
    sae.b_enc.fill_(-q.item())
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
times, l0s = [], []
for step in range(6):
    t = time.perf_counter()
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={"l1": 5.0}, dead_neuron_mask=torch.zeros(d_sae, dtype=torch.bool),
        n_training_steps=step, is_logging_step=False))
    out.loss.backward(); opt.step(); opt.zero_grad()
    times.append(time.perf_counter() - t)
    l0s.append((out.feature_acts > 0).float().sum(-1).mean().item())
med = sorted(times[1:])[2]
print(f"saelens standard d_in={d_in} d_sae={d_sae} batch={batch} L0={l0s[-1]:.0f}: {batch / med:.0f} tokens/s")
