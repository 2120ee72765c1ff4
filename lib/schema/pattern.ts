// JSON schema `pattern`s (ECMAScript regular expressions with the `u` flag, the way ajv runs them) as
// expressions over code points, for the grammar of a JSON string: what the grammar cannot express
// (lookaround, backreferences, word boundaries, Unicode properties, anchors inside the pattern) is an
// UnsupportedPattern. A pattern matches anywhere in the string unless anchored, so an unanchored side
// gets "any characters" beside it.
import { alt, cls, EPS, lengths, lit, rep, seq, type Expr, type Ranges } from './expr.js';

export const MAX_CODE_POINT = 0x10ffff;

/** A regex the grammar cannot express. */
export class UnsupportedPattern extends Error {}

/** A regex over the limits (repetition counts). */
export class PatternLimit extends Error {}

// ---------------------------------------------------------------------------------------------------------
// Sets of code points

function normalize(list: Array<[number, number]>): Array<[number, number]> {
  list.sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of list) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

export function union(...sets: Ranges[]): Ranges {
  return normalize(sets.flatMap((s) => s.map(([a, b]) => [a, b] as [number, number])));
}

export function complement(s: Ranges): Ranges {
  const out: Array<[number, number]> = [];
  let next = 0;
  for (const [a, b] of s) {
    if (a > next) out.push([next, a - 1]);
    next = b + 1;
  }
  if (next <= MAX_CODE_POINT) out.push([next, MAX_CODE_POINT]);
  return out;
}

export function intersect(x: Ranges, y: Ranges): Ranges {
  return complement(union(complement(x), complement(y)));
}

export function subtract(x: Ranges, y: Ranges): Ranges {
  return intersect(x, complement(y));
}

function size(s: Ranges): number {
  let n = 0;
  for (const [a, b] of s) n += b - a + 1;
  return n;
}

const ch = (c: string): [number, number] => [c.codePointAt(0)!, c.codePointAt(0)!];
export const DIGIT: Ranges = [[0x30, 0x39]];
const WORD: Ranges = union([[0x30, 0x39], [0x41, 0x5a], [0x61, 0x7a]], [ch('_')]);
const SPACE: Ranges = union(
  [[0x09, 0x0d], [0x20, 0x20], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a], [0x2028, 0x2029]],
  [[0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff]],
);
const LINE_TERMINATORS: Ranges = [[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]];
export const ALL: Ranges = [[0, MAX_CODE_POINT]];
const SURROGATES: Ranges = [[0xd800, 0xdfff]];

// ---------------------------------------------------------------------------------------------------------
// Parser: ECMAScript pattern syntax in `u` mode (the pattern has already compiled with `new RegExp(p, 'u')`).

type Node =
  | { t: 'set'; r: Ranges }
  | { t: 'seq'; xs: Node[] }
  | { t: 'alt'; xs: Node[] }
  | { t: 'rep'; x: Node; min: number; max: number }
  | { t: 'bol' }
  | { t: 'eol' };

class Parser {
  readonly cps: number[];
  i = 0;
  constructor(
    readonly src: string,
    readonly maxCount: number,
  ) {
    this.cps = [...src].map((c) => c.codePointAt(0)!);
  }

  peek(k = 0): string | undefined {
    const cp = this.cps[this.i + k];
    return cp === undefined ? undefined : String.fromCodePoint(cp);
  }

  eat(s: string): boolean {
    if (this.peek() === s) {
      this.i++;
      return true;
    }
    return false;
  }

  fail(what: string): never {
    throw new UnsupportedPattern(what);
  }

  disjunction(): Node {
    const xs = [this.alternative()];
    while (this.eat('|')) xs.push(this.alternative());
    return xs.length === 1 ? xs[0] : { t: 'alt', xs };
  }

  alternative(): Node {
    const xs: Node[] = [];
    while (this.i < this.cps.length && this.peek() !== '|' && this.peek() !== ')') {
      xs.push(this.term());
    }
    return xs.length === 1 ? xs[0] : { t: 'seq', xs };
  }

  term(): Node {
    const c = this.peek()!;
    if (c === '^') {
      this.i++;
      return { t: 'bol' };
    }
    if (c === '$') {
      this.i++;
      return { t: 'eol' };
    }
    if (c === '\\' && (this.peek(1) === 'b' || this.peek(1) === 'B')) this.fail('a word boundary (\\b, \\B)');
    if (c === '(' && this.peek(1) === '?' && (this.peek(2) === '=' || this.peek(2) === '!' || (this.peek(2) === '<' && (this.peek(3) === '=' || this.peek(3) === '!')))) {
      this.fail('a lookaround ((?=, (?!, (?<=, (?<!)');
    }
    const atom = this.atom();
    return this.quantifier(atom);
  }

