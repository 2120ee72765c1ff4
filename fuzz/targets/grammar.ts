// grammar: random GBNF grammars (deep nesting, {m,n} with m > n, huge counts, left recursion, ambiguous
// recursive rules, broken syntax) through model.matchesGrammar and session.complete({ grammar, maxTokens: 8 }).
// Expected: a result, or ERR_INVALID_GRAMMAR / ERR_LIMIT_EXCEEDED, within the timeout.
import type { Rng } from '../prng.js';
import { randomText } from '../prng.js';
import { text, runSteps, shrinkCompact, shrinkString, step, Stop, wrong, type CaseResult, type Compact, type Env, type Target } from './common.js';
import { freshSession, loadGen } from './gen-model.js';

interface Input {
  grammar: Compact;
  text: string;
  temperature: number;
  seed: number;
  /** Set by regression files whose grammar is invalid: the case must end in ERR_INVALID_GRAMMAR / ERR_LIMIT_EXCEEDED. */
  mustFail?: boolean;
}

const ALLOWED = ['ERR_INVALID_GRAMMAR', 'ERR_LIMIT_EXCEEDED'];

function literal(r: Rng): string {
  const chars = r.chance(0.7) ? r.pick(['a', 'b', 'ab', 'x', '{', '}', ' ', 'hello', 'é', '🙂', '0']) : randomText(r, 6);
  const escaped = Array.from(chars)
    .map((c) =>
      r.weighted<() => string>([
        [8, () => (c === '"' || c === '\\' ? `\\${c}` : c === '\n' ? '\\n' : c)],
        [0.3, () => `\\x${(c.codePointAt(0)! & 0xff).toString(16).padStart(2, '0')}`],
        [0.3, () => `\\u${(c.codePointAt(0)! & 0xffff).toString(16).padStart(4, '0')}`],
        [0.3, () => `\\U${c.codePointAt(0)!.toString(16).padStart(8, '0')}`],
        [0.05, () => r.pick(['\\', '\\q', '\\x', '\\u12', '\\UFFFFFFFF', '\\U00110000'])],
      ])(),
    )
    .join('');
  return `"${escaped}"`;
}

function charClass(r: Rng): string {
  const neg = r.chance(0.2) ? '^' : '';
  const items = Array.from({ length: r.int(1, 3) }, () =>
    r.weighted<() => string>([
      [4, () => r.pick(['a-z', 'A-Z', '0-9', ' \\t\\n', '"', '\\]', '\\\\', '-', 'é', '{}'])],
      [0.4, () => r.pick(['z-a', '\\x00-\\x7f', '\\u0000-\\uffff', '\\U00000000-\\U0010FFFF', '\\uD800-\\uDFFF', '\\x80-\\xff'])],
      [0.4, () => randomText(r, 3).replace(/[\]\\]/g, '')],
    ])(),
  );
  return `[${neg}${items.join('')}]`;
}

function repetition(r: Rng): string {
  const big = () => r.pick([0, 1, 2, 3, 10, 100, 1000, 100_000, 2_147_483_647, 4_294_967_296, 1e20]).toLocaleString('en-US', { useGrouping: false });
  return r.weighted<() => string>([
    [6, () => r.pick(['*', '+', '?'])],
    [2, () => `{${r.int(0, 5)}}`],
    [2, () => `{${r.int(0, 5)},}`],
    [3, () => {
      const m = r.int(0, 5);
      return `{${m},${m + r.int(0, 4)}}`;
    }],
    [0.4, () => `{${r.int(2, 5)},${r.int(0, 1)}}`], // minimum above maximum
    [0.6, () => `{${big()},${big()}}`],
    [0.2, () => `{,${big()}}`],
    [0.3, () => r.pick(['{', '{}', '{,}', '{-1}', '{a}', '{3,2', '**', '+?', '{1,2}{3}'])],
  ])();
}

function element(r: Rng, rules: string[], depth: number): string {
  let e = r.weighted<() => string>([
    [5, () => literal(r)],
    [3, () => charClass(r)],
    [1, () => '.'],
    [2, () => (r.chance(0.95) ? r.pick(rules) : r.pick(['undefined-rule', 'Root', 'r99']))],
    [depth < 4 ? 2 : 0, () => `(${alternatives(r, rules, depth + 1)})`],
    [0.5, () => r.pick(['<[0]>', '<[1]>', '!<[2]>', `<[${r.int(0, 40000)}]>`, '<[-1]>', '<s>', '</s>', '<[99999999999]>'])],
  ])();
  if (r.chance(0.25)) e += repetition(r);
  return e;
}

