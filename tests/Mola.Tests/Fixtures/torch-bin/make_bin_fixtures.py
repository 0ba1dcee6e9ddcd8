#!/usr/bin/python3
"""Writes the .bin fixtures with Debian's PyTorch (apt-get install -y python3-torch; run with /usr/bin/python3
from this directory). torch.save writes the zip layout (archive/data.pkl + archive/data/N) that mola reads.

  tensors.bin      fp32 / bf16 / fp16 tensors, two names sharing one storage, a view with an offset and strides
                   (a transposed slice), an int64 tensor, a 0-d tensor; tensors.expected.json holds their values
                   as Python computed them, in float64 (bf16/fp16 values are exact in float64)
  legacy.bin       the same dict in the pre-1.6 (non-zip) format, which mola refuses
  malicious.bin    a zip whose data.pkl calls os.system, which mola refuses
  llama-tiny-bin/  ../llama-tiny's weights as two pytorch_model-0000N-of-00002.bin shards + index (float32)
  llama-tiny-bin1/ the same weights as one pytorch_model.bin in bfloat16
"""
import io, json, os, pickle, shutil, struct, zipfile
import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", e
        b, end = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:end], dtype=np.float32).copy().reshape(e["shape"]))
    return out


# 1. dtypes, shared storage, views
g = torch.Generator().manual_seed(7)
base = torch.randn(6, 8, generator=g)
shared = torch.randn(20, generator=g)
tensors = {
    "f32": base.clone(),
    "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
    "f16": torch.randn(4, 2, generator=g).to(torch.float16),
    "shared.a": shared[:12].view(3, 4),           # both views of one storage: saved once
    "shared.b": shared[4:20].view(2, 8),          # storage offset 4
    "view": base[1:5, 2:7].t(),                   # offset 10, strides (1, 8): not contiguous
    "i64": torch.tensor([3, -1, 1 << 40], dtype=torch.int64),
    "scalar": torch.tensor(2.5),
}
torch.save(tensors, "tensors.bin")
expected = {k: {"shape": list(v.shape), "values": v.double().flatten().tolist()} for k, v in tensors.items()}
with open("tensors.expected.json", "w") as f:
    json.dump(expected, f)

# 2. the legacy format
torch.save(tensors, "legacy.bin", _use_new_zipfile_serialization=False)


# 3. a pickle that would run a command: protocol 2, GLOBAL os system, REDUCE
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


with zipfile.ZipFile("malicious.bin", "w", zipfile.ZIP_STORED) as z:
    z.writestr("malicious/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    z.writestr("malicious/version", "3\n")

# 4. the tiny llama as .bin: sharded float32 (the split of its safetensors shards), and one bf16 file
src = "../llama-tiny"
index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
for d in ("llama-tiny-bin", "llama-tiny-bin1"):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(src, f), d)
weight_map = {}
files = sorted(set(index["weight_map"].values()))
everything = {}
for i, shard in enumerate(files):
    sd = read_safetensors(os.path.join(src, shard))
    everything.update(sd)
    name = f"pytorch_model-{i + 1:05d}-of-{len(files):05d}.bin"
    torch.save(dict(sorted(sd.items())), os.path.join("llama-tiny-bin", name))
    weight_map.update({k: name for k in sd})
total = sum(t.numel() * 4 for t in everything.values())
with open("llama-tiny-bin/pytorch_model.bin.index.json", "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
torch.save({k: v.to(torch.bfloat16) for k, v in sorted(everything.items())}, "llama-tiny-bin1/pytorch_model.bin")
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["torch_dtype"] = "bfloat16"
with open("llama-tiny-bin1/config.json", "w") as f:
    json.dump(cfg, f, indent=2)