  quantifier(atom: Node): Node {
    let min: number;
    let max: number;
    const c = this.peek();
    if (c === '*') [min, max] = [0, Infinity];
    else if (c === '+') [min, max] = [1, Infinity];
    else if (c === '?') [min, max] = [0, 1];
    else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(String.fromCodePoint(...this.cps.slice(this.i, this.i + 40)));
      if (!m) return atom;
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
      if (min > max) this.fail(`the repetition {${m[1]},${m[3]}} (its minimum is above its maximum)`);
      if (min > this.maxCount || (max !== Infinity && max > this.maxCount)) {
        throw new PatternLimit(`the repetition ${m[0]} (repetition counts are limited to ${this.maxCount})`);
      }
      this.i += m[0].length - 1;
    } else return atom;
    this.i++;
    this.eat('?'); // lazy: the same strings
    if (atom.t === 'bol' || atom.t === 'eol') this.fail('a quantified anchor');
    return { t: 'rep', x: atom, min, max };
  }

  atom(): Node {
    const c = this.peek()!;
    this.i++;
    if (c === '.') return { t: 'set', r: complement(LINE_TERMINATORS) };
    if (c === '(') {
      if (this.eat('?')) {
        if (this.eat(':')) {
          // non-capturing group
        } else if (this.peek() === '<') {
          while (this.i < this.cps.length && this.peek() !== '>') this.i++;
          this.i++;
        } else {
          this.fail('a group modifier');
        }
      }
      const inner = this.disjunction();
      if (!this.eat(')')) this.fail('an unbalanced group');
      return inner;
    }
    if (c === '[') return { t: 'set', r: this.classBody() };
    if (c === '\\') return { t: 'set', r: this.escape(false) };
    if (c === ')' || c === '|' || c === '*' || c === '+' || c === '?') this.fail(`a misplaced ${c}`);
    return { t: 'set', r: [ch(c)] };
  }

  hex(n: number): number {
    const s = String.fromCodePoint(...this.cps.slice(this.i, this.i + n));
    if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(s)) this.fail('a malformed escape');
    this.i += n;
    return parseInt(s, 16);
  }

  /** After a backslash: the set it stands for. */
  escape(inClass: boolean): Ranges {
    const c = this.peek();
    if (c === undefined) this.fail('a trailing backslash');
    this.i++;
    switch (c) {
      case 'd':
        return DIGIT;
      case 'D':
        return complement(DIGIT);
      case 'w':
        return WORD;
      case 'W':
        return complement(WORD);
      case 's':
        return SPACE;
      case 'S':
        return complement(SPACE);
      case 'n':
        return [[0x0a, 0x0a]];
      case 'r':
        return [[0x0d, 0x0d]];
      case 't':
        return [[0x09, 0x09]];
      case 'v':
        return [[0x0b, 0x0b]];
      case 'f':
        return [[0x0c, 0x0c]];
      case 'b':
        if (inClass) return [[0x08, 0x08]];
        return this.fail('a word boundary (\\b)');
      case '0':
        if (this.peek() !== undefined && /[0-9]/.test(this.peek()!)) this.fail('an octal escape');
        return [[0, 0]];
      case 'c': {
        const l = this.peek();
        if (l === undefined || !/[a-zA-Z]/.test(l)) this.fail('a malformed \\c escape');
        this.i++;
        const v = l.codePointAt(0)! % 32;
        return [[v, v]];
      }
      case 'x': {
        const v = this.hex(2);
        return [[v, v]];
      }
      case 'u': {
        let v: number;
        if (this.eat('{')) {
          const start = this.i;
          while (this.peek() !== undefined && this.peek() !== '}') this.i++;
          v = parseInt(String.fromCodePoint(...this.cps.slice(start, this.i)), 16);
          if (!this.eat('}') || !(v >= 0 && v <= MAX_CODE_POINT)) this.fail('a malformed \\u{} escape');
        } else {
          v = this.hex(4);
          // A surrogate pair written as two escapes is one code point.
          if (v >= 0xd800 && v <= 0xdbff && this.peek() === '\\' && this.peek(1) === 'u') {
            const save = this.i;
            this.i += 2;
            const lo = /^[0-9a-fA-F]{4}$/.test(String.fromCodePoint(...this.cps.slice(this.i, this.i + 4))) ? this.hex(4) : -1;
            if (lo >= 0xdc00 && lo <= 0xdfff) v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
            else this.i = save;
          }
          // A lone surrogate matches only strings that are not Unicode text, which the grammar cannot write
          // (in JSON only as a \u escape): unsupported, not "no string matches" (ajv matches "\ud83d").
          if (v >= 0xd800 && v <= 0xdfff) this.fail('a lone surrogate (\\u' + v.toString(16).toUpperCase() + ')');
        }
        return [[v, v]];
      }
      case 'p':
      case 'P':
        return this.fail('a Unicode property escape (\\p, \\P)');
      case 'k':
        return this.fail('a named backreference (\\k)');
      default:
        if (/[1-9]/.test(c)) this.fail('a backreference');
        // identity escapes: syntax characters, '/', and '-' in a class
        return [ch(c)];
    }
  }

  classBody(): Ranges {
    const negate = this.eat('^');
    const parts: Ranges[] = [];
    while (this.peek() !== ']') {
      if (this.peek() === undefined) this.fail('an unterminated class');
      const a = this.classAtom();
      if (this.peek() === '-' && this.peek(1) !== ']' && this.peek(1) !== undefined) {
        this.i++;
        const b = this.classAtom();
        if (a.length !== 1 || a[0][0] !== a[0][1] || b.length !== 1 || b[0][0] !== b[0][1]) this.fail('a class range between sets');
        if (a[0][0] > b[0][0]) this.fail('a class range out of order');
        parts.push([[a[0][0], b[0][0]]]);
      } else {
        parts.push(a);
      }
    }
    this.i++;
    const set = union(...parts);
    return negate ? complement(set) : set;
  }

  classAtom(): Ranges {
    const c = this.peek()!;
    this.i++;
    if (c === '\\') return this.escape(true);
    return [ch(c)];
  }
}