function alternatives(r: Rng, rules: string[], depth: number): string {
  return Array.from({ length: r.int(1, 3) }, () => Array.from({ length: r.int(1, 4) }, () => element(r, rules, depth)).join(' ')).join(r.pick([' | ', ' |\n  ', '|']));
}

/** Plain text of a grammar whose string parts are plain. */
function randomGrammar(r: Rng): string {
  const names = ['root', ...Array.from({ length: r.int(0, 4) }, (_, i) => `r${i + 1}`)];
  const lines: string[] = [];
  for (const name of names) lines.push(`${name} ::= ${alternatives(r, names, 0)}`);
  if (r.chance(0.15)) lines.push(`${r.pick(names)} ::= ${r.pick(names)} "+" ${r.pick(names)} | "x"`); // (left) recursion, redefinition
  if (r.chance(0.1)) lines.push('amb ::= amb amb | amb | "a" | ""', `root ::= amb ${repetition(r)}`);
  if (r.chance(0.1)) lines.push('# a comment ::= "x"');
  let g = lines.join(r.chance(0.9) ? '\n' : ' ');
  if (r.chance(0.15)) {
    // Broken syntax: random edits.
    for (let i = r.int(1, 3); i > 0; i--) {
      const at = r.int(0, g.length);
      g = r.chance(0.5) ? g.slice(0, at) + r.pick(['(', ')', '"', '[', ']', '::=', '|', '{', '\\', '\n', '\0', '::']) + g.slice(at) : g.slice(0, at) + g.slice(at + r.int(1, 4));
    }
  }
  return g;
}

function nested(r: Rng): Compact {
  const n = r.pick([100, 1000, 5000, 20_000, 30_000, 50_000]);
  return r.weighted<() => Compact>([
    [3, () => ({ $concat: ['root ::= ', { $repeat: '(', times: n }, '"a"', { $repeat: ')', times: n }] })],
    [1, () => ({ $concat: ['root ::= ', { $repeat: '("a" ', times: n }, { $repeat: ')', times: n }] })],
    [1, () => ({ $concat: ['root ::= "a"', { $repeat: '*', times: n }] })],
    [1, () => ({ $concat: ['root ::= ', { $repeat: '[a-z]{1,2} ', times: n }] })],
    [1, () => ({ $concat: [{ $repeat: 'root ::= "a"\n', times: n }] })],
    [1, () => ({ $concat: ['root ::= "', { $repeat: 'a', times: n * 20 }, '"{0,1000}'] })],
  ])();
}

export const grammar: Target<Input> = {
  name: 'grammar',
  description: 'random GBNF grammars through model.matchesGrammar and session.complete({ grammar, maxTokens: 8 })',
  timeoutMs: 15_000,
  generate(r: Rng): Input {
    const g = r.chance(0.12) ? nested(r) : randomGrammar(r);
    const text = r.weighted<() => string>([
      [3, () => r.pick(['', 'a', 'aa', 'aaa', 'ab', 'x', 'hello', '{}', 'x+x'])],
      [2, () => 'a'.repeat(r.size(5000))],
      [2, () => randomText(r, 12)],
    ])();
    return { grammar: g, text, temperature: r.pick([0, 0.8, 2]), seed: r.int(0, 1000) };
  },
  run(input: Input, env: Env) {
    return runSteps('grammar', async () => {
      const gen = await step('setup', [], () => loadGen(env));
      const g = text(input.grammar);
      // An invalid grammar must fail generation cleanly too: go on to complete() either way.
      let rejected: CaseResult | null = null;
      try {
        await step('matchesGrammar', ALLOWED, () => gen.model.matchesGrammar(input.text, g));
      } catch (e) {
        if (!(e instanceof Stop) || e.result.status !== 'expected') throw e;
        rejected = e.result;
      }
      const s = freshSession(env, gen);
      await step('complete', ALLOWED, () => s.complete('Once upon a time', { grammar: g, maxTokens: 8, temperature: input.temperature, seed: input.seed }));
      if (rejected?.code === 'ERR_INVALID_GRAMMAR') wrong('complete', `complete() accepted a grammar that matchesGrammar rejected (${rejected.message})`);
      if (rejected) throw new Stop(rejected);
      if (input.mustFail) wrong('complete', 'the grammar is invalid, yet matchesGrammar and complete() accepted it');
    });
  },
  shrink(input: Input): Input[] {
    const out: Input[] = shrinkCompact(input.grammar).map((grammar) => ({ ...input, grammar }));
    if (input.text) for (const text of shrinkString(input.text).slice(0, 6)) out.push({ ...input, text });
    return out;
  },
};
