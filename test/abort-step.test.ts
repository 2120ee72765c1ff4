// An abort or a dispose cuts off the step that is decoding (llama.cpp's abort callback, native/engine.cpp
// abortStep()), where it used to wait for the step to end: a 512-token step of a 7B model on a CPU takes
// tens of seconds. Only steps whose every generation was aborted are cut off (or any, when the context
// stops); what the step wrote is taken back out of the sequence.
import { describe, expect, it } from 'vitest';
import { loadModel, setLogLevel } from 'llama-addon';
import { synthetic } from './helpers/models.js';
import { stepTraces } from './helpers/step-trace.js';

describe('an abort while a long prompt decodes', () => {
  it('ends the step, not after it, and leaves the session usable', async () => {
    // Large enough that a 512-token step takes a second or so (the same model as test/gather.test.ts).
    const path = await synthetic('gather-130m', { embeddingLength: 768, layers: 12, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 11 });
    const { lines, stdout, stderr } = stepTraces('abort-step-child.ts', [path], ['full', 'abort', 'dispose', 'tasks']);
    const out = JSON.parse(stdout.trim().split('\n').pop()!) as {
      fullMs: number; abortMs: number; abortedReason: string; after: string; afterCached: number; fresh: string; disposeMs: number; cutReason: string;
      beam: string; beamDisposeMs: number; embed: string; embedDisposeMs: number;
      beamAbortReason: string; beamAbortTokens: number; beamAbortMs: number; beamAfter: string;
    };
    // The trace marks a step that llama.cpp cut off: one in each of the two parts, none in a step that ran out.
    const cutOff = (phase: string) => lines[phase]!.filter((l) => l.includes('(aborted)')).length;
    expect(lines.full!.length).toBeGreaterThan(0);
    expect(cutOff('full')).toBe(0);
    expect(cutOff('abort'), lines.abort!.join('\n')).toBe(1);
    expect(cutOff('dispose'), lines.dispose!.join('\n')).toBe(1);
    expect(out.abortedReason).toBe('abort');
    expect(out.cutReason).toBe('abort');
    // Settled well within the time one whole 512-token step took in the same run.
    expect(out.abortMs, JSON.stringify(out)).toBeLessThan(out.fullMs / 2);
    expect(out.disposeMs, JSON.stringify(out)).toBeLessThan(out.fullMs / 2);
    // llama.cpp's errors about a graph it did not finish are what was asked for: not logged as errors.
    expect(stderr).not.toMatch(/failed to (compute graph|decode)/);
    // A beam search and embeddings in flight: cut off by the dispose, rejected with ERR_DISPOSED.
    expect(out.beam).toBe('ERR_DISPOSED');
    expect(out.embed).toBe('ERR_DISPOSED');
    expect(out.beamDisposeMs, JSON.stringify(out)).toBeLessThan(out.fullMs / 2);
    expect(out.embedDisposeMs, JSON.stringify(out)).toBeLessThan(out.fullMs / 2);
    // A beam search's signal cuts off its prompt's decode: it ends with what it found (nothing yet).
    expect(out.beamAbortReason).toBe('abort');
    expect(out.beamAbortTokens).toBe(0);
    expect(out.beamAbortMs, JSON.stringify(out)).toBeLessThan(out.fullMs / 2);
    // Nothing of the cut-off step stays in the sequence: the session's next answer is a fresh context's.
    expect(out.after).toBe(out.fresh);
    expect(out.beamAfter).toBe(out.fresh);
  }, 240_000);

  it("cuts off a draft model's decode too", async () => {
    // After the first token, the draft model decodes the whole history (1,800 tokens) to catch up: an abort
    // then waited for it (4.5 s; found by a hostile review). It now settles within a node of that decode.
    setLogLevel('error');
    const targetPath = await synthetic('draft-target-60m', { embeddingLength: 512, layers: 8, heads: 8, headsKv: 8, feedForwardLength: 1536, type: 'q8_0', seed: 13 });
    const draftPath = await synthetic('gather-130m', { embeddingLength: 768, layers: 12, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 11 });
    await using target = await loadModel(targetPath);
    await using draft = await loadModel(draftPath);
    await using ctx = await target.createContext({ contextSize: 2048, sequences: 1, batchSize: 2048, threads: 1, draftModel: draft });
    const long = target.tokenize('the quick brown fox jumps over the lazy dog '.repeat(200)).slice(0, 1800);
    const ac = new AbortController();
    const t0 = performance.now();
    const gen = ctx.createSession().generate(long, { temperature: 0, maxTokens: 20, signal: ac.signal });
    let firstMs = 0;
    let settleMs = 0;
    for await (const _ of gen) {
      firstMs = performance.now() - t0;  // the prompt's decode, at 1 thread
      await new Promise((r) => setTimeout(r, 100));  // the draft model is catching up now
      const t1 = performance.now();
      ac.abort();
      await gen.result;
      settleMs = performance.now() - t1;
      break;
    }
    expect((await gen.result).stopReason).toBe('abort');
    expect(settleMs, `first token after ${firstMs.toFixed(0)} ms`).toBeLessThan(firstMs / 2);
  }, 240_000);
});
