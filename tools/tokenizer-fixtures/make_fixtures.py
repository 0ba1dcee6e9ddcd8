#!/usr/bin/python3
"""Makes the SentencePiece tokenizer fixtures in tests/Mola.Tests/Fixtures/spm/.

Trains BPE models with byte fallback using SentencePiece itself (Debian: apt-get install
python3-sentencepiece sentencepiece python3-protobuf), writes test strings rich in the cases
where BPE merges tie (runs of one character, space runs, ...), and stores the ids SentencePiece
gives them and the text it decodes back. The C# tokenizer is tested against these numbers.
It also writes tokenizer.json files laid out like Hugging Face's LlamaConverter makes them. The JSON files
are gzipped to keep the repository small.

Run from the repository root: /usr/bin/python3 tools/tokenizer-fixtures/make_fixtures.py
(--keep-models: no training, the committed trained models are kept and the rest is made from them;
--bench-text FILE: only a few MB of mixed text for `mola bench --tokenizer`)
The training corpus is made here (Python's standard library sources plus generated mixed-script
text) and not kept; the trained models are committed.
"""
import glob
import gzip
import json
import os
import random
import string
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as mp

OUT = os.path.join("tests", "Mola.Tests", "Fixtures", "spm")
rng = random.Random(12)

# Words in several scripts for the generated part of the corpus and the test strings.
WORDS = {
    "latin": "the of and to in is was for on that with as by at from his her cell data model layer expert router "
             "training learning matrix tensor value error file line key option branch merge commit token piece".split(),
    "german": "über straße größe mädchen grüße schön fährt müssen".split(),
    "french": "été déjà où garçon français noël cœur naïve".split(),
    "cyrillic": "привет мир данные модель слой эксперт обучение матрица".split(),
    "greek": "γειά σου κόσμε δεδομένα μοντέλο στρώμα".split(),
    "cjk": "你好 世界 数据 模型 训练 学习 专家 路由 日本語 東京 こんにちは カタカナ 한국어 서울".split(),
    "arabic": "مرحبا العالم بيانات نموذج".split(),
    "hebrew": "שלום עולם נתונים".split(),
    "hindi": "नमस्ते दुनिया डेटा मॉडल".split(),
    "thai": "สวัสดี ชาวโลก ข้อมูล".split(),
}
EMOJI = ["🦙", "😀", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🇩🇪", "🇯🇵", "❤️", "🏳️‍🌈", "✨", "🔥", "🧪", "1️⃣", "©", "™"]
PUNCT = string.punctuation  # the 32 ASCII punctuation marks


def mixed_line(r):
    parts = []
    for _ in range(r.randint(3, 14)):
        kind = r.random()
        if kind < 0.55:
            parts.append(r.choice(WORDS["latin"]))
        elif kind < 0.8:
            parts.append(r.choice(WORDS[r.choice(list(WORDS))]))
        elif kind < 0.88:
            parts.append(str(r.randint(0, 10 ** r.randint(1, 7))))
        elif kind < 0.94:
            parts.append(r.choice(EMOJI))
        else:
            parts.append(r.choice(PUNCT) * r.randint(1, 8))
    return " ".join(parts)


def corpus_lines():
    lines = []
    for f in sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))[:1500]:
        try:
            with open(f, encoding="utf-8") as h:
                lines.extend(l.rstrip("\n") for l in h if l.strip())
        except (UnicodeDecodeError, OSError):
            pass
    r = random.Random(1)
    lines = [l for l in lines if len(l.encode()) < 2000]
    lines += [mixed_line(r) for _ in range(60000)]
    # Markdown tables and separators, where runs of one character are ordinary.
    for _ in range(3000):
        w = [r.randint(1, 12) for _ in range(r.randint(2, 5))]
        lines.append("|" + "|".join("-" * x for x in w) + "|")
        lines.append("| " + " | ".join(r.choice(WORDS["latin"]).ljust(x) for x in w) + " |")
        lines.append(r.choice(PUNCT) * r.randint(3, 40))
    r.shuffle(lines)
    return lines


