// Runs a child script with LLAMA_ADDON_PROFILE=steps and reads the engine's step trace from its stderr:
// each step's rows as [sequence, rows] pairs, between the `phase: <name>` mark the child writes and the
// next `phase:` mark (native/engine.cpp prints `llama-addon step: ... : 0x1 1x40 ...`).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect } from 'vitest';
import { repoRoot } from './models.js';

export type StepRows = Array<[seq: number, rows: number]>;

export function stepTrace(child: string, args: string[], phase: string): { steps: StepRows[]; stdout: string } {
  const { phases, stdout } = stepTraces(child, args, [phase]);
  return { steps: phases[phase]!, stdout };
}

/** The same, for several phases of one run of the child; `lines` has each phase's step lines as printed. */
export function stepTraces(
  child: string,
  args: string[],
  names: string[],
): { phases: Record<string, StepRows[]>; lines: Record<string, string[]>; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', child), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, LLAMA_ADDON_PROFILE: 'steps' },
  });
  expect(r.status, r.stderr).toBe(0);
  const lines = r.stderr.split('\n');
  const phases: Record<string, StepRows[]> = {};
  const stepLines: Record<string, string[]> = {};
  for (const phase of names) {
    const from = lines.indexOf(`phase: ${phase}`);
    expect(from, `the child's "phase: ${phase}" mark`).toBeGreaterThanOrEqual(0);
    const to = lines.findIndex((l, i) => i > from && l.startsWith('phase:'));
    stepLines[phase] = lines.slice(from, to < 0 ? undefined : to).filter((l) => l.startsWith('llama-addon step:'));
    phases[phase] = stepLines[phase]!.map((l) => l.slice(l.indexOf(':', 18) + 1).trim().split(' ').map((row) => row.split('x').map(Number) as [number, number]));
  }
  return { phases, lines: stepLines, stdout: r.stdout, stderr: r.stderr };
}
