import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, setLogLevel } from 'llama-addon';
import { vocab, vocabDir } from './helpers/models.js';

setLogLevel('error');

// llama.cpp's own tokenizer test vectors: models/ggml-vocab-NAME.gguf with .inp (texts separated by
// "\n__ggml_vocab_test__\n") and .out (expected token ids, one line per text), as tests/test-tokenizer-0 reads them.
const names = readdirSync(vocabDir)
  .filter((f) => f.endsWith('.gguf.out') && existsSync(join(vocabDir, f.replace(/\.out$/, '.inp'))))
  .map((f) => f.replace(/^ggml-vocab-/, '').replace(/\.gguf\.out$/, ''));

function vectors(name: string): Array<[string, number[]]> {
  const base = join(vocabDir, `ggml-vocab-${name}.gguf`);
  const raw = readFileSync(base + '.inp', 'utf8');
  const sep = '\n__ggml_vocab_test__\n';
  const inputs: string[] = [];
  let pos = 0;
  while (pos < raw.length) {
    const next = raw.indexOf(sep, pos);
    if (next < 0) {
      inputs.push(raw.slice(pos));
      break;
    }
    inputs.push(raw.slice(pos, next));
    pos = next + sep.length;
  }
  const outputs = readFileSync(base + '.out', 'utf8').split('\n');
  return inputs.map((text, i) => [text, outputs[i].trim() === '' ? [] : outputs[i].trim().split(/\s+/).map(Number)]);
}

describe("tokenizer matches llama.cpp's test vectors", () => {
  it('finds the vocabularies shipped with the pinned source', () => {
    expect(names.length).toBeGreaterThanOrEqual(10);
    expect(names).toContain('llama-spm');
    expect(names).toContain('qwen2');
  });

  for (const name of names) {
    it(name, async () => {
      await using model = await loadModel(vocab(name), { vocabOnly: true });
      const cases = vectors(name);
      expect(cases.length).toBeGreaterThan(10);
      for (const [text, expected] of cases) {
        expect([...model.tokenize(text, { addBos: false })], JSON.stringify(text)).toEqual(expected);
      }
    });
  }
});

describe('special tokens', () => {
  it('treats special-token text in user input as plain text unless asked', async () => {
    await using model = await loadModel(vocab('qwen2'), { vocabOnly: true });
    const plain = model.tokenize('<|im_start|>user', { addBos: false });
    const special = model.tokenize('<|im_start|>user', { addBos: false, special: true });
    expect(special.length).toBe(2);
    expect(plain.length).toBeGreaterThan(2);
    expect(plain).not.toContain(special[0]);
    expect(model.detokenize(plain)).toBe('<|im_start|>user');
    expect(model.detokenize(special, { special: true })).toBe('<|im_start|>user');
    expect(model.detokenize(special)).toBe('user');
  });

  it('round-trips text through a byte-level BPE vocabulary exactly', async () => {
    await using model = await loadModel(vocab('llama-bpe'), { vocabOnly: true });
    for (const text of ['Hello world', ' leading space', 'emoji 🦙 and 中文', 'tabs\tand\nnewlines  ', "it's 3.14!"]) {
      expect(model.detokenize(model.tokenize(text, { addBos: false }))).toBe(text);
    }
  });
});
