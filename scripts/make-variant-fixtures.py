#!/usr/bin/env python3
"""Writes fixtures/variants/: copies of the tiny fixtures with one computation-changing
config field changed, run by HF transformers (eager attention, f32), saved with
`save_pretrained` (so in transformers 5's config form: `rope_parameters`, `dtype`), with
`reference.safetensors` holding `input_ids`, `logits` and `blocks.L.hook_resid_pre`.
Weights the change adds (biases) are drawn at random (seed 0) so they matter.
Also writes fixtures/v5-configs/tiny-NAME.json: each second-wave fixture's config as
transformers 5 writes it (the weights are the fixture's own).

Run with the venv of shared/bench/setup.sh:  VENV/bin/python scripts/make-variant-fixtures.py
"""
import json, os, shutil, sys, tempfile
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
OUT = os.path.join(ROOT, "variants")

# name: (base fixture, changes to config.json)
VARIANTS = {
    "llama-attention-bias": ("tiny-llama", {"attention_bias": True}),
    "llama-mlp-bias": ("tiny-llama", {"mlp_bias": True}),
    "llama3-linear-rope": ("tiny-llama3", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    # HF's Gemma 3 ignores attn_logit_softcapping (glassbox refuses it); the final cap applies
    "gemma3-final-softcap": ("tiny-gemma3", {"final_logit_softcapping": 3.0}),
    "qwen3-sliding-window": ("tiny-qwen3", {"use_sliding_window": True, "sliding_window": 8,
                                            "max_window_layers": 1, "layer_types": None}),
    "phi3-sliding-window": ("tiny-phi3", {"sliding_window": 8}),
    "olmo2-attention-bias": ("tiny-olmo2", {"attention_bias": True}),
}


def run(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    ref = {"input_ids": ids.contiguous(), "logits": out.logits.float().contiguous()}
    n = model.config.num_hidden_layers
    for l in range(n):
        ref[f"blocks.{l}.hook_resid_pre"] = out.hidden_states[l].float().contiguous()
    return ref


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    for name, (base, changes) in VARIANTS.items():
        src = os.path.join(ROOT, base)
        cfg = json.load(open(os.path.join(src, "config.json")))
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        with tempfile.TemporaryDirectory() as tmp:
            for f in os.listdir(src):
                if f != "reference.safetensors":
                    shutil.copy(os.path.join(src, f), tmp)
            json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"))
            config = AutoConfig.from_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(
                tmp, config=config, attn_implementation="eager", dtype=torch.float32)
            stored = set(load_file(os.path.join(src, "model.safetensors")).keys())
            g = torch.Generator().manual_seed(0)
            for pname, p in model.named_parameters():
                if pname not in stored:
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            model.eval()
        dst = os.path.join(OUT, name)
        shutil.rmtree(dst, ignore_errors=True)
        model.save_pretrained(dst)
        for f in os.listdir(dst):
            if f not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(dst, f))
        ids = load_file(os.path.join(src, "reference.safetensors"))["input_ids"]
        save_file(run(model, ids), os.path.join(dst, "reference.safetensors"))
        print(name, "written")
    v5 = os.path.join(ROOT, "v5-configs")
    os.makedirs(v5, exist_ok=True)
    for base in ["tiny-llama3", "tiny-llama-bf16", "tiny-qwen3", "tiny-gemma3", "tiny-mistral",
                 "tiny-phi3", "tiny-olmo2"]:
        config = AutoConfig.from_pretrained(os.path.join(ROOT, base))
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            shutil.copy(os.path.join(tmp, "config.json"), os.path.join(v5, base + ".json"))
        print("v5 config", base)


if __name__ == "__main__":
    sys.exit(main())
