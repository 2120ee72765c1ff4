import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { LlamaError, loadModel, setLogLevel } from 'llama-addon';
import { describeShared, shared, synthetic, tinySynthetic } from './helpers/models.js';

setLogLevel('error');

describeShared('abort, break and backpressure (stories260k)', () => {
  const open = async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    const ctx = await model.createContext({ contextSize: 2048, sequences: 2 });
    return { model, ctx, [Symbol.asyncDispose]: () => model.dispose() };
  };

  it('abort by signal ends the stream normally with the partial text', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const full = (await s.complete('Once upon a time', { maxTokens: 200, temperature: 0 })).text;
    s.reset();
    const controller = new AbortController();
    const gen = s.generate('Once upon a time', { maxTokens: 200, temperature: 0, signal: controller.signal });
    let streamed = '';
    let n = 0;
    for await (const chunk of gen) {
      streamed += chunk.text;
      if (++n === 5) controller.abort();
    }
    const r = await gen.result;
    expect(r.stopReason).toBe('abort');
    expect(r.text).toBe(streamed);
    expect(full.startsWith(r.text)).toBe(true);
    expect(r.usage.completionTokens).toBeLessThan(200);
    // The session is usable again right away.
    expect((await s.complete('Once upon a time', { maxTokens: 3, temperature: 0 })).stopReason).toBe('maxTokens');
  });

  it('an already-aborted signal generates nothing', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const r = await s.complete('Once upon a time', { signal: AbortSignal.abort() });
    expect(r).toMatchObject({ stopReason: 'abort', text: '' });
  });

  it('break out of the loop stops generation promptly', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 1500, temperature: 0 });
    let n = 0;
    for await (const _ of gen) if (++n === 3) break;
    const r = await gen.result;
    expect(r.stopReason).toBe('abort');
    expect(r.usage.completionTokens).toBeLessThan(100);
  });

  it('a slow consumer holds the generation back (bounded queue)', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    // Unthrottled, this model writes thousands of tokens per second.
    const gen = s.generate('Once upon a time', { maxTokens: 1500, temperature: 0 });
    const it = gen[Symbol.asyncIterator]();
    await it.next();
    await sleep(300);
    await it.return!();
    const r = await gen.result;
    expect(r.stopReason).toBe('abort');
    // At most one queue-full (32 tokens) handed to the iterator plus one more queued natively.
    expect(r.usage.completionTokens).toBeLessThanOrEqual(72);

    // A smaller queue holds it back sooner.
    {
      s.reset();
      const small = s.generate('Once upon a time', { maxTokens: 1500, temperature: 0, queueSize: 4 });
      const it2 = small[Symbol.asyncIterator]();
      await it2.next();
      await sleep(300);
      await it2.return!();
      expect((await small.result).usage.completionTokens).toBeLessThanOrEqual(12);
    }
  });

  it('result resolves when nobody iterates', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 300, temperature: 0 });
    await sleep(100); // the output queue is full by now; reading the result must not deadlock
    const r = await gen.result;
    expect(r.usage.completionTokens).toBeGreaterThan(100);
    // Iterating after the end still yields everything that was produced.
    let text = '';
    for await (const c of gen) text += c.text;
    expect(text).toBe(r.text);
  });

  it('one generation at a time per session', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 50 });
    expect(() => s.generate('Again')).toThrow(expect.objectContaining({ code: 'ERR_BUSY' }));
    expect(() => s.reset()).toThrow(expect.objectContaining({ code: 'ERR_BUSY' }));
    await gen.result;
    await s.complete('Again', { maxTokens: 2 });
  });

  // `break` out of a loop (or abort()) ends the generation on the engine thread a moment later; the next
  // generate() waits for that instead of failing with ERR_BUSY (found by a hostile review: the message said
  // "await it, or abort it", and aborting was not enough). Chats still say ERR_BUSY until the reply ends.
  it('after break or abort(), the next generation waits for the aborted one to end', async () => {
    await using m = await open();
    using s = m.ctx.createSession();
    const first = s.generate('Once upon a time', { maxTokens: 200, temperature: 0 });
    let seen = 0;
    for await (const c of first) {
      seen += c.tokens.length;
      if (seen >= 3) break;
    }
    const next = await s.complete('Once upon a time, in a land', { maxTokens: 4, temperature: 0 });
    expect(next.usage.completionTokens).toBe(4);
    expect((await first.result).stopReason).toBe('abort');
    // The second prompt was planned against what the first left in the cache: the common prefix is reused.
    expect(next.usage.cachedTokens).toBeGreaterThanOrEqual((await first.result).usage.promptTokens);
    const third = s.generate('Again', { maxTokens: 100 });
    third.abort();
    const again = s.generate('And again', { maxTokens: 2 });
    expect(() => s.generate('Too soon')).toThrow(expect.objectContaining({ code: 'ERR_BUSY' }));
    expect((await again.result).usage.completionTokens).toBe(2);
    expect((await third.result).stopReason).toBe('abort');
    // A chat still refuses, with a message that says what to do.
    using chat = m.ctx.createChat({ template: 'chatml' });
    const reply = chat.send('Hi', { maxTokens: 1000 });
    for await (const _ of reply) break;
    expect(() => chat.send('Again')).toThrow(/await its result first/);
    await reply.result;
    expect((await chat.send('Again', { maxTokens: 2 }).result).usage.completionTokens).toBe(2);
  });

  it('disposing the context during generation ends it with abort, and later calls throw ERR_DISPOSED', async () => {
    await using m = await open();
    const s = m.ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 1500, temperature: 0 });
    let n = 0;
    const consumed = (async () => {
      for await (const _ of gen) n++;
    })();
    await sleep(5);
    await m.ctx.dispose();
    await consumed;
    const r = await gen.result;
    expect(r.stopReason).toBe('abort');
    expect(r.usage.completionTokens).toBeLessThan(1500);
    expect(m.ctx.disposed).toBe(true);
    expect(s.disposed).toBe(true);
    expect(() => s.generate('x')).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    expect(() => m.ctx.createSession()).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    await m.ctx.dispose(); // idempotent
  });

  it('disposing the model disposes its contexts, even mid-generation', async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    const ctx = await model.createContext({ contextSize: 2048 });
    const s = ctx.createSession();
    const gen = s.generate('Once upon a time', { maxTokens: 1500, temperature: 0 });
    const result = gen.result;
    await model.dispose();
    expect((await result).stopReason).toMatch(/abort|maxTokens/);
    expect(ctx.disposed).toBe(true);
    // complete() reports errors through its promise rather than throwing.
    const p = s.complete('x');
    expect(p).toBeInstanceOf(Promise);
    await expect(p).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    await expect(ctx.dispose()).resolves.toBeUndefined();
  });

  it('session.dispose frees its sequence for the next session', async () => {
    await using m = await open();
    const a = m.ctx.createSession();
    const b = m.ctx.createSession();
    // More sessions than resident sequences: never an error (they take turns).
    m.ctx.createSession().dispose();
    const gen = a.generate('Once upon a time', { maxTokens: 1000 });
    a.dispose();
    expect((await gen.result).stopReason).toBe('abort');
    const c = m.ctx.createSession();
    expect(c.sequence).toBe(a.sequence);
    expect(c.tokens.length).toBe(0);
    const r = await c.complete('Once upon a time', { maxTokens: 5, temperature: 0 });
    expect(r.usage.cachedTokens).toBe(0);
    b.dispose();
    c.dispose();
  });
});

