// Numbers within bounds, as expressions over the JSON text of the number: plain decimal notation (no
// exponent), at most 15 integer digits and a bounded count of fraction digits. Bounds are taken the way a
// validator compares them, on doubles: a text is admitted only when the double it parses to is within
// the bounds, so `JSON.parse` of any admitted text satisfies `minimum`, `exclusiveMaximum` and the rest.
import { alt, cls, EPS, lit, rep, seq, type Expr } from './expr.js';

/** Largest magnitude written (exclusive): 10^15, where doubles still hold every integer. */
export const NUMBER_CAP = 1e15;
/** Fraction digits of a number that has bounds (more when the range needs them, up to 20). */
export const DEFAULT_FRACTION_DIGITS = 6;
const MAX_FRACTION_DIGITS = 20;

const DIGIT = cls([[0x30, 0x39]])!;

// Exact values of doubles: n / 2^k.
interface Exact {
  n: bigint;
  k: bigint;
}

const buf = new DataView(new ArrayBuffer(8));

function bits(x: number): bigint {
  buf.setFloat64(0, x);
  return buf.getBigUint64(0);
}

function fromBits(b: bigint): number {
  buf.setBigUint64(0, b);
  return buf.getFloat64(0);
}

function exact(x: number): Exact {
  const b = bits(x);
  const neg = b >> 63n === 1n;
  const e = Number((b >> 52n) & 0x7ffn);
  const f = b & ((1n << 52n) - 1n);
  const mant = e === 0 ? f : f | (1n << 52n);
  const exp = e === 0 ? -1074 : e - 1075;
  const n = neg ? -mant : mant;
  return exp >= 0 ? { n: n << BigInt(exp), k: 0n } : { n, k: BigInt(-exp) };
}

/** The next double above x (x finite). */
function nextUp(x: number): number {
  if (x === 0) return Number.MIN_VALUE;
  const b = bits(x);
  return x > 0 ? fromBits(b + 1n) : fromBits(b - 1n);
}

function nextDown(x: number): number {
  return -nextUp(-x);
}

/** (a + b) / 2, exactly. */
function mid(a: number, b: number): Exact {
  const x = exact(a);
  const y = exact(b);
  const k = x.k > y.k ? x.k : y.k;
  const n = (x.n << (k - x.k)) + (y.n << (k - y.k));
  return { n, k: k + 1n };
}

function floorDiv(n: bigint, d: bigint): bigint {
  const q = n / d;
  return n % d !== 0n && n < 0n !== d < 0n ? q - 1n : q;
}

/** floor(v × 10^f) */
function floorScaled(v: Exact, f: number): bigint {
  return floorDiv(v.n * 10n ** BigInt(f), 1n << v.k);
}

/** ceil(v × 10^f) */
function ceilScaled(v: Exact, f: number): bigint {
  return -floorDiv(-v.n * 10n ** BigInt(f), 1n << v.k);
}

export interface Bounds {
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
  exclusiveMaximum?: number;
}

/** The tighter lower bound (and whether it is exclusive), and the tighter upper one. */
export function effectiveBounds(b: Bounds): { lo?: number; loEx: boolean; hi?: number; hiEx: boolean } {
  let lo: number | undefined;
  let loEx = false;
  if (b.minimum !== undefined) lo = b.minimum;
  if (b.exclusiveMinimum !== undefined && (lo === undefined || b.exclusiveMinimum >= lo)) {
    lo = b.exclusiveMinimum;
    loEx = true;
  }
  let hi: number | undefined;
  let hiEx = false;
  if (b.maximum !== undefined) hi = b.maximum;
  if (b.exclusiveMaximum !== undefined && (hi === undefined || b.exclusiveMaximum <= hi)) {
    hi = b.exclusiveMaximum;
    hiEx = true;
  }
  return { lo, loEx, hi, hiEx };
}

/** Whether some double (or, for integers, some integer) satisfies the bounds. */
export function boundsSatisfiable(b: Bounds, integer: boolean): boolean {
  const { lo, loEx, hi, hiEx } = effectiveBounds(b);
  if (lo === undefined || hi === undefined) return true;
  const first = loEx ? nextUp(lo) : lo;
  const last = hiEx ? nextDown(hi) : hi;
  if (first > last) return false;
  if (!integer) return true;
  return Math.ceil(first) <= Math.floor(last);
}

/** Scaled integer bounds [L, H] of the texts with `f` fraction digits whose doubles are within the bounds. */
function scaled(b: Bounds, f: number): [bigint, bigint] {
  const { lo, loEx, hi, hiEx } = effectiveBounds(b);
  const cap = 10n ** BigInt(15 + f) - 1n;
  let L = -cap;
  let H = cap;
  if (lo !== undefined) {
    // round(v) >= lo exactly when v is above the midpoint below lo (above lo's upper midpoint when exclusive)
    const t = loEx ? mid(lo, nextUp(lo)) : mid(nextDown(lo), lo);
    const l = floorScaled(t, f) + 1n;
    if (l > L) L = l;
  }
  if (hi !== undefined) {
    const t = hiEx ? mid(nextDown(hi), hi) : mid(hi, nextUp(hi));
    const h = ceilScaled(t, f) - 1n;
    if (h < H) H = h;
  }
  return [L, H];
}

function pow10(n: number): bigint {
  return 10n ** BigInt(n);
}