/** Sets of a node, as an expression over code points; anchors must be gone. */
function toExpr(n: Node): Expr | null {
  switch (n.t) {
    case 'set':
      return cls(subtract(n.r, SURROGATES));
    case 'seq':
      return seq(...n.xs.map(toExpr));
    case 'alt':
      return alt(...n.xs.map(toExpr));
    case 'rep':
      return rep(toExpr(n.x), n.min, n.max);
    case 'bol':
    case 'eol':
      throw new UnsupportedPattern('an anchor (^ or $) inside the pattern');
  }
}

const ANY_CHAR = subtract(ALL, SURROGATES);

/** Top-level alternatives, each with its anchors taken off. */
function anchored(n: Node): Array<{ body: Node[]; start: boolean; end: boolean }> {
  const alts = n.t === 'alt' ? n.xs : [n];
  const out: Array<{ body: Node[]; start: boolean; end: boolean }> = [];
  for (const a of alts) {
    let items = a.t === 'seq' ? [...a.xs] : [a];
    // (^a$|^b$) as a whole: its alternatives are top-level alternatives.
    if (items.length === 1 && items[0].t === 'alt' && JSON.stringify(items[0]).includes('"t":"bol"')) {
      out.push(...anchored(items[0]));
      continue;
    }
    let start = false;
    let end = false;
    while (items[0]?.t === 'bol') {
      start = true;
      items = items.slice(1);
    }
    while (items[items.length - 1]?.t === 'eol') {
      end = true;
      items = items.slice(0, -1);
    }
    out.push({ body: items, start, end });
  }
  return out;
}

/**
 * The strings that contain a match of the pattern, as an expression over code points (null: none).
 * @throws UnsupportedPattern for what the grammar cannot express; PatternLimit over `maxCount` repetitions.
 */
