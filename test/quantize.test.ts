import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { loadModel, quantize, setLogLevel } from 'llama-addon';
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
    expect(existsSync(`${out}.partial`)).toBe(false);
  });
});
