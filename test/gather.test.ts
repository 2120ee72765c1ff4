// Prompts that reach an idle engine together are decoded together (native/engine.cpp, step()): requests
// arrive a few milliseconds apart, and a prompt that starts a step ahead of the others leaves them passes
// of their own at the end, so the engine waits for others before it starts, up to 0.5% of what the
// generations will take (8 ms at most; here about 280 prompt tokens and 32 generated ones of a 130M model:
// over 1 ms).
import { describe, expect, it } from 'vitest';
import { synthetic } from './helpers/models.js';
import { stepTraces } from './helpers/step-trace.js';

describe('prompts that arrive together', () => {
  it('start in one step, and generate in step', async () => {
    // Large enough that its steps take milliseconds (a tiny model's requests do not wait at all).
    const path = await synthetic('gather-130m', { embeddingLength: 768, layers: 12, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 11 });
    const deeper = await synthetic('gather-230m', { embeddingLength: 768, layers: 24, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 12 });
    const { phases, stdout } = stepTraces('gather-child.ts', [path, deeper], ['burst', 'alone', 'short']);
    const steps = phases.burst!;
    // The first step holds the four prompts whole, each on its own sequence ...
    expect(steps[0]!.length, JSON.stringify(steps[0])).toBe(4);
    for (const [, rows] of steps[0]!) expect(rows).toBeGreaterThan(40);
    // ... and the steps after it a row of each, until the four end.
    const generating = steps.slice(1, 40);
    expect(generating.every((s) => s.length === 4 && s.every(([, rows]) => rows === 1)), JSON.stringify(generating.slice(0, 3))).toBe(true);
    const out = JSON.parse(stdout.trim().split('\n').pop()!) as { texts: string[] };
    expect(out.texts).toHaveLength(4);
    // A long prompt alone on a context with batchSize 2048 takes steps of one 512-token micro-batch.
    const alone = phases.alone!;
    const promptSteps = alone.filter((s) => s[0]![1] > 1).map((s) => s[0]![1]);
    expect(promptSteps, JSON.stringify(alone)).toEqual([512, 512, 176]);
    // Short prompts (under 32 tokens) on a context that never decoded a long one are gathered as well
    // (the wait was sized by a prompt token's pace, which only steps of 32 prompt tokens or more measure).
    const short = phases.short!;
    expect(short[0]!.length, JSON.stringify(short.slice(0, 3))).toBe(4);
  }, 240_000);
});
