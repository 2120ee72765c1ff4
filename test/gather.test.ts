// Prompts that reach an idle engine together are decoded together (native/engine.cpp, step()): requests
// arrive a few milliseconds apart, and a prompt that starts a step ahead of the others leaves them passes
// of their own at the end, so the engine waits for others before it starts, up to 0.5% of what the
// generations will take (8 ms at most; here about 280 prompt tokens and 32 generated ones of a 130M model:
// over 1 ms). Prompts known to be on their way (LlamaContext.expectPrompt(), which the server and chats
// use) are waited for longer, and where waits keep finding no company there is none, until a burst comes.
import { describe, expect, it } from 'vitest';
import { synthetic } from './helpers/models.js';
import { stepTraces } from './helpers/step-trace.js';

describe('prompts that arrive together', () => {
  it('start in one step, and generate in step', async () => {
    // Large enough that its steps take milliseconds (a tiny model's requests do not wait at all).
    const path = await synthetic('gather-130m', { embeddingLength: 768, layers: 12, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 11 });
    const deeper = await synthetic('gather-230m', { embeddingLength: 768, layers: 24, heads: 12, headsKv: 12, feedForwardLength: 2048, type: 'q8_0', seed: 12 });
    const { phases, stdout, stderr } = stepTraces('gather-child.ts', [path, deeper], ['burst', 'overflow', 'late', 'reclass', 'long-burst', 'prio-hold', 'alone', 'short', 'expected', 'expected-control', 'lone', 'lone-tight', 'lone-2', 'lone-burst', 'lone-burst-again']);
    const steps = phases.burst!;
    // The first step holds the four prompts whole, each on its own sequence ...
    expect(steps[0]!.length, JSON.stringify(steps[0])).toBe(4);
    for (const [, rows] of steps[0]!) expect(rows).toBeGreaterThan(40);
    // ... and the steps after it a row of each, until the four end.
    const generating = steps.slice(1, 40);
    expect(generating.every((s) => s.length === 4 && s.every(([, rows]) => rows === 1)), JSON.stringify(generating.slice(0, 3))).toBe(true);
    const out = JSON.parse(stdout.trim().split('\n').pop()!) as { texts: string[]; prompts: number[]; late: number; abortSettle: number[] };
    // An abort in the engine's wait for more prompts (20 ms here) settles at once: the median of 5 under
    // 10 ms (it waited out the window, 14-20 ms, before; a hostile review).
    const settle = [...out.abortSettle].sort((a, b) => a - b)[2]!;
    expect(settle, JSON.stringify(out.abortSettle)).toBeLessThan(10);
    expect(out.texts).toHaveLength(4);
    // Six prompts of ~255 tokens with batchSize 1024: the first step holds four and the start of the
    // fifth; the next one the rest of the fifth and all of the sixth (they came with the others) alone: the
    // four that started wait for them (a row of each beside them made llama.cpp split the step into more
    // passes over the weights, and the four ended a step ahead); from then on all six generate in step.
    const overflow = phases.overflow!;
    const [one, two] = [new Map(overflow[0]), new Map(overflow[1])];
    expect([...one.values()].reduce((a, b) => a + b), JSON.stringify(overflow[0])).toBe(1024);
    const length = out.prompts[0]!;
    expect(new Set(out.prompts).size).toBe(1);  // "Prompt 0: ..." to "Prompt 5: ...": one length
    const whole = Math.floor(1024 / length);
    expect(one.size, JSON.stringify(overflow[0])).toBe(whole + 1);
    const cut = [...one].find(([, rows]) => rows < length)!;
    expect(cut[1]).toBe(1024 - whole * length);
    // The rest of the prompt cut off and the prompts after it whole, and nothing else.
    expect(two.size, JSON.stringify(overflow[1])).toBe(6 - whole);
    expect(two.get(cut[0]), JSON.stringify(overflow[1])).toBe(length - cut[1]);
    expect([...two.values()].reduce((a, b) => a + b), JSON.stringify(overflow[1])).toBe(6 * length - 1024);
    expect([...one.keys()].filter((q) => q !== cut[0]).some((q) => two.has(q)), JSON.stringify(overflow.slice(0, 2))).toBe(false);
    const inStep = overflow.slice(2, 20);
    expect(inStep.every((s) => s.length === 6 && s.every(([, rows]) => rows === 1)), JSON.stringify(inStep.slice(0, 3))).toBe(true);
    // A prompt that comes while a session generates: chunks of 128 tokens beside that session's row.
    const late = phases.late!.filter((s) => s.length === 2 && s.some(([, rows]) => rows > 1));
    const lateRows = late.map((s) => s.map(([, rows]) => rows).sort((a, b) => a - b));
    expect(lateRows, JSON.stringify(phases.late)).toEqual([[1, 128], [1, 128], [1, out.late - 256]]);
    // P (420 tokens) and Q (a few) come while G generates, promptChunkSize 32: P goes in chunks (32, and
    // what Q left of its 32, at most), and Q's prompt goes in the first or second step that holds P's, not
    // after all of P (it went in the 8th: P took both shares while it waited; a hostile review). (Which
    // step first holds P depends on when the two reach the engine, a few microseconds apart.)
    const reclass = phases.reclass!;
    const pSeq = reclass.flatMap((s) => s).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
    const withP = reclass.filter((s) => s.some(([q, rows]) => q === pSeq && rows > 1));
    const pRows = withP.map((s) => s.find(([q]) => q === pSeq)![1]);
    expect(pRows.every((r) => r <= 64), JSON.stringify(withP)).toBe(true);
    expect(pRows.reduce((a, b) => a + b), JSON.stringify(pRows)).toBe(420);
    const qAt = withP.findIndex((s) => s.some(([q, rows]) => q !== pSeq && rows > 1));
    expect(qAt, `Q's prompt beside P's first or second chunk: ${JSON.stringify(withP.slice(0, 3))}`).toBeGreaterThanOrEqual(0);
    expect(qAt).toBeLessThanOrEqual(1);
    // A 1,200-token prompt that came with a short one, with batchSize 512: the first step holds the short
    // one and 512 tokens in all; while the rest does not fit one step, it goes in chunks of 128 beside the
    // short one's tokens (not 511 at a time: the short one would get a token every 511 prompt tokens), and
    // once it fits, whole, alone (the short one waits for it, and then they generate in step).
    const mixed = phases['long-burst']!;
    expect(mixed[0]!.reduce((a, [, rows]) => a + rows, 0), JSON.stringify(mixed[0])).toBe(512);
    const firstPart = mixed[0]!.find(([, rows]) => rows > 100)![1];
    const chunks = mixed.slice(1).filter((s) => s.some(([, rows]) => rows > 1)).map((s) => s.map(([, rows]) => rows).sort((a, b) => a - b));
    const rest = 1200 - firstPart;
    const expected = Array.from({ length: Math.ceil(Math.max(0, rest - 512) / 128) }, () => [1, 128]);
    expected.push([rest - 128 * expected.length]);
    expect(chunks, JSON.stringify(mixed.slice(0, 6))).toEqual(expected);
    const afterRest = mixed.findIndex((s) => s.length === 1 && s[0]![1] > 1) + 1;
    expect(mixed[afterRest]?.map(([, rows]) => rows), JSON.stringify(mixed.slice(afterRest - 1, afterRest + 2))).toEqual([1, 1]);
    // With a prompt of a higher priority taking its chunks first, the short one waits for the long one's
    // rest once at most: between its first token and its end, it is missing from one step or none.
    const prio = phases['prio-hold']!;
    const shortSeq = prio[0]!.reduce((a, b) => (b[1] < a[1] ? b : a))[0];
    const withShort = prio.map((s) => s.some(([q]) => q === shortSeq));
    const from = withShort.indexOf(true, 1);
    const to = withShort.lastIndexOf(true);
    const missing = withShort.slice(from, to + 1).filter((x) => !x).length;
    expect(prio.some((s) => s.length >= 2 && s.some(([q, rows]) => q !== shortSeq && rows > 1)), JSON.stringify(prio.slice(0, 8))).toBe(true);
    expect(missing, JSON.stringify(prio.slice(0, 12))).toBeLessThanOrEqual(1);
    // A long prompt alone on a context with batchSize 2048 takes steps of one 512-token micro-batch.
    const alone = phases.alone!;
    const promptSteps = alone.filter((s) => s[0]![1] > 1).map((s) => s[0]![1]);
    expect(promptSteps, JSON.stringify(alone)).toEqual([512, 512, 176]);
    // Short prompts (under 32 tokens) on a context that never decoded a long one are gathered as well
    // (the wait was sized by a prompt token's pace, which only steps of 32 prompt tokens or more measure).
    const short = phases.short!;
    expect(short[0]!.length, JSON.stringify(short.slice(0, 3))).toBe(4);
    // A prompt 25 ms behind another, past the usual wait (~10 ms here): in the first step with it where the
    // context was told it was coming, in a step of its own where it was not.
    expect(phases.expected![0]!.map(([, rows]) => rows), JSON.stringify(phases.expected!.slice(0, 2))).toEqual([250, 250]);
    const control = phases['expected-control']!;
    expect(control.slice(0, 2).map((s) => s.map(([, rows]) => rows)), JSON.stringify(control.slice(0, 3))).toEqual([[250], [250]]);
    // The engine's waits (its `llama-addon gather:` lines) in each phase.
    const waits = (phase: string) => {
      const lines = stderr.split('\n');
      const from = lines.indexOf(`phase: ${phase}`);
      const to = lines.findIndex((l, i) => i > from && l.startsWith('phase:'));
      return lines.slice(from, to).filter((l) => l.startsWith('llama-addon gather:'));
    };
    // Prompts that came alone: the first four waited their window (the warm-up, before the engine knew its
    // pace, did not), then 1 ms at most ...
    const cutTo1 = (phase: string) => waits(phase).map((l) => l.includes('cut to 1 ms'));
    expect(cutTo1('lone'), waits('lone').join('\n')).toEqual([false, false, false, false, true, true]);
    const waited = (l: string) => Number(/waited ([0-9.]+) ms/.exec(l)![1]);
    expect(waits('lone').slice(4).every((l) => waited(l) < 1.5), waits('lone').join('\n')).toBe(true);
    // ... which still gathers prompts submitted 0.3 ms apart (and then waits are whole again).
    expect(phases['lone-tight']![0]!.map(([, rows]) => rows), JSON.stringify(phases['lone-tight']!.slice(0, 2))).toEqual([200, 200]);
    expect(cutTo1('lone-2'), waits('lone-2').join('\n')).toEqual([false, false, false, false]);
    // After four more lone ones, a burst 3 ms apart: the first of it went alone, the second a step later ...
    expect(cutTo1('lone-burst'), waits('lone-burst').join('\n')).toEqual([true]);
    expect(phases['lone-burst']!.slice(0, 2).map((s) => s.map(([, rows]) => rows)), JSON.stringify(phases['lone-burst']!.slice(0, 3))).toEqual([[500], [500]]);
    // ... which brought the wait back: the next burst starts in one step.
    expect(phases['lone-burst-again']![0]!.map(([, rows]) => rows), JSON.stringify(phases['lone-burst-again']!.slice(0, 2))).toEqual([500, 500]);
  }, 240_000);
});
