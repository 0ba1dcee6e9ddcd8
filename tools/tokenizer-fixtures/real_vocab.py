#!/usr/bin/python3
"""Fixtures on a real 32k vocabulary: Mistral-7B's (Apache-2.0), from the npm package mistral-tokenizer-js.

  npm pack mistral-tokenizer-js@1.0.0 && tar xzf mistral-tokenizer-js-1.0.0.tgz
  node tools/tokenizer-fixtures/extract_npm_vocab.mjs package /tmp/mistral
  /usr/bin/python3 tools/tokenizer-fixtures/real_vocab.py /tmp/mistral

The package ships the pieces and merges of Mistral's tokenizer.json, not its tokenizer.model. This script
rebuilds a SentencePiece model from them (each piece scored by its first merge: the order SentencePiece's
scores have in Llama/Mistral models, which Hugging Face's converter turned into the merge order), checks that
SentencePiece on the rebuilt model gives the package's own test ids (which come from the real tokenizer), and
records SentencePiece's ids for the strings of cases.json.gz. Writes Fixtures/spm/mistral.tokenizer.json.gz,
mistral.model.gz and mistral-cases.json.gz. (A second argument names the files otherwise: the Llama-2 vocabulary
of llama-tokenizer-js passes the same way, `real_vocab.py /tmp/llama llama`, but is not committed, its licence
being Meta's.)
"""
import gzip
import json
import os
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as mp

OUT = os.path.join("tests", "Mola.Tests", "Fixtures", "spm")


def rebuild_model(doc):
    vocab = doc["model"]["vocab"]
    first_merge = {}
    for rank, m in enumerate(doc["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        first_merge.setdefault(a + b, rank)
    # Llama's settings (the template's trainer and normaliser specs), with the real pieces.
    m = mp.ModelProto()
    with open(os.path.join(OUT, "llama16k.model"), "rb") as f:
        m.ParseFromString(f.read())
    del m.pieces[:]
    T = mp.ModelProto.SentencePiece
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        p = m.pieces.add()
        p.piece = piece
        if i == 0:
            p.type = T.UNKNOWN
        elif i in (1, 2):
            p.type = T.CONTROL
        elif piece.startswith("<0x") and len(piece) == 6:
            p.type = T.BYTE
        else:
            p.type = T.NORMAL
            p.score = -float(first_merge.get(piece, len(vocab) + i))
    m.trainer_spec.vocab_size = len(vocab)
    m.trainer_spec.model_prefix = "rebuilt"
    del m.trainer_spec.input[:]
    return m


def main(src, name="mistral"):
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        doc = json.load(f)
    with open(os.path.join(src, "package_cases.json"), encoding="utf-8") as f:
        package_cases = json.load(f)
    model = rebuild_model(doc)
    blob = model.SerializeToString()
    sp = spm.SentencePieceProcessor(model_proto=blob)
    for c in package_cases:
        ids = [1] + sp.encode(c["text"])
        if ids != c["ids"]:
            sys.exit(f"the rebuilt model disagrees with the package on {c['text'][:40]!r}: {ids[:12]} vs {c['ids'][:12]}")
    with gzip.open(os.path.join(OUT, "cases.json.gz"), "rt", encoding="utf-8") as f:
        texts = [c["text"] for c in json.load(f)["cases"]]
    cases = {"package_cases": package_cases, "ids": [sp.encode(t) for t in texts], "decoded": [sp.decode(sp.encode(t)) for t in texts]}
    with gzip.open(os.path.join(OUT, f"{name}.model.gz"), "wb", 9) as f:
        f.write(blob)
    with gzip.open(os.path.join(OUT, f"{name}.tokenizer.json.gz"), "wt", 9, encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    with gzip.open(os.path.join(OUT, f"{name}-cases.json.gz"), "wt", 9, encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, separators=(",", ":"))
    print(f"{len(package_cases)} package cases agree; {len(texts)} strings encoded", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
