#!/usr/bin/python3
"""Writes PEFT LoRA adapters for ../llama-tiny laid out as PEFT writes them, and the float64 reference's logits.
Run with /usr/bin/python3 from this directory (Debian's python3-torch; mola_ref.py from /work/shared/reference,
or MOLA_REF=path).

  lora-safetensors/  adapter_config.json as PEFT's LoraConfig.save_pretrained writes it (all its keys), with
                     use_rslora, a per-layer rank_pattern and a per-module alpha_pattern; adapter_model.safetensors
  lora-bin/          the same config and weights, the weights as adapter_model.bin (torch.save, zip layout)
  ours/              the same adapter in mola's format (uniform lora_alpha; PEFT's per-module scaling folded into B)
  expected.safetensors  input_ids and the logits of llama-tiny with PEFT's delta merged as PEFT defines it:
                     W + scaling * B @ A, scaling = alpha / sqrt(r) (rslora), alpha and r from the patterns
"""
import json, math, os, re, shutil, sys
import torch

here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)
sys.path.insert(0, os.environ.get("MOLA_REF", "/work/shared/reference"))
import mola_ref  # noqa: E402

torch.set_default_dtype(torch.float64)
cfg = json.load(open("../llama-tiny/config.json"))
base = {}
for f in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
    base.update(mola_ref.load_safetensors(os.path.join("../llama-tiny", f)))
base = {k: v.to(torch.float64) for k, v in base.items()}

targets = ["q_proj", "v_proj", "down_proj"]
parent = {"q_proj": "self_attn", "v_proj": "self_attn", "down_proj": "mlp"}
r, alpha = 4, 8
rank_pattern = {r"layers\.1\..*": 2, "model.layers.2.self_attn.q_proj": 6, "model.layers.2.self_attn.v_proj": 6, "layers.2.mlp.down_proj": 6}
alpha_pattern = {"v_proj": 12, "layers.0.mlp.down_proj": 3}


def pattern(patterns, name, default):
    # PEFT matches each key against the end of the module's name, at a dot boundary; the first key that matches wins
    for key, value in sorted(patterns.items()):   # the order save_pretrained writes (sort_keys)
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


peft_config = {
    "alpha_pattern": alpha_pattern, "auto_mapping": None, "base_model_name_or_path": "llama-tiny", "bias": "none",
    "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
    "loftq_config": {}, "lora_alpha": alpha, "lora_bias": False, "lora_dropout": 0.05, "megatron_config": None,
    "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": r, "rank_pattern": rank_pattern,
    "revision": None, "target_modules": targets, "task_type": "CAUSAL_LM", "trainable_token_indices": None,
    "use_dora": False, "use_rslora": True,
}

g = torch.Generator().manual_seed(18)
weights, ours, merged = {}, {}, dict(base)
layer_rank = []
for L in range(cfg["num_hidden_layers"]):
    ranks = set()
    for m in targets:
        name = f"model.layers.{L}.{parent[m]}.{m}"
        rank, a = pattern(rank_pattern, name, r), pattern(alpha_pattern, name, alpha)
        ranks.add(rank)
        W = base[name + ".weight"]
        A = torch.randn(rank, W.shape[1], generator=g) * 0.2
        B = torch.randn(W.shape[0], rank, generator=g) * 0.2
        scaling = a / math.sqrt(rank)
        weights[f"base_model.model.{name}.lora_A.weight"] = A.float()
        weights[f"base_model.model.{name}.lora_B.weight"] = B.float()
        merged[name + ".weight"] = W + scaling * (B.float().double() @ A.float().double())
        ours[f"base_model.model.{name}.lora_A.weight"] = A.float()
        ours[f"base_model.model.{name}.lora_B.weight"] = (B.float().double() * (scaling / (alpha / rank))).float()
    assert len(ranks) == 1
    layer_rank.append(ranks.pop())

for d in ["lora-safetensors", "lora-bin", "ours"]:
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
for d in ["lora-safetensors", "lora-bin"]:
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(peft_config, f, indent=2, sort_keys=True)
mola_ref.save_safetensors("lora-safetensors/adapter_model.safetensors", weights, {"format": "pt"})
torch.save({k: v.clone() for k, v in weights.items()}, "lora-bin/adapter_model.bin")
with open("ours/adapter_config.json", "w") as f:
    json.dump({"peft_type": "LORA", "base_model_name_or_path": "llama-tiny", "target_modules": targets, "r": layer_rank,
               "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}, f, indent=2)
mola_ref.save_safetensors("ours/adapter_model.safetensors", ours, {"format": "pt"})

ids = torch.tensor([[1, 17, 250, 33, 99, 5, 301, 42], [1, 8, 8, 120, 399, 2, 64, 3]])
logits, _ = mola_ref.forward(cfg, merged, ids)
base_logits, _ = mola_ref.forward(cfg, base, ids)
print("max |adapter effect| on logits:", (logits - base_logits).abs().max().item())
mola_ref.save_safetensors("expected.safetensors", {"input_ids": ids, "logits": logits.float()})
