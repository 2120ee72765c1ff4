import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, LlamaError, setLogLevel, type LlamaContext, type LlamaModel } from 'llama-addon';
import { describeShared, fixtures, shared } from './helpers/models.js';
import { rejectsWith, throwsWith } from './helpers/errors.js';

setLogLevel('error');

const PROMPT = 'Once upon a time';
const greedy = { temperature: 0 } as const;



describeShared('sessions: cache reuse, fork, save and load, context shift, prefix sharing', () => {
  let model: LlamaModel;
  let ctx: LlamaContext;
  const dir = join(fixtures, 'sessions');
  beforeAll(async () => {
    mkdirSync(dir, { recursive: true });
    model = await loadModel(shared('stories260k.gguf'));
    ctx = await model.createContext({ contextSize: 512, sequences: 4 });
  });
  afterAll(() => model.dispose());

  it('decodes only the new part of a prompt that extends the cache, with the same greedy text as from scratch', async () => {
    using s = ctx.createSession();
    const first = await s.complete(PROMPT, { maxTokens: 12, ...greedy });
    const held = s.tokens;
    // The prompt and every generated token but the last one (sampled, not yet decoded) are cached.
    expect(Array.from(held)).toEqual([...model.tokenize(PROMPT), ...first.tokens.slice(0, -1)]);
    const next = Array.from(held).concat(first.tokens.slice(-1), Array.from(model.tokenize(' Lily', { addBos: false })));
    const cached = await s.complete(next, { maxTokens: 24, ...greedy });
    expect(cached.usage.cachedTokens).toBe(held.length);
    expect(cached.usage.promptTokens).toBe(next.length);
    using fresh = ctx.createSession({ sharePrefix: false });
    const scratch = await fresh.complete(next, { maxTokens: 24, ...greedy });
    expect(scratch.usage.cachedTokens).toBe(0);
    expect(cached.text).toBe(scratch.text);
    expect(cached.tokens).toEqual(scratch.tokens);
  });

  it('re-decodes from where a new prompt differs from the cache', async () => {
    using s = ctx.createSession();
    await s.complete('Once upon a time there was a dog', { maxTokens: 4, ...greedy });
    const r = await s.complete('Once upon a time there was a cat', { maxTokens: 8, ...greedy });
    const common = model.tokenize('Once upon a time there was a');
    expect(r.usage.cachedTokens).toBe(common.length);
    using fresh = ctx.createSession({ sharePrefix: false });
    expect(r.text).toBe((await fresh.complete('Once upon a time there was a cat', { maxTokens: 8, ...greedy })).text);
  });

  it('forks: the fork starts from a copy of the cache and the two share nothing afterwards', async () => {
    using a = ctx.createSession({ sharePrefix: false });
    const first = await a.complete(PROMPT, { maxTokens: 10, ...greedy });
    const held = Array.from(a.tokens);
    using b = a.fork();
    expect(Array.from(b.tokens)).toEqual(held);
    const base = held.concat(first.tokens.slice(-1));
    const she = base.concat(Array.from(model.tokenize(' She', { addBos: false })));
    const dog = base.concat(Array.from(model.tokenize(' The dog', { addBos: false })));
    // The fork goes one way; the original must be unaffected by what the fork decoded.
    const rb = await b.complete(dog, { maxTokens: 16, ...greedy });
    expect(rb.usage.cachedTokens).toBe(held.length);
    expect(Array.from(a.tokens)).toEqual(held);
    const ra = await a.complete(she, { maxTokens: 16, ...greedy });
    expect(ra.usage.cachedTokens).toBe(held.length);
    using fa = ctx.createSession({ sharePrefix: false });
    using fb = ctx.createSession({ sharePrefix: false });
    expect(ra.text).toBe((await fa.complete(she, { maxTokens: 16, ...greedy })).text);
    expect(rb.text).toBe((await fb.complete(dog, { maxTokens: 16, ...greedy })).text);
    expect(ra.text).not.toBe(rb.text);
  });

  it('saves a session and loads it into another context, which continues exactly as the saved one', async () => {
    using s = ctx.createSession();
    const first = await s.complete(PROMPT, { maxTokens: 20, ...greedy });
    const file = join(dir, 'story.session');
    await s.save(file);
    const next = PROMPT + first.text + ' One day';
    const expected = await s.complete(next, { maxTokens: 30, ...greedy });

    // Another context with a different number of sequences and size.
    await using other = await model.createContext({ contextSize: 256, sequences: 1 });
    const loaded = other.createSession();
    await loaded.load(file);
    expect(Array.from(loaded.tokens)).toEqual([...model.tokenize(PROMPT), ...first.tokens.slice(0, -1)]);
    const r = await loaded.complete(next, { maxTokens: 30, ...greedy });
    expect(r.usage.cachedTokens).toBe(expected.usage.cachedTokens);
    expect(r.text).toBe(expected.text);

    // And into another sequence of a context with several.
    using again = ctx.createSession({ sharePrefix: false });
    await again.load(file);
    expect((await again.complete(next, { maxTokens: 30, ...greedy })).text).toBe(expected.text);
  });

  it('refuses state files from another model, truncated or corrupt ones, and stays usable', async () => {
    const file = join(dir, 'valid.session');
    {
      using s = ctx.createSession();
      await s.complete(PROMPT, { maxTokens: 8, ...greedy });
      await s.save(file);
    }
    const bytes = readFileSync(file);
    const truncated = join(dir, 'truncated.session');
    writeFileSync(truncated, bytes.subarray(0, bytes.length - 100));
    const corrupt = join(dir, 'corrupt.session');
    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 10] ^= 0xff;
    writeFileSync(corrupt, flipped);
    const garbage = join(dir, 'garbage.session');
    writeFileSync(garbage, 'not a session file at all');

    using s = ctx.createSession({ sharePrefix: false });
    await s.complete('The little dog', { maxTokens: 4, ...greedy });
    const before = Array.from(s.tokens);
    expect((await rejectsWith(s.load(truncated), 'ERR_INVALID_STATE')).message).toMatch(/truncated/);
    expect((await rejectsWith(s.load(corrupt), 'ERR_INVALID_STATE')).message).toMatch(/checksum/);
    expect((await rejectsWith(s.load(garbage), 'ERR_INVALID_STATE')).message).toMatch(/not a llama-addon session file/);
    await rejectsWith(s.load(join(dir, 'missing.session')), 'ERR_IO');
    await rejectsWith(s.save(join(dir, 'no-such-dir', 'x.session')), 'ERR_IO');
    // A rejected file leaves the session as it was.
    expect(Array.from(s.tokens)).toEqual(before);
    const after = await s.complete(before.concat([100]), { maxTokens: 8, ...greedy });
    expect(after.usage.cachedTokens).toBe(before.length);

    await using otherModel = await loadModel(shared('tinystories-656k-q8_0.gguf'));
    await using otherCtx = await otherModel.createContext({ contextSize: 256 });
    using foreign = otherCtx.createSession();
    const e = await rejectsWith(foreign.load(file), 'ERR_INVALID_STATE');
    expect(e.message).toMatch(/belongs to another model/);
    const ok = await foreign.complete('<|start_story|>Once upon a time', { maxTokens: 8, ...greedy });
    expect(ok.usage.completionTokens).toBe(8);
  });

  it('with contextShift "auto", keeps generating past the end of the context, keeping the prefix', async () => {
    await using small = await model.createContext({ contextSize: 256, sequences: 2 });
    using s = small.createSession({ contextShift: { keep: 4 } });
    const prompt = model.tokenize(PROMPT);
    const r = await s.complete(prompt, { maxTokens: 600, ...greedy, repeatPenalty: 1.2 });
    expect(r.stopReason).toBe('maxTokens');
    expect(r.usage.completionTokens).toBe(600);
    expect(s.tokens.length).toBeLessThanOrEqual(256);
    expect(Array.from(s.tokens.subarray(0, 4))).toEqual(Array.from(prompt.subarray(0, 4)));
    // What the cache holds after the kept prefix is the end of what was generated.
    const tail = Array.from(s.tokens.subarray(4));
    expect(r.tokens.slice(-1 - tail.length, -1)).toEqual(tail);
    // llama.cpp's rule: each time the sequence is full, half of what follows the kept prefix goes, (256 - 4) / 2
    // = 126 tokens. The last token is sampled, not decoded.
    let held = prompt.length;
    for (let i = 0; i < 599; i++) held = (held >= 256 ? held - 126 : held) + 1;
    expect(s.tokens.length).toBe(held);

    using auto = small.createSession({ contextShift: 'auto' });
    const ra = await auto.complete(PROMPT, { maxTokens: 400, ...greedy });
    expect(ra.usage.completionTokens).toBe(400);
    expect(auto.tokens[0]).toBe(model.vocab.bos);
  });

  it('without context shift, stops with contextFull and refuses prompts longer than the context', async () => {
    await using small = await model.createContext({ contextSize: 256 });
    using s = small.createSession();
    const r = await s.complete(PROMPT, { maxTokens: 600, ...greedy });
    expect(r.stopReason).toBe('contextFull');
    expect(r.usage.promptTokens + r.usage.completionTokens).toBe(257);
    const long = Array.from({ length: 300 }, (_, i) => 10 + (i % 200));
    throwsWith(() => s.generate(long), 'ERR_CONTEXT_FULL');
    // The same prompt fits with context shift: the oldest tokens after the kept prefix are dropped.
    s.dispose();
    using shifting = small.createSession({ contextShift: { keep: 10 } });
    const rs = await shifting.complete(long, { maxTokens: 10, ...greedy });
    expect(rs.usage.promptTokens).toBeLessThanOrEqual(256);
    expect(rs.usage.completionTokens).toBe(10);
    expect(Array.from(shifting.tokens.subarray(0, 10))).toEqual(long.slice(0, 10));
    // A longer prompt that continues the same conversation reuses the shifted cache.
    const longer = long.concat(rs.tokens, [50, 60, 70]);
    const again = await shifting.complete(longer, { maxTokens: 4, ...greedy });
    expect(again.usage.cachedTokens).toBeGreaterThan(200);
  });

  it('shares an evaluated prefix by copying cache cells', async () => {
    const system = 'Once upon a time, in a big forest, there lived a kind old owl who loved to tell stories to all the animals.';
    using a = ctx.createSession();
    await a.complete(system, { maxTokens: 2, ...greedy });
    const held = a.tokens.length;

    // Explicitly: the new session starts with a's cache.
    using b = ctx.createSession({ prefix: a });
    expect(Array.from(b.tokens)).toEqual(Array.from(a.tokens));
    // Automatically: another session with the same start copies the cells instead of decoding.
    using c = ctx.createSession();
    const rc = await c.complete(system + ' One day', { maxTokens: 16, ...greedy });
    expect(rc.usage.cachedTokens).toBeGreaterThanOrEqual(held - 1);
    using scratch = ctx.createSession({ sharePrefix: false });
    const rs = await scratch.complete(system + ' One day', { maxTokens: 16, ...greedy });
    expect(rs.usage.cachedTokens).toBe(0);
    expect(rc.text).toBe(rs.text);
    const rb = await b.complete(system + ' One day', { maxTokens: 16, ...greedy });
    expect(rb.usage.cachedTokens).toBe(held);
    expect(rb.text).toBe(rs.text);
    // Copies share nothing: a is unchanged by what b and c decoded.
    const ra = await a.complete(system + ' The end', { maxTokens: 8, ...greedy });
    expect(ra.usage.cachedTokens).toBeGreaterThanOrEqual(held - 1);
  });

  it('creates sessions without limit; acquireSession() waits until fewer sessions than sequences exist', async () => {
    await using two = await model.createContext({ contextSize: 256, sequences: 2 });
    const a = two.createSession();
    const b = two.createSession();
    two.createSession().dispose();
    await b.complete(PROMPT, { maxTokens: 2, ...greedy });
    const waiting = two.acquireSession();
    let got = false;
    void waiting.then(() => (got = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(got).toBe(false);
    const held = b.sequence;
    expect(held).not.toBe(null);
    b.dispose();
    const c = await waiting;
    expect(c.sequence).toBe(null);
    expect((await c.complete(PROMPT, { maxTokens: 4, ...greedy })).usage.completionTokens).toBe(4);
    // The sequence b held went back to the pool, and c took it.
    expect(c.sequence).toBe(held);

    const controller = new AbortController();
    const aborted = two.acquireSession({ signal: controller.signal });
    controller.abort();
    await rejectsWith(aborted, 'ERR_ABORTED');
    const pending = rejectsWith(two.acquireSession(), 'ERR_DISPOSED');
    await two.dispose();
    await pending;
    expect(a.disposed).toBe(true);
  });

  it('keeps its cache when a generation is aborted before it starts, and rejects token ids outside the vocabulary', async () => {
    using s = ctx.createSession({ sharePrefix: false });
    await s.complete(PROMPT, { maxTokens: 6, ...greedy });
    const held = Array.from(s.tokens);
    const r = await s.complete(PROMPT + ' there', { maxTokens: 6, signal: AbortSignal.abort() });
    expect(r.stopReason).toBe('abort');
    expect(r.usage.completionTokens).toBe(0);
    expect(Array.from(s.tokens)).toEqual(held);
    throwsWith(() => s.generate([1, 2, model.vocab.size]), 'ERR_INVALID_ARGUMENT');
    throwsWith(() => s.generate([-1]), 'ERR_INVALID_ARGUMENT');
    expect(Array.from(s.tokens)).toEqual(held);
  });

  it('is busy while generating and disposed after dispose()', async () => {
    const s = ctx.createSession();
    const gen = s.generate(PROMPT, { maxTokens: 200, ...greedy });
    throwsWith(() => s.fork(), 'ERR_BUSY');
    await rejectsWith(s.save(join(dir, 'busy.session')), 'ERR_BUSY');
    await rejectsWith(s.load(join(dir, 'busy.session')), 'ERR_BUSY');
    throwsWith(() => s.reset(), 'ERR_BUSY');
    gen.abort();
    await gen.result;
    s.dispose();
    throwsWith(() => s.fork(), 'ERR_DISPOSED');
    await rejectsWith(s.save(join(dir, 'x.session')), 'ERR_DISPOSED');
    await rejectsWith(s.load(join(dir, 'x.session')), 'ERR_DISPOSED');
    throwsWith(() => ctx.createSession({ contextShift: 'sometimes' as never }), 'ERR_INVALID_ARGUMENT');
    throwsWith(() => ctx.createSession({ prefix: {} as never }), 'ERR_INVALID_ARGUMENT');
    // A failed createSession does not leak its sequence.
    expect(ctx.freeSequences).toBe(4);
  });
});
