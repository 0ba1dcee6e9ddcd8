// Turns the vocabulary of the npm package llama-tokenizer-js or mistral-tokenizer-js (the real Llama-2 /
// Mistral-7B pieces and merges, taken by the package from the models' tokenizer.json) back into a
// tokenizer.json in the Llama layout, and collects the package's own test cases (ids from the real tokenizer).
//   node extract_npm_vocab.mjs PACKAGE_DIR OUT_DIR
// Get a package with: npm pack mistral-tokenizer-js@1.0.0 && tar xzf mistral-tokenizer-js-1.0.0.tgz
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [dir, out] = process.argv.slice(2)
const file = fs.readdirSync(dir).find(f => /^(llama|mistral)-tokenizer\.js$/.test(f))
const tok = (await import(pathToFileURL(path.join(dir, file)).href)).default
const vocab = {}
tok.vocabById.forEach((piece, id) => { vocab[piece] = id })
// The package keeps the merges in a Map in their original order, keyed "left right".
const merges = [...tok.merges.keys()]
const special = [0, 1, 2].map(id => ({ id, content: tok.vocabById[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }))
const doc = {
  version: '1.0', truncation: null, padding: null, added_tokens: special,
  normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
  pre_tokenizer: null, post_processor: null,
  decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
  model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges },
}
fs.mkdirSync(out, { recursive: true })
fs.writeFileSync(path.join(out, 'tokenizer.json'), JSON.stringify(doc))

// testCase("text", [1, ...]) lines of the package's runTests; the literal is evaluated as JavaScript.
const source = fs.readFileSync(path.join(dir, file), 'utf8')
const cases = []
for (const m of source.matchAll(/testCase\(\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,\s*\[([^\]]*)\]\s*\)/gs))
  cases.push({ text: eval(m[1]), ids: m[2].split(',').map(s => parseInt(s.trim(), 10)) })
fs.writeFileSync(path.join(out, 'package_cases.json'), JSON.stringify(cases, null, 0))
console.error(`${file}: ${tok.vocabById.length} pieces, ${merges.length} merges, ${cases.length} test cases -> ${out}`)
