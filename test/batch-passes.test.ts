// With a KV stream per sequence, llama.cpp decodes a step in one pass over the weights per run of
// consecutive sequence ids. The engine orders a step's rows by sequence and gives sequences missing between
// others a placeholder row (no output; its cell is taken back after the decode), so that one pass covers
// them all (native/engine.cpp, arrangeBatch). The output and the idle sessions' caches must be as without.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, repoRoot, shared } from './helpers/models.js';

function run(env: Record<string, string>) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'batch-passes-child.ts'), shared('stories260k.gguf')], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, LLAMA_ADDON_PROFILE: 'steps', ...env },
  });
  expect(r.status, r.stderr).toBe(0);
  const lines = r.stderr.split('\n');
  const rows = (ls: string[]) => ls.filter((l) => l.startsWith('llama-addon step:')).map((l) => l.slice(l.indexOf(':', 18) + 1).trim());
  // The busy phase (six generate, 2 and 3 idle), between the child's marks.
  const busySteps = rows(lines.slice(lines.indexOf('phase: busy'), lines.indexOf('phase: after')));
  expect(busySteps.length).toBeGreaterThan(0);
  return { out: JSON.parse(r.stdout.trim().split('\n').pop()!) as { first: string[]; busy: Array<string | null>; idle: Array<{ text: string; cached: number; held: number }>; states: number[] }, steps: rows(lines), busySteps };
}

describeShared('one pass per step (placeholder rows for missing sequences)', () => {
  it('decodes idle sequences 2 and 3 as placeholders among six busy ones, with the same output and caches as without', () => {
    const withRows = run({});
    const without = run({ LLAMA_ADDON_NO_PLACEHOLDERS: '1' });
    expect(withRows.out).toEqual(without.out);
    // Sessions 2 and 3 come back to their whole caches.
    for (const r of withRows.out.idle) expect(r.cached).toBe(r.held);
    // The six generate in steps whose rows run 0..7 in order, 2 and 3 as placeholders; without them the
    // step leaves 2 and 3 out (two runs of ids: two passes).
    const all = '0x1 1x1 2x1 3x1 4x1 5x1 6x1 7x1';
    expect(withRows.busySteps.filter((s) => s === all).length).toBeGreaterThan(20);
    expect(without.busySteps.filter((s) => s === '0x1 1x1 4x1 5x1 6x1 7x1').length).toBeGreaterThan(20);
    expect(without.busySteps).not.toContain(all);
    // Every step's rows are in order of sequence.
    for (const s of withRows.steps) {
      const seqs = s.split(' ').map((r) => Number(r.split('x')[0]));
      expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    }
  }, 240_000);
});
