// flashAttention: 'auto' on the CPU: off for key and value heads of at most 8 dimensions, where llama.cpp's
// CPU flash-attention kernel ran half as fast as plain attention (bench/results/2026-11-30-flash-attention.txt),
// as long as plain attention's scores stay under 256 MiB; llama.cpp's own choice otherwise.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, setLogLevel } from 'llama-addon';
import { attentionShape } from '../lib/core/memory.js';
import { describeShared, shared, synthetic } from './helpers/models.js';

setLogLevel('error');

describe("flashAttention: 'auto' on the CPU", () => {
  it('is off for heads of at most 8 dimensions and left to llama.cpp above, over a sweep of head sizes', async () => {
    // [embeddingLength, heads]: head dimensions 4, 8, 8, 12, 16, 32, 64.
    const shapes: Array<[number, number]> = [[32, 8], [64, 8], [128, 16], [48, 4], [64, 4], [128, 4], [128, 2]];
    for (const [embd, heads] of shapes) {
      const path = await synthetic(`fa-${embd}-${heads}`, { embeddingLength: embd, layers: 1, heads, headsKv: heads / 2, feedForwardLength: 64, type: 'f16', seed: 5 });
      await using model = await loadModel(path);
      await using ctx = await model.createContext({ contextSize: 256 });
      expect({ dims: embd / heads, fa: ctx.flashAttention }).toEqual({ dims: embd / heads, fa: embd / heads <= 8 ? false : 'auto' });
      // What the caller asks for is kept.
      for (const asked of [true, false] as const) {
        await using c = await model.createContext({ contextSize: 256, flashAttention: asked });
        expect(c.flashAttention).toBe(asked);
      }
      await using c = await model.createContext({ contextSize: 256, flashAttention: 'auto' });
      expect(c.flashAttention).toBe(ctx.flashAttention);
    }
  });

  it("stays with llama.cpp in an embedding context, decides a kvUnified context's as the others', and a draft model's for its heads", async () => {
    const small = await synthetic('fa-64-8', { embeddingLength: 64, layers: 1, heads: 8, headsKv: 4, feedForwardLength: 64, type: 'f16', seed: 5 });
    const large = await synthetic('fa-128-4', { embeddingLength: 128, layers: 1, heads: 4, headsKv: 2, feedForwardLength: 64, type: 'f16', seed: 5 });
    await using model = await loadModel(small);
    await using other = await loadModel(large);
    for (const [o, want] of [[{ kvUnified: true }, false], [{ embeddings: true }, 'auto']] as const) {
      await using ctx = await model.createContext({ contextSize: 256, ...o });
      expect({ ...o, fa: ctx.flashAttention }).toEqual({ ...o, fa: want });
    }
    // Same vocabulary (both synthetic from the same one): either can draft for the other, each with its own heads.
    await using a = await other.createContext({ contextSize: 256, draftModel: model });
    expect(a.flashAttention).toBe('auto');
    const r = await a.createSession().complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    await using plain = await other.createContext({ contextSize: 256 });
    expect(r.text).toBe((await plain.createSession().complete('Once upon a time', { maxTokens: 8, temperature: 0 })).text);
  });

  it('reads per-layer head counts as the most of any layer', () => {
    const m = (heads: unknown, extra: Record<string, number> = {}) =>
      attentionShape({ 'general.architecture': 'llama', 'llama.embedding_length': 256, 'llama.attention.head_count': heads as number, ...Object.fromEntries(Object.entries(extra).map(([k, v]) => [`llama.${k}`, v])) });
    expect(m(32)).toEqual({ heads: 32, keyLength: 8, valueLength: 8 });
    expect(m([1, 32, 32])).toEqual({ heads: 32, keyLength: 8, valueLength: 8 });
    expect(m([0, 8, 8], { 'attention.key_length': 8, 'attention.value_length': 8 })).toEqual({ heads: 8, keyLength: 8, valueLength: 8 });
    expect(m([0, 0])).toBeNull();
    expect(m(undefined)).toBeNull();
  });

  it('stays with llama.cpp when plain attention would keep more than 256 MiB of scores (heads × cells × micro-batch)', async () => {
    const path = await synthetic('fa-64-8', { embeddingLength: 64, layers: 1, heads: 8, headsKv: 4, feedForwardLength: 64, type: 'f16', seed: 5 });
    await using model = await loadModel(path);
    // 8 heads × 16384 cells × 512 tokens × 4 bytes is 256 MiB exactly; 256 cells more is over.
    for (const [contextSize, batchSize, want] of [[16384, 512, false], [16640, 512, 'auto'], [16640, 256, false]] as const) {
      await using ctx = await model.createContext({ contextSize, batchSize, sequences: 1 });
      expect({ contextSize, batchSize, fa: ctx.flashAttention }).toEqual({ contextSize, batchSize, fa: want });
    }
  });
});

describeShared("flashAttention: 'auto' on stories260k (head dimension 8)", () => {
  it('runs without flash attention: the same log-probabilities as false, to the last bit, and not those of true', async () => {
    await using model = await loadModel(shared('stories260k.gguf'));
    const run = async (flashAttention?: boolean) => {
      await using ctx = await model.createContext({ contextSize: 512, threads: 1, ...(flashAttention !== undefined ? { flashAttention } : {}) });
      using s = ctx.createSession();
      const r = await s.complete('Once upon a time, there was a little girl named Lily. She loved to play', { maxTokens: 24, temperature: 0, logprobs: 3 });
      return { fa: ctx.flashAttention, logprobs: r.logprobs!.flatMap((l) => [l.logprob, ...l.top.map((t) => t.logprob)]) };
    };
    const auto = await run();
    const off = await run(false);
    const on = await run(true);
    expect(auto.fa).toBe(false);
    expect(auto.logprobs).toEqual(off.logprobs);
    expect(auto.logprobs.length).toBeGreaterThan(24);
    expect(on.logprobs).not.toEqual(off.logprobs);
  });

  it('a saved session loads only where flash attention is as it was, and the error says so', async () => {
    await using model = await loadModel(shared('stories260k.gguf'));
    await using off = await model.createContext({ contextSize: 512 });
    await using on = await model.createContext({ contextSize: 512, flashAttention: true });
    using s = off.createSession();
    await s.complete('Once upon a time', { maxTokens: 4, temperature: 0 });
    const file = join(mkdtempSync(join(tmpdir(), 'llama-addon-fa-')), 'session.bin');
    await s.save(file);
    using t = on.createSession();
    await expect(t.load(file)).rejects.toMatchObject({ code: 'ERR_INVALID_STATE', message: expect.stringContaining('flashAttention') });
    using u = off.createSession();
    await u.load(file);
    expect((await u.complete('Once upon a time', { maxTokens: 4, temperature: 0 })).usage.cachedTokens).toBeGreaterThan(0);
  });

  it('a context on 656K (head dimension 16) leaves it to llama.cpp', async () => {
    await using model = await loadModel(shared('tinystories-656k-q8_0.gguf'));
    await using ctx = await model.createContext({ contextSize: 256 });
    expect(ctx.flashAttention).toBe('auto');
  });
});
