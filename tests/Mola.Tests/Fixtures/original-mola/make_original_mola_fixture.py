#!/usr/bin/python3
"""Writes ../llama-tiny-mola's adapter as the original MoLA code (GCYZSL/MoLA, its patched PEFT 0.4) saves it, into
adapter/: adapter_config.json with PEFT 0.4's LoraConfig keys (peft_type LORA, a per-layer r, no expert counts, no
top-k) and adapter_model.bin (torch.save, zip layout) whose keys drop PEFT's adapter name "default" from the module
names the patched LoraModel gives its experts: ...q_proj.lora_A_<e>.weight, ...q_proj.lora_B_<e>.weight and the
router ...q_proj.router.router.weight. The expected logits are ../llama-tiny-mola/expected.safetensors (the float64
reference's, top_k [1, 2, 2]). Run with /usr/bin/python3 (Debian's python3-torch) from this directory.
"""
import json, os, re, shutil, sys
import torch

here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)
sys.path.insert(0, os.environ.get("MOLA_REF", "/work/shared/reference"))
import mola_ref  # noqa: E402

ours = mola_ref.load_safetensors("../llama-tiny-mola/adapter_model.safetensors")
cfg = json.load(open("../llama-tiny-mola/adapter_config.json"))
saved = {}
for name, t in ours.items():
    name = re.sub(r"\.lora_([AB])\.(\d+)\.weight$", r".lora_\1_\2.weight", name)
    name = re.sub(r"\.router\.weight$", ".router.router.weight", name)
    saved[name] = t.clone()
assert len(saved) == len(ours)

shutil.rmtree("adapter", ignore_errors=True)
os.makedirs("adapter")
torch.save(saved, "adapter/adapter_model.bin")
config = {
    "base_model_name_or_path": "llama-tiny", "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None, "lora_alpha": cfg["lora_alpha"],
    "lora_dropout": 0.05, "modules_to_save": None, "peft_type": "LORA", "r": cfg["r"], "revision": None,
    "target_modules": cfg["target_modules"], "task_type": "CAUSAL_LM",
}
with open("adapter/adapter_config.json", "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
print(len(saved), "tensors; experts", cfg["num_experts"], "top_k", cfg["top_k"])
