import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { LlamaError, loadModel, setLogLevel, type LlamaModel } from 'llama-addon';
import { readGguf } from '../lib/gguf/index.js';
import { describeShared, fixtures, shared, tinySynthetic, vocab } from './helpers/models.js';

setLogLevel('error');

describeShared('loading a real model (stories260k)', () => {
  let model: LlamaModel;
  const progress: number[] = [];
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'), { onProgress: (p) => progress.push(p) });
  });
  afterAll(() => model.dispose());

  it('reports what the model is', () => {
    expect(model.info).toMatchObject({
      architecture: 'llama',
      name: 'llama',
      contextLength: 2048,
      embeddingLength: 64,
      layers: 5,
      vocabSize: 512,
    });
    // ~293K parameters, all F32.
    expect(model.info.parameters).toBeGreaterThan(280_000);
    expect(model.info.parameters).toBeLessThan(300_000);
    expect(model.info.sizeBytes).toBe(model.info.parameters * 4);
    expect(model.info.chatTemplate).toBeUndefined();
  });

  it('exposes every GGUF key and value', () => {
    expect(model.metadata['general.architecture']).toBe('llama');
    expect(model.metadata['llama.block_count']).toBe(5);
    expect(model.metadata['tokenizer.ggml.model']).toBe('llama');
    // 512-token arrays are summarized rather than copied in full.
    expect(model.metadata['tokenizer.ggml.tokens']).toMatchObject({ summarized: true, type: 'STRING', length: 512 });
  });

  it('reports load progress from 0 to 1, in order', () => {
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.at(-1)).toBe(1);
    for (let i = 1; i < progress.length; i++) expect(progress[i]).toBeGreaterThanOrEqual(progress[i - 1]);
  });

  it('describes its vocabulary', () => {
    expect(model.vocab.size).toBe(512);
    expect(model.vocab.bos).toBe(1);
    expect(model.vocab.eos).toBe(2);
    expect(model.vocab.isEndOfGeneration(2)).toBe(true);
    expect(model.vocab.isEndOfGeneration(100)).toBe(false);
  });

  it('tokenizes with BOS by default and round-trips text', () => {
    const tokens = model.tokenize('Once upon a time');
    expect(tokens).toBeInstanceOf(Int32Array);
    expect(tokens[0]).toBe(1);
    expect(model.tokenize('Once upon a time', { addBos: false })[0]).not.toBe(1);
    expect(model.detokenize(tokens).trim()).toBe('Once upon a time');
    expect(model.detokenize([...tokens])).toBe(model.detokenize(tokens));
  });

  it('rejects token ids outside the vocabulary', () => {
    expect(() => model.detokenize([5, 512])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => model.detokenize([-1])).toThrow(LlamaError);
  });
});

describe('loading synthetic and vocabulary-only models', () => {
  it('loads a synthetic model written by our GGUF writer', async () => {
    await using model = await loadModel(await tinySynthetic());
    expect(model.info).toMatchObject({ architecture: 'llama', layers: 2, embeddingLength: 64, vocabSize: 32000 });
    expect(model.metadata['general.file_type']).toBe(7);
  });

  it('loads only the vocabulary with vocabOnly, and then cannot create a context', async () => {
    await using model = await loadModel(vocab('phi-3'), { vocabOnly: true });
    expect(model.info.vocabSize).toBe(32064);
    expect(model.info.chatTemplate).toContain('<|assistant|>');
    await expect(model.createContext()).rejects.toMatchObject({ code: 'ERR_INVALID_STATE' });
  });

  it('says how to load a vocabulary-only file without vocabOnly', async () => {
    await expect(loadModel(vocab('phi-3'))).rejects.toMatchObject({ code: 'ERR_INVALID_MODEL', message: expect.stringContaining('vocabOnly') });
  });

  it('supports `await using` and idempotent dispose', async () => {
    const model = await loadModel(await tinySynthetic());
    {
      await using m = model;
      expect(m.disposed).toBe(false);
    }
    expect(model.disposed).toBe(true);
    await model.dispose();
    expect(() => model.tokenize('x')).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    expect(() => model.detokenize([1])).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    expect(() => model.vocab.isEndOfGeneration(2)).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
    await expect(model.createContext()).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });
});

