// Small regular expressions over characters (code points), the form in which the checking pass writes the
// grammar of the values it generates itself (strings with patterns, formats or lengths; numbers with
// bounds). One expression renders to GBNF for llama.cpp's grammar engine, and to a JavaScript RegExp and a
// random sampler for the tests, so both renderings come from the same structure.

/** A set of code points: sorted, disjoint, inclusive ranges. */
export type Ranges = ReadonlyArray<readonly [number, number]>;

export type Expr =
  | { readonly k: 'eps' }
  | { readonly k: 'lit'; readonly s: string }
  | { readonly k: 'cls'; readonly r: Ranges }
  | { readonly k: 'seq'; readonly xs: readonly Expr[] }
  | { readonly k: 'alt'; readonly xs: readonly Expr[] }
  | { readonly k: 'rep'; readonly x: Expr; readonly min: number; readonly max: number };

export const EPS: Expr = { k: 'eps' };

export function lit(s: string): Expr {
  return s.length === 0 ? EPS : { k: 'lit', s };
}

export function cls(r: Ranges): Expr | null {
  if (r.length === 0) return null;
  if (r.length === 1 && r[0][0] === r[0][1]) return lit(String.fromCodePoint(r[0][0]));
  return { k: 'cls', r };
}

/** A sequence; null (no string) when any part is null. */
export function seq(...parts: ReadonlyArray<Expr | null>): Expr | null {
  const xs: Expr[] = [];
  for (const p of parts) {
    if (p === null) return null;
    if (p.k === 'eps') continue;
    const last = xs[xs.length - 1];
    if (p.k === 'lit' && last?.k === 'lit') xs[xs.length - 1] = { k: 'lit', s: last.s + p.s };
    else if (p.k === 'seq') for (const q of p.xs) xs.push(q);
    else xs.push(p);
  }
  if (xs.length === 0) return EPS;
  if (xs.length === 1) return xs[0];
  return { k: 'seq', xs };
}

/** Alternatives; the null ones are dropped, and null when none is left. */
export function alt(...parts: ReadonlyArray<Expr | null>): Expr | null {
  const xs: Expr[] = [];
  for (const p of parts) {
    if (p === null) continue;
    if (p.k === 'alt') xs.push(...p.xs);
    else xs.push(p);
  }
  if (xs.length === 0) return null;
  if (xs.length === 1) return xs[0];
  return { k: 'alt', xs };
}

/** `x` from `min` to `max` times (`max` Infinity: unbounded). */
export function rep(x: Expr | null, min: number, max: number): Expr | null {
  if (max < min) return null;
  if (max === 0) return EPS;
  if (x === null) return min === 0 ? EPS : null;
  if (x.k === 'eps') return EPS;
  if (min === 1 && max === 1) return x;
  return { k: 'rep', x, min, max };
}

export function opt(x: Expr | null): Expr {
  return rep(x, 0, 1) ?? EPS;
}

/** Whether the expression matches the empty string. */
export function nullable(e: Expr): boolean {
  switch (e.k) {
    case 'eps':
      return true;
    case 'lit':
    case 'cls':
      return false;
    case 'seq':
      return e.xs.every(nullable);
    case 'alt':
      return e.xs.some(nullable);
    case 'rep':
      return e.min === 0 || nullable(e.x);
  }
}

