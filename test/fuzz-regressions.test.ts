// Replays every input of the fuzz corpus (test/fuzz-corpus/<target>/*.json: the known inputs of issue 13 and
// whatever `npm run fuzz` saved), each in a fresh child process (fuzz/worker.ts; killed with its process
// group afterwards), and asserts that none crashes, hangs, runs away with memory or gives a wrong result.
import { beforeAll, describe, expect, it } from 'vitest';
import { listCorpus, needsShared, type CorpusFile } from '../fuzz/corpus.js';
import { genModel, smallLora, smallModel } from '../fuzz/fixtures.js';
import { replay as replayInWorker } from '../fuzz/harness.js';
import { getTarget } from '../fuzz/targets/index.js';
import { describeShared } from './helpers/models.js';

const files = listCorpus();

function replay(f: CorpusFile): void {
  const target = getTarget(f.entry.target);
  // A fresh worker loads its models in the first case: allow for it, on a busy machine too.
  const timeout = target.timeoutMs + 30_000;
  it(f.name, { timeout: timeout * (1 + (f.entry.before?.length ?? 0)) + 120_000 }, async () => {
    // Entries found after other cases in the same worker replay those first (`before`).
    const v = await replayInWorker(target.name, f.entry.input, f.entry.before ?? [], timeout);
    const what = `${f.name}: ${v.outcome}: ${v.detail}${v.stderr && v.outcome !== 'ok' && v.outcome !== 'expected' ? `\n--- worker stderr (end) ---\n${v.stderr.split('\n').slice(-15).join('\n')}` : ''}`;
    expect(['ok', 'expected'], what).toContain(v.outcome);
  });
}

describe('fuzz corpus regressions', () => {
  beforeAll(async () => {
    // The synthetic models the targets use, written once (test/.fixtures/fuzz).
    await Promise.all([genModel(), smallModel('f32'), smallModel('f16'), smallModel('q8_0'), smallLora()]);
  });

  it('has the known inputs of issue 13', () => {
    expect(files.filter((f) => /[\\/]issue-[^\\/]+\.json$/.test(f.name)).length).toBeGreaterThanOrEqual(23);
  });

  for (const f of files.filter((x) => !needsShared(x.entry.input))) replay(f);

  describeShared('fuzz corpus regressions on ../shared/models', () => {
    for (const f of files.filter((x) => needsShared(x.entry.input))) replay(f);
  });
});
