import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';
import { join } from 'node:path';
import { describeShared, fixtures, repoRoot } from './helpers/models.js';

// The bench harness itself (not speed: figures are never asserted in tests): one tiny round of every
// system must produce a complete report.
describeShared('npm run bench', () => {
  it('runs llama-bench, node-llama-cpp and llama-addon on one model and reports every figure', () => {
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'bench/run.ts', '--model', 'stories260k', '--reps', '1', '--prompt', '32', '--gen', '16', '--budget', '5', '--json', '--results-dir', join(fixtures, 'bench-results'), '--scenario', 'models,speculative,sessions', '--sessions-model', 'stories260k'],
      { cwd: repoRoot, encoding: 'utf8', timeout: 300_000 },
    );
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.machine.physicalCores).toBeGreaterThan(0);
    const results = report.models[0].results as Array<Record<string, any>>;
    expect(results.map((x) => x.system)).toEqual([
      'llama-bench',
      'node-llama-cpp (defaults)',
      `node-llama-cpp (${report.settings.threads} threads)`,
      'llama-addon',
    ]);
    // The speculative scenario (the batching one needs the 415M model: too big for a test run).
    expect(report.speculative.rows.map((x: { mode: string }) => x.mode)).toEqual(['plain', 'draft', 'lookup']);
    expect(report.speculative.rows[1].acceptance.median).toBeGreaterThan(0);
    // The sessions scenario: caches kept in host memory serve the later turns; without them nothing is.
    const [kept, redecoded] = report.sessions.rows as Array<{ mode: string; hitRate: number; savedMiB: number }>;
    expect([kept.mode, redecoded.mode]).toEqual(['kept', 'redecoded']);
    expect(kept.hitRate).toBeGreaterThan(0.5);
    expect(redecoded.hitRate).toBe(0);
    expect(kept.savedMiB).toBeGreaterThan(0);
    for (const x of results) {
      expect(x.promptTokensPerSecond.median, x.system).toBeGreaterThan(0);
      expect(x.generateTokensPerSecond.median, x.system).toBeGreaterThan(0);
    }
    // Node workers report their own peak RSS; llama-bench's is sampled from /proc while it runs, which a
    // run this short may finish before.
    for (const x of results.slice(1)) expect(x.peakRssMb, x.system).toBeGreaterThan(0);
    const addon = results[3];
    expect(addon.loadMs.median).toBeGreaterThan(0);
    expect(addon.eventLoopP99Ms.median).toBeGreaterThanOrEqual(0);
    expect(report.models[0].ratios['tg addon/llama-bench']).toBeGreaterThan(0);
  });
});

// Regressions are visible: `--compare earlier.json` prints each figure's ratio against an earlier run.
it('compares a report with an earlier one, figure by figure', async () => {
  const { compareReports } = await import('../bench/compare.js');
  const stat = (median: number) => ({ median, min: median, max: median, n: 1 });
  const report = (tg: number, pp: number, date: string, extra = false) => ({
    date,
    machine: { cpu: 'test cpu' },
    models: [
      {
        id: 'm',
        results: [
          { system: 'llama-bench', promptTokensPerSecond: stat(400), generateTokensPerSecond: stat(80), peakRssMb: 500 },
          { system: 'llama-addon', promptTokensPerSecond: stat(pp), generateTokensPerSecond: stat(tg), timeToFirstTokenMs: null, peakRssMb: 520 },
        ],
        ratios: { 'tg addon/llama-bench': tg / 80 },
      },
      ...(extra ? [{ id: 'only-later', results: [{ system: 'llama-addon', generateTokensPerSecond: stat(1) }] }] : []),
    ],
  });
  const table = compareReports(report(80, 400, 'then'), report(60, 400, 'now', true), 'earlier.json');
  const rows = table.split('\n').filter((l) => l.startsWith('| m |'));
  expect(rows).toContain('| m | llama-addon | tg tok/s | 80.00 | 60.00 | 0.750 |');
  expect(rows).toContain('| m | llama-addon | pp tok/s | 400 | 400 | 1.000 |');
  expect(rows).toContain('| m | (ratio) | tg addon/llama-bench | 1.000 | 0.750 | 0.750 |');
  // Figures missing from one side, and models only one report has, are left out.
  expect(table).not.toContain('TTFT');
  expect(table).not.toContain('only-later');
  expect(table).toContain('earlier.json');
});
