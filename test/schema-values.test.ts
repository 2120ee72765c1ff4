// The grammars the checking pass writes for values (numbers with bounds, strings with patterns, formats
// and lengths), checked in TypeScript: the same expressions render to GBNF and to a RegExp, and random
// members of the expression's language are validated with ajv against the schema they come from. The
// tests with a model (schema-generate.test.ts) check the GBNF rendering with llama.cpp's own parser.
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { GbnfRules, sample, toRegExp, type Expr } from '../lib/schema/expr.js';
import { AJV_FORMATS, STRING_FORMAT_PATTERNS } from '../lib/schema/formats.js';
import { boundsSatisfiable, numberExpr, type Bounds } from '../lib/schema/number.js';
import { jsonText, patternExpr, UnsupportedPattern, withLengths } from '../lib/schema/pattern.js';
import { lit, rep, seq } from '../lib/schema/expr.js';
import { ANY } from '../lib/schema/pattern.js';
import { prng } from './helpers/prng.js';

const ajv = new Ajv2020({ strict: false, formats: AJV_FORMATS });

describe('numbers within bounds', () => {
  const r = prng(42);
  const bound = (): number => {
    const x = r();
    if (x < 0.25) return Math.round((r() - 0.5) * 40);
    if (x < 0.5) return Math.round((r() - 0.5) * 2000) / 100;
    if (x < 0.65) return (r() - 0.5) * 1e6;
    if (x < 0.75) return 0;
    if (x < 0.85) return Math.round((r() - 0.5) * 1e4) / 1e4;
    return Math.round((r() - 0.5) * 1e7) / 1e7;
  };

  it('admits only texts whose value is within the bounds, and finds a value whenever one exists', () => {
    let sampled = 0;
    let empty = 0;
    for (let i = 0; i < 2500; i++) {
      const b: Bounds = {};
      if (r() < 0.75) b[r() < 0.5 ? 'minimum' : 'exclusiveMinimum'] = bound();
      if (r() < 0.75) b[r() < 0.5 ? 'maximum' : 'exclusiveMaximum'] = bound();
      if (r() < 0.1) b.minimum = bound();
      const integer = r() < 0.4;
      const schema = { type: integer ? 'integer' : 'number', ...b };
      const validate = ajv.compile(schema);
      const e = numberExpr(b, integer);
      expect(e === null, JSON.stringify(schema)).toBe(!boundsSatisfiable(b, integer));
      if (e === null) {
        empty++;
        continue;
      }
      const re = toRegExp(e);
      for (let k = 0; k < 40; k++) {
        const text = sample(e, r, 8);
        const value = JSON.parse(text);
        expect(validate(value), `${text} for ${JSON.stringify(schema)}`).toBe(true);
        sampled++;
      }
      // Near the bounds: nothing outside is admitted; what is inside and short is.
      for (const base of Object.values(b) as number[]) {
        for (const d of [-1, -0.5, -0.001, -1e-6, 0, 1e-6, 0.001, 0.5, 1]) {
          for (const text of [String(base + d), (base + d).toFixed(3), String(Math.round(base + d))]) {
            if (!/^-?(0|[1-9]\d*)(\.\d+)?$/.test(text)) continue;
            const value = JSON.parse(text);
            if (value === 0 && text.startsWith('-')) continue; // the grammar never writes a negative zero
            if (re.test(text)) expect(validate(value), `${text} admitted for ${JSON.stringify(schema)}`).toBe(true);
            else if (validate(value) && !(integer && text.includes('.')) && (text.split('.')[1]?.length ?? 0) <= 6) {
              throw new Error(`${text} refused for ${JSON.stringify(schema)}`);
            }
          }
        }
      }
    }
    expect(sampled).toBeGreaterThan(50_000);
    expect(empty).toBeGreaterThan(10);
  });

  it('writes plain decimals below 10^15 (no exponent, nothing a double rounds past a bound)', () => {
    const e = numberExpr({}, false)!;
    const re = toRegExp(e);
    for (const t of ['0', '-12.5', '999999999999999.999999', '0.000001']) expect(re.test(t), t).toBe(true);
    for (const t of ['1e5', '1000000000000000', '-0', '01', '1.', '.5', '0.0000001']) expect(re.test(t), t).toBe(false);
    // Exclusive bounds hold after rounding to a double, even where decimals are finer than doubles.
    const tight = numberExpr({ exclusiveMinimum: 0.1, exclusiveMaximum: 0.30000000000000004 }, false)!;
    const v = ajv.compile({ exclusiveMinimum: 0.1, exclusiveMaximum: 0.30000000000000004 });
    const rr = prng(7);
    for (let i = 0; i < 2000; i++) expect(v(JSON.parse(sample(tight, rr, 20)))).toBe(true);
    // int32 and friends are bounds.
    expect(boundsSatisfiable({ minimum: 2 ** 31 }, true)).toBe(true);
  });
});

