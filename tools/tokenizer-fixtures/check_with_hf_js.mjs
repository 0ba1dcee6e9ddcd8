// Checks the tokenizer.json fixtures with Hugging Face's own JavaScript implementation (@huggingface/tokenizers,
// which @huggingface/transformers uses): its ids against SentencePiece's in cases.json. Expected result: equal
// on every string except the few that contain a special token's text ("<s>", "</s>", "<unk>"), which Hugging
// Face matches as that token and SentencePiece (and Mola) as plain text.
//   mkdir /tmp/hft && cd /tmp/hft && npm install --ignore-scripts @huggingface/transformers@4.3.1
//   mkdir data && for f in REPO/tests/Mola.Tests/Fixtures/spm/*.json.gz; do gunzip -c $f > data/$(basename ${f%.gz}); done
//   node REPO/tools/tokenizer-fixtures/check_with_hf_js.mjs data     (run from /tmp/hft)
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

// From the current directory's node_modules (ESM would look next to this script).
const { Tokenizer } = await import(pathToFileURL(path.resolve('node_modules/@huggingface/tokenizers/dist/tokenizers.mjs')).href)

const dir = process.argv[2]
const cases = JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8')).cases
const mistral = JSON.parse(fs.readFileSync(path.join(dir, 'mistral-cases.json'), 'utf8'))
const runs = [
  ['llama16k-legacy.tokenizer.json', (c, i) => c['llama16k']],
  ['llama16k-metaspace.tokenizer.json', (c, i) => (c.text.startsWith(' ') || c.text.startsWith('\u2581')) ? c['llama16k-noprefix'] : c['llama16k']],
  ['mistral.tokenizer.json', (c, i) => mistral.ids[i]],
]
for (const [file, expected] of runs) {
  const doc = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'))
  const tok = new Tokenizer(doc, {})
  let bad = 0; const shown = []
  cases.forEach((c, i) => {
    const got = tok.encode(c.text, { add_special_tokens: false }).ids
    const want = expected(c, i)
    if (JSON.stringify(got) !== JSON.stringify(want)) { bad++; if (shown.length < 6) shown.push(JSON.stringify(c.text).slice(0, 60)) }
  })
  console.log(`${file}: @huggingface/tokenizers 0.2.0 differs from SentencePiece on ${bad} of ${cases.length}: ${shown.join(' | ')}`)
}
