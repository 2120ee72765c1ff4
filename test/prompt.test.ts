// A prompt is a list of chunks (lib/core/prompt.ts): text tokens, and media items that fill several positions
// and match only themselves. Every prefix match and cut of a session's cache goes through it; these check
// the rules that keep a media chunk whole, which no public API produces yet (llama.cpp's server_tokens is
// the model), and that text prompts behave as plain token arrays. The sessions' own tests cover its use.
import { describe, expect, it } from 'vitest';
import { Prompt, commonPrefix } from '../lib/core/prompt.js';

const img = (id: string, length = 4) => ({ media: { id, length } });

describe('Prompt', () => {
  it('matches and cuts text prompts as token arrays do (a sweep)', () => {
    let seed = 7;
    const r = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let i = 0; i < 500; i++) {
      const a = Array.from({ length: r(20) }, () => r(3));
      const b = Array.from({ length: r(20) }, () => r(3));
      const pa = Prompt.fromTokens(a);
      const expected = commonPrefix(a, b);
      expect(pa.commonPrefix(Prompt.fromTokens(b))).toBe(expected);
      expect(pa.commonPrefix(b)).toBe(expected);
      const at = r(a.length + 1);
      const count = r(a.length + 2);
      expect(pa.cut(at, count).tokens()).toEqual(a.slice(0, at).concat(a.slice(at + count)));
      expect(pa.slice(at).tokens()).toEqual(a.slice(0, at));
      expect(pa.concat(b).tokens()).toEqual(a.concat(b));
    }
  });

  it('keeps a media chunk whole: a match never ends inside one, a cut takes all of it', () => {
    const p = Prompt.fromChunks([{ tokens: [1, 2] }, img('cat'), { tokens: [3, 4] }]);
    expect(p.length).toBe(8);
    expect(p.hasMedia).toBe(true);
    expect(p.chunks).toEqual([{ tokens: [1, 2] }, img('cat'), { tokens: [3, 4] }]);
    expect(() => p.tokens()).toThrow(RangeError);
    // The same media matches; another id, or another length, stops the match at the chunk's start.
    expect(p.commonPrefix(Prompt.fromChunks([{ tokens: [1, 2] }, img('cat'), { tokens: [3, 9] }]))).toBe(7);
    expect(p.commonPrefix(Prompt.fromChunks([{ tokens: [1, 2] }, img('dog'), { tokens: [3, 4] }]))).toBe(2);
    expect(p.commonPrefix(Prompt.fromChunks([{ tokens: [1, 2] }, img('cat', 3), { tokens: [3, 4] }]))).toBe(2);
    // Text where the other has media, and media cut short, never match any of its positions.
    expect(p.commonPrefix([1, 2, -1, -1, -1, -1, 3, 4])).toBe(2);
    expect(p.commonPrefix(p.slice(4))).toBe(2);
    // slice moves an end inside a chunk back to its start.
    expect(p.slice(4).chunks).toEqual([{ tokens: [1, 2] }]);
    expect(p.slice(6).chunks).toEqual([{ tokens: [1, 2] }, img('cat')]);
    // A cut that reaches into the chunk drops all of it, from either side (the text around it joins).
    expect(p.cut(1, 2).chunks).toEqual([{ tokens: [1, 3, 4] }]);
    expect(p.cut(4, 3).chunks).toEqual([{ tokens: [1, 2, 4] }]);
    expect(p.cut(0, 1).chunks).toEqual([{ tokens: [2] }, img('cat'), { tokens: [3, 4] }]);
    // Positions after a cut or a concat move with their chunk.
    const twice = p.concat(Prompt.fromChunks([img('dog', 2)]));
    expect(twice.chunks).toEqual([{ tokens: [1, 2] }, img('cat'), { tokens: [3, 4] }, img('dog', 2)]);
    expect(twice.cut(0, 2).commonPrefix(Prompt.fromChunks([img('cat'), { tokens: [3, 4] }, img('dog', 2)]))).toBe(8);
    expect(() => Prompt.fromChunks([img('x', 0)])).toThrow(RangeError);
  });
});