describe('aborting a model load', () => {
  it('rejects with ERR_ABORTED when the signal is already aborted', async () => {
    const err = await loadModel(await tinySynthetic(), { signal: AbortSignal.abort() }).catch((e) => e);
    expect(err).toBeInstanceOf(LlamaError);
    expect(err.code).toBe('ERR_ABORTED');
  });

  it('cancels a load in progress on the worker thread', async () => {
    // Big enough (~130 MB of F32 weights, read without mmap) that the load is still running when the abort lands.
    const path = await (await import('./helpers/models.js')).synthetic('abortable-f32', {
      embeddingLength: 512, layers: 8, heads: 8, feedForwardLength: 1536, type: 'f32', seed: 1,
    });
    const controller = new AbortController();
    const seen: number[] = [];
    const err = await loadModel(path, {
      useMmap: false,
      signal: controller.signal,
      onProgress: (p) => {
        seen.push(p);
        controller.abort();
      },
    }).catch((e) => e);
    expect(err).toBeInstanceOf(LlamaError);
    expect(err.code).toBe('ERR_ABORTED');
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toBeLessThan(1);
    // The process is fine and the same file loads without a signal.
    await using model = await loadModel(path, { useMmap: false });
    expect(model.info.layers).toBe(8);
  });
});

describe('files that are not models', () => {
  const bad = (name: string, bytes: Uint8Array | string) => {
    const p = join(fixtures, name);
    writeFileSync(p, bytes);
    return p;
  };

  it('ERR_MODEL_NOT_FOUND for a missing file or a directory', async () => {
    await expect(loadModel('/nonexistent/model.gguf')).rejects.toMatchObject({
      code: 'ERR_MODEL_NOT_FOUND',
      message: expect.stringContaining('/nonexistent/model.gguf'),
    });
    await expect(loadModel(fixtures)).rejects.toMatchObject({ code: 'ERR_MODEL_NOT_FOUND' });
  });

  it('ERR_INVALID_MODEL for a file that is not GGUF, empty, truncated or corrupt', async () => {
    await tinySynthetic();
    const good = readFileSync(await tinySynthetic());
    const cases: Array<[string, Uint8Array | string]> = [
      ['text.gguf', 'this is not a model\n'],
      ['empty.gguf', new Uint8Array(0)],
      ['magic-only.gguf', new Uint8Array([0x47, 0x47, 0x55, 0x46])],
      ['truncated-header.gguf', good.subarray(0, 4000)],
      ['truncated-data.gguf', good.subarray(0, good.length - 1000)],
      ['bad-version.gguf', (() => { const b = Buffer.from(good); b.writeUInt32LE(99, 4); return b; })()],
      ['huge-count.gguf', (() => { const b = Buffer.from(good); b.writeBigUInt64LE(1n << 60n, 16); return b; })()],
    ];
    for (const [name, bytes] of cases) {
      const err = await loadModel(bad(name, bytes)).catch((e) => e);
      expect(err, name).toBeInstanceOf(LlamaError);
      expect(err.code, name).toBe('ERR_INVALID_MODEL');
      expect(err.message, name).toContain(name);
    }
  });

  it('survives random corruption of the header: a LlamaError or a working model, never a crash', async () => {
    setLogLevel('silent');
    onTestFinished(() => setLogLevel('error'));
    const path = await tinySynthetic();
    const good = readFileSync(path);
    const { dataOffset } = await readGguf(path);
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const outcomes = { loaded: 0, rejected: 0 };
    for (let i = 0; i < 200; i++) {
      const copy = Buffer.from(good);
      // Flip bits in the hyperparameters at the start, or in the tensor descriptions at the end of the header.
      for (let k = 0; k < 2; k++) {
        const at = i % 2 === 0 ? Math.floor(rand() * 700) : dataOffset - 1 - Math.floor(rand() * 1300);
        copy[at] ^= 1 << Math.floor(rand() * 8);
      }
      const p = bad(`corrupt-${i}.gguf`, copy);
      try {
        const m = await loadModel(p);
        outcomes.loaded++;
        try {
          const ctx = await m.createContext({ contextSize: 256 });
          await ctx.createSession().complete('Hello', { maxTokens: 4 });
        } catch (e) {
          expect(e).toBeInstanceOf(LlamaError);
        }
        await m.dispose();
      } catch (e) {
        expect(e).toBeInstanceOf(LlamaError);
        expect((e as LlamaError).code).toBe('ERR_INVALID_MODEL');
        outcomes.rejected++;
      }
    }
    // Reaching this line means the process survived every file; most corruptions there must be caught.
    expect(outcomes.rejected).toBeGreaterThan(outcomes.loaded);
  });

  it('copies of a good model still load (the checks are not too strict)', async () => {
    const p = join(fixtures, 'copy.gguf');
    copyFileSync(await tinySynthetic(), p);
    await using m = await loadModel(p);
    expect(m.info.layers).toBe(2);
  });
});
