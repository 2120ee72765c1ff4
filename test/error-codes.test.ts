// Errors carry codes, not text: one list of codes (LLAMA_ERROR_CODES), documented in the README, and the
// only codes the native side gives; a failed generation's code is the one the engine named.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LLAMA_ERROR_CODES, setLogLevel } from 'llama-addon';
import { rejectsWith, throwsWith } from './helpers/errors.js';
import { repoRoot } from './helpers/models.js';
import { tinyContext } from './helpers/tiny-context.js';

setLogLevel('error');

describe('error codes', () => {
  it('the README documents every code, and names no other', () => {
    const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('### Errors'));
    for (const code of LLAMA_ERROR_CODES) expect(table, code).toContain(`| \`${code}\` |`);
    const named = new Set(readme.match(/\bERR_[A-Z_]+\b/g));
    expect([...named].filter((c) => !(LLAMA_ERROR_CODES as readonly string[]).includes(c))).toEqual([]);
  });

  it('the native code and the library give no code outside the list', () => {
    const found = new Map<string, string>();
    for (const dir of ['native', 'lib']) {
      const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]));
      for (const file of walk(join(repoRoot, dir))) {
        if (!/\.(cpp|h|ts)$/.test(file)) continue;
        for (const m of readFileSync(file, 'utf8').matchAll(/["'](ERR_[A-Z_]+)["']/g)) found.set(m[1], file);
      }
    }
    expect(found.size).toBeGreaterThan(15);
    for (const [code, file] of found) expect(LLAMA_ERROR_CODES as readonly string[], `${code} in ${file}`).toContain(code);
  });

  describe('a failed generation has the code the engine named', () => {
    const t = tinyContext();

    it("a chat template that does not parse says llama.cpp's reason", async () => {
      // (A caller's template is parsed off the JS thread: its error rejects the reply.)
      using chat = t.ctx.createChat({ template: '{% for %}' });
      const err = await rejectsWith(chat.send('x', { maxTokens: 1 }).result, 'ERR_INVALID_TEMPLATE');
      expect(err.message).not.toMatch(/: std::exception$/);
      expect(err.message).toMatch(/could not be parsed: .{8,}/);
      expect(() => t.model.applyChatTemplate([{ role: 'user', content: 'x' }], { template: '{% for %}' })).toThrowError(/could not be parsed: .{8,}/);
    });

    it('a grammar that leaves no token: ERR_INVALID_GRAMMAR, and the session goes on', async () => {
      using s = t.ctx.createSession();
      const banned: Record<number, number> = {};
      // Every token but the end of generation, which the grammar does not allow first.
      for (let id = 0; id < t.model.vocab.size; id++) if (id !== t.model.vocab.eos) banned[id] = -Infinity;
      const e = await rejectsWith(s.complete('x', { grammar: 'root ::= [a-z]+', logitBias: banned }), 'ERR_INVALID_GRAMMAR');
      expect(e.message).toMatch(/^Generation failed: no token is allowed here by the grammar/);
      expect((await s.complete('x', { maxTokens: 2 })).usage.completionTokens).toBeGreaterThan(0);
    });
  });
});
