import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, setLogLevel, type LlamaModel } from 'llama-addon';
import { commonPrefix, describeShared, onGpu, shared } from './helpers/models.js';

setLogLevel('error');

// tinystories-656k F16 (target) and Q8_0 (draft) share one tokenizer (../shared/models/SOURCES.md).
const PROMPTS = ['<|start_story|>Once upon a time', '<|start_story|>Tom had a red ball. Tom had a red ball. Tom'];

describeShared('speculative decoding (tinystories-656k F16 with its Q8_0 as draft)', () => {
  let target: LlamaModel;
  let draft: LlamaModel;
  beforeAll(async () => {
    target = await loadModel(shared('tinystories-656k-f16.gguf'));
    draft = await loadModel(shared('tinystories-656k-q8_0.gguf'));
  });
  afterAll(async () => {
    await target.dispose();
    await draft.dispose();
  });

  it('gives the same greedy output with a draft model, with prompt lookup, and without', async () => {
    await using plain = await target.createContext({ contextSize: 512 });
    await using withDraft = await target.createContext({ contextSize: 512, draftModel: draft, draftTokens: 6 });
    await using lookup = await target.createContext({ contextSize: 512, lookupNgram: 2 });
    for (const prompt of PROMPTS) {
      using a = plain.createSession();
      using b = withDraft.createSession();
      using c = lookup.createSession();
      const base = await a.complete(prompt, { maxTokens: 200, temperature: 0 });
      expect(base.speculative).toBeUndefined();
      const viaDraft = await b.complete(prompt, { maxTokens: 200, temperature: 0 });
      const viaLookup = await c.complete(prompt, { maxTokens: 200, temperature: 0 });
      // Bit-identical on the CPU. On a GPU, verifying several tokens in one batch rounds differently from
      // decoding them one by one, so a near-tie can tip the other way: there the outputs share a long start.
      if (onGpu()) {
        expect(commonPrefix(viaDraft.tokens, base.tokens)).toBeGreaterThanOrEqual(6);
        expect(commonPrefix(viaLookup.tokens, base.tokens)).toBeGreaterThanOrEqual(6);
      } else {
        expect(viaDraft.tokens).toEqual(base.tokens);
        expect(viaLookup.tokens).toEqual(base.tokens);
      }
      expect(viaDraft.stopReason).toBe(base.stopReason);
      // The draft model (the same network, quantized) agrees with the target most of the time.
      expect(viaDraft.speculative!.drafted).toBeGreaterThan(0);
      expect(viaDraft.speculative!.acceptanceRate).toBeGreaterThan(0.5);
      expect(viaDraft.speculative!.accepted).toBeLessThanOrEqual(viaDraft.speculative!.drafted);
      expect(viaLookup.speculative?.drafted ?? 0).toBeGreaterThan(0);
      // Turned off per request.
      b.reset();
      const off = await b.complete(prompt, { maxTokens: 50, temperature: 0, speculative: false });
      expect(off.speculative).toBeUndefined();
      if (!onGpu()) expect(off.tokens).toEqual(base.tokens.slice(0, 50));
    }
  });

  it('streams and continues from the cache as usual while speculating', async () => {
    await using ctx = await target.createContext({ contextSize: 512, draftModel: draft });
    await using plain = await target.createContext({ contextSize: 512 });
    using s = ctx.createSession();
    using p = plain.createSession();
    const gen = s.generate(PROMPTS[0], { maxTokens: 60, temperature: 0, queueSize: 1 });
    let streamed = '';
    for await (const c of gen) streamed += c.text;
    const r = await gen.result;
    expect(streamed).toBe(r.text);
    const held = s.tokens.length;
    const more = [...s.tokens, ...r.tokens.slice(-1), ...target.tokenize(' The end.', { addBos: false })];
    const next = await s.complete(more, { maxTokens: 40, temperature: 0 });
    expect(next.usage.cachedTokens).toBe(held);
    await p.complete(PROMPTS[0], { maxTokens: 60, temperature: 0 });
    expect(next.tokens).toEqual((await p.complete(more, { maxTokens: 40, temperature: 0 })).tokens);
  });

  it('is disposed with its draft model, promptly, and the target model goes on', async () => {
    const ownDraft = await loadModel(shared('tinystories-656k-q8_0.gguf'));
    const ctx = await target.createContext({ contextSize: 512, draftModel: ownDraft });
    const s = ctx.createSession();
    const gen = s.generate(PROMPTS[0], { maxTokens: 400, temperature: 0, queueSize: 1 });
    for await (const _ of gen) break;  // it is generating (with drafts)
    const again = s.generate(PROMPTS[1], { maxTokens: 400, temperature: 0 });
    await ownDraft.dispose();
    // The context went with it (it drafted with that model at every step): the generation ended with it.
    expect(ctx.disposed).toBe(true);
    expect((await again.result).stopReason).toBe('abort');
    expect(() => ctx.createSession()).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    // A context made afterwards with the disposed model as its draft is refused.
    await expect(target.createContext({ contextSize: 512, draftModel: ownDraft })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    using plain = (await target.createContext({ contextSize: 512 })).createSession();
    expect((await plain.complete(PROMPTS[0], { maxTokens: 8, temperature: 0 })).tokens).toHaveLength(8);
  });

  it('refuses a draft model with another vocabulary', async () => {
    await using other = await loadModel(shared('stories260k.gguf'));
    await expect(target.createContext({ draftModel: other })).rejects.toThrow(/vocabulary differs/);
    await expect(target.createContext({ draftModel: {} as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
