import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, LlamaError, setLogLevel, type LlamaModel } from 'llama-addon';
import { GgufType } from '../lib/gguf/index.js';
import { describeShared, onGpu, shared, synthetic } from './helpers/models.js';

setLogLevel('error');

const TEXTS = ['Once upon a time', 'The dog ran', 'Lily loved the park very much', 'x', 'A big red ball rolled down the hill.'];

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const norm = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0));

describeShared('embeddings and reranking (stories260k)', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  for (const pooling of ['mean', 'last', 'cls'] as const) {
    it(`embeds texts with ${pooling} pooling, the same in a batch as alone`, async () => {
      await using ctx = await model.createContext({ contextSize: 256, sequences: 4, embeddings: true, pooling });
      expect(ctx.pooling).toBe(pooling);
      const batch = await ctx.embed(TEXTS);
      expect(batch).toHaveLength(TEXTS.length);
      for (const [i, text] of TEXTS.entries()) {
        expect(batch[i]).toBeInstanceOf(Float32Array);
        expect(batch[i]).toHaveLength(model.info.embeddingLength);
        expect(norm(batch[i])).toBeCloseTo(1, 5);
        const [alone] = await ctx.embed(text);
        expect(maxDiff(batch[i], alone), text).toBeLessThan(onGpu() ? 2e-3 : 1e-5);
      }
      // Different texts, different vectors; the same text, the same vector. (With a causal model, the first
      // token sees nothing else: CLS pooling gives every text that starts with BOS the same vector.)
      if (pooling === 'cls') expect(maxDiff(batch[0], batch[1])).toBeLessThan(1e-6);
      else expect(maxDiff(batch[0], batch[1])).toBeGreaterThan(1e-3);
      const again = await ctx.embed([TEXTS[0], TEXTS[0]]);
      expect(maxDiff(again[0], again[1])).toBeLessThan(1e-6);
    });
  }

  // Found by a hostile review: contexts of 3, 5, 6 or 7 sequences with mean pooling failed to create (llama.cpp
  // rounds the reserved micro-batch up to a multiple of the sequences, not its outputs), and so did the
  // CLI's `embed` of 3 texts. A sweep of shapes: every one creates, embeds as a one-sequence context does,
  // and takes a text as long as its batchSize but not one token more.
  it('creates an embedding context of any number of sequences, context size and batch size', async () => {
    const [reference] = await (await model.createContext({ contextSize: 256, sequences: 1, embeddings: true, pooling: 'mean' })).embed(TEXTS[2]);
    const long = Array.from(model.tokenize('Once upon a time there was a girl. '.repeat(400), { addBos: false }));
    let shapes = 0;
    for (const sequences of [1, 2, 3, 4, 5, 6, 7, 9, 12, 17]) {
      for (const [contextSize, batchSize] of [[64, undefined], [300, undefined], [1000, undefined], [1000, 100], [2048, 1000]] as const) {
        for (const pooling of ['mean', 'last', 'none'] as const) {
          const shape = JSON.stringify({ sequences, contextSize, batchSize, pooling });
          await using ctx = await model.createContext({ contextSize, sequences, embeddings: true, pooling, ...(batchSize ? { batchSize } : {}) });
          // What a text may hold: the batch size asked for (at most the context's cells, contextSize for each
          // sequence), or up to sequences - 1 less.
          const limit = Math.min(batchSize ?? 512, contextSize * sequences);
          expect(ctx.batchSize, shape).toBeLessThanOrEqual(limit);
          expect(ctx.batchSize, shape).toBeGreaterThan(limit - sequences);
          const out = await ctx.embed([...TEXTS, long.slice(0, ctx.batchSize)]);
          expect(out, shape).toHaveLength(TEXTS.length + 1);
          if (pooling === 'mean') expect(maxDiff(out[2]!, reference!), shape).toBeLessThan(1e-4);
          await expect(ctx.embed([long.slice(0, ctx.batchSize + 1)]), shape).rejects.toMatchObject({ code: 'ERR_CONTEXT_FULL' });
          shapes++;
        }
      }
    }
    expect(shapes).toBe(150);
  }, 120_000);

  it('normalizes only when asked, and returns every token with pooling none', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 2, embeddings: true, pooling: 'mean' });
    const [raw] = await ctx.embed('Once upon a time', { normalize: false });
    const [unit] = await ctx.embed('Once upon a time');
    expect(Math.abs(norm(raw) - 1)).toBeGreaterThan(1e-3);
    expect(maxDiff(unit, raw.map((v) => v / norm(raw)))).toBeLessThan(1e-5);
    await using tokens = await model.createContext({ contextSize: 256, embeddings: true, pooling: 'none' });
    const n = model.tokenize('Once upon a time').length;
    const [all] = await tokens.embed('Once upon a time', { normalize: false });
    expect(all).toHaveLength(n * model.info.embeddingLength);
    // Last pooling is the last token's vector.
    await using last = await model.createContext({ contextSize: 256, embeddings: true, pooling: 'last' });
    const [l] = await last.embed('Once upon a time', { normalize: false });
    expect(maxDiff(l, all.subarray((n - 1) * l.length))).toBeLessThan(1e-5);
  });

  it('reports misuse clearly', async () => {
    await using gen = await model.createContext({ contextSize: 256 });
    await expect(gen.embed('x')).rejects.toMatchObject({ code: 'ERR_INVALID_STATE' });
    await using ctx = await model.createContext({ contextSize: 256, embeddings: true, pooling: 'mean' });
    expect(model.info.canRank).toBe(false);
    // Token ids as a plain array embed as their Int32Array does; a bad id is named by its index.
    const ids = model.tokenize('Once upon a time');
    expect(Array.from((await ctx.embed([Array.from(ids)]))[0])).toEqual(Array.from((await ctx.embed(ids))[0]));
    await expect(ctx.embed([[1, 99999]])).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: 'Invalid option "texts": expected a token id from 0 to 511 at index 1, received 99999' });
    const e = await ctx.rank('query', ['doc']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(LlamaError);
    expect((e as LlamaError).code).toBe('ERR_INVALID_STATE');
    // A model without a classification head cannot rank, even with pooling 'rank'.
    const rankCtx = await model.createContext({ contextSize: 256, embeddings: true, pooling: 'rank' }).catch((x: unknown) => x);
    if (rankCtx instanceof LlamaError) {
      expect(rankCtx.code).toBe('ERR_CONTEXT_CREATE');
    } else {
      await expect((rankCtx as Awaited<ReturnType<LlamaModel['createContext']>>).rank('q', ['d'])).rejects.toThrow(/no classification head/);
      await (rankCtx as Awaited<ReturnType<LlamaModel['createContext']>>).dispose();
    }
    await expect(ctx.embed(model.tokenize('a'.repeat(3000)))).rejects.toMatchObject({ code: 'ERR_CONTEXT_FULL' });
    await expect(model.createContext({ pooling: 'mean' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(await ctx.embed([])).toEqual([]);
  });
});

