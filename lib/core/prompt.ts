// A prompt as llama.cpp's server sees it (tools/server's server_tokens): a list of chunks, text tokens now
// and media later, each chunk filling positions of a sequence. Every prefix match and every cut of a
// session's cache, its history and another session's shared prefix goes through this one type.

/** Text: token ids, one position each. */
export interface TextChunk {
  readonly tokens: readonly number[];
}

/**
 * Media (an image, audio): one item that fills `length` positions and matches only itself (same `id`, the
 * hash of its content). Not produced by any API yet: the type is here so that prefix matching and cutting
 * already keep a media chunk whole.
 */
export interface MediaChunk {
  readonly media: { readonly id: string; readonly length: number };
}

export type PromptChunk = TextChunk | MediaChunk;

interface MediaSpan {
  readonly start: number;
  readonly length: number;
  readonly id: string;
}

/**
 * An immutable sequence of positions made of chunks. Text-only prompts (all of them today) are held as one
 * flat array, so matching them costs what comparing two arrays does.
 */
export class Prompt {
  /** Positions: a text token's id, or -1 for a position inside a media chunk. */
  readonly #flat: readonly number[];
  /** Media chunks, by start position. */
  readonly #media: readonly MediaSpan[];

  private constructor(flat: readonly number[], media: readonly MediaSpan[]) {
    this.#flat = flat;
    this.#media = media;
  }

  static readonly empty = new Prompt([], []);

  /** A text prompt of these token ids (copied). */
  static fromTokens(tokens: ArrayLike<number>): Prompt {
    return tokens.length === 0 ? Prompt.empty : new Prompt(Array.from(tokens), []);
  }

  /** A prompt of these chunks, in order. */
  static fromChunks(chunks: readonly PromptChunk[]): Prompt {
    const flat: number[] = [];
    const media: MediaSpan[] = [];
    for (const c of chunks) {
      if ('tokens' in c) {
        for (const t of c.tokens) flat.push(t);
      } else {
        if (!(Number.isInteger(c.media.length) && c.media.length > 0)) throw new RangeError(`A media chunk fills at least one position, received ${c.media.length}`);
        media.push({ start: flat.length, length: c.media.length, id: c.media.id });
        for (let i = 0; i < c.media.length; i++) flat.push(-1);
      }
    }
    return flat.length === 0 ? Prompt.empty : new Prompt(flat, media);
  }

  /** Positions the prompt fills (a text token is one; a media chunk its `length`). */
  get length(): number {
    return this.#flat.length;
  }

  /** Whether it holds media (the engine takes text only today). */
  get hasMedia(): boolean {
    return this.#media.length > 0;
  }

  /** Its chunks: runs of text tokens and media items, in order. */
  get chunks(): PromptChunk[] {
    const out: PromptChunk[] = [];
    let at = 0;
    for (const m of this.#media) {
      if (m.start > at) out.push({ tokens: this.#flat.slice(at, m.start) });
      out.push({ media: { id: m.id, length: m.length } });
      at = m.start + m.length;
    }
    if (at < this.#flat.length) out.push({ tokens: this.#flat.slice(at) });
    return out;
  }

  /** The token ids of a text-only prompt. @throws RangeError when it holds media. */
  tokens(): number[] {
    if (this.hasMedia) throw new RangeError('This prompt holds media; the engine takes text tokens only');
    return this.#flat.slice();
  }

  /** The token ids of a text-only prompt, without a copy (read-only). @throws RangeError when it holds media. */
  tokenView(): readonly number[] {
    if (this.hasMedia) throw new RangeError('This prompt holds media; the engine takes text tokens only');
    return this.#flat;
  }

  #mediaAt(pos: number): MediaSpan | undefined {
    for (const m of this.#media) if (pos >= m.start && pos < m.start + m.length) return m;
    return undefined;
  }

  /**
   * How many positions at the start this prompt and `other` share: equal text tokens, and media chunks
   * that start at the same position with the same id and length. A match never ends inside a media chunk.
   */
  commonPrefix(other: Prompt | ArrayLike<number>): number {
    const b = other instanceof Prompt ? other : Prompt.fromTokens(other);
    const x = this.#flat;
    const y = b.#flat;
    if (this.#media.length === 0 && b.#media.length === 0) return commonPrefix(x, y);
    const n = Math.min(x.length, y.length);
    let i = 0;
    while (i < n) {
      const ma = this.#mediaAt(i);
      const mb = b.#mediaAt(i);
      if (ma || mb) {
        if (!ma || !mb || ma.start !== i || mb.start !== i || ma.id !== mb.id || ma.length !== mb.length || i + ma.length > n) break;
        i += ma.length;
        continue;
      }
      if (x[i] !== y[i]) break;
      i++;
    }
    return i;
  }

  /** The first `end` positions; an end inside a media chunk moves back to the chunk's start. */
  slice(end: number): Prompt {
    let e = Math.max(0, Math.min(end, this.length));
    const m = this.#mediaAt(e - 1);
    if (m && m.start + m.length > e) e = m.start;
    if (e === this.length) return this;
    return e === 0 ? Prompt.empty : new Prompt(this.#flat.slice(0, e), this.#media.filter((s) => s.start + s.length <= e));
  }

  /**
   * Without `count` positions from `at` (a context shift's drop). A range that reaches into a media chunk
   * takes the whole chunk; the positions actually dropped are the new prompt's `length` difference.
   */
  cut(at: number, count: number): Prompt {
    if (count <= 0) return this;
    let from = Math.max(0, Math.min(at, this.length));
    let to = Math.max(from, Math.min(at + count, this.length));
    const first = this.#mediaAt(from);
    if (first) from = first.start;
    const last = this.#mediaAt(to - 1);
    if (last) to = Math.max(to, last.start + last.length);
    const flat = this.#flat.slice(0, from).concat(this.#flat.slice(to));
    const media = this.#media
      .filter((m) => m.start + m.length <= from || m.start >= to)
      .map((m) => (m.start >= to ? { ...m, start: m.start - (to - from) } : m));
    return flat.length === 0 ? Prompt.empty : new Prompt(flat, media);
  }

  /** This prompt followed by `next`. */
  concat(next: Prompt | ArrayLike<number>): Prompt {
    const b = next instanceof Prompt ? next : Prompt.fromTokens(next);
    if (b.length === 0) return this;
    if (this.length === 0) return b;
    return new Prompt(this.#flat.concat(b.#flat), this.#media.concat(b.#media.map((m) => ({ ...m, start: m.start + this.length }))));
  }
}

/** Positions at the start that two token lists share (text only). */
export function commonPrefix(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