// Patterns from real schemas, and some edge cases.
const PATTERNS = [
  '^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$',
  '^\\d{3}-\\d{4}$',
  '^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$',
  '^[A-Z][a-z]+(?: [A-Z][a-z]+)*$',
  '^#[0-9a-fA-F]{6}$',
  '^(?:\\+|-)?\\d+(\\.\\d+)?$',
  '^[^"\\\\]+$',
  '^.*$',
  '^(foo|bar)+$',
  '^\\w+\\s\\w+$',
  '^[\\u{1F600}-\\u{1F64F}]+$',
  '^\\n\\t"\\\\\\/$',
  '^[\\s\\S]{2,3}$',
  '^$',
  'abc',
  '^a|b$',
  'x?y*z+',
  '^[^a-z]$',
  '^(?<year>\\d{4})-(?<month>\\d{2})$',
  '^[\\x00-\\x1f]$',
  '^é+ü?$',
  '^[^\\s\\S]*$',
  '^a{2,}b{0,3}c{4}$',
  '^[.*+?^${}()|[\\]\\\\/-]+$',
  '^\\cJ\\0$',
  '^\\uD83D\\uDE00$',
];

function checkPattern(pattern: string, minLength: number, maxLength: number, rand: () => number): number {
  const schema = { type: 'string', pattern, minLength, ...(maxLength < Infinity ? { maxLength } : {}) };
  const validate = ajv.compile(schema);
  let e: Expr | null | undefined = patternExpr(pattern, 100_000);
  e = withLengths(e, minLength, maxLength);
  if (e === undefined || e === null) return 0;
  const text = jsonText(e);
  if (text === null) return 0;
  const quoted = seq(lit('"'), text, lit('"'))!;
  const re = toRegExp(quoted);
  for (let i = 0; i < 60; i++) {
    const t = sample(quoted, rand, 6);
    expect(re.test(t)).toBe(true);
    const value = JSON.parse(t);
    expect(validate(value), `${JSON.stringify(t)} for ${JSON.stringify(schema)}`).toBe(true);
  }
  // The GBNF rendering is well formed (llama.cpp parses it in schema-generate.test.ts).
  const g = new GbnfRules('t-');
  expect(g.render(quoted).length).toBeGreaterThan(0);
  return 60;
}

