import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, setLogLevel } from 'llama-addon';
import { GgufType, encodeF16, encodeQ4_0, encodeQ8_0, readGguf, toHalf, writeGguf } from '../lib/gguf/index.js';
import { fixtures, synthetic, vocab } from './helpers/models.js';

setLogLevel('error');

describe('our GGUF writer and reader', () => {
  it('round-trips metadata of every type and tensor descriptions', async () => {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(fixtures, { recursive: true });
    const path = join(fixtures, 'roundtrip.gguf');
    await writeGguf(path, {
      metadata: [
        { key: 'a.u8', type: GgufType.UINT8, value: 200 },
        { key: 'a.i32', type: GgufType.INT32, value: -5 },
        { key: 'a.f32', type: GgufType.FLOAT32, value: 0.5 },
        { key: 'a.f64', type: GgufType.FLOAT64, value: Math.PI },
        { key: 'a.u64', type: GgufType.UINT64, value: 2n ** 60n },
        { key: 'a.bool', type: GgufType.BOOL, value: true },
        { key: 'a.str', type: GgufType.STRING, value: 'héllo 🦙' },
        { key: 'a.arr', type: GgufType.ARRAY, itemType: GgufType.STRING, value: ['x', 'y'] },
        { key: 'a.long', type: GgufType.ARRAY, itemType: GgufType.INT32, value: Array.from({ length: 100 }, (_, i) => i) },
      ],
      tensors: [{ name: 't', dims: [32, 2], type: 8, data: encodeQ8_0(new Float32Array(64).fill(1)) }],
    });
    const g = await readGguf(path);
    expect(g.metadata).toMatchObject({ 'a.u8': 200, 'a.i32': -5, 'a.f32': 0.5, 'a.f64': Math.PI, 'a.u64': 2n ** 60n, 'a.bool': true, 'a.str': 'héllo 🦙', 'a.arr': ['x', 'y'] });
    expect(g.metadata['a.long']).toEqual({ summarized: true, type: 'INT32', length: 100, first: Array.from({ length: 16 }, (_, i) => i) });
    expect((await readGguf(path, { maxArrayLength: Infinity })).metadata['a.long']).toHaveLength(100);
    expect(g.tensors).toEqual([{ name: 't', dims: [32, 2], type: 8, offset: 0, size: 68 }]);
    expect(g.dataOffset % 32).toBe(0);
  });

  it('encodes half floats and quantized blocks like ggml', () => {
    expect(toHalf(1)).toBe(0x3c00);
    expect(toHalf(-2)).toBe(0xc000);
    expect(toHalf(65504)).toBe(0x7bff);
    expect(toHalf(1e-8)).toBe(0);
    expect(toHalf(Infinity)).toBe(0x7c00);
    expect(new Uint16Array(encodeF16(new Float32Array([0.5, 1.5])).buffer)).toEqual(new Uint16Array([0x3800, 0x3e00]));
    const q8 = encodeQ8_0(Float32Array.from({ length: 32 }, (_, i) => i - 16));
    expect(q8.byteLength).toBe(34);
    expect(new Int8Array(q8.buffer, q8.byteOffset + 2, 32)[0]).toBe(-127); // -16 is the absolute maximum
    expect(encodeQ4_0(new Float32Array(64)).byteLength).toBe(36);
  });

  it('writes synthetic models llama.cpp loads and runs, in every weight type', async () => {
    for (const type of ['f32', 'f16', 'q8_0', 'q4_0'] as const) {
      const path = await synthetic(`types-${type}`, { embeddingLength: 64, layers: 1, heads: 2, feedForwardLength: 64, type, seed: 2 });
      await using model = await loadModel(path);
      expect(model.info.layers).toBe(1);
      await using ctx = await model.createContext({ contextSize: 256 });
      using s = ctx.createSession();
      const a = await s.complete('Hello', { maxTokens: 8, temperature: 0, logitBias: { [model.vocab.eos!]: -Infinity } });
      s.reset();
      const b = await s.complete('Hello', { maxTokens: 8, temperature: 0, logitBias: { [model.vocab.eos!]: -Infinity } });
      expect(a.tokens, type).toHaveLength(8);
      expect(b.tokens, type).toEqual(a.tokens);
    }
  });

  it('copies a real tokenizer, so synthetic models tokenize like the original', async () => {
    const path = await synthetic('qwen-tokenizer', { vocab: 'qwen2', embeddingLength: 64, layers: 1, heads: 2, feedForwardLength: 64, seed: 3 });
    await using model = await loadModel(path);
    await using ref = await loadModel(vocab('qwen2'), { vocabOnly: true });
    const text = 'Hello <|im_start|> wörld 🦙';
    expect(model.tokenize(text, { special: true })).toEqual(ref.tokenize(text, { special: true }));
    expect(model.info.chatTemplate).toBe(ref.info.chatTemplate);
  });
});
