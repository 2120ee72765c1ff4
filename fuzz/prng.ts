// A small seeded PRNG (mulberry32) with the helpers the generators use. The same seed gives the same cases.

export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }

  /** Picks with weights: [[weight, value], ...]. */
  weighted<T>(items: ReadonlyArray<readonly [number, T]>): T {
    const total = items.reduce((s, [w]) => s + w, 0);
    let r = this.next() * total;
    for (const [w, v] of items) {
      r -= w;
      if (r < 0) return v;
    }
    return items[items.length - 1][1];
  }

  /** A 32-bit seed for a sub-generator. */
  seed(): number {
    return Math.floor(this.next() * 4294967296) >>> 0;
  }

  /** A size, mostly small, sometimes large: log-uniform in [1, max]. */
  size(max: number): number {
    return Math.max(1, Math.floor(Math.exp(this.next() * Math.log(max + 1))));
  }
}

/** Code points worth trying: every plane, surrogates, combining marks, emoji, controls, BOM, noncharacters. */
export function randomCodePoint(r: Rng): number {
  return r.weighted<() => number>([
    [20, () => r.int(0x20, 0x7e)],
    [6, () => r.pick([0x7b, 0x7d, 0x7e, 0xe9, 0x20, 0x0a, 0x09, 0x5c, 0x22, 0x3c, 0x3e, 0x7c])], // { } ~ é space \n \t \ " < > |
    [5, () => r.int(0, 0x1f)],
    [2, () => r.pick([0x7f, 0x80, 0x85, 0x9f, 0xa0, 0xad, 0xfeff, 0xfffd, 0xfffe, 0xffff, 0x200b, 0x200d, 0x2028, 0x2029, 0x202e])],
    [6, () => r.int(0x80, 0x7ff)],
    [4, () => r.int(0x300, 0x36f)], // combining marks
    [6, () => r.int(0x800, 0xffff)],
    [3, () => r.int(0xd800, 0xdfff)], // lone surrogates (JS strings allow them)
    [3, () => r.int(0x4e00, 0x9fff)], // CJK
    [4, () => r.int(0x1f300, 0x1faff)], // emoji
    [3, () => r.int(0x10000, 0x10ffff)], // any supplementary plane
    [1, () => r.pick([0xe0001, 0xe0020, 0xe007f, 0xf0000, 0x10fffd, 0x10ffff, 0x1d11e])],
  ])();
}

/** A random string of adversarial Unicode, sometimes with long runs of one character. */
export function randomText(r: Rng, maxLength = 64): string {
  const n = r.size(maxLength);
  let s = '';
  while (s.length < n) {
    if (r.chance(0.05)) {
      const unit = r.chance(0.5) ? String.fromCodePoint(randomCodePoint(r)) : randomText(r, 4);
      s += unit.repeat(r.size(maxLength < 40 ? maxLength : r.chance(0.1) ? 20000 : 200));
    } else if (r.chance(0.03)) {
      s += r.pick(['<s>', '</s>', '<|im_start|>', '<|endoftext|>', '<unk>', '<0x0A>', '▁', 'Ġ', '\u0120', '<|user|>', '[INST]']);
    } else {
      s += String.fromCodePoint(randomCodePoint(r));
    }
  }
  return s;
}
