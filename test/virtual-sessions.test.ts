// Sessions are never scarce (lib/core/residency.ts): a context keeps `sequences` sessions resident in its KV
// cache; the others wait in host memory and come back as if they had never left.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, setLogLevel, type LlamaModel } from 'llama-addon';
import { describeShared, fixtures, shared } from './helpers/models.js';

setLogLevel('error');

const greedy = { temperature: 0 } as const;
const openings = ['Once upon a time', 'The little dog', 'Lily and Tom', 'One day, a big', 'The sun was', 'A girl named Sue', 'The cat sat'];

describeShared('virtual sessions: more sessions than resident sequences', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  // Two turns per session, interleaved so that every session loses its sequence between its turns.
  async function twoTurns(options: { sequences: number; cacheRamBytes?: number }) {
    await using ctx = await model.createContext({ contextSize: 256, ...options });
    const sessions = openings.map(() => ctx.createSession({ sharePrefix: false }));
    const first = [];
    for (let i = 0; i < sessions.length; i++) first.push(await sessions[i].complete(openings[i], { maxTokens: 8, ...greedy }));
    const second = [];
    for (let i = 0; i < sessions.length; i++) {
      const next = [...model.tokenize(openings[i]), ...first[i].tokens, ...model.tokenize(' and then', { addBos: false })];
      second.push(await sessions[i].complete(next, { maxTokens: 8, ...greedy }));
    }
    const stats = { saved: ctx.savedCacheBytes, resident: sessions.filter((s) => s.sequence !== null).length };
    return { first, second, stats };
  }

  it('restored from host memory, each session continues exactly as if it had stayed: same text, same cached tokens', async () => {
    const resident = await twoTurns({ sequences: openings.length });
    const virtual = await twoTurns({ sequences: 2 });
    expect(virtual.first.map((r) => r.text)).toEqual(resident.first.map((r) => r.text));
    expect(virtual.second.map((r) => r.text)).toEqual(resident.second.map((r) => r.text));
    expect(virtual.second.map((r) => r.usage.cachedTokens)).toEqual(resident.second.map((r) => r.usage.cachedTokens));
    // The second turn reused each session's cache (the prompt and all but the last generated token).
    for (let i = 0; i < openings.length; i++) {
      expect(virtual.second[i].usage.cachedTokens).toBe(model.tokenize(openings[i]).length + virtual.first[i].tokens.length - 1);
    }
    expect(virtual.stats.resident).toBe(2);
    expect(virtual.stats.saved).toBeGreaterThan(0);
  }, 120_000);

  it('past cacheRamBytes the oldest caches are dropped: the same text, decoded again', async () => {
    const resident = await twoTurns({ sequences: openings.length });
    const none = await twoTurns({ sequences: 2, cacheRamBytes: 0 });
    expect(none.second.map((r) => r.text)).toEqual(resident.second.map((r) => r.text));
    // In this order every session lost its sequence before its second turn, and nothing was kept.
    expect(none.second.map((r) => r.usage.cachedTokens)).toEqual(openings.map(() => 0));
    expect(none.stats.saved).toBe(0);
  }, 120_000);

  it('generations that find every sequence busy wait their turn, and give the same output as alone', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const alone = [];
    for (const o of openings.slice(0, 4)) {
      using s = ctx.createSession();
      alone.push((await s.complete(o, { maxTokens: 12, ...greedy })).text);
    }
    const sessions = openings.slice(0, 4).map(() => ctx.createSession());
    const together = await Promise.all(sessions.map((s, i) => s.complete(openings[i], { maxTokens: 12, ...greedy })));
    expect(together.map((r) => r.text)).toEqual(alone);
    // Streaming works the same for one that waited.
    const a = ctx.createSession();
    const b = ctx.createSession();
    const ga = a.generate(openings[0], { maxTokens: 12, ...greedy });
    const gb = b.generate(openings[1], { maxTokens: 12, ...greedy });
    let streamed = '';
    for await (const c of gb) streamed += c.text;
    expect(streamed).toBe(alone[1]);
    expect((await ga.result).text).toBe(alone[0]);
  }, 120_000);

  it('a generation aborted while it waits ends at once as aborted, without touching its cache', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const busy = ctx.createSession();
    const waiting = ctx.createSession();
    await waiting.complete(openings[2], { maxTokens: 4, ...greedy });
    const held = Array.from(waiting.tokens);
    const long = busy.generate(openings[0], { maxTokens: 200, ...greedy });
    const controller = new AbortController();
    const queued = waiting.generate(openings[2] + ' and', { maxTokens: 4, ...greedy, signal: controller.signal });
    expect(waiting.busy).toBe(true);
    controller.abort();
    const r = await queued.result;
    expect(r.stopReason).toBe('abort');
    expect(r.usage.completionTokens).toBe(0);
    expect(Array.from(waiting.tokens)).toEqual(held);
    long.abort();
    await long.result;
    // Its saved cache is still there.
    const again = await waiting.complete([...held, ...model.tokenize(' and', { addBos: false })], { maxTokens: 4, ...greedy });
    expect(again.usage.cachedTokens).toBe(held.length);
  }, 120_000);

  it('a higher priority goes first among waiting generations', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const busy = ctx.createSession();
    const long = busy.generate(openings[0], { maxTokens: 60, ...greedy });
    const order: string[] = [];
    const low = ctx.createSession().complete(openings[1], { maxTokens: 2, ...greedy, priority: 0 }).then(() => order.push('low'));
    const high = ctx.createSession().complete(openings[2], { maxTokens: 2, ...greedy, priority: 5 }).then(() => order.push('high'));
    await Promise.all([long.result, low, high]);
    expect(order).toEqual(['high', 'low']);
  }, 120_000);

  it('chats, forks, saves and loads work for sessions that hold no sequence', async () => {
    const dir = join(fixtures, 'virtual-sessions');
    mkdirSync(dir, { recursive: true });
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    // The README's first snippets on the default context: a session, then chats.
    using s = ctx.createSession();
    const chats = [ctx.createChat(), ctx.createChat(), ctx.createChat()];
    for (const c of chats) expect((await c.send('Hello', { maxTokens: 4, ...greedy }).result).content).toBeTypeOf('string');
    await s.complete(openings[3], { maxTokens: 6, ...greedy });
    // s holds the only sequence; a chat takes it back for its second turn.
    expect(s.sequence).toBe(0);
    await chats[0].send('Again', { maxTokens: 4, ...greedy }).result;
    expect(s.sequence).toBe(null);
    // A fork of a session in host memory shares its saved cache.
    const f = s.fork();
    expect(Array.from(f.tokens)).toEqual(Array.from(s.tokens));
    const cont = [...s.tokens, ...model.tokenize(' and', { addBos: false })];
    const rf = await f.complete(cont, { maxTokens: 4, ...greedy });
    expect(rf.usage.cachedTokens).toBe(s.tokens.length);
    const rs = await s.complete(cont, { maxTokens: 4, ...greedy });
    expect(rs.text).toBe(rf.text);
    // Saving a session that is not resident writes its saved state; loading it back restores it.
    await chats[1].send('More', { maxTokens: 4, ...greedy }).result;
    expect(s.sequence).toBe(null);
    const file = join(dir, 'virtual.session');
    await s.save(file);
    using t = ctx.createSession();
    await t.load(file);
    expect(Array.from(t.tokens)).toEqual(Array.from(s.tokens));
    const next = [...s.tokens, ...model.tokenize(' the end', { addBos: false })];
    const rt = await t.complete(next, { maxTokens: 4, ...greedy });
    expect(rt.usage.cachedTokens).toBe(s.tokens.length);
    expect(rt.text).toBe((await s.complete(next, { maxTokens: 4, ...greedy })).text);
  }, 120_000);
});