export function patternExpr(pattern: string, maxCount: number): Expr | null {
  const p = new Parser(pattern, maxCount);
  const tree = p.disjunction();
  if (p.i < p.cps.length) throw new UnsupportedPattern('an unbalanced group');
  const any = rep(cls(ANY_CHAR), 0, Infinity);
  return alt(
    ...anchored(tree).map(({ body, start, end }) => {
      // An anchor that is not at an edge of its alternative is unsupported (toExpr throws).
      return seq(start ? EPS : any, ...body.map(toExpr), end ? EPS : any);
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------
// Lengths

/**
 * The expression narrowed to strings of `min` to `max` characters, when that can be written by adjusting
 * repetition counts (each top-level alternative a sequence of fixed-length parts and repetitions of
 * fixed-length parts). Narrowing keeps only matching strings, possibly not all of them. Returns null when
 * no string of those lengths matches, undefined when it cannot tell.
 */
export function withLengths(e: Expr | null, min: number, max: number): Expr | null | undefined {
  if (e === null) return null;
  const [lo, hi] = lengths(e);
  if (lo >= min && hi <= max) return e;
  if (hi < min || lo > max) return null;
  const alts = e.k === 'alt' ? e.xs : [e];
  let unknown = false;
  const kept: Expr[] = [];
  for (const a of alts) {
    const r = narrowSeq(a, min, max);
    if (r === undefined) unknown = true;
    else if (r !== null) kept.push(r);
  }
  if (kept.length > 0) return alt(...kept);
  return unknown ? undefined : null;
}

function narrowSeq(e: Expr, min: number, max: number): Expr | null | undefined {
  const [lo, hi] = lengths(e);
  if (lo >= min && hi <= max) return e;
  if (hi < min || lo > max) return null;
  const items = e.k === 'seq' ? [...e.xs] : [e];
  // Repetitions of a fixed-length part are adjustable; other parts must have a fixed length.
  let fixed = 0;
  const adj: Array<{ i: number; k: number; a: number; b: number }> = [];
  for (let i = 0; i < items.length; i++) {
    const x = items[i];
    const [p, q] = lengths(x);
    if (p === q) {
      fixed += p;
      continue;
    }
    if (x.k !== 'rep') return undefined;
    const [kp, kq] = lengths(x.x);
    if (kp !== kq || kp === 0) return undefined;
    adj.push({ i, k: kp, a: x.min, b: x.max });
  }
  // Least lengths first, then the budget up to max shared out.
  let total = fixed + adj.reduce((s, x) => s + x.k * x.a, 0);
  if (total > max) return null;
  let deficit = min - total;
  for (const x of adj) {
    if (deficit <= 0) break;
    const more = Math.min(x.b - x.a, Math.ceil(deficit / x.k));
    x.a += more;
    deficit -= more * x.k;
    total += more * x.k;
  }
  if (deficit > 0) return null;
  if (total > max) {
    // raising minimums overshot (parts longer than one character)
    return undefined;
  }
  if (max !== Infinity) {
    let budget = max - total;
    const share = Math.floor(budget / adj.length);
    for (const x of adj) {
      const more = Math.min(x.b - x.a, Math.floor(share / x.k));
      x.b = x.a + more;
      budget -= more * x.k;
    }
    for (const x of adj) {
      const room = Math.floor(budget / x.k);
      if (room > 0) {
        x.b += room;
        budget -= room * x.k;
      }
    }
  }
  for (const x of adj) {
    const r = items[x.i] as Extract<Expr, { k: 'rep' }>;
    items[x.i] = rep(r.x, x.a, Math.min(x.b, r.max))!;
  }
  return seq(...items);
}

// ---------------------------------------------------------------------------------------------------------
// JSON text

const SHORT_ESCAPES = new Map<number, string>([
  [0x22, '\\"'],
  [0x5c, '\\\\'],
  [0x08, '\\b'],
  [0x0c, '\\f'],
  [0x0a, '\\n'],
  [0x0d, '\\r'],
  [0x09, '\\t'],
]);
const CONTROLS: Ranges = [[0x00, 0x1f], [0x7f, 0x7f]];
const QUOTE_BACKSLASH: Ranges = [[0x22, 0x22], [0x5c, 0x5c]];

function needsEscape(cp: number): boolean {
  return cp < 0x20 || cp === 0x7f || cp === 0x22 || cp === 0x5c;
}

function escapeOf(cp: number): string {
  return SHORT_ESCAPES.get(cp) ?? `\\u${cp.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * The expression over a string's characters, as an expression over the JSON text that writes them
 * (without the quotes): quotes and backslashes escaped, control characters escaped when nothing else of
 * their set is left (a set with other characters drops them: the grammar may be narrower than the schema).
 */
export function jsonText(e: Expr): Expr | null {
  switch (e.k) {
    case 'eps':
      return e;
    case 'lit':
      return lit([...e.s].map((c) => (needsEscape(c.codePointAt(0)!) ? escapeOf(c.codePointAt(0)!) : c)).join(''));
    case 'cls': {
      const plain = subtract(e.r, union(CONTROLS, QUOTE_BACKSLASH, SURROGATES));
      const special = plain.length > 0 ? intersect(e.r, QUOTE_BACKSLASH) : intersect(e.r, union(CONTROLS, QUOTE_BACKSLASH));
      const escapes: Expr[] = [];
      for (const [a, b] of special) for (let cp = a; cp <= b; cp++) escapes.push(lit(escapeOf(cp)));
      return alt(cls(plain), ...escapes);
    }
    case 'seq':
      return seq(...e.xs.map(jsonText));
    case 'alt':
      return alt(...e.xs.map(jsonText));
    case 'rep':
      return rep(jsonText(e.x), e.min, e.max);
  }
}

/** A string of any characters (surrogates cannot be written). */
export const ANY: Expr = cls(ANY_CHAR)!;

export { size as rangesSize };
