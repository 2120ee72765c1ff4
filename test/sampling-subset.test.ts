// Sampling over a subset of the vocabulary (native/candidates.h): when the chain's first truncation is top-k,
// the engine runs the chain over the tokens top-k can keep instead of the whole vocabulary. A user would
// notice if it changed what is generated: every random configuration of the sweep must give the very tokens
// that sampling over the whole vocabulary (LLAMA_ADDON_SAMPLE_WHOLE_VOCAB=1, llama.cpp's own way) gives.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, setLogLevel, type GenerateOptions, type LlamaContext, type LlamaModel } from 'llama-addon';
import { describeShared, repoRoot, shared } from './helpers/models.js';
import { prng } from './helpers/prng.js';

setLogLevel('error');

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

function randomOptions(r: () => number, nVocab: number): GenerateOptions {
  const logitBias: Record<number, number> = {};
  const nBias = pick(r, [0, 0, 1, 3, 8]);
  for (let i = 0; i < nBias; i++) logitBias[Math.floor(r() * nVocab)] = pick(r, [-Infinity, -5, 2, 5, 20]);
  return {
    maxTokens: 24,
    temperature: pick(r, [0, 0, 0.3, 0.8, 1.5]),
    topK: pick(r, [1, 2, 5, 40, 100, 250]),
    topP: pick(r, [1, 0.95, 0.5]),
    minP: pick(r, [0, 0.05, 0.2]),
    typicalP: pick(r, [1, 1, 0.9]),
    repeatPenalty: pick(r, [1, 1.1, 1.5]),
    presencePenalty: pick(r, [0, 0, 0.5]),
    frequencyPenalty: pick(r, [0, 0, 0.3]),
    penaltyLastN: pick(r, [64, -1, 8]),
    seed: Math.floor(r() * 2 ** 31),
    logitBias,
  };
}

for (const file of ['llama-2-tiny-random.gguf', 'tinystories-656k-q8_0.gguf', 'stories260k.gguf']) {
  describeShared(`sampling over the tokens top-k can keep (${file})`, () => {
    let model: LlamaModel;
    let ctx: LlamaContext;
    beforeAll(async () => {
      model = await loadModel(shared(file));
      ctx = await model.createContext({ contextSize: 256 });
    });
    afterAll(async () => {
      delete process.env.LLAMA_ADDON_SAMPLE_WHOLE_VOCAB;
      await model.dispose();
    });

    async function generate(prompt: string, options: GenerateOptions, whole: boolean): Promise<number[]> {
      if (whole) process.env.LLAMA_ADDON_SAMPLE_WHOLE_VOCAB = '1';
      else delete process.env.LLAMA_ADDON_SAMPLE_WHOLE_VOCAB;
      using session = ctx.createSession();
      const r = await session.complete(prompt, options);
      return r.tokens;
    }

    it('generates exactly what sampling over the whole vocabulary generates (120 random configurations)', async () => {
      const r = prng(file.length * 7919);
      const nVocab = model.vocab.size;
      let sampled = 0;
      for (let i = 0; i < 120; i++) {
        const options = randomOptions(r, nVocab);
        const prompt = pick(r, ['Once upon a time', 'The', '<|start_story|>Tom and', 'a b c d e f']);
        const subset = await generate(prompt, options, false);
        const whole = await generate(prompt, options, true);
        expect({ i, options, tokens: subset }).toEqual({ i, options, tokens: whole });
        sampled += subset.length;
      }
      expect(sampled).toBeGreaterThan(120 * 10);
    });
  });
}

describeShared('sampling over a subset is what the engine does', () => {
  // The engine's profile (LLAMA_ADDON_PROFILE=1, printed when the context closes) counts the tokens it sampled
  // over a subset: without that, the comparison above could pass with the subset never used.
  const script = `
    import { loadModel, setLogLevel } from './lib/index.ts';
    setLogLevel('silent');
    const model = await loadModel(${JSON.stringify(shared('llama-2-tiny-random.gguf'))});
    const ctx = await model.createContext({ contextSize: 128 });
    const s = ctx.createSession();
    const greedy = await s.complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    const sampled = await s.complete(' and', { maxTokens: 8, temperature: 0.8, seed: 1 });
    const all = await s.complete(' then', { maxTokens: 8, temperature: 0.8, topK: 0, seed: 1 });
    // More than an eighth of the vocabulary biased: the subset would cost what the whole does.
    const logitBias = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [i + 100, -1]));
    const biased = await s.complete(' and then', { maxTokens: 8, temperature: 0.8, seed: 1, logitBias });
    console.log(greedy.tokens.length + sampled.tokens.length + all.tokens.length + biased.tokens.length);
    await model.dispose();
  `;
  function run(env: Record<string, string>): { tokens: number; subset: number; sampled: number } {
    const p = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: repoRoot, encoding: 'utf8', env: { ...process.env, LLAMA_ADDON_PROFILE: '1', ...env }, timeout: 60_000,
    });
    expect(p.status, p.stderr).toBe(0);
    const m = /(\d+) of (\d+) tokens sampled over a subset/.exec(p.stderr);
    expect(m, p.stderr).not.toBeNull();
    return { tokens: Number(p.stdout.trim()), subset: Number(m![1]), sampled: Number(m![2]) };
  }

  it('samples greedy and top-k steps over a subset, and top-k 0, a large logitBias or the switch over the whole vocabulary', () => {
    const on = run({});
    expect(on.tokens).toBe(32);
    expect(on.sampled).toBe(32);
    expect(on.subset).toBe(16); // greedy and top-k 40; not top-k 0, nor 5,000 biased tokens of 32,000
    const off = run({ LLAMA_ADDON_SAMPLE_WHOLE_VOCAB: '1' });
    expect(off).toEqual({ tokens: 32, subset: 0, sampled: 32 });
  });
});
