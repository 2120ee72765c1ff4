// Long texts are tokenized off the JS thread: model.tokenizeAsync(), and generations and chats whose
// prompt is long (lib/base/limits.ts ASYNC_TOKENIZE_CHARS); chats with long messages, tools or schemas are
// rendered off it too. Same tokens, same errors, same results.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limits, loadModel, setLogLevel, type JsonSchema, type LlamaModel } from 'llama-addon';
import { ASYNC_TOKENIZE_CHARS } from '../lib/base/limits.js';
import { rejectsWith } from './helpers/errors.js';
import { describeShared, modelWithTemplate, repoRoot, shared, synthetic } from './helpers/models.js';
import { watchEventLoop } from './helpers/event-loop.js';

setLogLevel('error');

const words = 'Once upon a time there was a little girl named Lily who loved to play in the big green park. ';

describeShared('tokenizing off the JS thread', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  it('tokenizeAsync gives the tokens tokenize gives, and the same errors', async () => {
    const texts = ['', 'Hello', words.repeat(3), '日本語 😀 é', '<s> special', '\u0000\n\t'];
    for (const t of texts) {
      for (const options of [{}, { special: true }, { addBos: false }]) {
        expect(Array.from(await model.tokenizeAsync(t, options)), JSON.stringify([t, options])).toEqual(Array.from(model.tokenize(t, options)));
      }
    }
    await using small = await loadModel(shared('tinystories-656k-q8_0.gguf'));
    const e = await rejectsWith(small.tokenizeAsync('café'), 'ERR_TOKENIZE');
    expect(e.message).toContain('U+00E9');
    await rejectsWith(model.tokenizeAsync('a'.repeat(limits.tokenizeBytes + 1)), 'ERR_LIMIT_EXCEEDED');
    await rejectsWith(model.tokenizeAsync(42 as never), 'ERR_INVALID_ARGUMENT');
  });

  it('a long prompt does not hold the JS thread: the same result as its tokens, errors through the promise', async () => {
    // A small context with context shift: both prompts are cut the same way to fit (and decode fast).
    await using ctx = await model.createContext({ contextSize: 512, sequences: 1 });
    const text = words.repeat(Math.ceil((ASYNC_TOKENIZE_CHARS + 100) / words.length));
    const tokens = model.tokenize(text);
    using a = ctx.createSession({ contextShift: 'auto' });
    using b = ctx.createSession({ contextShift: 'auto' });
    const fromText = a.generate(text, { maxTokens: 8, temperature: 0 });
    // The session is busy from the call on, as for a short prompt.
    expect(a.busy).toBe(true);
    const r1 = await fromText.result;
    const r2 = await b.complete(tokens, { maxTokens: 8, temperature: 0 });
    expect(r1.text).toBe(r2.text);
    expect(r1.usage.promptTokens).toBe(r2.usage.promptTokens);
    expect(r1.tokens).toEqual(r2.tokens);
    // Errors found after tokenizing arrive through the result; the session is usable afterwards.
    await using tiny = await model.createContext({ contextSize: 256, sequences: 1 });
    using c = tiny.createSession();
    await rejectsWith(c.complete(text, { maxTokens: 4 }), 'ERR_CONTEXT_FULL');
    expect(c.busy).toBe(false);
    expect((await c.complete('Once', { maxTokens: 2, temperature: 0 })).usage.completionTokens).toBe(2);
    // The call returns before the text is tokenized: a text that takes a while on this thread returns at once.
    const big = words.repeat(Math.ceil((1 << 20) / words.length));
    let t0 = performance.now();
    model.tokenize(big);
    const sync = performance.now() - t0;
    t0 = performance.now();
    const g = c.generate(big, { maxTokens: 2 });
    const call = performance.now() - t0;
    expect(call).toBeLessThan(sync / 4);
    await rejectsWith(g.result, 'ERR_CONTEXT_FULL');
    // Aborted while it tokenizes: ends as aborted, without starting.
    const aborted = c.generate(text, { maxTokens: 4 });
    aborted.abort();
    const ra = await aborted.result;
    expect(ra.stopReason).toBe('abort');
    expect(ra.usage.completionTokens).toBe(0);
  }, 120_000);
});

