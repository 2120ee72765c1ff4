// Sampling options are declared once (lib/options/sampling.ts): the README's table, the validation, the
// values the native sampler reads, the CLI's flags and the server's request fields all follow the table.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SAMPLING_OPTIONS, setLogLevel, startServer, type SamplingOptions } from 'llama-addon';
import { withSamplingTable } from '../scripts/options-table.js';
import { throwsWith } from './helpers/errors.js';
import { repoRoot, tinySynthetic } from './helpers/models.js';
import { tinyContext } from './helpers/tiny-context.js';

setLogLevel('error');
const names = Object.keys(SAMPLING_OPTIONS) as Array<keyof typeof SAMPLING_OPTIONS>;

describe('sampling options, declared once', () => {
  const t = tinyContext();

  it("the README's table is the one the table makes", () => {
    const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
    expect(readme).toBe(withSamplingTable(readme));
    for (const name of names) expect(readme).toContain(`| \`${name}\` |`);
  });

  it('validates every option against its range, with one wording', () => {
    using s = t.ctx.createSession();
    for (const name of names) {
      const spec = SAMPLING_OPTIONS[name];
      const bad: unknown[] = [spec.min - 1, spec.max + 1, Number.NaN, '1', null, ...('minExclusive' in spec ? [spec.min] : [])];
      if (spec.type === 'integer') bad.push(spec.min + 0.5);
      for (const v of bad) {
        const e = throwsWith(() => s.generate('x', { [name]: v } as SamplingOptions), 'ERR_INVALID_ARGUMENT');
        expect(e.message).toContain(`"${name}"`);
        expect(e.message).toMatch(new RegExp(`(from|greater than) ${spec.min} (to|and at most) ${spec.max}`));
      }
      expect(s.busy).toBe(false);
    }
  });

  it("the defaults are the table's: the same output with them given, a different one with another value", async () => {
    using s = t.ctx.createSession();
    const defaults = Object.fromEntries(names.map((n) => [n, SAMPLING_OPTIONS[n].default])) as SamplingOptions;
    const implicit = await s.complete('Once', { seed: 7, maxTokens: 24 });
    s.reset();
    const explicit = await s.complete('Once', { ...defaults, seed: 7, maxTokens: 24 });
    expect(explicit.text).toBe(implicit.text);
    // Each option reaches the sampler: some value of its range changes the text (for some seed; the
    // penalties' window with a penalty on). Values come from the table, so a new option is tested too.
    for (const name of names) {
      const spec = SAMPLING_OPTIONS[name];
      const span = spec.max - spec.min;
      const values = ['minExclusive' in spec ? spec.min + 0.01 : spec.min, spec.max, spec.type === 'integer' ? spec.min + 1 : spec.min + span * 0.01, spec.min + span * 0.5].filter((v) => v !== spec.default);
      let differs = false;
      for (const base of [{}, { repeatPenalty: 3 }]) {
        for (const value of values) {
          if (differs) break;
          for (let seed = 1; seed <= 3 && !differs; seed++) {
            s.reset();
            const a = await s.complete('Once', { ...base, seed, maxTokens: 24 });
            s.reset();
            const b = await s.complete('Once', { ...base, seed, maxTokens: 24, [name]: value });
            differs = a.text !== b.text;
          }
        }
      }
      expect(differs, name).toBe(true);
    }
  });

  it('the table cannot be changed at run time; banning every token is refused', () => {
    expect(Object.isFrozen(SAMPLING_OPTIONS)).toBe(true);
    expect(() => {
      (SAMPLING_OPTIONS.temperature as { max: number }).max = 1000;
    }).toThrow(TypeError);
    expect(SAMPLING_OPTIONS.temperature.max).toBe(100);
    using s = t.ctx.createSession();
    const all: Record<number, number> = {};
    for (let id = 0; id < t.model.vocab.size; id++) all[id] = -Infinity;
    expect(throwsWith(() => s.generate('x', { logitBias: all }), 'ERR_INVALID_ARGUMENT').message).toContain('logitBias');
  });

  it('the CLI refuses a value out of range as a usage error (exit 2), exclusive bounds too', () => {
    for (const args of [['--repeat-penalty', '0'], ['--top-p', '2']]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'complete', '--model', 'x.gguf', ...args, 'hi'], { cwd: repoRoot, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(args[0]);
    }
  });

  it('the CLI has a flag for each option, with its default and range', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'complete', '--help'], { cwd: repoRoot, encoding: 'utf8' });
    expect(r.status).toBe(0);
    for (const name of names) {
      const spec = SAMPLING_OPTIONS[name];
      const line = r.stdout.split('\n').find((l) => l.trimStart().startsWith(`--${spec.flag} `));
      expect(line, `--${spec.flag}`).toBeDefined();
      expect(line).toContain(String('defaultText' in spec ? spec.defaultText : spec.default));
    }
  });

  it("the server takes each option's request field, within its bounds", async () => {
    const path = await tinySynthetic();
    const server = await startServer({ models: [{ alias: 'm', path }], port: 0, contextSize: 256 });
    await server.ready;
    try {
      for (const name of names) {
        const spec = SAMPLING_OPTIONS[name];
        const field = spec.request.name;
        const max = 'max' in spec.request ? spec.request.max : spec.max;
        const post = (value: number) =>
          fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'Once', max_tokens: 2, [field]: value }) });
        const over = await post(spec.type === 'integer' ? max + 1 : max + 0.5);
        expect(over.status, field).toBe(400);
        expect(JSON.stringify(await over.json())).toContain(field);
        const ok = await post(spec.default > max ? max : spec.default);
        expect(ok.status, `${field}: ${await ok.clone().text()}`).toBe(200);
      }
    } finally {
      await server.close();
    }
  });
});
