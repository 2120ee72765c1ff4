// Long texts are tokenized off the JS thread: model.tokenizeAsync(), and generations and chats whose
// prompt is long (lib/limits.ts ASYNC_TOKENIZE_CHARS). Same tokens, same errors, same results.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { limits, loadModel, setLogLevel, type LlamaModel } from 'llama-addon';
import { ASYNC_TOKENIZE_CHARS } from '../lib/limits.js';
import { rejectsWith } from './helpers/errors.js';
import { describeShared, shared, synthetic } from './helpers/models.js';

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