describe('chats rendered off the JS thread', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    // (a synthetic model with a large vocabulary: long prompts decode in a moment)
    model = await loadModel(await synthetic('phi3-chat', { vocab: 'phi-3', embeddingLength: 32, layers: 1, heads: 2, headsKv: 1, feedForwardLength: 64, type: 'f16', seed: 3 }));
  });
  afterAll(() => model.dispose());
  // A template that takes a while to render a long conversation (22,500 loop steps, within the limits).
  const slow = "{% if messages[-1].content | length > 10000 %}{% for i in range(150) %}{% for j in range(150) %}{% endfor %}{% endfor %}{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:";
  const long = words.repeat(Math.ceil((ASYNC_TOKENIZE_CHARS + 100) / words.length));

  it('a long conversation is rendered on a worker: the call returns at once, the same prompt and reply', async () => {
    // A fixed thread count: the reply is compared with another generation's, and with thousands of cached
    // tokens llama.cpp's CPU flash attention sums in a different order at another count (README, Threads).
    await using ctx = await model.createContext({ contextSize: 8192, sequences: 2, threads: 2 });
    const messages = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: long }];
    let t = performance.now();
    const rendered = model.applyChatTemplate(messages, { template: slow });
    const syncMs = performance.now() - t;
    using chat = ctx.createChat({ template: slow, messages: messages.slice(0, 1) });
    const loop = watchEventLoop();
    t = performance.now();
    const gen = chat.send(long, { maxTokens: 6, temperature: 0 });
    const callMs = performance.now() - t;
    expect(chat.session.busy).toBe(true);
    const r = await gen.result;
    const longest = loop.stop();
    expect(callMs, `send() took ${callMs.toFixed(0)} ms; the render takes ${syncMs.toFixed(0)} ms on the thread`).toBeLessThan(syncMs / 2);
    expect(longest, `the event loop was held ${longest.toFixed(0)} ms; the render takes ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
    // The prompt is the rendered conversation, and the reply the one its tokens give.
    const tokens = Array.from(model.tokenize(rendered));
    expect(r.usage.promptTokens).toBe(tokens.length);
    using s = ctx.createSession();
    expect(r.content).toBe((await s.complete(tokens, { maxTokens: 6, temperature: 0 })).text);
    expect(chat.messages.map((m) => m.role)).toEqual(['system', 'user', 'assistant']);
  }, 120_000);

  it("errors of a render on a worker come through the result, with the caller's stack; the chat is unchanged", async () => {
    await using ctx = await model.createContext({ contextSize: 8192, sequences: 1 });
    using chat = ctx.createChat({ template: "{% for m in messages %}{% if m.content | length > 20000 %}{{ raise_exception('too long') }}{% endif %}{{ m.content }}{% endfor %}" });
    const gen = chat.send(long + long);
    const e = await rejectsWith(gen.result, 'ERR_INVALID_TEMPLATE');
    expect(e.message).toContain('too long');
    expect(e.stack).toContain('async-tokenize.test.ts');
    expect(chat.messages).toEqual([]);
    expect(chat.session.busy).toBe(false);
    // A template over a limit while rendering: ERR_LIMIT_EXCEEDED, the same way.
    using loop = ctx.createChat({ template: '{% if messages[0].content | length > 10000 %}{% for i in range(20000) %}{% endfor %}{% endif %}{{ messages[0].content }}' });
    await rejectsWith(loop.send(long).result, 'ERR_LIMIT_EXCEEDED');
    expect(loop.messages).toEqual([]);
    // The chat goes on with a short message.
    const ok = await chat.send('Once', { maxTokens: 2, temperature: 0 }).result;
    expect(ok.usage.completionTokens).toBe(2);
    expect(chat.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
  }, 120_000);

  // A model's template is code that comes with its file: it is parsed and probed when the model loads, and
  // every conversation, however short, is rendered off the JS thread.
  it("a slow template from a model's file never holds the event loop: not at load, createChat or send", async () => {
    const everyRender = '{% for i in range(60) %}{% for j in range(60) %}{% endfor %}{% endfor %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:';
    const path = await modelWithTemplate('slow-template', everyRender);
    const loop = watchEventLoop();
    await using slow = await loadModel(path);
    await using ctx = await slow.createContext({ contextSize: 256, sequences: 1 });
    using chat = ctx.createChat();
    const r = await chat.send('Hi', { maxTokens: 2, temperature: 0 }).result;
    const longest = loop.stop();
    // The same render on the JS thread, for scale.
    const t = performance.now();
    const rendered = slow.applyChatTemplate([{ role: 'user', content: 'Hi' }]);
    const syncMs = performance.now() - t;
    expect(rendered).toBe('user: Hi\nassistant:');
    expect(r.usage.promptTokens).toBe(slow.tokenize(rendered).length);
    expect(longest, `the event loop was held ${longest.toFixed(0)} ms; one render takes ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
  }, 120_000);

  it("createChat() parses a caller's template off the JS thread (llama.cpp probes it with renders)", async () => {
    const slowAlways = '{% for i in range(70) %}{% for j in range(70) %}{% endfor %}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}';
    // On the JS thread, for comparison (another source, so that the chat's is not cached by it): the first
    // call parses and probes the template and renders it, the second only renders it.
    const other = `${slowAlways}{# on the thread #}`;
    let t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: 'Hi' }], { template: other });
    const firstMs = performance.now() - t;
    t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: 'Hi' }], { template: other });
    const syncMs = firstMs - (performance.now() - t);
    expect(syncMs, 'parsing and probing the template takes a while').toBeGreaterThan(50);
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    const loop = watchEventLoop();
    t = performance.now();
    using chat = ctx.createChat({ template: slowAlways });
    const callMs = performance.now() - t;
    expect(chat.template).toBe(slowAlways);
    const r = await chat.send('Hi', { maxTokens: 2, temperature: 0 }).result;
    const longest = loop.stop();
    expect(callMs, `createChat() took ${callMs.toFixed(0)} ms; parsing and probing on the thread take ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
    expect(longest, `the event loop was held ${longest.toFixed(0)} ms; parsing takes ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
    expect(r.usage.completionTokens).toBe(2);
    expect(chat.template).toBe(slowAlways);
  }, 60_000);

  it('an abort or a disposal while a render is pending ends the reply at once, not when the render ends', async () => {
    // Slow on every render (about a second here), within the limits.
    const slowAlways = '{% for i in range(70) %}{% for j in range(70) %}{% endfor %}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}';
    let t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: 'Hi' }], { template: slowAlways });
    const syncMs = performance.now() - t;
    await using ctx = await model.createContext({ contextSize: 256, sequences: 1 });
    using chat = ctx.createChat({ template: slowAlways });
    const gen = chat.send('Hi', { maxTokens: 2 });
    await new Promise((r) => setTimeout(r, 20));
    t = performance.now();
    gen.abort();
    const r = await gen.result;
    const abortMs = performance.now() - t;
    expect(r.stopReason).toBe('abort');
    expect(abortMs, `the abort took ${abortMs.toFixed(0)} ms; a render takes ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
    expect(chat.messages).toEqual([]);
    expect(chat.session.busy).toBe(false);
    // Disposing the chat does the same.
    const again = chat.send('Hi', { maxTokens: 2 });
    await new Promise((r) => setTimeout(r, 20));
    t = performance.now();
    chat.dispose();
    expect((await again.result).stopReason).toBe('abort');
    expect(performance.now() - t).toBeLessThan(syncMs / 2);
  }, 120_000);

  it("loadModel's signal also covers the check of the model's own template", async () => {
    const slowProbe = '{% for i in range(110) %}{% for j in range(110) %}{% endfor %}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}';
    const path = await modelWithTemplate('slow-probe', slowProbe);
    const ac = new AbortController();
    const loading = loadModel(path, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(loading, 'ERR_ABORTED');
  }, 120_000);

  // A call that start() refuses (busy, a bad option) must leave no render running behind it: its failure
  // would be an unhandled rejection, which ends a Node.js process (it ended the server).
  it('a long send refused at the call leaves nothing behind: no unhandled rejection, the chat unchanged', async () => {
    await using ctx = await model.createContext({ contextSize: 8192, sequences: 2 });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      // A template that fails only for long messages, and an option that start() refuses.
      using chat = ctx.createChat({ template: "{% for m in messages %}{% if m.content | length > 10000 %}{{ raise_exception('long') }}{% endif %}{{ m.content }}{% endfor %}" });
      expect(() => chat.send(long, { temperature: 'hot' as unknown as number })).toThrow(/temperature/);
      // Busy: a second long send with a large invalid schema while the first runs.
      using other = ctx.createChat({ template: "{% for m in messages %}{{ m.content }}{% endfor %}" });
      const first = other.send('Once', { maxTokens: 40 });
      const bad = { type: 'object', properties: Object.fromEntries(Array.from({ length: 800 }, (_, i) => [`f${i}`, { type: 'strng' }])) };
      expect(JSON.stringify(bad).length).toBeGreaterThan(16384);
      expect(() => other.send(long, { jsonSchema: bad as never })).toThrow(/while the chat generates a reply/);
      await first.result;
      await new Promise((r) => setTimeout(r, 300));
      expect(unhandled).toEqual([]);
      expect(chat.messages).toEqual([]);
      expect(other.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  }, 120_000);

  it('a short render is not held up by a long one of the same template on a worker', async () => {
    await using ctx = await model.createContext({ contextSize: 8192, sequences: 2 });
    let t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: long }], { template: slow });
    const syncMs = performance.now() - t;
    using chat = ctx.createChat({ template: slow });
    const gen = chat.send(long, { maxTokens: 2 });
    t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: 'Hi' }], { template: slow });
    const shortMs = performance.now() - t;
    await gen.result;
    expect(shortMs, `a short render took ${shortMs.toFixed(0)} ms beside a long one of ${syncMs.toFixed(0)} ms`).toBeLessThan(syncMs / 2);
  }, 120_000);

  // The addon's work runs on threads of its own: long renders do not hold libuv's pool (four threads by
  // default), which the application needs for files, DNS and crypto.
  it("work off the JS thread leaves libuv's pool to the application", async () => {
    const { readFile } = await import('node:fs/promises');
    await using ctx = await model.createContext({ contextSize: 8192, sequences: 4 });
    let t = performance.now();
    model.applyChatTemplate([{ role: 'user', content: long }], { template: slow });
    const renderMs = performance.now() - t;
    const chats = Array.from({ length: 4 }, () => ctx.createChat({ template: slow }));
    const gens = chats.map((c) => c.send(long, { maxTokens: 1 }));
    t = performance.now();
    await readFile(join(repoRoot, 'package.json'));
    const readMs = performance.now() - t;
    await Promise.all(gens.map((g) => g.result));
    for (const c of chats) c.dispose();
    expect(readMs, `a file read took ${readMs.toFixed(0)} ms beside four renders of ${renderMs.toFixed(0)} ms`).toBeLessThan(renderMs / 2);
  }, 120_000);

  it('disposing the model while a chat renders on a worker ends the reply as aborted', async () => {
    const own = await loadModel(await synthetic('phi3-chat', { vocab: 'phi-3', embeddingLength: 32, layers: 1, heads: 2, headsKv: 1, feedForwardLength: 64, type: 'f16', seed: 3 }));
    const ctx = await own.createContext({ contextSize: 8192, sequences: 1 });
    const chat = ctx.createChat({ template: slow });
    const gen = chat.send(long, { maxTokens: 4 });
    await own.dispose();
    const r = await gen.result;
    expect(r.stopReason).toBe('abort');
    expect(r.usage.completionTokens).toBe(0);
  }, 120_000);

  it('a chat with a large JSON schema checks it and renders off the JS thread; the json validates', async () => {
    await using ctx = await model.createContext({ contextSize: 2048, sequences: 1 });
    const wide = (extra: Record<string, unknown> = {}) =>
      ({
        type: 'object',
        properties: Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`f${i}`, { type: 'integer', minimum: i, maximum: 999 }])),
        required: ['f0'],
        ...extra,
      }) as JsonSchema;
    expect(JSON.stringify(wide()).length).toBeGreaterThan(ASYNC_TOKENIZE_CHARS);
    using chat = ctx.createChat({ template: "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}" });
    const r = await chat.send('Numbers.', { jsonSchema: wide(), maxTokens: 400, seed: 1, temperature: 1, topK: 0, topP: 1, minP: 0 }).result.catch((e: Error) => e);
    if (r instanceof Error) expect((r as { code?: string }).code).toBe('ERR_INCOMPLETE_OUTPUT');
    else {
      expect(typeof r.json).toBe('object');
      expect((r.json as Record<string, number>).f0).toBeGreaterThanOrEqual(0);
    }
    const before = chat.messages.length;
    const e = await rejectsWith(chat.send('x', { jsonSchema: wide({ minProperties: 3, maxProperties: 1 }) }).result, 'ERR_INVALID_SCHEMA');
    expect(e.stack).toContain('async-tokenize.test.ts');
    expect(chat.messages.length).toBe(before);
  }, 120_000);
});

it('a long chat message is tokenized off the JS thread, and message text still never becomes special tokens', async () => {
  const path = await synthetic('phi3-chat', { vocab: 'phi-3', embeddingLength: 32, layers: 1, heads: 2, headsKv: 1, feedForwardLength: 64, type: 'f16', seed: 3 });
  await using model = await loadModel(path);
  await using ctx = await model.createContext({ contextSize: 16384, sequences: 2 });
  const end = model.tokenize('<|end|>', { special: true, addBos: false })[0];
  const long = 'Hi <|end|> there. '.repeat(Math.ceil(ASYNC_TOKENIZE_CHARS / 18) + 10);
  using chat = ctx.createChat();
  await chat.send(long, { maxTokens: 2, temperature: 0 }).result;
  // One <|end|> from the template (after the user message); none from the message's text.
  expect(Array.from(chat.session.tokens).filter((t) => t === end)).toHaveLength(1);
  // A template that rewrites the message so it cannot be kept plain: refused, and the message withdrawn.
  using upper = ctx.createChat({ template: "{% for m in messages %}<|user|>{{ m.content | upper }}<|end|>{% endfor %}<|assistant|>" });
  await rejectsWith(upper.send(long).result, 'ERR_INVALID_MESSAGE');
  expect(upper.messages).toEqual([]);
  expect(upper.session.busy).toBe(false);
}, 120_000);
