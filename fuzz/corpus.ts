// The corpus: one JSON file per input that crashed, hung or gave a wrong result (test/fuzz-corpus/<target>/),
// replayed by test/fuzz-regressions.test.ts. Named files (issue-*.json) hold the known inputs.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { corpusDir, repoRoot } from './fixtures.js';
import type { Verdict } from './harness.js';
import { getTarget } from './targets/index.js';

export interface CorpusEntry {
  target: string;
  /** What the input is and what it must do (named regression files). */
  description?: string;
  input: unknown;
  /**
   * Inputs to run first, in the same worker, for a finding that shows only after them (state that one
   * case leaves behind for the next).
   */
  before?: unknown[];
  /** How the input was found, and what it did then. */
  found?: {
    outcome: string;
    detail: string;
    signature: string;
    seed?: number;
    case?: number;
    reproducedAlone?: boolean;
    minimized?: boolean;
    stderr?: string;
    date: string;
  };
}

export interface CorpusFile {
  path: string;
  /** Path relative to the repository root. */
  name: string;
  entry: CorpusEntry;
}

export function listCorpus(dir = corpusDir): CorpusFile[] {
  const out: CorpusFile[] = [];
  if (!existsSync(dir)) return out;
  for (const target of readdirSync(dir, { withFileTypes: true })) {
    if (!target.isDirectory()) continue;
    for (const f of readdirSync(join(dir, target.name)).sort()) {
      if (!f.endsWith('.json')) continue;
      const path = join(dir, target.name, f);
      const entry = JSON.parse(readFileSync(path, 'utf8')) as CorpusEntry;
      out.push({ path, name: relative(repoRoot, path), entry });
    }
  }
  return out;
}

/** Whether an input needs ../shared/models (it names a `shared:` model). */
export function needsShared(input: unknown): boolean {
  return JSON.stringify(input).includes('"shared:');
}

/**
 * Saves a finding as `<outcome>-<hash of its signature>.json`; an existing file of that name (the same
 * finding, saved before) is kept. Returns the path and whether it is new.
 */
export function saveFinding(target: string, file: string, entry: CorpusEntry): { path: string; created: boolean } {
  getTarget(target);
  const dir = join(corpusDir, target);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${file}.json`);
  if (existsSync(path)) return { path, created: false };
  writeFileSync(path, `${JSON.stringify(entry, null, 2)}\n`);
  return { path, created: true };
}

/** The parts of a verdict worth keeping in a corpus file. */
export function foundFrom(v: Verdict, signature: string, extra: Partial<NonNullable<CorpusEntry['found']>>): NonNullable<CorpusEntry['found']> {
  return {
    outcome: v.outcome,
    detail: v.detail,
    signature,
    ...extra,
    ...(v.stderr && v.outcome !== 'wrong' ? { stderr: v.stderr.split('\n').filter(Boolean).slice(-12).join('\n').slice(-2000) } : {}),
    date: new Date().toISOString(),
  };
}