describe('the event loop stays free during generation', () => {
  it('p99 event-loop delay under 20 ms while a model generates', async () => {
    // Big enough that each token takes real compute (~25M parameters).
    const path = await synthetic('eventloop-q8', { embeddingLength: 512, layers: 6, heads: 8, headsKv: 4, feedForwardLength: 1536, type: 'q8_0', seed: 5 });
    await using model = await loadModel(path);
    await using ctx = await model.createContext({ contextSize: 512 });
    using s = ctx.createSession();
    const histogram = monitorEventLoopDelay({ resolution: 1 });
    histogram.enable();
    let tokens = 0;
    const eos = model.vocab.eos!;
    for await (const c of s.generate('Once upon a time', { maxTokens: 400, temperature: 0.8, seed: 1, logitBias: { [eos]: -Infinity } })) {
      tokens += c.tokens.length;
    }
    histogram.disable();
    expect(tokens).toBe(400);
    expect(histogram.count).toBeGreaterThan(0);
    expect(histogram.percentile(99) / 1e6).toBeLessThan(20);
  });
});

describe('errors keep the process running', () => {
  it('ERR_CONTEXT_FULL for a prompt longer than the context', async () => {
    await using model = await loadModel(await tinySynthetic());
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    const long = 'word '.repeat(400);
    let err: unknown;
    try {
      s.generate(long);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LlamaError);
    expect(err).toMatchObject({ code: 'ERR_CONTEXT_FULL', message: expect.stringContaining('256') });
    // The caller's stack, not the library's internals.
    expect((err as Error).stack).toContain('lifecycle.test.ts');
    await expect(s.complete(long)).rejects.toMatchObject({ code: 'ERR_CONTEXT_FULL' });
    expect((await s.complete('word', { maxTokens: 2 })).usage.completionTokens).toBe(2);
  });

  it('ERR_INVALID_ARGUMENT names the option and what was expected', async () => {
    await using model = await loadModel(await tinySynthetic());
    await expect(model.createContext({ contextSize: -5 })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: 'Invalid option "contextSize": expected an integer from 1 to 16777216, received -5',
    });
    await expect(model.createContext({ sequences: 0 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    // A step holds a token of every sequence: a smaller batch was llama.cpp's assertion, as ERR_CONTEXT_CREATE.
    for (const [sequences, batchSize] of [[2, 1], [4, 3], [16, 8]]) {
      await expect(model.createContext({ contextSize: 64, sequences, batchSize })).rejects.toMatchObject({
        code: 'ERR_INVALID_ARGUMENT',
        message: `Invalid option "batchSize": expected an integer of at least sequences (${sequences}), received ${batchSize}`,
      });
    }
    const equal = await model.createContext({ contextSize: 64, sequences: 4, batchSize: 4 });
    await equal.dispose();
    await expect(model.createContext({ flashAttention: 'yes' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(model.createContext({ contextSise: 5 } as never)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringContaining('contextSise'),
    });
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    const bad: Array<[object, string]> = [
      [{ temperature: 'hot' }, 'temperature'],
      [{ temperature: -1 }, 'temperature'],
      [{ maxTokens: 0 }, 'maxTokens'],
      [{ maxTokens: 1.5 }, 'maxTokens'],
      [{ topP: 2 }, 'topP'],
      [{ seed: -1 }, 'seed'],
      [{ stop: [''] }, 'stop'],
      [{ stop: 5 }, 'stop'],
      [{ logitBias: { 99999999: 1 } }, 'logitBias'],
      [{ logitBias: { 5: Infinity } }, 'logitBias'],
      [{ signal: 'abort' }, 'signal'],
      [{ maxTokenz: 5 }, 'maxTokenz'],
    ];
    for (const [options, name] of bad) {
      expect(() => s.generate('Hi', options as never), name).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining(name) }));
    }
    expect(() => s.generate(42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => s.generate(new Int32Array([1, 99999999]))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => s.generate(new Int32Array(0))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => model.tokenize(5 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await expect(loadModel('')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(loadModel(model.path, { gpuLayers: -2 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('gpuLayers') });
    await expect(loadModel(model.path, { onProgress: 5 } as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    // Still working.
    expect((await s.complete('Hi', { maxTokens: 2 })).usage.completionTokens).toBe(2);
  });

  it('sessions are never scarce: more than the resident sequences are created, and generate in turn', async () => {
    await using model = await loadModel(await tinySynthetic());
    await using ctx = await model.createContext({ contextSize: 256, sequences: 2 });
    const sessions = Array.from({ length: 5 }, () => ctx.createSession());
    // Sessions get a sequence when they generate, not when they are created.
    expect(ctx.freeSequences).toBe(2);
    const results = await Promise.all(sessions.map((s) => s.complete('Hi', { maxTokens: 2, temperature: 0 })));
    expect(results.map((r) => r.usage.completionTokens)).toEqual([2, 2, 2, 2, 2]);
    expect(sessions.filter((s) => s.sequence !== null)).toHaveLength(2);
  });

  it('uses the fastest thread count by default: the physical cores', async () => {
    const { getSystemInfo } = await import('llama-addon');
    await using model = await loadModel(await tinySynthetic());
    await using ctx = await model.createContext({ contextSize: 256 });
    expect(ctx.threads).toBe(getSystemInfo().defaultThreads);
    expect(getSystemInfo().defaultThreads).toBe(getSystemInfo().physicalCores);
    await using two = await model.createContext({ contextSize: 256, threads: 1 });
    expect(two.threads).toBe(1);
  });
});
