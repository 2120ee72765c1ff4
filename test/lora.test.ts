import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, LlamaError, setLogLevel, type LlamaModel } from 'llama-addon';
import { writeSyntheticLora } from '../lib/gguf/index.js';
import { fixtures, synthetic } from './helpers/models.js';

setLogLevel('error');

const shape = { embeddingLength: 64, layers: 2, heads: 4, headsKv: 2, feedForwardLength: 128 } as const;
const greedy = { temperature: 0, maxTokens: 24 } as const;
const PROMPT = 'The quick brown fox';

describe('LoRA adapters (synthetic model and adapters written by our GGUF writer)', () => {
  let model: LlamaModel;
  const zeroPath = join(fixtures, 'lora-zero.gguf');
  const realPath = join(fixtures, 'lora-real.gguf');
  const otherPath = join(fixtures, 'lora-other-shape.gguf');
  beforeAll(async () => {
    model = await loadModel(await synthetic('lora-base', { ...shape, type: 'f32', seed: 21 }));
    await writeSyntheticLora(zeroPath, { ...shape, zero: true });
    await writeSyntheticLora(realPath, { ...shape, seed: 5 });
    await writeSyntheticLora(otherPath, { ...shape, embeddingLength: 32, heads: 2, headsKv: 1 });
  });
  afterAll(() => model.dispose());

  it('leaves output unchanged with a zero adapter and changes it with a real one, per request and per context', async () => {
    const zero = await model.loadLora(zeroPath);
    const real = await model.loadLora(realPath);
    expect(real.metadata['adapter.type']).toBe('lora');
    await using ctx = await model.createContext({ contextSize: 256, sequences: 3 });
    using s = ctx.createSession({ sharePrefix: false });
    const base = await s.complete(PROMPT, greedy);
    s.reset();
    const withZero = await s.complete(PROMPT, { ...greedy, lora: [zero] });
    expect(withZero.tokens).toEqual(base.tokens);
    const withReal = await s.complete(PROMPT, { ...greedy, lora: [{ adapter: real, scale: 1 }] });
    expect(withReal.tokens).not.toEqual(base.tokens);
    // The cache computed with another adapter set is not reused.
    expect(withReal.usage.cachedTokens).toBe(0);
    // Scale 0 is no adapter.
    const scaledOut = await s.complete(PROMPT, { ...greedy, lora: [{ adapter: real, scale: 0 }] });
    expect(scaledOut.tokens).toEqual(base.tokens);

    // Per context, and two requests with different adapters running at once.
    await using adapted = await model.createContext({ contextSize: 256, sequences: 2, lora: [real] });
    using a = adapted.createSession();
    using b = adapted.createSession();
    const [ra, rb] = await Promise.all([a.complete(PROMPT, greedy), b.complete(PROMPT, { ...greedy, lora: [] })]);
    expect(ra.tokens).toEqual(withReal.tokens);
    expect(rb.tokens).toEqual(base.tokens);
  });

  it('refuses an adapter made for another base model, or one loaded for another model', async () => {
    const e = await model.loadLora(otherPath).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(LlamaError);
    expect((e as LlamaError).code).toBe('ERR_INVALID_ADAPTER');
    expect((e as LlamaError).message).toMatch(/shape|base model/);
    await expect(model.loadLora(join(fixtures, 'no-such-lora.gguf'))).rejects.toMatchObject({ code: 'ERR_INVALID_ADAPTER' });
    await expect(model.loadLora(await synthetic('lora-base', { ...shape, type: 'f32', seed: 21 }))).rejects.toMatchObject({ code: 'ERR_INVALID_ADAPTER' });

    await using other = await loadModel(await synthetic('lora-base-2', { ...shape, type: 'f32', seed: 22 }));
    const foreign = await other.loadLora(realPath);
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    expect(() => s.generate(PROMPT, { lora: [foreign] })).toThrowError(/another model/);
    expect(() => s.generate(PROMPT, { lora: ['nope' as never] })).toThrowError(/Invalid option "lora"/);
  });
});
