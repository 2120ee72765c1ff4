// How a grammar in use reads text (native/grammar_accept.cpp): llama.cpp's own algorithm with duplicates
// found through a hash and the work per character bounded. Its results are compared with llama.cpp's own
// functions (LLAMA_ADDON_GRAMMAR_REFERENCE=1) on random grammars, and grammars whose parse states deepen
// with the text, which made each character slower than the last, settle.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { limits, LlamaError } from 'llama-addon';
import { tinySynthetic } from './helpers/models.js';
import { tinyContext } from './helpers/tiny-context.js';

const repoRoot = join(import.meta.dirname, '..');

interface Outcome {
  ok?: unknown;
  error?: string;
}
interface Case {
  grammar: string;
  generated: Outcome;
  texts: string[];
  matches: Outcome[];
}

describe.runIf(process.platform === 'linux')('grammars read text as llama.cpp does, in bounded time', () => {
  it('random grammars: the same matches and the same seeded generations as llama.cpp\'s own functions', async () => {
    const model = await tinySynthetic();
    const run = (reference: boolean): Case[] => {
      const env = { ...process.env };
      if (reference) env.LLAMA_ADDON_GRAMMAR_REFERENCE = '1';
      else delete env.LLAMA_ADDON_GRAMMAR_REFERENCE;
      const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'grammar-accept-child.ts'), model, '11', '200'], {
        cwd: repoRoot,
        env,
        encoding: 'utf8',
        maxBuffer: 256 * 2 ** 20,
        timeout: 240_000,
      });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as Case[];
    };
    const ours = run(false);
    const theirs = run(true);
    expect(ours.length).toBe(200);
    // Errors compare by code: the limit's message says where it was found, which differs.
    const norm = (c: Case) => JSON.stringify(c, (k, v: unknown) => (k === 'error' ? String(v).split(':')[0] : v));
    // Except where llama.cpp is wrong: its filter let a parse state take a token by its id after reading part
    // of that token's text (a token element is matched at token boundaries only here; grammar.test.ts), so
    // seeded generations under grammars with token elements may differ; their texts' matches may not.
    const tokenElements = (c: Case) => /<\[\d+\]>/.test(c.grammar);
    const fixedTexts = 8;
    for (let i = 0; i < ours.length; i++) {
      if (!tokenElements(ours[i])) expect(norm(ours[i]), ours[i].grammar).toBe(norm(theirs[i]));
      else {
        const firstMatches = (c: Case) => norm({ ...c, generated: {}, texts: c.texts.slice(0, fixedTexts), matches: c.matches.slice(0, fixedTexts) });
        expect(firstMatches(ours[i]), ours[i].grammar).toBe(firstMatches(theirs[i]));
        expect(ours[i].generated.error ?? '', ours[i].grammar).not.toMatch(/empty grammar stack/);
      }
    }
    // The comparison is not vacuous: texts match and fail, generations ran under grammars with token elements.
    const matches = ours.flatMap((c) => c.matches);
    expect(matches.filter((m) => m.ok === true).length).toBeGreaterThan(100);
    expect(matches.filter((m) => m.ok === false).length).toBeGreaterThan(500);
    expect(ours.filter((c) => c.generated.ok !== undefined).length).toBeGreaterThan(120);
    expect(ours.filter((c) => c.generated.ok !== undefined && /<\[\d+\]>/.test(c.grammar)).length).toBeGreaterThan(10);
  }, 600_000);

  const ctx = tinyContext();

  // Grammars whose parse states deepen (or multiply) with each character of the text. llama.cpp compared
  // each new state with all the others: the 1,579-character text of the fuzz finding took 19 s, and
  // `x ::= [a-z] x? "b"?` under `x+` did not finish 3,000 characters in 5 minutes.
  const deepening: [string, string][] = [
    ['root ::= x+ "!"\nx ::= [a-z] x? "b"?', 'a'.repeat(3000)],
    ['root ::= "a" (root | "b")* "c"?', 'a'.repeat(3000)],
    ['root ::= [a-z] (root "x" | "y")* | [^é\\]]{2,} root <[2]>', 'a'.repeat(3000)],
    ['root ::= ("a" root "b"?)+ | "c"', 'a'.repeat(3000)],
  ];
  for (const [g, text] of deepening) {
    it(`settles with a result or ERR_LIMIT_EXCEEDED: ${JSON.stringify(g)}`, async () => {
      const out = await ctx.model.matchesGrammar(text, g).then((v) => ({ v }), (e: unknown) => ({ e }));
      if ('e' in out) {
        expect(out.e).toBeInstanceOf(LlamaError);
        expect((out.e as LlamaError).code, (out.e as Error).message).toBe('ERR_LIMIT_EXCEEDED');
      } else {
        expect(typeof out.v).toBe('boolean');
      }
    }, 60_000);
  }

  it('the step limits name themselves, and deep but unambiguous nesting is not refused up to them', async () => {
    const e: unknown = await ctx.model.matchesGrammar('a'.repeat(3000), deepening[0][0]).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(LlamaError);
    expect((e as LlamaError).message).toContain(String(limits.grammarStepWork));
    // 5,000 nested levels: one parse state of 5,000 elements, each character a few thousand steps.
    expect(await ctx.model.matchesGrammar('a'.repeat(5000) + 'b'.repeat(5000), 'root ::= "a" root "b" | ""')).toBe(true);
    expect(await ctx.model.matchesGrammar('a'.repeat(5000) + 'b'.repeat(4999), 'root ::= "a" root "b" | ""')).toBe(false);
    // 60,000 deep: every character copies a parse state that deep, minutes in all; refused past the budget.
    const deep: unknown = await ctx.model.matchesGrammar('a'.repeat(60_000) + 'b'.repeat(60_000), 'root ::= "a" root "b" | ""').catch((x: unknown) => x);
    expect(deep).toBeInstanceOf(LlamaError);
    expect((deep as LlamaError).code).toBe('ERR_LIMIT_EXCEEDED');
    expect((deep as LlamaError).message).toContain(String(limits.grammarMatchWork));
  }, 60_000);

  // The sampler's filter (llama_grammar_apply_impl, redefined there too): llama.cpp followed every parse
  // state separately into every candidate's text, so 400 alternatives of "a" took 96 s for one token, and
  // a deepening grammar took seconds more for each token than the last (found by a hostile review).
  const sampled: [string, string][] = [
    ['400 identical alternatives', `root ::= x*\nx ::= ${Array(400).fill('"a"').join(' | ')}`],
    ['a deepening grammar', 'root ::= x+ "!"\nx ::= [a-z] x? "b"?'],
    ['nested repetitions', 'root ::= (("a" | "ab")* ("b" | "ba")*)*'],
  ];
  for (const [what, g] of sampled) {
    it(`generation under ${what} takes bounded time per token: a result or ERR_LIMIT_EXCEEDED`, async () => {
      using s = ctx.ctx.createSession();
      const out = await s
        .complete('x', { grammar: g, maxTokens: 60, temperature: 1.5, topK: 0, topP: 1, minP: 0, seed: 1 })
        .then((v) => ({ v }), (e: unknown) => ({ e }));
      if ('e' in out) expect((out.e as LlamaError).code, (out.e as Error).message).toBe('ERR_LIMIT_EXCEEDED');
      else if (out.v.stopReason === 'eog') expect(await ctx.model.matchesGrammar(out.v.text, g)).toBe(true);
    }, 120_000);
  }

  it('a NUL character in the text is matched like any other, not skipped', async () => {
    expect(await ctx.model.matchesGrammar('a\0b', 'root ::= "ab"')).toBe(false);
    expect(await ctx.model.matchesGrammar('a\0b', 'root ::= "a" [\\x00] "b"')).toBe(true);
    expect(await ctx.model.matchesGrammar('\0', 'root ::= [\\x00]')).toBe(true);
    expect(await ctx.model.matchesGrammar('\0', 'root ::= [^a]')).toBe(true);
  });

  it('a generation under a deepening grammar ends with a result or ERR_LIMIT_EXCEEDED, and the context goes on', async () => {
    using s = ctx.ctx.createSession();
    const out = await s
      .complete('x', { grammar: 'root ::= x+ "!"\nx ::= [a] x? "b"?', maxTokens: 200, temperature: 0 })
      .then((v) => ({ v }), (e: unknown) => ({ e }));
    if ('e' in out) expect((out.e as LlamaError).code, (out.e as Error).message).toBe('ERR_LIMIT_EXCEEDED');
    else expect(out.v.text).toMatch(/^[ab!]*$/);
    s.reset();
    expect((await s.complete('x', { maxTokens: 3 })).tokens.length).toBe(3);
  }, 120_000);
});