describe('reranking (synthetic Qwen3-architecture model with a classification head)', () => {
  it('scores documents with the head, the same in a batch as alone', async () => {
    const yes = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i * 0.7));
    const no = Float32Array.from({ length: 64 }, (_, i) => Math.cos(i * 0.3) * 0.5);
    const path = await synthetic('qwen3-reranker-2', {
      architecture: 'qwen3', rankHead: [yes, no], vocab: 'qwen2', embeddingLength: 64, layers: 2, heads: 4, headsKv: 2, feedForwardLength: 128, type: 'f32', seed: 9,
      metadata: [{ key: 'tokenizer.chat_template.rerank', type: GgufType.STRING, value: 'Query: {query}\nDocument: {document}\nRelevant:' }],
    });
    await using model = await loadModel(path);
    expect(model.info.canRank).toBe(true);
    await using ctx = await model.createContext({ contextSize: 256, sequences: 4, embeddings: true, pooling: 'rank' });
    const docs = ['The cat sat on the mat.', 'Paris is the capital of France.', 'Stock prices fell today.'];
    const scores = await ctx.rank('Where is Paris?', docs);
    expect(scores).toHaveLength(3);
    for (const s of scores) expect(Number.isFinite(s)).toBe(true);
    expect(new Set(scores.map((s) => s.toFixed(6))).size).toBe(3);
    for (const [i, d] of docs.entries()) expect((await ctx.rank('Where is Paris?', [d]))[0]).toBeCloseTo(scores[i], 5);
    // The score is llama.cpp's softmax of the head applied to the last token's hidden state (an embedding
    // context gives that state): P("yes") = sigmoid(h·yes − h·no).
    await using last = await model.createContext({ contextSize: 256, embeddings: true, pooling: 'last' });
    for (const [i, d] of docs.entries()) {
      const tokens = model.tokenize(`Query: Where is Paris?\nDocument: ${d}\nRelevant:`, { special: true, addBos: false });
      const [h] = await last.embed(tokens, { normalize: false });
      const logit = h.reduce((sum, v, k) => sum + v * (yes[k] - no[k]), 0);
      expect(1 / (1 + Math.exp(-logit))).toBeCloseTo(scores[i], 4);
    }
  });
});
