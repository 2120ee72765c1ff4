import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, setLogLevel, type GenerationChunk, type LlamaContext, type LlamaModel } from 'llama-addon';
import { describeShared, shared, tinySynthetic } from './helpers/models.js';

setLogLevel('error');

// What llama.cpp itself generates greedily from this prompt (../shared/models/SOURCES.md).
const STORY = ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.';

async function collect(gen: AsyncIterable<GenerationChunk>): Promise<GenerationChunk[]> {
  const chunks: GenerationChunk[] = [];
  for await (const c of gen) chunks.push(c);
  return chunks;
}

describeShared('generating text (stories260k)', () => {
  let model: LlamaModel;
  let ctx: LlamaContext;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
    ctx = await model.createContext({ contextSize: 512, sequences: 4 });
  });
  afterAll(() => model.dispose());

  it('streams the same greedy text as llama.cpp', async () => {
    using session = ctx.createSession();
    const gen = session.generate('Once upon a time', { maxTokens: 40, temperature: 0 });
    const chunks = await collect(gen);
    const result = await gen.result;
    expect(chunks.map((c) => c.text).join('')).toBe(result.text);
    expect(result.text.startsWith(STORY)).toBe(true);
    expect(chunks.flatMap((c) => c.tokens)).toEqual(result.tokens);
    expect(result).toMatchObject({ stopReason: 'maxTokens', usage: { promptTokens: 5, cachedTokens: 0, completionTokens: 40 } });
    expect(result.timings.tokensPerSecond).toBeGreaterThan(0);
    expect(result.timings.timeToFirstTokenMs).toBeGreaterThan(0);
  });

  it('gives identical greedy output every time, in any session', async () => {
    const outputs = new Set<string>();
    for (let i = 0; i < 3; i++) {
      using s = ctx.createSession();
      outputs.add((await s.complete('Once upon a time', { maxTokens: 48, temperature: 0 })).text);
    }
    expect(outputs.size).toBe(1);
  });

  it('gives identical output for the same seed, and different output for other seeds', async () => {
    using s = ctx.createSession();
    const opts = { maxTokens: 48, temperature: 1, topK: 0, topP: 1, minP: 0 };
    const a = await s.complete('Once upon a time', { ...opts, seed: 42 });
    s.reset();
    const b = await s.complete('Once upon a time', { ...opts, seed: 42 });
    expect(b.text).toBe(a.text);
    const others = new Set<string>();
    for (const seed of [1, 2, 3, 4]) {
      s.reset();
      others.add((await s.complete('Once upon a time', { ...opts, seed })).text);
    }
    others.add(a.text);
    expect(others.size).toBeGreaterThan(2);
  });

  it('decodes concurrent sessions of one context together, each as it would alone', async () => {
    const prompts = ['Once upon a time', 'The little dog', 'One day, a girl', 'Tom and Sue'];
    const alone: string[] = [];
    for (const p of prompts) {
      using s = ctx.createSession();
      alone.push((await s.complete(p, { maxTokens: 32, temperature: 0 })).text);
    }
    const sessions = prompts.map(() => ctx.createSession());
    try {
      const together = await Promise.all(prompts.map((p, i) => sessions[i].complete(p, { maxTokens: 32, temperature: 0 })));
      expect(together.map((r) => r.text)).toEqual(alone);
    } finally {
      for (const s of sessions) s.dispose();
    }
  });

  it('stops at maxTokens', async () => {
    using s = ctx.createSession();
    const r = await s.complete('Once upon a time', { maxTokens: 7, temperature: 0 });
    expect(r.stopReason).toBe('maxTokens');
    expect(r.usage.completionTokens).toBe(7);
    expect(r.tokens).toHaveLength(7);
  });

  it('stops at a stop string spanning tokens, and never emits any part of it', async () => {
    // "little girl" is several tokens; its first half "little" must not leak into the stream.
    for (const stop of ['little girl', 'Lily. She', 'ly', ', red']) {
      using s = ctx.createSession();
      const gen = s.generate('Once upon a time', { queueSize: 1, maxTokens: 60, temperature: 0, stop: [stop, 'never appears'] });
      const chunks = await collect(gen);
      const r = await gen.result;
      const streamed = chunks.map((c) => c.text).join('');
      const expected = STORY.slice(0, STORY.indexOf(stop));
      expect(r.stopReason, stop).toBe('stop');
      expect(r.text, stop).toBe(expected);
      expect(streamed, stop).toBe(expected);
      // No chunk boundary exposes a prefix of the stop string that later turned out to be the stop.
      expect(streamed.includes(stop), stop).toBe(false);
    }
  });

  it('accepts a single stop string and token input', async () => {
    using s = ctx.createSession();
    const tokens = model.tokenize('Once upon a time');
    const r = await s.complete(tokens, { maxTokens: 60, temperature: 0, stop: 'Lily' });
    expect(r.text).toBe(', there was a little girl named ');
    using s2 = ctx.createSession();
    const r2 = await s2.complete([...tokens], { maxTokens: 5, temperature: 0 });
    expect(STORY.startsWith(r2.text)).toBe(true);
  });

  it('reuses the cached prefix of a session and gives the same output as from scratch', async () => {
    using s = ctx.createSession();
    const first = await s.complete('Once upon a time', { maxTokens: 10, temperature: 0 });
    expect(s.tokens.length).toBe(first.usage.promptTokens + first.usage.completionTokens - 1);
    const prompt = 'Once upon a time' + first.text + ' She';
    const cached = await s.complete(prompt, { maxTokens: 20, temperature: 0 });
    expect(cached.usage.cachedTokens).toBeGreaterThan(5);
    using fresh = ctx.createSession({ sharePrefix: false });
    const scratch = await fresh.complete(prompt, { maxTokens: 20, temperature: 0 });
    expect(scratch.usage.cachedTokens).toBe(0);
    expect(cached.text).toBe(scratch.text);
  });

  it('reports log-probabilities of each token with the most likely alternatives', async () => {
    using s = ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 12, temperature: 0, logprobs: model.vocab.size, queueSize: 1 });
    const chunks: GenerationChunk[] = [];
    for await (const c of gen) chunks.push(c);
    const r = await gen.result;
    expect(r.logprobs).toHaveLength(r.tokens.length);
    expect(chunks.flatMap((c) => c.logprobs ?? [])).toEqual(r.logprobs);
    // Each entry's text is the token's piece of the output.
    expect(r.logprobs!.map((p) => p.text).join('')).toBe(r.text);
    for (const [i, p] of r.logprobs!.entries()) {
      expect(p.token).toBe(r.tokens[i]);
      // Greedy: the chosen token is the most likely one; the whole distribution sums to 1.
      expect(p.top[0].token).toBe(p.token);
      expect(p.top[0].logprob).toBeCloseTo(p.logprob, 6);
      expect(p.top).toHaveLength(model.vocab.size);
      expect(p.top.reduce((sum, a) => sum + Math.exp(a.logprob), 0)).toBeCloseTo(1, 4);
      for (let k = 1; k < p.top.length; k++) expect(p.top[k].logprob).toBeLessThanOrEqual(p.top[k - 1].logprob);
    }
    // Sampled tokens carry their own probability, whatever was chosen.
    s.reset();
    const sampled = await s.complete('Once upon a time', { maxTokens: 20, temperature: 1.5, seed: 3, logprobs: 0 });
    expect(sampled.logprobs!.every((p, i) => p.token === sampled.tokens[i] && p.logprob <= 0 && p.top.length === 0)).toBe(true);
  });

  it('serves higher priorities first when a step cannot take every session', async () => {
    // Batches of 8 tokens: the four 60-token prompts take turns, unless one has a higher priority.
    await using small = await model.createContext({ contextSize: 256, sequences: 4, batchSize: 8 });
    const sessions = [0, 1, 2, 3].map(() => small.createSession());
    const order: number[] = [];
    const prompt = 'Once upon a time there was a little girl. '.repeat(6);
    await Promise.all(
      sessions.map((s, i) =>
        s.complete(prompt, { maxTokens: 4, temperature: 0, priority: i === 2 ? 10 : 0 }).then(() => order.push(i)),
      ),
    );
    expect(order[0]).toBe(2);
    for (const s of sessions) s.dispose();
  });

  it('applies logitBias: -Infinity bans a token', async () => {
    using s = ctx.createSession();
    const plain = await s.complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    s.reset();
    const banned = plain.tokens[0];
    const biased = await s.complete('Once upon a time', { maxTokens: 8, temperature: 0, logitBias: { [banned]: -Infinity } });
    expect(biased.tokens[0]).not.toBe(banned);
    expect(biased.tokens).not.toContain(banned);
    s.reset();
    const viaMap = await s.complete('Once upon a time', { maxTokens: 8, temperature: 0, logitBias: new Map([[banned, -Infinity]]) });
    expect(viaMap.tokens).toEqual(biased.tokens);
  });

  it('applies a repeat penalty', async () => {
    using s = ctx.createSession();
    const plain = await s.complete('Once upon a time', { maxTokens: 100, temperature: 0 });
    s.reset();
    const penalized = await s.complete('Once upon a time', { maxTokens: 100, temperature: 0, repeatPenalty: 1.5, penaltyLastN: -1 });
    expect(penalized.text).not.toBe(plain.text);
    const distinct = (t: number[]) => new Set(t).size / t.length;
    expect(distinct(penalized.tokens)).toBeGreaterThan(distinct(plain.tokens));
  });

  it('ends with contextFull when the sequence runs out of space', async () => {
    await using small = await model.createContext({ contextSize: 256 });
    using s = small.createSession();
    const r = await s.complete('Once upon a time', { temperature: 0, logitBias: { 2: -Infinity } });
    expect(r.stopReason).toBe('contextFull');
    expect(r.usage.promptTokens + r.usage.completionTokens).toBe(small.contextSize + 1);
  });
});

