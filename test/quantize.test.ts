import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { LlamaError, loadModel, quantize, setLogger, setLogLevel } from 'llama-addon';
import { readGguf } from '../lib/gguf/index.js';
import { describeShared, fixtures, shared } from './helpers/models.js';

setLogLevel('error');

describeShared('quantize (stories260k, F32)', () => {
  it("writes a smaller model of the asked type that still tells the same story", async () => {
    const out = join(fixtures, 'stories260k-q8_0.gguf');
    const seen: number[] = [];
    await quantize(shared('stories260k.gguf'), out, 'Q8_0', { onProgress: (n) => seen.push(n) });
    expect(statSync(out).size).toBeLessThan(statSync(shared('stories260k.gguf')).size / 2);
    expect(seen.at(-1)).toBe(statSync(out).size);
    const header = await readGguf(out);
    expect(header.metadata['general.file_type']).toBe(7);
    await using model = await loadModel(out);
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    const r = await s.complete('Once upon a time', { maxTokens: 12, temperature: 0 });
    expect(r.text.startsWith(', there was a little girl')).toBe(true);
  });

  it('fails cleanly for a bad type or input, leaving no file behind', async () => {
    const out = join(fixtures, 'never.gguf');
    rmSync(out, { force: true });
    await expect(quantize(shared('stories260k.gguf'), out, 'Q9_X' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(quantize('/nonexistent.gguf', out, 'Q8_0')).rejects.toMatchObject({ code: 'ERR_MODEL_NOT_FOUND' });
    await expect(quantize(join(fixtures, '..', 'session.test.ts'), out, 'Q8_0')).rejects.toMatchObject({ code: 'ERR_QUANTIZE' });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(fixtures).filter((f) => f.startsWith('never.gguf'))).toEqual([]);
    // A folder where the output should go: ERR_IO, and the folder stays.
    const folder = join(fixtures, 'quantize-into-folder');
    mkdirSync(folder, { recursive: true });
    await expect(quantize(shared('stories260k.gguf'), folder, 'Q8_0')).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(statSync(folder).isDirectory()).toBe(true);
    // A folder that does not exist: ERR_IO, said before llama.cpp reads anything.
    await expect(quantize(shared('stories260k.gguf'), join(fixtures, 'no-such-folder', 'q.gguf'), 'Q8_0')).rejects.toMatchObject({
      code: 'ERR_IO',
      message: expect.stringContaining('expected an existing folder'),
    });
  });

  it("puts llama.cpp's reason first and its warnings after, and logs neither twice", async () => {
    // Q2_K on the 656K model falls back to Q4_0 for every tensor (a warning each); /proc takes no file, so
    // the quantizer fails at the end. The message used to open with 1 KB of those warnings.
    const lines: Array<[string, string]> = [];
    setLogLevel('warn');
    setLogger((l, m) => lines.push([l, m]));
    try {
      const e = await quantize(shared('tinystories-656k-f16.gguf'), '/proc/quantized.gguf', 'Q2_K').catch((x: unknown) => x as LlamaError);
      expect(e).toBeInstanceOf(LlamaError);
      expect(e!.code).toBe('ERR_QUANTIZE');
      expect(e!.message).toMatch(/^llama\.cpp could not quantize \S+: llama_model_quantize: failed to quantize: .* \(warnings: warning: blk\.0\./);
      expect(e!.message.length).toBeLessThan(1400);
      await sleep(50);
      // What the error says is not also logged.
      expect(lines).toEqual([]);
      // A quantization that succeeds logs its warnings as before.
      const out = join(fixtures, 'q2k.gguf');
      await quantize(shared('tinystories-656k-f16.gguf'), out, 'Q2_K');
      rmSync(out, { force: true });
      await sleep(50);
      expect(lines.filter(([l, m]) => l === 'warn' && m.includes('falling back')).length).toBeGreaterThan(3);
    } finally {
      setLogger(null);
      setLogLevel('error');
    }
  });

  // Found by a hostile review: two calls to the same output shared one temporary file, so the one that
  // ended first renamed the other's model and resolved with it.
  it('two calls to the same output each write their own file: the file is whole, and one of the two', async () => {
    const out = join(fixtures, 'quantize-same.gguf');
    rmSync(out, { force: true });
    const results = await Promise.allSettled([
      quantize(shared('stories260k.gguf'), out, 'Q8_0'),
      quantize(shared('tinystories-656k-f16.gguf'), out, 'Q4_0'),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const header = await readGguf(out);
    const fileType = header.metadata['general.file_type'];
    const name = String(header.metadata['general.name']);
    // Either call's model, whole: its type and name agree.
    expect([fileType === 7 && /llama/i.test(name), fileType === 2 && /TinyStories/.test(name)]).toContain(true);
    expect(readdirSync(fixtures).filter((f) => f.startsWith('quantize-same.gguf.'))).toEqual([]);
  });
});
