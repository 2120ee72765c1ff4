// Nested or repeated input cannot exhaust the stack or loop forever: GBNF grammars and Jinja templates, from
// the caller or from a GGUF file's metadata, each limit of lib/base/limits.ts swept past its bound.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limits, loadModel, LlamaError, setLogLevel, type LlamaContext, type LlamaModel } from 'llama-addon';
import { rejectsWith } from './helpers/errors.js';
import { describeShared, modelWithTemplate, repoRoot, shared } from './helpers/models.js';

setLogLevel('error');

/** Expects `p` to settle within `ms` with a value or a LlamaError of one of `codes`; returns the outcome. */
async function settles(p: Promise<unknown>, codes: string[], ms = 10_000): Promise<unknown> {
  const t0 = Date.now();
  const out = await p.then((v) => ({ ok: v }), (e: unknown) => ({ error: e }));
  expect(Date.now() - t0).toBeLessThan(ms);
  if ('error' in out) {
    expect(out.error).toBeInstanceOf(LlamaError);
    expect(codes, (out.error as Error).message).toContain((out.error as LlamaError).code);
  }
  return out;
}

const nested = (depth: number) => `root ::= ${'('.repeat(depth)}"a"${')'.repeat(depth)}`;
const chain = (n: number) => Array.from({ length: n }, (_, i) => `r${i} ::= ${i + 1 < n ? `r${i + 1}` : '"a"'}`).join('\n').replace(/^r0 /, 'root ');
// Each rule can start with either of two copies of the next: 2^n ways to start.
const wide = (n: number) =>
  Array.from({ length: n }, (_, i) => `r${i} ::= ${i + 1 < n ? `r${i + 1} "x" | r${i + 1} "y"` : '"a"'}`).join('\n').replace(/^r0 /, 'root ');