/** Shortest and longest match in characters (code points); max is Infinity when unbounded. */
export function lengths(e: Expr): [number, number] {
  switch (e.k) {
    case 'eps':
      return [0, 0];
    case 'lit': {
      const n = [...e.s].length;
      return [n, n];
    }
    case 'cls':
      return [1, 1];
    case 'seq': {
      let a = 0;
      let b = 0;
      for (const x of e.xs) {
        const [p, q] = lengths(x);
        a += p;
        b += q;
      }
      return [a, b];
    }
    case 'alt': {
      let a = Infinity;
      let b = 0;
      for (const x of e.xs) {
        const [p, q] = lengths(x);
        a = Math.min(a, p);
        b = Math.max(b, q);
      }
      return [a, b];
    }
    case 'rep': {
      const [p, q] = lengths(e.x);
      return [p * e.min, q === 0 ? 0 : e.max === Infinity ? Infinity : q * e.max];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// GBNF

/**
 * llama.cpp's grammar parser expands `x{m,n}` into n rules, refuses more than 2000 repetitions in one
 * sequence (the product of the sequence's repetition counts), and silently drops a maximum above 2000
 * (the repetition becomes unbounded). Repetitions are therefore written each in a rule of its own, and
 * counts above this block size are written as repetitions of blocks.
 */
const BLOCK = 1000;

function hex(cp: number): string {
  return cp <= 0xffff ? `\\u${cp.toString(16).toUpperCase().padStart(4, '0')}` : `\\U${cp.toString(16).toUpperCase().padStart(8, '0')}`;
}

function classChar(cp: number): string {
  if ((cp >= 0x30 && cp <= 0x39) || (cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a)) return String.fromCodePoint(cp);
  return hex(cp);
}

function gbnfLiteral(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (cp < 0x20 || cp === 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp === 0x2028 || cp === 0x2029) out += hex(cp);
    else out += ch;
  }
  return out + '"';
}

function gbnfClass(r: Ranges): string {
  let out = '[';
  for (const [a, b] of r) out += a === b ? classChar(a) : `${classChar(a)}-${classChar(b)}`;
  return out + ']';
}

/** Collects GBNF rules under a prefix; equal bodies share one rule. */
export class GbnfRules {
  readonly #prefix: string;
  readonly #byBody = new Map<string, string>();
  readonly #rules: Array<[string, string]> = [];
  #size = 0;

  constructor(prefix: string) {
    this.#prefix = prefix;
  }

  /** Bytes of grammar text written so far. */
  get size(): number {
    return this.#size;
  }

  /** Adds a rule with this body (or finds the one that has it) and returns its name. */
  rule(body: string, name?: string): string {
    const known = name === undefined ? this.#byBody.get(body) : undefined;
    if (known !== undefined) return known;
    const n = name ?? `${this.#prefix}${this.#rules.length}`;
    this.#rules.push([n, body]);
    if (name === undefined) this.#byBody.set(body, n);
    this.#size += n.length + body.length + 6;
    return n;
  }

  /** The rules as GBNF text. */
  text(): string {
    return this.#rules.map(([n, b]) => `${n} ::= ${b}\n`).join('');
  }

  /** GBNF for an expression, safe to put beside other symbols. */
  symbols(e: Expr): string {
    const s = this.render(e);
    return e.k === 'alt' && !s.endsWith(')?') ? `(${s})` : s;
  }

  /** GBNF for an expression (alternatives unbracketed: the body of a rule). */
  render(e: Expr): string {
    switch (e.k) {
      case 'eps':
        return '""';
      case 'lit':
        return gbnfLiteral(e.s);
      case 'cls':
        return gbnfClass(e.r);
      case 'seq':
        return e.xs.map((x) => (x.k === 'alt' ? `(${this.render(x)})` : this.render(x))).join(' ');
      case 'alt': {
        const rest = e.xs.filter((x) => x.k !== 'eps');
        const body = rest.map((x) => this.render(x)).join(' | ');
        return rest.length < e.xs.length ? `(${body})?` : body;
      }
      case 'rep':
        return this.#rep(e.x, e.min, e.max);
    }
  }

  #atom(e: Expr): string {
    if (e.k === 'lit' && [...e.s].length === 1) return gbnfLiteral(e.s);
    if (e.k === 'cls') return gbnfClass(e.r);
    return this.rule(this.render(e));
  }

  #rep(x: Expr, min: number, max: number): string {
    const a = this.#atom(x);
    const count = (m: number, n: number): string => {
      if (m === 0 && n === Infinity) return `${a}*`;
      if (m === 1 && n === Infinity) return `${a}+`;
      if (m === 0 && n === 1) return `${a}?`;
      if (m === n) return `${a}{${m}}`;
      return `${a}{${m},${n === Infinity ? '' : n}}`;
    };
    if (min <= BLOCK && (max <= BLOCK || max === Infinity)) return this.rule(count(min, max));
    // Blocks of BLOCK copies: the exact part (min), then up to max - min more, written without ambiguity:
    // fewer than dq blocks' worth as whole blocks and a shorter tail, or dq blocks and at most dr more.
    const block = this.rule(`${a}{${BLOCK}}`);
    const parts: string[] = [];
    const q = Math.floor(min / BLOCK);
    const r = min % BLOCK;
    if (q > 0) parts.push(q === 1 ? block : this.rule(`${block}{${q}}`));
    if (r > 0) parts.push(this.rule(count(r, r)));
    if (max === Infinity) {
      parts.push(this.rule(`${a}*`));
    } else if (max > min) {
      const d = max - min;
      const dq = Math.floor(d / BLOCK);
      const dr = d % BLOCK;
      if (dq === 0) {
        parts.push(this.rule(count(0, dr)));
      } else {
        const below = [dq > 1 ? this.rule(`${block}{0,${dq - 1}}`) : '', this.rule(count(0, BLOCK - 1))].filter(Boolean).join(' ');
        const above = [dq > 1 ? this.rule(`${block}{${dq}}`) : block, dr > 0 ? this.rule(count(0, dr)) : ''].filter(Boolean).join(' ');
        parts.push(this.rule(`${below} | ${above}`));
      }
    }
    return parts.join(' ');
  }
}

