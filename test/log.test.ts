import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { loadModel, setLogger, setLogLevel, type LogLevel } from 'llama-addon';
import { tinySynthetic } from './helpers/models.js';

afterEach(() => {
  setLogger(null);
  setLogLevel('error');
});

async function logsOfALoad(level: LogLevel): Promise<Array<[string, string]>> {
  const lines: Array<[string, string]> = [];
  setLogLevel(level);
  setLogger((l, m) => lines.push([l, m]));
  const model = await loadModel(await tinySynthetic());
  const ctx = await model.createContext({ contextSize: 256 });
  await ctx.createSession().complete('Hi', { maxTokens: 2 });
  await model.dispose();
  await sleep(50); // log lines from other threads arrive asynchronously
  return lines;
}

describe('llama.cpp logs go through the library', () => {
  it('routes lines to setLogger, filtered by setLogLevel', async () => {
    const info = await logsOfALoad('info');
    expect(info.length).toBeGreaterThan(10);
    expect(info.every(([l]) => ['debug', 'info', 'warn', 'error'].includes(l))).toBe(true);
    expect(info.some(([, m]) => m.includes('llama_model_loader'))).toBe(true);
    expect(info.every(([, m]) => !m.endsWith('\n'))).toBe(true);
    expect(info.some(([l]) => l === 'debug')).toBe(false);

    const warn = await logsOfALoad('warn');
    expect(warn.every(([l]) => l === 'warn' || l === 'error')).toBe(true);
    expect(warn.length).toBeLessThan(info.length);

    expect(await logsOfALoad('silent')).toEqual([]);
  });

  it('reports why llama.cpp rejected a file, and a throwing logger breaks nothing', async () => {
    const lines: Array<[string, string]> = [];
    setLogLevel('error');
    setLogger((l, m) => lines.push([l, m]));
    const { writeFileSync } = await import('node:fs');
    const { readFileSync } = await import('node:fs');
    const good = Buffer.from(readFileSync(await tinySynthetic()));
    // Rename the architecture: the header is valid GGUF, but llama.cpp does not know the architecture.
    const at = good.indexOf('llama', 0, 'utf8');
    good.write('lxxma', at, 'utf8');
    const path = (await tinySynthetic()).replace(/\.gguf$/, '-unknown-arch.gguf');
    writeFileSync(path, good);
    const err = await loadModel(path).catch((e) => e);
    expect(err.code).toBe('ERR_INVALID_MODEL');
    expect(err.message).toContain("unknown model architecture: 'lxxma'");
    await sleep(20);
    // The error carries llama.cpp's lines; they are not logged a second time.
    expect(lines.filter(([, m]) => m.includes('lxxma'))).toEqual([]);
    setLogLevel('info');
    setLogger(() => {
      throw new Error('logger failure');
    });
    await using model = await loadModel(await tinySynthetic());
    expect(model.info.layers).toBe(2);
    await sleep(20);
  });

  it('rejects bad levels and loggers', () => {
    expect(() => setLogLevel('loud' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => setLogger('console' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe("the JSON-schema converter's warnings", () => {
  it('are read from the converter at every log level, and logged once (they went to stderr, caught by redirecting it)', async () => {
    const { native } = await import('../lib/native/native.js');
    const n = native() as unknown as { jsonSchemaToGrammar(schema: string, bestEffort?: boolean): string };
    const schema = '{"type":"string","pattern":"^(?!x)a$"}';
    const lines: Array<[string, string]> = [];
    setLogger((l, m) => lines.push([l, m]));
    for (const level of ['silent', 'error', 'warn'] as const) {
      setLogLevel(level);
      // Strict: the warning is the error, whatever the level.
      expect(() => n.jsonSchemaToGrammar(schema, false)).toThrow(/uses what the grammar cannot enforce: pattern \^\(\?!x\)a\$ is not supported/);
      expect(n.jsonSchemaToGrammar(schema, true)).toContain('root ::=');
    }
    await sleep(50);
    // Logged once, at warn, for the best-effort conversion only.
    expect(lines.filter(([, m]) => m.includes('conversion was incomplete'))).toEqual([
      ['warn', 'JSON schema conversion was incomplete (best effort): pattern ^(?!x)a$ is not supported (unsupported group syntax), accepting any string'],
    ]);
  });
});