describeShared('grammars', () => {
  let model: LlamaModel;
  let ctx: LlamaContext;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
    ctx = await model.createContext({ contextSize: 256 });
  });
  afterAll(() => model.dispose());

  it('a grammar nested 30000 deep is ERR_LIMIT_EXCEEDED through complete and matchesGrammar', async () => {
    using s = ctx.createSession();
    await rejectsWith(s.complete('x', { grammar: nested(30000), maxTokens: 4 }), 'ERR_LIMIT_EXCEEDED');
    await rejectsWith(model.matchesGrammar('a', nested(30000)), 'ERR_LIMIT_EXCEEDED');
    // Right at the limit it still works.
    expect(await model.matchesGrammar('a', nested(limits.grammarNesting))).toBe(true);
    await rejectsWith(model.matchesGrammar('a', nested(limits.grammarNesting + 1)), 'ERR_LIMIT_EXCEEDED');
  });

  // Left recursion through rules made of rules that can match nothing (test/fuzz-corpus/grammar/
  // kind-nullable-left-recursion-*.json replays the refused ones in a guarded worker): refused, while a
  // repetition of such rules, whose cycle ends its alternatives, is still taken and matched.
  it('a repetition of parts that can match nothing is matched (its cycle does not grow the parse stack)', async () => {
    expect(await model.matchesGrammar('a a  ', 'root ::= ("a"? " ")+')).toBe(true);
    expect(await model.matchesGrammar('xy', 'root ::= (p q)+\np ::= "x"?\nq ::= "y"?')).toBe(true);
    expect(await model.matchesGrammar('b', 'root ::= ("a"? " "?)* "b"')).toBe(true);
    await rejectsWith(model.matchesGrammar('aq ', 'root ::= ([a-z]? | "x") root " " | "q"'), 'ERR_INVALID_GRAMMAR');
  });

  it('contradictory repetition bounds are ERR_INVALID_GRAMMAR, for every form', async () => {
    for (const g of ['root ::= "a"{3,2}', 'root ::= [a-z]{10,1}', 'root ::= ("a" | "b"){5, 4}', 'root ::= x\nx ::= "a"{2000,0}']) {
      await settles(model.matchesGrammar('aaa', g), ['ERR_INVALID_GRAMMAR']);
      using s = ctx.createSession();
      await rejectsWith(s.complete('x', { grammar: g, maxTokens: 4 }), 'ERR_INVALID_GRAMMAR');
    }
    expect(await model.matchesGrammar('aaa', 'root ::= "a"{2,3}')).toBe(true);
  });

  it('chains of rules and ambiguous grammars are refused before llama.cpp recurses into them', async () => {
    await rejectsWith(model.matchesGrammar('a', chain(30000)), 'ERR_LIMIT_EXCEEDED');
    expect(await model.matchesGrammar('a', chain(500))).toBe(true);
    await rejectsWith(model.matchesGrammar('axy', wide(40)), 'ERR_LIMIT_EXCEEDED');
    using s = ctx.createSession();
    await rejectsWith(s.complete('x', { grammar: chain(30000), maxTokens: 4 }), 'ERR_LIMIT_EXCEEDED');
    await rejectsWith(model.matchesGrammar('a', 'root ::= root "a" | "a"'), 'ERR_INVALID_GRAMMAR');
  });

  it('matching an ambiguous grammar against a long text stays bounded', async () => {
    // Every split of the text into words is a parse: exponentially many without the bound.
    const g = 'root ::= w+\nw ::= [a-z]+ | [a-z]+ w';
    for (const n of [10, 14, 20, 200]) await settles(model.matchesGrammar('a'.repeat(n), g), ['ERR_LIMIT_EXCEEDED'], 5_000);
  });

  it('an exponentially ambiguous grammar ends a generation with ERR_LIMIT_EXCEEDED instead of freezing the context', async () => {
    // After n letters "a", 2^n parse states: each "a" may close with x or with y.
    const g = 'root ::= s\ns ::= "a" s x | "a" s y | "b"\nx ::= "a"\ny ::= "a"';
    const noB: Record<number, number> = {};
    for (let t = 0; t < model.vocab.size; t++) if (model.detokenize(new Int32Array([t])).includes('b')) noB[t] = -Infinity;
    using s = ctx.createSession();
    const t0 = Date.now();
    const e = await rejectsWith(s.complete('Once', { grammar: g, maxTokens: 60, temperature: 0, logitBias: noB }), 'ERR_LIMIT_EXCEEDED');
    expect(e.message).toContain(String(limits.grammarStates));
    expect(Date.now() - t0).toBeLessThan(30_000);
    // The context goes on: the next generation runs.
    s.reset();
    expect((await s.complete('Once', { maxTokens: 3 })).tokens.length).toBe(3);
  }, 60_000);

  it('sweep: 300 random grammars settle within seconds, with a result or a grammar error', async () => {
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const atoms = ['"a"', '"b"', '[a-c]', '[^x]', '.', 'r1', 'r2', 'root'];
    const expr = (d: number): string => {
      if (d > 6 || rand(3) === 0) return atoms[rand(atoms.length)];
      const kind = rand(5);
      if (kind === 0) return `(${expr(d + 1)} | ${expr(d + 1)})`;
      if (kind === 1) return `${expr(d + 1)} ${expr(d + 1)}`;
      if (kind === 2) return `(${expr(d + 1)})${['*', '+', '?', `{${rand(4)},${rand(4)}}`, `{${rand(3)}}`][rand(5)]}`;
      if (kind === 3) return '('.repeat(rand(400)) + '"a"' + ')'.repeat(rand(400));
      return expr(d + 1);
    };
    for (let i = 0; i < 300; i++) {
      const g = `root ::= ${expr(0)}\nr1 ::= ${expr(0)}\nr2 ::= ${expr(0)} | "z"`;
      await settles(model.matchesGrammar('abca'.slice(0, rand(5)), g), ['ERR_INVALID_GRAMMAR', 'ERR_LIMIT_EXCEEDED'], 5_000);
    }
  }, 120_000);
});

