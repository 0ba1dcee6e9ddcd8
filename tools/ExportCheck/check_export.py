#!/usr/bin/python3
"""Loads a `mola export` checkpoint with the Python stack and compares it with mola.

Debian 12 ships no python3-transformers (nor python3-safetensors), so the checkpoint is read here as Transformers'
from_pretrained reads it, with plain PyTorch: config.json, model.safetensors or the shards that
model.safetensors.index.json names (every tensor of the index present, no tensor missing), and run by the float64
reference decoder (mola_ref.py: Hugging Face's LLaMA / Mistral / Gemma conventions, written apart from mola). Checks:

  1. the exported tensors have the base's names and shapes (a full Hugging Face checkpoint, nothing of the adapter left);
  2. its logits on the prompt equal the base's with the LoRA applied unmerged, W + (lora_alpha / r) B A computed here
     in float64 from the base and adapter directories (mola's LoRA layout: r an int or one per layer);
  3. greedy decoding of the exported checkpoint gives the tokens `mola generate --json` gave (on the export, or on the
     base with --adapter: both are given as JSON files).

Usage (Debian: apt-get install -y python3-torch; MOLA_REF names the directory of mola_ref.py):
  mola export --base-model BASE --adapter LORA --output OUT
  mola generate --base-model OUT --prompt "..." --max-new-tokens 16 --json > merged.json
  mola generate --base-model BASE --adapter LORA --prompt "..." --max-new-tokens 16 --json > adapter.json
  MOLA_REF=/path/to/reference /usr/bin/python3 tools/ExportCheck/check_export.py --base BASE --adapter LORA --export OUT \
      --generated merged.json adapter.json
Prints one JSON line (max_abs_logit_diff, tokens_equal, ...) and exits 1 when a check fails.
"""
import argparse, json, os, sys
import torch

sys.path.insert(0, os.environ.get("MOLA_REF", "/work/shared/reference"))
import mola_ref  # noqa: E402


def load_checkpoint(directory):
    """config.json and every tensor of a Hugging Face safetensors checkpoint (one file or an index of shards)."""
    config = json.load(open(os.path.join(directory, "config.json")))
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = json.load(open(index))["weight_map"]
        weights = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(mola_ref.load_safetensors(os.path.join(directory, shard)))
        missing = set(weight_map) - set(weights)
        extra = set(weights) - set(weight_map)
        assert not missing and not extra, f"index and shards disagree: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
    else:
        weights = mola_ref.load_safetensors(os.path.join(directory, "model.safetensors"))
    return config, {k: v.double() for k, v in weights.items()}


def with_lora(weights, adapter_dir, layers):
    """The base weights plus every LoRA update, W + (lora_alpha / r_l) B A, in float64."""
    config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert config["peft_type"] == "LORA", "a MoLA adapter cannot be merged"
    r = config["r"] if isinstance(config["r"], list) else [config["r"]] * layers
    lora = mola_ref.load_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    out = dict(weights)
    for name, a in lora.items():
        if not name.endswith(".lora_A.weight"):
            continue
        prefix = name[len("base_model.model."):-len(".lora_A.weight")]
        layer = int(prefix.split(".")[2])
        b = lora[name.replace(".lora_A.", ".lora_B.")]
        out[prefix + ".weight"] = out[prefix + ".weight"] + (config["lora_alpha"] / r[layer]) * b.double() @ a.double()
    return out


def greedy(config, weights, ids, new_tokens, eos):
    ids = list(ids)
    for _ in range(new_tokens):
        logits, _ = mola_ref.forward(config, weights, torch.tensor([ids]))
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return ids


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--generated", nargs="+", required=True, help="mola generate --json outputs (the last JSON line of each)")
    args = p.parse_args()

    base_config, base = load_checkpoint(args.base)
    config, exported = load_checkpoint(args.export)
    shapes_equal = {k: tuple(v.shape) for k, v in base.items()} == {k: tuple(v.shape) for k, v in exported.items()}
    reference = with_lora(base, args.adapter, base_config["num_hidden_layers"])
    changed = max(float((reference[k] - base[k]).abs().max()) for k in base)

    runs = [json.loads([l for l in open(f) if l.lstrip().startswith("{")][-1]) for f in args.generated]
    ids, new = runs[0]["ids"], runs[0]["new_tokens"]
    prompt = ids[: len(ids) - new]
    ours, _ = mola_ref.forward(config, exported, torch.tensor([prompt]))
    theirs, _ = mola_ref.forward(base_config, reference, torch.tensor([prompt]))
    diff = float((ours - theirs).abs().max())
    python_ids = greedy(config, exported, prompt, new, config.get("eos_token_id", 2))
    tokens_equal = [run["ids"] == python_ids for run in runs]
    result = {
        "tensors": len(exported), "names_and_shapes_equal_base": shapes_equal, "max_weight_change_by_lora": changed,
        "max_abs_logit_diff": diff, "prompt_tokens": len(prompt), "new_tokens": new, "python_ids": python_ids[len(prompt):],
        "tokens_equal": tokens_equal,
    }
    print(json.dumps(result))
    ok = shapes_equal and changed > 0 and diff < 1e-4 and all(tokens_equal)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