// Found by a hostile review.
describeShared('virtual sessions: beam searches and early ends', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  it('two beam searches that each need most of the sequences run one after the other, not into a deadlock', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 4 });
    const a = ctx.createSession();
    const b = ctx.createSession();
    const alone = await ctx.createSession().complete('The cat', { beams: 2, maxTokens: 8 });
    const [ra, rb] = await Promise.all([a.complete('Once upon a time', { beams: 2, maxTokens: 8 }), b.complete('The cat', { beams: 2, maxTokens: 8 })]);
    expect(ra.text.length).toBeGreaterThan(0);
    expect(rb.text).toBe(alone.text);
    expect(ctx.freeSequences).toBeGreaterThanOrEqual(2);
  }, 60_000);

  it("a beam search whose session is disposed while it waits ends with stopReason 'abort' and uses no sequence", async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 4 });
    const busy = [ctx.createSession(), ctx.createSession()].map((s) => s.generate('The dog', { maxTokens: 100, temperature: 0 }));
    const a = ctx.createSession();
    const search = a.complete('Once upon a time', { beams: 2, maxTokens: 8 });
    await new Promise((r) => setTimeout(r, 5));
    a.dispose();
    // As a generation's: the dispose ends it, before it had a token.
    await expect(search).resolves.toMatchObject({ stopReason: 'abort', tokens: [], beams: [] });
    for (const g of busy) await g.result;
    // The sequences all came back.
    expect(ctx.freeSequences).toBeGreaterThanOrEqual(2);
  }, 60_000);

  // Found by a hostile review: a session disposed while its load() waited for a sequence was later granted
  // one and kept it, so the context never generated again.
  it('a session disposed while its load() waits for a sequence gives nothing back late, and the context goes on', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const path = join(fixtures, 'virtual-sessions-dispose-wait.session');
    const a = ctx.createSession();
    await a.complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    await a.save(path);
    a.dispose();
    for (const op of ['load', 'load at once'] as const) {
      const holder = ctx.createSession();
      const busy = holder.generate('Once', { maxTokens: 60, temperature: 0 });
      const b = ctx.createSession();
      const load = b.load(path);
      if (op === 'load') await new Promise((r) => setTimeout(r, 5));
      b.dispose();
      await expect(load).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
      await busy.result;
      holder.dispose();
      expect(ctx.freeSequences).toBe(1);
      const r = await ctx.createSession().complete('The cat', { maxTokens: 2, temperature: 0 });
      expect(r.usage.completionTokens).toBe(2);
    }
  }, 60_000);

  it('a session disposed right after save() (before it has a sequence) gets none: the sequences stay free', async () => {
    // An empty session's save() takes a sequence after its first await; a dispose() in between used to leave
    // that sequence taken for good, and once all were, every later generation waited forever.
    await using ctx = await model.createContext({ contextSize: 256, sequences: 4 });
    for (let i = 0; i < 6; i++) {
      const s = ctx.createSession();
      const save = s.save(join(fixtures, `virtual-sessions-save-dispose-${i}.session`));
      s.dispose();
      await expect(save).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
      expect(s.sequence).toBeNull();
      expect(ctx.freeSequences).toBe(4);
    }
    // A beam search of 2 needs every sequence (3 besides its own).
    const r = await ctx.createSession().complete('The cat', { maxTokens: 2, temperature: 0, beams: 2 });
    expect(r.tokens).toHaveLength(2);
  }, 60_000);

  it('a generation that ends before it starts reports nothing as cached', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const a = ctx.createSession();
    const b = ctx.createSession();
    const ga = a.generate('Once upon a time', { maxTokens: 30, temperature: 0 });
    const gb = b.generate('The cat sat on the mat', { maxTokens: 5 });
    gb.abort();
    const rb = await gb.result;
    expect(rb.stopReason).toBe('abort');
    expect(rb.usage).toMatchObject({ cachedTokens: 0, completionTokens: 0 });
    await ga.result;
  }, 60_000);

  it('a long chat message that fails after it is tokenized is withdrawn, and the chat goes on', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const chat = ctx.createChat({ contextShift: false });
    await expect(chat.send('cat '.repeat(4200), { maxTokens: 4 }).result).rejects.toMatchObject({ code: 'ERR_CONTEXT_FULL' });
    expect(chat.messages).toEqual([]);
    const r = await chat.send('Hi', { maxTokens: 4, temperature: 0 }).result;
    expect(r.usage.completionTokens).toBe(4);
  }, 60_000);
});