const recursive = '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}';
const templates: Array<[string, string, RegExp?]> = [
  ['recursive macro', recursive],
  ['mutual recursion', '{% macro f(n) %}{{ g(n) }}{% endmacro %}{% macro g(n) %}{{ f(n) }}{% endmacro %}{{ f(0) }}'],
  ['huge range', '{% for i in range(100000000) %}x{% endfor %}'],
  ['computed range', '{% set n = 100000 * 100000 %}{% for i in range(n) %}x{% endfor %}'],
  ['string repetition', '{{ "x" * 100000000 }}'],
  ['string doubling', '{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}'],
  ['nested loops', '{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}{% endfor %}'],
  ['deep brackets', '{{ ' + '('.repeat(20000) + '1' + ')'.repeat(20000) + ' }}'],
  ['deep blocks', '{% if true %}'.repeat(5000) + 'x' + '{% endif %}'.repeat(5000)],
  // Found by a hostile review: recursion outside template nodes, and loops the counts did not see.
  ['a list that contains itself, printed', '{% set l = [] %}{% set _ = l.append(l) %}{{ l }}'],
  ['a list that contains itself, as JSON', '{% set l = [] %}{% set _ = l.append(l) %}{{ l|tojson }}'],
  ['messages appended to themselves', '{% set _ = messages.append(messages) %}{{ messages|tojson }}'],
  ['a namespace that contains itself', '{% set ns = namespace(x=1) %}{% set ns.x = ns %}{{ ns|tojson }}'],
  ['a mapping inside a list inside itself', '{% set l = [] %}{% set d = {"l": l} %}{% set _ = l.append(d) %}{{ d|tojson }}'],
  ['a chain of unary operators', '{{ ' + 'not '.repeat(60000) + '1 }}'],
  ['a chain of minus signs', '{{ ' + '-'.repeat(100000) + '1 }}'],
  ['a chain of calls', '{{ f' + '()'.repeat(100000) + ' }}'],
  ['a range whose step overflows', '{{ range(-5, 9223372036854775807, 922337203685477580)|list }}'],
  ['a list doubled in a loop', '{% set ns = namespace(l=[1]) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}'],
  // One builtin call that builds a huge string between two nodes (sized from its arguments before it runs).
  ['replace that multiplies', '{{ ("a" * 30000)|replace("a", "a" * 30000) }}', /replace\(\) would build/],
  ['replace as a method', '{% set s = "ab" * 20000 %}{{ s.replace("b", "x" * 50000) }}', /replace\(\) would build/],
  ['replace of the empty string', '{{ ("a" * 20000)|replace("", "b" * 20000) }}', /replace\(\) would build/],
  ['indent by a huge width', '{{ ("a\n" * 20000)|indent(20000) }}', /indent\(\) would build/],
  ['indent by a huge string', '{{ ("a\n" * 20000)|indent("        " * 2500) }}', /indent\(\) would build/],
  ['join with a huge separator', '{% set l = [] %}{% for i in range(400) %}{% set _ = l.append("a") %}{% endfor %}{{ l|join("x" * 200000) }}', /join\(\) would build/],
  ['tojson with a huge indent', '{{ messages|tojson(indent=1000000000) }}', /tojson\(\) with an indent/],
  // Found by a third hostile review: split() made its whole list before the item limit looked at it, in
  // quadratic time (3,000,000 pieces: over a minute), and builtins over strings of millions of parts ran
  // past the time limit (title() over "a" * 3000000: 3.2 s).
  ['split into more pieces than a list holds', '{{ ("a," * 100001).split(",")|length }}', /split\(\) would make a list of more than 100000 items/],
  ['split on spaces into too many pieces', '{{ ("a " * 150000).split()|length }}', /split\(\) would make a list/],
  ['rsplit into too many pieces', '{{ ("a," * 150000).rsplit(",")|length }}', /rsplit\(\) would make a list/],
  ['split of three million pieces', '{{ ("a," * 3000000).split(",")|length }}', /could not end within|took more than/],
  ['title over three million parts', '{{ ("a" * 3000000)|title|length }}', /could not end within|took more than/],
  ['replace of the empty string over three million parts', '{{ ("a" * 3000000).replace("", "b")|length }}', /could not end within|took more than|would build/],
];