def train(corpus, prefix, vocab, **options):
    settings = dict(input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=vocab, byte_fallback=True,
                    character_coverage=0.9995, num_threads=2, input_sentence_size=400000,
                    shuffle_input_sentence=True, minloglevel=2)
    spm.SentencePieceTrainer.train(**(settings | options))
    return prefix + ".model"


def load_proto(path):
    m = mp.ModelProto()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    return m


def save_proto(m, path):
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def runs():
    out = []
    for c in PUNCT + "a0Z_":
        for n in list(range(1, 19)) + [23, 31, 32, 33, 47, 64]:
            out.append(c * n)
        for n in (2, 3, 4, 5, 7, 8, 9, 16, 17):
            out.append("x" + c * n + "y")
            out.append(" " + c * n + " end")
            out.append("word " + c * n)
    return out


def whitespace():
    out = []
    for n in range(1, 65):
        out += [" " * n, "a" + " " * n + "b", " " * n + "lead", "trail" + " " * n]
    r = random.Random(3)
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\t\t", "\n\n", " \n", "\u3000", "\u00a0"]
    for _ in range(160):
        out.append("".join(r.choice(pieces) if r.random() < 0.5 else r.choice(WORDS["latin"]) for _ in range(r.randint(1, 12))))
    out += ["line one\r\nline two\r\n", "\tindented\n\t\tmore", "def f(x):\n    return x\n", "a\u2581b", "\u2581\u2581x"]
    return out


def scripts_and_emoji():
    r = random.Random(4)
    out = [mixed_line(r) for _ in range(300)]
    for _ in range(120):
        out.append("".join(r.choice(EMOJI) for _ in range(r.randint(1, 6))))
        out.append(r.choice(WORDS["latin"]) + r.choice(EMOJI) + r.choice(WORDS["cjk"]))
    return out


def byte_fallback():
    r = random.Random(5)
    out = []
    for _ in range(250):
        cps = []
        for _ in range(r.randint(1, 6)):
            lo, hi = r.choice([(0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF), (0x1, 0x1F)])
            cps.append(chr(r.randint(lo, hi)))
        out.append("".join(cps) if r.random() < 0.5 else "pre " + "".join(cps) + " post")
    return out


def random_text(lines):
    r = random.Random(6)
    printable = string.ascii_letters + string.digits + PUNCT + "      \t\n"
    out = ["".join(r.choice(printable) for _ in range(r.randint(1, 80))) for _ in range(400)]
    out += [r.choice(lines) for _ in range(350)]
    out += ["\n".join(r.choice(lines) for _ in range(r.randint(2, 6))) for _ in range(60)]
    return out


def special():
    return ["", " ", "<s>", "</s>", "<unk>", "<0x41>", "a<s>b", "<pad>", "▁", "▁▁▁", "<|user|>", "x<|user|>y",
            "[INST]", "hello [INST] world", "1234567890", "3.14159", "1,000,000", "IMG_20230101_120000.jpg"]