// ---------------------------------------------------------------------------------------------------------
// For the tests: a RegExp of the same language, and random members.

function reClass(r: Ranges): string {
  const c = (cp: number) => `\\u{${cp.toString(16)}}`;
  return `[${r.map(([a, b]) => (a === b ? c(a) : `${c(a)}-${c(b)}`)).join('')}]`;
}

function reSource(e: Expr): string {
  switch (e.k) {
    case 'eps':
      return '';
    case 'lit':
      return [...e.s].map((ch) => `\\u{${ch.codePointAt(0)!.toString(16)}}`).join('');
    case 'cls':
      return reClass(e.r);
    case 'seq':
      return e.xs.map((x) => `(?:${reSource(x)})`).join('');
    case 'alt':
      return e.xs.map((x) => `(?:${reSource(x)})`).join('|');
    case 'rep':
      return `(?:${reSource(e.x)}){${e.min},${e.max === Infinity ? '' : e.max}}`;
  }
}

/** @internal A RegExp that matches exactly the strings of the expression. */
export function toRegExp(e: Expr): RegExp {
  return new RegExp(`^(?:${reSource(e)})$`, 'u');
}

/** @internal A random member of the expression's language (`rand` in [0, 1)). Unbounded repetitions stop early. */
export function sample(e: Expr, rand: () => number, spread = 4): string {
  switch (e.k) {
    case 'eps':
      return '';
    case 'lit':
      return e.s;
    case 'cls': {
      let total = 0;
      for (const [a, b] of e.r) total += b - a + 1;
      let i = Math.floor(rand() * total);
      for (const [a, b] of e.r) {
        if (i <= b - a) return String.fromCodePoint(a + i);
        i -= b - a + 1;
      }
      return '';
    }
    case 'seq':
      return e.xs.map((x) => sample(x, rand, spread)).join('');
    case 'alt':
      return sample(e.xs[Math.floor(rand() * e.xs.length)], rand, spread);
    case 'rep': {
      const hi = Math.min(e.max, e.min + spread);
      const n = e.min + Math.floor(rand() * (hi - e.min + 1));
      let s = '';
      for (let i = 0; i < n; i++) s += sample(e.x, rand, spread);
      return s;
    }
  }
}