describeShared('chat templates', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  for (const [name, template, reason] of templates) {
    it(`${name}: ERR_LIMIT_EXCEEDED, not a crash or a hang`, async () => {
      const t0 = Date.now();
      let err: unknown = null;
      try {
        model.applyChatTemplate([{ role: 'user', content: 'hi' }], { template });
      } catch (e) {
        err = e;
      }
      expect(Date.now() - t0).toBeLessThan(20_000);
      expect(err).toBeInstanceOf(LlamaError);
      expect((err as LlamaError).code, (err as Error).message).toBe('ERR_LIMIT_EXCEEDED');
      // Builtins are refused from their arguments, before they build anything.
      if (reason) expect((err as Error).message).toMatch(reason);
    }, 60_000);
  }

  it('the sized builtins still render what they did', () => {
    const out = model.applyChatTemplate([{ role: 'user', content: 'hi' }], {
      template: '{{ "a-b-c"|replace("-", "--") }}|{{ "x y".replace(" ", "") }}|{{ "ab"|replace("", ".") }}|{{ "a\nb"|indent(2) }}|{{ ["p", "q"]|join(", ") }}|{{ messages|length }}' +
        '|{{ "a,b,,c".split(",")|join("/") }}|{{ "a,b,,c".split(",", 1)|join("/") }}|{{ "a b  c".split()|join("/") }}|{{ "a<>b<>".split("<>")|length }}|{{ "a,b,,c".rsplit(",", 1)|join("/") }}|{{ ("x," * 99999).split(",")|length }}',
    });
    expect(out).toBe('a--b--c|xy|.a.b.|a\n  b|p, q|1|a/b//c|a/b,,c|a/b//c|3|a,b,/c|100000');
  });

  // Integer arithmetic is exact, as in Python (patches/llama.cpp/0003): the interpreter computed it in
  // doubles, so results beyond 2^53 were rounded, overflow was undefined and `5 % 0` printed INT64_MIN.
  it('integer arithmetic: a sweep of edge values against BigInt, with Python\'s % and errors for overflow and zero', () => {
    const edges = [0n, 1n, 2n, 3n, 7n, 2n ** 31n, 2n ** 32n + 1n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n - 1n, 3037000500n];
    const values = [...edges, ...edges.filter((v) => v !== 0n).map((v) => -v)];
    const max = 2n ** 63n - 1n;
    const min = -(2n ** 63n);
    const lit = (v: bigint) => (v < 0n ? `(${v})` : `${v}`);
    let checked = 0;
    for (const x of values) {
      for (const y of values) {
        for (const op of ['+', '-', '*', '%'] as const) {
          let expected: bigint | 'overflow' | 'zero';
          if (op === '%') {
            if (y === 0n) expected = 'zero';
            else {
              let r = x % y;
              if (r !== 0n && r < 0n !== y < 0n) r += y;
              expected = r;
            }
          } else {
            const r = op === '+' ? x + y : op === '-' ? x - y : x * y;
            expected = r > max || r < min ? 'overflow' : r;
          }
          const template = `{{ ${lit(x)} ${op} ${lit(y)} }}`;
          let out: string | LlamaError;
          try {
            out = model.applyChatTemplate([{ role: 'user', content: 'hi' }], { template });
          } catch (e) {
            out = e as LlamaError;
          }
          if (typeof expected === 'bigint') expect(out, template).toBe(String(expected));
          else {
            expect(out, template).toBeInstanceOf(LlamaError);
            expect((out as LlamaError).message, template).toMatch(expected === 'zero' ? /modulo by zero/ : /integer overflow/);
          }
          checked++;
        }
      }
    }
    expect(checked).toBe(values.length ** 2 * 4);
    expect(() => model.applyChatTemplate([{ role: 'user', content: 'hi' }], { template: '{{ 1 / 0 }}' })).toThrow(/division by zero/);
    expect(model.applyChatTemplate([{ role: 'user', content: 'hi' }], { template: '{{ 7 / 2 }} {{ 2.5 % 1 }}' })).toBe('3.5 0.5');
  }, 120_000);

  // The other ways an integer could wrap (patches/llama.cpp/0008, from a hostile review): unary minus and abs
  // of -2^63 printed -2^63, |int of a string went through 32 bits ("3000000000" gave 0), and |int of a float
  // outside 64 bits was undefined behaviour.
  it('unary minus, abs and int: a sweep of edge values against BigInt', () => {
    const max = 2n ** 63n - 1n;
    const min = -(2n ** 63n);
    const render = (template: string): string | LlamaError => {
      try {
        return model.applyChatTemplate([{ role: 'user', content: 'hi' }], { template });
      } catch (e) {
        return e as LlamaError;
      }
    };
    const expectValue = (template: string, expected: bigint) => {
      const out = render(template);
      if (expected > max || expected < min) {
        expect(out, template).toBeInstanceOf(LlamaError);
        expect((out as LlamaError).message, template).toMatch(/integer overflow/);
      } else expect(out, template).toBe(String(expected));
    };
    const edges = [0n, 1n, 2n ** 31n, 2n ** 31n + 1n, 2n ** 32n, 3000000000n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n, 10n ** 20n];
    let checked = 0;
    for (const e of [...edges, ...edges.map((v) => -v)]) {
      // The value as a variable (a literal of -2^63 is its own token), then negated and abs'd.
      if (e >= min && e <= max) {
        const set = e === min ? '{% set x = -9223372036854775807 - 1 %}' : `{% set x = ${e < 0n ? `(${e})` : e} %}`;
        expectValue(`${set}{{ -x }}`, -e);
        expectValue(`${set}{{ x | abs }}`, e < 0n ? -e : e);
        checked += 2;
      }
      // A string of digits through |int: exact in 64 bits, else an overflow (never the default 0).
      expectValue(`{{ "${e}" | int }}`, e);
      checked++;
    }
    expect(checked).toBeGreaterThan(50);
    // (The lexer reads no exponents: floats are written out.)
    const big = '1000000000000000000000.0';
    for (const f of [big, `-${big}`, `(${big} * ${big})`, '9300000000000000000.0', '9223372036854775808.0']) {
      const out = render(`{% set f = ${f} %}{{ f | int }}`);
      expect(out, f).toBeInstanceOf(LlamaError);
      expect((out as LlamaError).message).toMatch(/integer overflow in int\(\)/);
    }
    expect(render('{{ 9200000000000000000.0 | int }} {{ -2.5 | int }} {{ "abc" | int }} {{ "abc" | int(7) }}')).toBe('9200000000000000000 -2 0 7');
    // Strings are read whole, as Jinja does: an integer, else a float, else the default ("12abc" gave 12,
    // "1e3"|int gave 1, "1e400"|float gave 0.0).
    expect(render('{{ "1e3" | int }} {{ " 42 " | int }} {{ "12abc" | int }} {{ "12abc" | float }} {{ "1e400" | float }} {{ "2.5" | float }}')).toBe('1000 42 0 0.0 inf 2.5');
    for (const t of ['{{ "1e30" | int }}', '{{ "inf" | int }}', '{{ "9.3e18" | int }}']) {
      const out = render(t);
      expect(out, t).toBeInstanceOf(LlamaError);
      expect((out as LlamaError).message, t).toMatch(/integer overflow in int\(\)/);
    }
  });

  it('a template that stays within the limits renders', () => {
    const out = model.applyChatTemplate([{ role: 'user', content: 'hi' }], {
      template: '{% for i in range(1000) %}.{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}',
    });
    expect(out).toBe('.'.repeat(1000) + 'hi');
  });

  it('a recursive template read from a GGUF file\'s metadata is refused when a chat starts, and the model keeps working', async () => {
    const path = await modelWithTemplate('recursive-template', recursive, 'llama-spm');
    const m = await loadModel(path);
    try {
      await using ctx = await m.createContext({ contextSize: 128 });
      let err: unknown = null;
      try {
        const chat = ctx.createChat();
        await chat.send('hi', { maxTokens: 2 });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LlamaError);
      expect((err as LlamaError).code).toBe('ERR_LIMIT_EXCEEDED');
      using s = ctx.createSession();
      expect((await s.complete('Once', { maxTokens: 2 })).tokens.length).toBe(2);
    } finally {
      await m.dispose();
    }
  });
});