def llama_converter_json(model, prepend):
    """tokenizer.json as Hugging Face's LlamaConverter lays it out (prepend: "legacy" normalizer, or Metaspace)."""
    vocab = {p.piece: i for i, p in enumerate(model.pieces)}
    scores = {p.piece: p.score for p in model.pieces}
    merges = []
    for piece, i in vocab.items():
        if model.pieces[i].type != 1:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                merges.append((scores[piece], vocab[piece], vocab[a], vocab[b], a, b))
    merges.sort(key=lambda m: (-m[0], m[1], m[2], m[3]))
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, p in enumerate(model.pieces) if p.type in (2, 3)]
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added}
    if prepend == "legacy":
        doc["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        doc["pre_tokenizer"] = None
        strip = [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]
    else:
        doc["normalizer"] = None
        doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        strip = []
    doc["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}}
    doc["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}] + strip}
    doc["model"] = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                    "vocab": vocab, "merges": [f"{m[4]} {m[5]}" if prepend == "legacy" else [m[4], m[5]] for m in merges]}
    return doc


def train_models(lines):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        # Llama-2's options: identity normalizer, no whitespace clean-up, digits split, whitespace-only pieces.
        llama = train(corpus, os.path.join(tmp, "llama"), 16000, normalization_rule_name="identity",
                      remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
                      allow_whitespace_only_pieces=True, max_sentencepiece_length=16)
        # SentencePiece's defaults for whitespace, with user-defined and control symbols.
        plain = train(corpus, os.path.join(tmp, "plain"), 8000, normalization_rule_name="identity",
                      remove_extra_whitespaces=True, user_defined_symbols=["<|user|>", "[INST]", "```"],
                      control_symbols=["<ctrl>", "<pad>"])
        nfkc = train(corpus, os.path.join(tmp, "nfkc"), 1000, input_sentence_size=20000, character_coverage=0.98)
        unigram = train(corpus, os.path.join(tmp, "unigram"), 1000, model_type="unigram", input_sentence_size=20000,
                        character_coverage=0.98, normalization_rule_name="identity")
        save_proto(load_proto(llama), os.path.join(OUT, "llama16k.model"))
        m = load_proto(plain)
        # A few pieces marked unused: SentencePiece still merges into them, then splits them again.
        unused = [i for i, p in enumerate(m.pieces) if p.type == 1 and len(p.piece) >= 3][5:400:9]
        for i in unused:
            m.pieces[i].type = mp.ModelProto.SentencePiece.UNUSED
        save_proto(m, os.path.join(OUT, "plain8k.model"))
        # Two models the C# side must refuse: another normalizer, another model type.
        save_proto(load_proto(nfkc), os.path.join(OUT, "nfkc.model"))
        save_proto(load_proto(unigram), os.path.join(OUT, "unigram.model"))


def derive_models():
    """Variants of the trained 16k model that need no training of their own."""
    m = load_proto(os.path.join(OUT, "llama16k.model"))
    m.normalizer_spec.add_dummy_prefix = False
    save_proto(m, os.path.join(OUT, "llama16k-noprefix.model"))
    # Without byte fallback: unknown characters become <unk>, a run of them one <unk>. The byte pieces stay
    # (so the other ids stay) as control pieces, which text never matches.
    m = load_proto(os.path.join(OUT, "llama16k.model"))
    m.trainer_spec.byte_fallback = False
    for p in m.pieces:
        if p.type == mp.ModelProto.SentencePiece.BYTE:
            p.type = mp.ModelProto.SentencePiece.CONTROL
    save_proto(m, os.path.join(OUT, "llama16k-nobytes.model"))


def main(train_too):
    os.makedirs(OUT, exist_ok=True)
    lines = corpus_lines()
    if train_too:
        train_models(lines)
    derive_models()

    llama_model = load_proto(os.path.join(OUT, "llama16k.model"))
    for kind in ("legacy", "metaspace"):
        with gzip.open(os.path.join(OUT, f"llama16k-{kind}.tokenizer.json.gz"), "wt", 9, encoding="utf-8") as f:
            json.dump(llama_converter_json(llama_model, kind), f, ensure_ascii=False, separators=(",", ":"))

    texts = special() + runs() + whitespace() + scripts_and_emoji() + byte_fallback() + random_text(lines)
    names = ["llama16k", "llama16k-noprefix", "llama16k-nobytes", "plain8k"]
    procs = {n: spm.SentencePieceProcessor(model_file=os.path.join(OUT, n + ".model")) for n in names}
    cases = []
    for t in texts:
        case = {"text": t}
        for n in names:
            ids = procs[n].encode(t)
            case[n] = ids
            case[n + ".decoded"] = procs[n].decode(ids)
        cases.append(case)
    with gzip.open(os.path.join(OUT, "cases.json.gz"), "wt", 9, encoding="utf-8") as f:
        json.dump({"sentencepiece": spm.__version__, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"{len(cases)} strings, models {names}", file=sys.stderr)


def bench_text(path, size=4_000_000):
    """A few MB of mixed text for `mola bench --tokenizer`: code, prose in several scripts, tables, runs."""
    r = random.Random(7)
    lines = corpus_lines() + runs() + whitespace() + byte_fallback()
    out, total = [], 0
    while total < size:
        line = r.choice(lines).replace("\r", "").replace("\n", " ")
        out.append(line)
        total += len(line.encode()) + 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bench-text":
        bench_text(sys.argv[2])
    else:
        main(train_too="--keep-models" not in sys.argv)