describe('UTF-8 in streamed chunks', () => {
  it('never splits a character across chunks, even when tokens are single bytes', async () => {
    // A random-weight model with a byte-fallback vocabulary, allowed to emit only the byte tokens
    // <0xE4> and <0x80>..<0xBF>: most of what it writes are 3-byte characters split across 3 tokens.
    await using model = await loadModel(await tinySynthetic());
    const { readGguf } = await import('../lib/gguf/index.js');
    const tokenTexts = (await readGguf(model.path, { maxArrayLength: Infinity })).metadata['tokenizer.ggml.tokens'] as string[];
    const allowed = new Set<number>();
    let lead = -1;
    tokenTexts.forEach((t, id) => {
      const m = /^<0x([0-9A-F]{2})>$/.exec(t);
      if (m && m[1] === 'E4') lead = id;
      if (m && (m[1] === 'E4' || (parseInt(m[1], 16) >= 0x80 && parseInt(m[1], 16) <= 0xbf))) allowed.add(id);
    });
    expect(allowed.size).toBe(65);
    const logitBias: Record<number, number> = {};
    for (let id = 0; id < model.vocab.size; id++) if (!allowed.has(id)) logitBias[id] = -Infinity;
    // Make the lead byte about as likely as all continuation bytes together.
    logitBias[lead] = 12;
    await using ctx = await model.createContext({ contextSize: 512 });
    using s = ctx.createSession();
    const gen = s.generate('Hello', { queueSize: 1, maxTokens: 150, temperature: 3, topK: 0, topP: 1, minP: 0, seed: 3, logitBias });
    const chunks = await collect(gen);
    const r = await gen.result;
    // queueSize 1: one chunk per token, except where text is held back.
    expect(chunks.length).toBeGreaterThan(40);
    // Each chunk is decoded on its own: a split character would turn into U+FFFD and differ from the whole.
    expect(chunks.map((c) => c.text).join('')).toBe(r.text);
    const cjk = [...r.text].filter((ch) => ch >= '\u4000' && ch <= '\u4fff');
    expect(cjk.length).toBeGreaterThan(10);
  });
});
