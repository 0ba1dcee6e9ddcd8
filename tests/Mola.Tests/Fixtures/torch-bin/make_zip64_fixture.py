#!/usr/bin/python3
"""Writes tensors-zip64.bin: tensors.bin's archive (torch.save's layout: archive/data.pkl + archive/data/N) written again
with Zip64 records, as a checkpoint shard over 4 GiB has them, by Python's zipfile (Debian's python3 and
python3-torch; run with /usr/bin/python3 from this directory).

A real Zip64 archive needs 4 GiB; here zipfile's limit is lowered so that it writes every record a large archive gets:
local headers with a Zip64 extra field (force_zip64), central directory entries whose sizes and offsets are 0xFFFFFFFF
with the values in the Zip64 extra field, and the Zip64 end-of-central-directory record and locator. The classic end
record then holds 0xFFFF / 0xFFFFFFFF in place of the count, size and offset, as a large archive's does (zipfile writes
the real small values there, so they are set afterwards). torch.load reads the result back, and it must equal
tensors.bin tensor for tensor: the values mola reads are checked against tensors.expected.json.
"""
import io, os, struct, zipfile
import torch

here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)

with zipfile.ZipFile("tensors.bin") as src:
    entries = [(info.filename, src.read(info)) for info in src.infolist()]

zipfile.ZIP64_LIMIT = 1          # every size and offset above one byte counts as "large"
zipfile.ZIP_FILECOUNT_LIMIT = 1  # and so does the entry count
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as dst:
    for name, data in entries:
        with dst.open(zipfile.ZipInfo(name), "w", force_zip64=True) as f:
            f.write(data)
data = bytearray(buf.getvalue())

# The classic end record: signature, disk numbers, counts (2 x 2 bytes), size and offset of the central directory.
eocd = data.rfind(b"PK\x05\x06")
assert data.rfind(b"PK\x06\x06") > 0 and data.rfind(b"PK\x06\x07") == eocd - 20, "no Zip64 end record and locator"
struct.pack_into("<HHII", data, eocd + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
with open("tensors-zip64.bin", "wb") as f:
    f.write(data)

ours = torch.load("tensors-zip64.bin")
theirs = torch.load("tensors.bin")
assert ours.keys() == theirs.keys()
for k in theirs:
    assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
print("tensors-zip64.bin:", len(data), "bytes,", len(entries), "entries, torch.load equal to tensors.bin")