describe('limits', () => {
  it('are documented numbers', () => {
    for (const [k, v] of Object.entries(limits)) expect(Number.isInteger(v) && v > 0, k).toBe(true);
    expect(Object.isFrozen(limits)).toBe(true);
  });
});

describeShared('grammar trigger patterns', () => {
  // Patterns run with std::regex (recursive, backtracking) at every token on the engine thread: they must
  // be bounded (searched near the new output only) and cheap from every position. Unbounded repetition,
  // backreferences, matches longer than 4096 characters and chains of alternatives or optional parts that
  // multiply past a million steps (the hostile `(?:.|.)` × 25 took 9 s per token) are refused.
  it('patterns that are unbounded or backtrack exponentially are refused before a generation starts; bounded ones work', async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    try {
      await using ctx = await model.createContext({ contextSize: 256 });
      using s = ctx.createSession();
      const refused = [
        '([\\s\\S]*)*x$', '(a|a)*(b|b)*(c|c)*(.|.)*z', '(x+)+y', '(.*)\\1\\1z', 'a'.repeat(1001), '<call>[\\s\\S]*', 'a{3,}',
        '(?:.|.)'.repeat(25) + 'X', '.?'.repeat(25), 'a{0,5}'.repeat(10), '.{0,5000}', 'x{0,99999999}', '(a)\\1', '\\cJ',
        // matches that read nothing still try every way from every position (10: over 100 s for 3 tokens)
        '(?:(?:){0,7}){0,7}\\b\\B', '(?:(?:){0,10}){0,10}\\b\\B',
      ];
      for (const p of refused) {
        await rejectsWith(s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { patterns: [p] } }), 'ERR_LIMIT_EXCEEDED');
      }
      // Words are compiled as regular expressions too (std::regex's compiler recurses per character: a word
      // of 100,000 characters overflowed a stack), and every trigger is searched for at every token.
      await rejectsWith(s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { words: ['w'.repeat(1001)] } }), 'ERR_LIMIT_EXCEEDED');
      await rejectsWith(s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { words: ['w'.repeat(100_000)] } }), 'ERR_LIMIT_EXCEEDED');
      const many = Array.from({ length: 257 }, (_, i) => `w${i}`);
      await rejectsWith(s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { words: many } }), 'ERR_LIMIT_EXCEEDED');
      s.reset();
      expect((await s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { words: ['w'.repeat(1000), ...many.slice(0, 255)] } })).stopReason).toBe('maxTokens');
      for (const p of ['(', 'a)', '[abc', 'a{2,1}', '*a', '\\u{', '\\u{41}', '\\u12', '\\x4', 'a\\x']) {
        await rejectsWith(s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { patterns: [p] } }), 'ERR_INVALID_GRAMMAR');
      }
      for (const p of ['<call>[\\s\\S]{0,100}', '\\u0041\\x42', '(foo|bar)baz', '[0-9]{3}-x', '[^]ed ba(ll)', '.{0,1000}QZX', '(q|q){1,10}z']) {
        s.reset();
        const r = await s.complete('Once', { maxTokens: 4, grammar: 'root ::= "x"', grammarTriggers: { patterns: [p] } });
        expect(r.stopReason).toBe('maxTokens');
      }
    } finally {
      await model.dispose();
    }
  });
});

