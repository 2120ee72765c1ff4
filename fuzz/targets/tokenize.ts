// tokenize: adversarial Unicode through every vocabulary (loaded with vocabOnly), and random token ids
// through detokenize. Expected: tokens, or ERR_TOKENIZE for text a vocabulary cannot represent; never a crash.
import { modelPath, vocabularies } from '../fixtures.js';
import { randomText, type Rng } from '../prng.js';
import { text, runSteps, shrinkCompact, step, wrong, type Compact, type Env, type Target } from './common.js';

type Input =
  | { op: 'tokenize'; vocab: string; text: Compact; special: boolean; addBos: boolean }
  | { op: 'detokenize'; vocab: string; tokens: number[]; special: boolean };

let vocabList: string[] | null = null;
let lastVocab: string | null = null;

async function model(ref: string, env: Env) {
  const key = `vocab:${ref}`;
  let m = env.cache.get(key) as Promise<import('../../lib/index.js').LlamaModel> | undefined;
  if (!m) {
    // Keep the vocabularies loaded (the large ones take seconds to load).
    const loaded = [...env.cache.keys()].filter((k) => k.startsWith('vocab:'));
    if (loaded.length >= 32) {
      const old = loaded[0];
      void (env.cache.get(old) as Promise<{ dispose(): Promise<void> }>).then((x) => x.dispose(), () => {});
      env.cache.delete(old);
    }
    m = env.lib.loadModel(modelPath(ref), { vocabOnly: true });
    env.cache.set(key, m);
  }
  return m;
}

export const tokenize: Target<Input> = {
  name: 'tokenize',
  description: 'adversarial Unicode through tokenize, random ids through detokenize, on every vocabulary (vocabOnly)',
  timeoutMs: 10_000,
  generate(r: Rng): Input {
    vocabList ??= vocabularies();
    if (vocabList.length === 0) throw new Error('no vocabularies found (../shared/models, deps/llama.cpp/models)');
    // Stay with a vocabulary for a while: loading the large ones takes seconds.
    const vocab = lastVocab !== null && r.chance(0.8) ? lastVocab : r.pick(vocabList);
    lastVocab = vocab;
    if (r.chance(0.2)) {
      const n = r.size(40);
      const tokens = Array.from({ length: n }, () =>
        r.weighted<() => number>([
          [10, () => r.int(0, 600)],
          [6, () => r.int(0, 300_000)],
          [1, () => r.pick([-1, -(2 ** 31), 2 ** 31 - 1, 32000, 32064, 151_936, 262_144, 50_257])],
        ])(),
      );
      return { op: 'detokenize', vocab, tokens, special: r.chance(0.5) };
    }
    let text: Compact = randomText(r, r.chance(0.1) ? 2000 : 48);
    if (r.chance(0.05)) text = { $repeat: r.pick(['{', '~', 'é', ' ', '\n', 'a', '\u0301', '🙂', '\ud800', '<s>']), times: r.size(200_000) };
    return { op: 'tokenize', vocab, text, special: r.chance(0.3), addBos: r.chance(0.7) };
  },
  run(input: Input, env: Env) {
    return runSteps(input.op, async () => {
      const m = await step('load', [], () => model(input.vocab, env));
      const n = m.vocab.size;
      if (input.op === 'detokenize') {
        const outside = input.tokens.some((t) => !(t >= 0 && t < n));
        const text = await step('detokenize', outside ? ['ERR_INVALID_ARGUMENT'] : [], () => m.detokenize(input.tokens, { special: input.special }));
        if (outside) wrong('detokenize', `detokenize accepted token ids outside the vocabulary (size ${n}): ${JSON.stringify(input.tokens)}`);
        if (typeof text !== 'string') wrong('detokenize', `detokenize returned ${typeof text}`);
        return;
      }
      const str = text(input.text);
      const tokens = await step('tokenize', ['ERR_TOKENIZE'], () => m.tokenize(str, { special: input.special, addBos: input.addBos }));
      const bad = Array.from(tokens).find((t) => !(t >= 0 && t < n));
      if (bad !== undefined) wrong('tokenize', `tokenize returned token id ${bad}, outside the vocabulary (size ${n})`);
      await step('detokenize', [], () => m.detokenize(tokens, { special: input.special }));
    });
  },
  shrink(input: Input): Input[] {
    if (input.op === 'detokenize') {
      const t = input.tokens;
      const out: Input[] = [];
      for (let i = 0; i < t.length; i++) if (t.length > 1) out.push({ ...input, tokens: t.slice(0, i).concat(t.slice(i + 1)) });
      return out.slice(0, 24);
    }
    const out: Input[] = shrinkCompact(input.text).map((text) => ({ ...input, text }));
    if (input.special) out.push({ ...input, special: false });
    if (input.addBos) out.push({ ...input, addBos: false });
    return out;
  },
};