describe('strings with patterns, formats and lengths', () => {
  it('every string the grammar admits is JSON whose value matches the pattern and the lengths', () => {
    const r = prng(3);
    let n = 0;
    for (const p of PATTERNS) {
      n += checkPattern(p, 0, Infinity, r);
      n += checkPattern(p, 2, 12, r);
    }
    expect(n).toBeGreaterThan(2000);
  });

  // Random regular expressions over a small alphabet, with random lengths.
  it('a sweep over random patterns and lengths', () => {
    const r = prng(99);
    const atoms = ['a', 'b', '[ab]', '[^a]', '.', '\\d', '\\s', '"', '\\\\', '\\n', 'é', '[x-z]', '\\w', '[^\\w]'];
    const gen = (d: number): string => {
      const x = r();
      if (d > 2 || x < 0.35) return atoms[Math.floor(r() * atoms.length)];
      if (x < 0.55) return `${gen(d + 1)}${gen(d + 1)}`;
      if (x < 0.7) return `(?:${gen(d + 1)}|${gen(d + 1)})`;
      const q = ['*', '+', '?', `{${Math.floor(r() * 3)}}`, `{1,${1 + Math.floor(r() * 4)}}`, `{2,}`][Math.floor(r() * 6)];
      return `(?:${gen(d + 1)})${q}`;
    };
    let checked = 0;
    let unknown = 0;
    for (let i = 0; i < 400; i++) {
      const body = gen(0);
      const p = `${r() < 0.7 ? '^' : ''}${body}${r() < 0.7 ? '$' : ''}`;
      const minL = r() < 0.5 ? 0 : Math.floor(r() * 5);
      const maxL = r() < 0.5 ? Infinity : minL + Math.floor(r() * 8);
      let e: Expr | null | undefined;
      try {
        e = withLengths(patternExpr(p, 1000), minL, maxL);
      } catch (err) {
        if (err instanceof UnsupportedPattern) continue;
        throw err;
      }
      if (e === undefined) {
        unknown++;
        continue;
      }
      if (e === null) {
        // Claimed empty: no short string of the alphabet is accepted by ajv either.
        const v = ajv.compile({ type: 'string', pattern: p, minLength: minL, ...(maxL < Infinity ? { maxLength: maxL } : {}) });
        for (let k = 0; k < 300; k++) {
          const len = Math.floor(r() * 8);
          const s = Array.from({ length: len }, () => 'ab"\\\né xz1 _'[Math.floor(r() * 13)]).join('');
          expect(v(s), `${JSON.stringify(s)} matches ${p} (${minL}-${maxL}) though the grammar has nothing`).toBe(false);
        }
        continue;
      }
      checked += checkPattern(p, minL, maxL, r);
    }
    expect(checked).toBeGreaterThan(10_000);
    expect(unknown).toBeLessThan(200);
  });

  it('formats: the grammar writes only valid dates, times, uuids and addresses', () => {
    const r = prng(5);
    for (const [format, pattern] of Object.entries(STRING_FORMAT_PATTERNS)) {
      const v = ajv.compile({ type: 'string', format });
      const e = jsonText(patternExpr(pattern, 1000)!)!;
      for (let i = 0; i < 3000; i++) {
        const s = sample(e, r, 4);
        expect(v(JSON.parse(`"${s}"`)), `${s} as ${format}`).toBe(true);
      }
    }
    // The checks themselves follow the formats' definitions.
    const date = ajv.compile({ format: 'date' });
    expect([date('2024-02-29'), date('2023-02-29'), date('2023-04-31'), date('2023-13-01')]).toEqual([true, false, false, false]);
    const time = ajv.compile({ format: 'time' });
    expect([time('23:59:60Z'), time('12:00:00'), time('12:00:00+01:00'), time('24:00:00Z')]).toEqual([true, false, true, false]);
  });

  it('lengths count characters (code points) as ajv does, with escapes as one', () => {
    const r = prng(11);
    const e = jsonText(withLengths(rep(ANY, 0, Infinity), 3, 5)!)!;
    const v = ajv.compile({ type: 'string', minLength: 3, maxLength: 5 });
    for (let i = 0; i < 5000; i++) {
      const t = sample(e, r, 6);
      expect(v(JSON.parse(`"${t}"`)), t).toBe(true);
    }
  });

  it('repetitions above llama.cpp\'s 2000 are written as blocks', () => {
    const g = new GbnfRules('b-');
    const body = g.render(rep(lit('x'), 3500, 7777)!);
    const text = `root ::= ${body}\n${g.text()}`;
    for (const m of text.matchAll(/\{(\d+)(?:,(\d*))?\}/g)) {
      expect(Number(m[1])).toBeLessThanOrEqual(2000);
      if (m[2]) expect(Number(m[2])).toBeLessThanOrEqual(2000);
    }
  });
});