/** Integers from lo to hi (0 <= lo <= hi), without leading zeros. */
function intRange(lo: bigint, hi: bigint): Expr | null {
  const parts: Array<Expr | null> = [];
  const dLo = lo.toString().length;
  const dHi = hi.toString().length;
  // Lengths whose every number is in range (10...0 to 99...9, from two digits on) are written as one
  // repetition, [1-9] [0-9]{m,n}, rather than one alternative per length: alternatives that share a prefix
  // multiply the parse states a grammar keeps while sampling, and make it slower.
  let fullFrom = 0;
  let fullTo = -1;
  const flushFull = () => {
    if (fullFrom <= fullTo) parts.push(seq(cls([[0x31, 0x39]]), rep(DIGIT, fullFrom - 1, fullTo - 1)));
    fullFrom = 0;
    fullTo = -1;
  };
  for (let d = dLo; d <= dHi; d++) {
    const a = d === 1 ? lo : lo > pow10(d - 1) ? lo : pow10(d - 1);
    const b = hi < pow10(d) - 1n ? hi : pow10(d) - 1n;
    if (a > b) continue;
    if (d >= 2 && a === pow10(d - 1) && b === pow10(d) - 1n) {
      if (fullFrom === 0) fullFrom = d;
      fullTo = d;
      continue;
    }
    flushFull();
    parts.push(fixedWidth(a.toString(), b.toString()));
  }
  flushFull();
  return alt(...parts);
}

/** Digit strings of lo's length from lo to hi. */
function fixedWidth(lo: string, hi: string): Expr | null {
  const n = lo.length;
  if (n === 0) return EPS;
  if (lo[0] === hi[0]) return seq(lit(lo[0]), fixedWidth(lo.slice(1), hi.slice(1)));
  const zeros = '0'.repeat(n - 1);
  const nines = '9'.repeat(n - 1);
  const a = lo.charCodeAt(0);
  const b = hi.charCodeAt(0);
  const startFull = lo.slice(1) === zeros;
  const endFull = hi.slice(1) === nines;
  const from = startFull ? a : a + 1;
  const to = endFull ? b : b - 1;
  return alt(
    startFull ? null : seq(lit(lo[0]), fixedWidth(lo.slice(1), nines)),
    from <= to ? seq(cls([[from, to]]), rep(DIGIT, n - 1, n - 1)) : null,
    endFull ? null : seq(lit(hi[0]), fixedWidth(zeros, hi.slice(1))),
  );
}

/** Non-empty digit strings of at most lo's length whose value padded with zeros is from lo to hi. */
function fractionDigits(lo: string, hi: string): Expr | null {
  const n = lo.length;
  if (/^0*$/.test(lo) && /^9*$/.test(hi)) return seq(DIGIT, rep(DIGIT, 0, n - 1));
  const zeros = '0'.repeat(n - 1);
  const nines = '9'.repeat(n - 1);
  const rest = (l: string, h: string): Expr | null => (n === 1 ? EPS : alt(/^0*$/.test(l) ? EPS : null, fractionDigits(l, h)));
  if (lo[0] === hi[0]) return seq(lit(lo[0]), rest(lo.slice(1), hi.slice(1)));
  const a = lo.charCodeAt(0);
  const b = hi.charCodeAt(0);
  return alt(
    seq(lit(lo[0]), rest(lo.slice(1), nines)),
    a + 1 <= b - 1 ? seq(cls([[a + 1, b - 1]]), rep(DIGIT, 0, n - 1)) : null,
    seq(lit(hi[0]), rest(zeros, hi.slice(1))),
  );
}

/** An optional fraction ("." and 1 to f digits) whose zero-padded digits are from lo to hi. */
function fraction(lo: string, hi: string): Expr | null {
  if (lo.length === 0) return EPS;
  const digits = seq(lit('.'), fractionDigits(lo, hi));
  return /^0*$/.test(lo) ? alt(EPS, digits) : digits;
}

/** Non-negative numbers from A to B (scaled by 10^f). */
function nonNegative(A: bigint, B: bigint, f: number): Expr | null {
  if (f === 0) return intRange(A, B);
  const s = pow10(f);
  const [aq, ar, bq, br] = [A / s, A % s, B / s, B % s];
  const pad = (r: bigint) => r.toString().padStart(f, '0');
  const zeros = '0'.repeat(f);
  const nines = '9'.repeat(f);
  if (aq === bq) return seq(lit(aq.toString()), fraction(pad(ar), pad(br)));
  const midLo = ar === 0n ? aq : aq + 1n;
  const midHi = br === s - 1n ? bq : bq - 1n;
  return alt(
    ar === 0n ? null : seq(lit(aq.toString()), fraction(pad(ar), nines)),
    midLo <= midHi ? seq(intRange(midLo, midHi), fraction(zeros, nines)) : null,
    br === s - 1n ? null : seq(lit(bq.toString()), fraction(zeros, pad(br))),
  );
}

function range(L: bigint, H: bigint, f: number): Expr | null {
  if (L > H) return null;
  if (L >= 0n) return nonNegative(L, H, f);
  if (H < 0n) return seq(lit('-'), nonNegative(-H, -L, f));
  return alt(seq(lit('-'), nonNegative(1n, -L, f)), nonNegative(0n, H, f));
}

/**
 * The JSON texts of numbers (integers when `integer`) within the bounds. Null when none can be written:
 * see {@link boundsSatisfiable} to tell an empty range from one beyond what is written (±10^15, 20
 * fraction digits).
 */
export function numberExpr(b: Bounds, integer: boolean): Expr | null {
  if (integer) {
    const [L, H] = scaled(b, 0);
    return range(L, H, 0);
  }
  for (let f = DEFAULT_FRACTION_DIGITS; f <= MAX_FRACTION_DIGITS; f++) {
    const [L, H] = scaled(b, f);
    if (L <= H) return range(L, H, f);
  }
  return null;
}
