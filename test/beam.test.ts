import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, setLogLevel, type LlamaContext, type LlamaModel } from 'llama-addon';
import { describeShared, shared } from './helpers/models.js';

setLogLevel('error');

const PROMPT = 'Once upon a time';
const LENGTH = 3;

describeShared('beam search (stories260k, checked against exhaustive search)', () => {
  let model: LlamaModel;
  let ctx: LlamaContext;
  let allowed: number[];
  let bias: Record<number, number>;
  // log P(token | prompt + prefix), over the allowed tokens only, for every prefix shorter than LENGTH.
  const table = new Map<string, Map<number, number>>();

  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
    ctx = await model.createContext({ contextSize: 256, sequences: 34 });
    allowed = [...new Set([' there', ' a', ' girl', ' dog'].map((w) => model.tokenize(w, { addBos: false })[0]))];
    bias = {};
    for (let t = 0; t < model.vocab.size; t++) if (!allowed.includes(t)) bias[t] = -Infinity;
    const prompt = Array.from(model.tokenize(PROMPT));
    using s = ctx.createSession({ sharePrefix: false });
    const prefixes: number[][] = [[]];
    for (let len = 0; len < LENGTH; len++) {
      for (const p of prefixes.filter((x) => x.length === len)) {
        const r = await s.complete([...prompt, ...p], { maxTokens: 1, temperature: 0, logprobs: model.vocab.size });
        const lp = new Map(r.logprobs![0].top.map((a) => [a.token, a.logprob]));
        const z = Math.log(allowed.reduce((sum, t) => sum + Math.exp(lp.get(t)!), 0));
        table.set(p.join(','), new Map(allowed.map((t) => [t, lp.get(t)! - z])));
        if (len + 1 < LENGTH) for (const t of allowed) prefixes.push([...p, t]);
      }
    }
  });
  afterAll(() => model.dispose());

  const logprobOf = (seq: number[]) => seq.reduce((sum, t, i) => sum + table.get(seq.slice(0, i).join(','))!.get(t)!, 0);

  function referenceBeams(k: number): number[][] {
    let beams: Array<{ seq: number[]; lp: number }> = [{ seq: [], lp: 0 }];
    for (let step = 0; step < LENGTH; step++) {
      const cands = beams.flatMap((b) =>
        [...table.get(b.seq.join(','))!.entries()]
          .sort((x, y) => y[1] - x[1] || x[0] - y[0])
          .slice(0, 2 * k)
          .map(([t, lp]) => ({ seq: [...b.seq, t], lp: b.lp + lp })),
      );
      cands.sort((x, y) => y.lp - x.lp);
      beams = cands.slice(0, k);
    }
    return beams.map((b) => b.seq);
  }

  it('finds the most likely sequence, as exhaustive search does, when the beams hold every branch', async () => {
    const all: number[][] = [];
    const walk = (seq: number[]) => (seq.length === LENGTH ? all.push(seq) : allowed.forEach((t) => walk([...seq, t])));
    walk([]);
    all.sort((a, b) => logprobOf(b) - logprobOf(a));
    const k = allowed.length ** (LENGTH - 1);
    using s = ctx.createSession();
    const r = await s.complete(PROMPT, { beams: k, maxTokens: LENGTH, logitBias: bias, lengthPenalty: 0 });
    expect(r.tokens).toEqual(all[0]);
    expect(r.beams!.map((b) => b.tokens)).toEqual(all.slice(0, k));
    for (const b of r.beams!) {
      expect(b.logprob).toBeCloseTo(logprobOf(b.tokens), 3);
      expect(b.finished).toBe(false);
      expect(b.text).toBe(model.detokenize(b.tokens));
    }
    expect(r.text).toBe(r.beams![0].text);
  });

  it('with few beams, keeps exactly the beams a reference implementation keeps', async () => {
    for (const k of [1, 2, 3]) {
      using s = ctx.createSession();
      const r = await s.complete(PROMPT, { beams: k, maxTokens: LENGTH, logitBias: bias, lengthPenalty: 0 });
      expect(r.beams!.map((b) => b.tokens), `k=${k}`).toEqual(referenceBeams(k));
    }
    // One beam is greedy decoding.
    using g = ctx.createSession();
    const greedy = await g.complete(PROMPT, { maxTokens: LENGTH, temperature: 0, logitBias: bias });
    using b = ctx.createSession();
    expect((await b.complete(PROMPT, { beams: 1, maxTokens: LENGTH, logitBias: bias })).tokens).toEqual(greedy.tokens);
  });

  it('ranks by length-penalized score, ends beams at the end token, and leaves the session and context usable', async () => {
    using s = ctx.createSession();
    const r = await s.complete(PROMPT, { beams: 3, maxTokens: 40, lengthPenalty: 1 });
    expect(r.beams!.length).toBeGreaterThan(0);
    for (let i = 1; i < r.beams!.length; i++) expect(r.beams![i].score).toBeLessThanOrEqual(r.beams![i - 1].score);
    for (const b of r.beams!) {
      const length = b.tokens.length + (b.finished ? 1 : 0);
      expect(b.score).toBeCloseTo(b.logprob / length, 6);
    }
    // The session holds the prompt afterwards, and the borrowed sequences are free again.
    expect(Array.from(s.tokens)).toEqual(Array.from(model.tokenize(PROMPT)));
    expect(ctx.freeSequences).toBe(33);
    const next = await s.complete(PROMPT + ' there', { maxTokens: 5, temperature: 0 });
    expect(next.usage.cachedTokens).toBe(model.tokenize(PROMPT).length);
    await expect(s.complete(PROMPT, { beams: 40 })).rejects.toMatchObject({ code: 'ERR_NO_SEQUENCE' });
    await expect(s.complete(PROMPT, { beams: 2, topK: 3 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describeShared('beam search: signal and dispose (stories260k)', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());
  const eog = () => ({ [model.vocab.eos ?? 2]: -Infinity }); // every search runs to maxTokens unless aborted (2,000 tokens: seconds)
  const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('an abort mid-search returns the beams found so far: those of a search as long', async () => {
    await using ctx = await model.createContext({ contextSize: 2048, sequences: 9 });
    // Aborts at several moments: each returns the beams of a search whose maxTokens is their length.
    let compared = 0;
    for (const delay of [5, 20, 60]) {
      using s = ctx.createSession();
      const ac = new AbortController();
      const pending = s.complete(PROMPT, { beams: 4, maxTokens: 2000, logitBias: eog(), signal: ac.signal });
      await settle(delay);
      const t0 = performance.now();
      ac.abort();
      const r = await pending;
      expect(performance.now() - t0).toBeLessThan(500);
      expect(r.stopReason).toBe('abort');
      expect(r.tokens.length).toBeLessThan(2000);
      expect(r.usage.completionTokens).toBe(r.tokens.length);
      // The session holds the prompt, the borrowed sequences are free again, and a search as long finds the
      // same beams. (Run in the same session, so in the same sequences: other sequences can split the steps
      // into other passes, whose rounding can swap near-tied beams. Its first step's logits come from the
      // cached prompt's last token decoded alone, so log-probabilities agree to rounding.)
      // (Aborted before its prompt was decoded, the session holds the part decoded: here none.)
      const prompt = Array.from(model.tokenize(PROMPT));
      expect(Array.from(s.tokens)).toEqual(r.tokens.length > 0 ? prompt : prompt.slice(0, s.tokens.length));
      expect(ctx.freeSequences).toBe(8);
      const ref = await s.complete(PROMPT, { beams: 4, maxTokens: Math.max(1, r.tokens.length), logitBias: eog() });
      expect(ref.stopReason).toBe('maxTokens');
      if (r.tokens.length === 0) continue;
      expect(r.beams!.map((b) => b.tokens)).toEqual(ref.beams!.map((b) => b.tokens));
      r.beams!.forEach((b, i) => expect(b.logprob).toBeCloseTo(ref.beams![i]!.logprob, 5));
      compared++;
    }
    expect(compared).toBeGreaterThan(0);
  });

  it('an aborted signal returns at once; session.dispose() ends a search; an abort ends a wait for sequences', async () => {
    await using ctx = await model.createContext({ contextSize: 2048, sequences: 8 });
    using s = ctx.createSession();
    const before = await s.complete(PROMPT, { maxTokens: 1, temperature: 0 });
    expect(before.stopReason).not.toBe('abort');
    const r = await s.complete(PROMPT + ' there', { beams: 3, maxTokens: 10, signal: AbortSignal.abort() });
    expect(r).toMatchObject({ stopReason: 'abort', text: '', tokens: [], beams: [] });
    // Nothing ran: the session's cache is as it was.
    expect((await s.complete(PROMPT + ' there', { maxTokens: 1, temperature: 0 })).usage.cachedTokens).toBe(model.tokenize(PROMPT).length);

    const doomed = ctx.createSession();
    const running = doomed.complete(PROMPT, { beams: 4, maxTokens: 2000, logitBias: eog() });
    await settle(20);
    const t0 = performance.now();
    doomed.dispose();
    const d = await running;
    expect(performance.now() - t0).toBeLessThan(500);
    expect(d.stopReason).toBe('abort');
    expect(d.tokens.length).toBeLessThan(2000);
    // Its sequences are free again: a search that needs all of them runs.
    using other = ctx.createSession();
    expect((await other.complete(PROMPT, { beams: 3, maxTokens: 3 })).stopReason).not.toBe('abort');

    // A search that waits for sequences (a busy session holds one of the 8 it needs) ends at its abort.
    const busy = ctx.createSession().generate(PROMPT, { maxTokens: 400, logitBias: eog(), temperature: 0 });
    const waitAbort = new AbortController();
    using waiting = ctx.createSession();
    const waited = waiting.complete(PROMPT, { beams: 4, maxTokens: 5, signal: waitAbort.signal });
    await settle(20);
    waitAbort.abort();
    expect(await waited).toMatchObject({ stopReason: 'abort', tokens: [] });
    busy.abort();
    await busy.result;

    await expect(s.complete(PROMPT, { beams: 2, signal: 'now' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

// Found by a hostile review: with one KV cache for all sequences (kvUnified), a search failed with
// ERR_INVALID_STATE where an idle session held cells (a generation made them free), or where its beams
// outgrew the cache; and a search that filled its sequence said 'maxTokens'.
describeShared('beam search at the end of the KV cache (stories260k)', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());
  const tokens = (n: number) => [1, ...Array.from({ length: n - 1 }, (_, i) => 300 + (i % 150))];
  const eogBan = () => ({ [model.vocab.eos ?? 2]: -Infinity });

  it('makes room from idle sessions, and ends with contextFull when the cache or the sequence is full', async () => {
    await using shared = await model.createContext({ contextSize: 256, sequences: 8, threads: 1, kvUnified: true });
    using idle = shared.createSession();
    await idle.complete(tokens(150), { maxTokens: 2, temperature: 0 });
    using s = shared.createSession();
    // 200 prompt tokens beside the idle session's 151 cells of 256: it gives them up, as for a generation.
    const r = await s.complete(tokens(200), { beams: 1, maxTokens: 8 });
    expect(r.stopReason).toBe('maxTokens');
    expect(r.tokens).toHaveLength(8);
    expect(shared.savedCacheBytes).toBeGreaterThan(0);
    // Four beams outgrow the 56 cells left after the prompt: the beams found when the cache filled.
    const full = await s.complete(tokens(200), { beams: 4, maxTokens: 100 });
    expect(full.stopReason).toBe('contextFull');
    expect(full.tokens.length).toBeGreaterThan(0);
    expect(full.tokens.length).toBeLessThan(56);
    // Everything is usable afterwards: the idle session comes back, and the searching one goes on.
    expect((await idle.complete(tokens(150), { maxTokens: 2, temperature: 0 })).usage.cachedTokens).toBe(149);
    expect((await s.complete(tokens(200), { maxTokens: 4, temperature: 0 })).tokens).toHaveLength(4);

    // A prompt that leaves no cell for the first step's beams: no beam at all (it was one empty beam).
    using tight = shared.createSession();
    const none = await tight.complete(tokens(255), { beams: 4, maxTokens: 10 });
    expect(none).toMatchObject({ stopReason: 'contextFull', tokens: [], beams: [] });

    // Each sequence with cells of its own: the sequence's end.
    await using own = await model.createContext({ contextSize: 256, sequences: 8, threads: 1 });
    const end = await own.createSession().complete(tokens(200), { beams: 4, maxTokens: 100 });
    expect(end.stopReason).toBe('contextFull');
    expect(end.tokens).toHaveLength(56);
  });

  // Found by a hostile review: a session whose cache waited in host memory, with no room for it beside a
  // busy session's cells, was given no sequence and the search failed with ERR_NATIVE. It waits now.
  it('waits, as a generation does, when its saved cache cannot come back beside busy sessions', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 8, threads: 1, kvUnified: true });
    using a = ctx.createSession();
    await a.complete(tokens(150), { maxTokens: 2, temperature: 0 });
    using b = ctx.createSession();
    // B's prompt takes A's cells (A's cache moves to host memory), and B goes on generating.
    const busy = b.generate(tokens(180), { maxTokens: 40, temperature: 0, logitBias: eogBan() });
    await new Promise((r) => setTimeout(r, 50));
    const search = a.complete(tokens(150), { beams: 2, maxTokens: 5 });
    expect((await busy.result).stopReason).toBe('maxTokens');
    const r = await search;
    expect(r.stopReason).toBe('maxTokens');
    expect(r.tokens).toHaveLength(5);
    expect(ctx.freeSequences).toBeGreaterThanOrEqual(6);
  });
});