describe('grammar trigger patterns: the check itself', () => {
  // It runs on the JS thread before anything else: "\\u{" without its "}" sent its scan back to the start,
  // forever (found by a hostile review). Thousands of random fragments of pattern syntax, malformed ones
  // included, each end with a result or a LlamaError, in a child process that a loop could not hang.
  it('ends for every pattern, with a result or a LlamaError', () => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'trigger-pattern-sweep.ts'), '5000', '7'], { cwd: repoRoot, timeout: 60_000, encoding: 'utf8' });
    const { ends } = JSON.parse(out.trim().split('\n').pop()!) as { ends: Record<string, number> };
    expect(Object.keys(ends).filter((k) => !['ok', 'ERR_INVALID_GRAMMAR', 'ERR_LIMIT_EXCEEDED'].includes(k))).toEqual([]);
    expect(Object.values(ends).reduce((a, b) => a + b, 0)).toBe(5000);
    // The sweep covers both outcomes.
    expect(ends.ok).toBeGreaterThan(100);
    expect(ends.ERR_INVALID_GRAMMAR).toBeGreaterThan(100);
  }, 90_000);
});

describeShared('large but unambiguous grammars', () => {
  it('an alternation of 5,000 words sharing a prefix is matched and generated, not refused as ambiguous', async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    try {
      const words = Array.from({ length: 5000 }, (_, i) => `"w${i}"`).join(' | ');
      const g = `root ::= ${words}`;
      expect(await model.matchesGrammar('w1234', g)).toBe(true);
      expect(await model.matchesGrammar('w5000', g)).toBe(false);
      await using ctx = await model.createContext({ contextSize: 256 });
      using s = ctx.createSession();
      const r = await s.complete('Once', { grammar: g, maxTokens: 8, temperature: 0 });
      expect(r.text).toMatch(/^w\d+$/);
    } finally {
      await model.dispose();
    }
  }, 60_000);

  // llama.cpp makes one parse state per alternative when it enters a rule and deduplicates them by a linear
  // search: 32,000 alternatives took 1.6 s to enter, on the JS thread (and again at each character on the
  // engine thread). More than the 8192 states a grammar may hold at once is refused from the rules alone.
  it('a rule that starts in more ways than the parse-state limit is refused before llama.cpp enters it', async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    try {
      const cjk = (i: number) => String.fromCodePoint(0x4e00 + i);
      const shapes = [
        `root ::= ${Array.from({ length: 32000 }, (_, i) => `"w${i}"`).join(' | ')}`,
        // entered after the first character, and through a rule reference
        `root ::= "x" big\nbig ::= ${Array.from({ length: 9000 }, (_, i) => `"${cjk(i)}"`).join(' | ')}`,
        `root ::= a | b\na ::= ${Array.from({ length: 5000 }, (_, i) => `"a${i}"`).join(' | ')}\nb ::= ${Array.from({ length: 5000 }, (_, i) => `"b${i}"`).join(' | ')}`,
      ];
      await using ctx = await model.createContext({ contextSize: 256 });
      for (const g of shapes) {
        const e = await rejectsWith(model.matchesGrammar('w1', g), 'ERR_LIMIT_EXCEEDED');
        expect(e.message).toMatch(/can start in more than 8192 ways/);
        using s = ctx.createSession();
        const t0 = performance.now();
        const p = s.complete('Once', { grammar: g, maxTokens: 4, temperature: 0 });
        // Refused from the rules: the call does not hold the JS thread while llama.cpp enters them.
        expect(performance.now() - t0).toBeLessThan(1_000);
        await rejectsWith(p, 'ERR_LIMIT_EXCEEDED');
      }
      // Just under the limit still works.
      const g = `root ::= "x" big\nbig ::= ${Array.from({ length: 8000 }, (_, i) => `"${cjk(i)}"`).join(' | ')}`;
      expect(await model.matchesGrammar(`x${cjk(7999)}`, g)).toBe(true);
    } finally {
      await model.dispose();
    }
  }, 60_000);
});
