// npm run fuzz -- --seconds N [--target name[,name]] [--seed S] [--max-rss-mb M] [--no-save] [--no-minimize]
//
// Generates cases for each target with a seeded PRNG and runs them in a child process (fuzz/worker.ts):
// crashes (signals, aborts, uncaught exceptions, unexpected errors), hangs (per-case timeout), runaway memory
// and wrong results are counted, and their inputs saved under test/fuzz-corpus/<target>/ (minimized where
// easy), where test/fuzz-regressions.test.ts replays them. The time is split evenly over the targets. The
// exit code is 1 when anything was found.
import { hasShared, genModel, smallLora, smallModel } from './fixtures.js';
import { FINDINGS, FuzzWorker, replay, shortHash, signature, type Outcome, type Verdict } from './harness.js';
import { foundFrom, saveFinding } from './corpus.js';
import { Rng } from './prng.js';
import { targets, getTarget } from './targets/index.js';
import type { Target } from './targets/common.js';
import { relative } from 'node:path';
import { repoRoot } from './fixtures.js';

interface Args {
  seconds: number;
  targets: Target[];
  seed: number;
  maxRssMb: number;
  save: boolean;
  minimize: boolean;
  maxCases: number;
  verbose: boolean;
}

function usage(): never {
  console.log(`Usage: npm run fuzz -- [--seconds N] [--target NAME[,NAME...]] [--seed S] [--cases N] [--max-rss-mb M] [--no-save] [--no-minimize] [--verbose] [--list]

  --seconds N     total time, split evenly over the targets (default 60)
  --target NAME   only these targets (repeatable or comma-separated): ${targets.map((t) => t.name).join(', ')}
  --seed S        PRNG seed (default: random; printed, so that a run can be repeated)
  --cases N       at most N cases per target
  --max-rss-mb M  a case whose worker grows past M MiB counts as oom (default 4096)
  --no-save       do not write findings to test/fuzz-corpus
  --no-minimize   save findings as found, without shrinking them
  --verbose       print every case`);
  process.exit(0);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { seconds: 60, targets: [], seed: (Date.now() ^ (process.pid << 16)) >>> 0, maxRssMb: 4096, save: true, minimize: true, maxCases: Infinity, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--target' || k === '--targets') for (const n of v().split(',')) a.targets.push(getTarget(n.trim()));
    else if (k === '--seed') a.seed = Number(v()) >>> 0;
    else if (k === '--cases') a.maxCases = Number(v());
    else if (k === '--max-rss-mb') a.maxRssMb = Number(v());
    else if (k === '--no-save') a.save = false;
    else if (k === '--no-minimize') a.minimize = false;
    else if (k === '--verbose' || k === '-v') a.verbose = true;
    else if (k === '--list') {
      for (const t of targets) console.log(`${t.name.padEnd(10)} ${t.description}`);
      process.exit(0);
    } else if (k === '--help' || k === '-h') usage();
    else throw new Error(`unknown option ${k} (see --help)`);
  }
  if (!(a.seconds > 0)) throw new Error('--seconds must be a positive number');
  if (a.targets.length === 0) a.targets = [...targets];
  return a;
}

function nameSeed(name: string): number {
  let h = 0x811c9dc5;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

type Stats = Record<Outcome, number> & { cases: number; saved: number; seconds: number };

interface Finding {
  target: string;
  signature: string;
  outcome: Outcome;
  detail: string;
  count: number;
  files: string[];
  unreproduced?: boolean;
}

const args = parseArgs(process.argv.slice(2));
let worker: FuzzWorker | null = null;
/** The inputs the current worker has run, oldest first. */
let history: unknown[] = [];
const cleanup = () => worker?.killSync();
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    cleanup();
    console.log(`\n[fuzz] interrupted (${sig})`);
    process.exit(130);
  });
}

const rel = (p: string) => relative(repoRoot, p);

/** A case's timeout: more for the first case of a fresh worker (it loads models). */
function timeoutFor(t: Target, w: FuzzWorker): number {
  return w.cases === 0 ? t.timeoutMs + 15_000 : t.timeoutMs;
}

async function getWorker(): Promise<FuzzWorker> {
  if (worker && worker.alive && worker.cases < 150 && worker.rssMb() < Math.min(args.maxRssMb / 2, 2048)) return worker;
  if (worker) await worker.kill();
  worker = await FuzzWorker.start({ maxRssMb: args.maxRssMb });
  history = [];
  return worker;
}

async function runCase(t: Target, input: unknown): Promise<Verdict> {
  const w = await getWorker();
  history.push(input);
  const v = await w.run(t.name, input, timeoutFor(t, w));
  if (!w.alive) {
    await w.kill();
    if (worker === w) worker = null;
  }
  return v;
}

/** Runs an input alone, in a fresh worker. */
async function runAlone(t: Target, input: unknown): Promise<Verdict> {
  if (worker) await worker.kill();
  worker = null;
  return runCase(t, input);
}

/** Shrinks an input while it still gives the same finding (crashes and wrong results; hangs cost too much). */
async function minimize(t: Target, input: unknown, sig: string, deadline: number): Promise<{ input: unknown; steps: number }> {
  let best = input;
  let steps = 0;
  let tries = 0;
  let progress = true;
  while (progress && t.shrink && tries < 40 && Date.now() < deadline) {
    progress = false;
    for (const cand of t.shrink(best)) {
      if (tries >= 40 || Date.now() >= deadline) break;
      tries++;
      const v = await runCase(t, cand);
      if (FINDINGS.has(v.outcome) && signature(t.name, v) === sig) {
        best = cand;
        steps++;
        progress = true;
        break;
      }
    }
  }
  return { input: best, steps };
}

/**
 * For a finding that does not show alone: the fewest earlier cases of its worker after which it shows
 * (the last 1, 2, 4, ... of them, then single ones dropped). Empty when none reproduces it.
 */
async function findBefore(t: Target, input: unknown, earlier: unknown[], same: (v: Verdict) => boolean, deadline: number): Promise<unknown[]> {
  if (worker) await worker.kill();
  worker = null;
  const timeout = t.timeoutMs + 15_000;
  const tries = async (before: unknown[]) => Date.now() < deadline && same(await replay(t.name, input, before, timeout, { maxRssMb: args.maxRssMb }));
  const sizes: number[] = [];
  for (let n = 1; n < Math.min(earlier.length, 64); n *= 2) sizes.push(n);
  sizes.push(Math.min(earlier.length, 64));
  let found: unknown[] = [];
  for (const n of new Set(sizes)) {
    if (n === 0) continue;
    const suffix = earlier.slice(-n);
    if (await tries(suffix)) {
      found = suffix;
      break;
    }
  }
  for (let i = found.length - 1; i >= 0 && found.length > 1 && found.length <= 16; i--) {
    const without: unknown[] = found.filter((_, j) => j !== i);
    if (await tries(without)) found = without;
  }
  return found;
}

async function fuzzTarget(t: Target, budgetMs: number, stats: Stats, findings: Map<string, Finding>): Promise<void> {
  const started = Date.now();
  const deadline = started + budgetMs;
  const rng = new Rng(args.seed ^ nameSeed(t.name));
  let n = 0;
  while (Date.now() < deadline && n < args.maxCases) {
    const input = t.generate(rng);
    n++;
    const fresh = !worker || !worker.alive || worker.cases === 0;
    const v = await runCase(t, input);
    stats.cases++;
    stats[v.outcome]++;
    if (args.verbose) console.log(`[fuzz] ${t.name} #${n} ${v.outcome} ${Math.round(v.ms)} ms ${v.detail.split('\n')[0].slice(0, 160)} <- ${JSON.stringify(input).slice(0, 160)}`);
    if (!FINDINGS.has(v.outcome)) continue;
    const sig = signature(t.name, v);
    const f = findings.get(sig) ?? { target: t.name, signature: sig, outcome: v.outcome, detail: v.detail, count: 0, files: [] };
    f.count++;
    findings.set(sig, f);
    const maxSaved = v.outcome === 'hang' || v.outcome === 'oom' ? 3 : 1;
    console.log(`[fuzz] ${t.name} #${n} ${v.outcome.toUpperCase()} ${v.detail.split('\n')[0].slice(0, 200)}${f.count > 1 ? ` (seen ${f.count}x)` : ''}`);
    if (!args.save || f.files.length >= maxSaved) continue;
    // Confirm it alone (a case may fail only after others ran in the same worker), then shrink it.
    let reproducedAlone = true;
    let saved = input;
    let before: unknown[] = [];
    let minimized = false;
    const earlier = history.slice(0, -1);
    const same = (x: Verdict) =>
      FINDINGS.has(x.outcome) &&
      // A hang and runaway memory are the same finding (which comes first depends on the machine).
      (signature(t.name, x) === sig || ((v.outcome === 'hang' || v.outcome === 'oom') && (x.outcome === 'hang' || x.outcome === 'oom') && x.op === v.op));
    if (!fresh && Date.now() < deadline) {
      const again = await runAlone(t, input);
      reproducedAlone = same(again);
      if (!reproducedAlone) {
        console.log(`[fuzz]   not reproduced alone (${again.outcome}: ${again.detail.slice(0, 120)})`);
        // A slow case that finishes when it runs alone (with a fresh worker's extra time) is not kept.
        if (v.outcome === 'hang' || v.outcome === 'oom') continue;
        before = await findBefore(t, input, earlier, same, Math.min(deadline, Date.now() + Math.max(15_000, budgetMs / 4)));
        if (before.length) console.log(`[fuzz]   reproduced after ${before.length} earlier case(s) in the same worker`);
        else {
          console.log('[fuzz]   not reproduced after the earlier cases either: not saved');
          f.unreproduced = true;
          continue;
        }
      }
    }
    if (args.minimize && reproducedAlone && before.length === 0 && (v.outcome === 'crash' || v.outcome === 'wrong') && t.shrink) {
      const m = await minimize(t, input, sig, Math.min(deadline, Date.now() + Math.max(10_000, budgetMs / 4)));
      saved = m.input;
      minimized = m.steps > 0;
      if (minimized) console.log(`[fuzz]   minimized in ${m.steps} steps`);
    }
    const file = `${v.outcome}-${shortHash(sig)}${f.files.length ? `-${f.files.length + 1}` : ''}`;
    const { path, created } = saveFinding(t.name, file, {
      target: t.name,
      input: saved,
      ...(before.length ? { before } : {}),
      found: foundFrom(v, sig, { seed: args.seed, case: n, reproducedAlone, minimized }),
    });
    f.files.push(rel(path));
    if (created) stats.saved++;
    console.log(`[fuzz]   ${created ? 'saved' : 'already in the corpus'}: ${rel(path)}`);
  }
  stats.seconds = (Date.now() - started) / 1000;
}

async function main(): Promise<number> {
  console.log(`[fuzz] seed ${args.seed} (repeat with --seed ${args.seed}); ${args.seconds} s over ${args.targets.map((t) => t.name).join(', ')}`);
  if (!hasShared) console.log('[fuzz] ../shared/models is missing: tokenize uses only llama.cpp\'s vocab files');
  const names = new Set(args.targets.map((t) => t.name));
  // Write the synthetic models first, so that cases do not pay for it.
  if (['grammar', 'schema', 'template', 'session', 'http'].some((n) => names.has(n))) await genModel();
  if (names.has('gguf')) await Promise.all([smallModel('f32'), smallModel('f16'), smallModel('q8_0'), smallLora()]);
  const budget = (args.seconds * 1000) / args.targets.length;
  const all = new Map<string, Stats>();
  const findings = new Map<string, Finding>();
  for (const t of args.targets) {
    const stats: Stats = { cases: 0, ok: 0, expected: 0, crash: 0, hang: 0, oom: 0, wrong: 0, saved: 0, seconds: 0 };
    all.set(t.name, stats);
    await fuzzTarget(t, budget, stats, findings);
    if (worker) await worker.kill();
    worker = null;
  }

  const cols = ['cases', 'ok', 'expected', 'crash', 'hang', 'oom', 'wrong', 'saved', 'seconds'] as const;
  console.log(`\n[fuzz] summary (seed ${args.seed})`);
  console.log(['target'.padEnd(10), ...cols.map((c) => c.padStart(8))].join(' '));
  for (const [name, s] of all) console.log([name.padEnd(10), ...cols.map((c) => (c === 'seconds' ? s[c].toFixed(0) : String(s[c])).padStart(8))].join(' '));
  if (findings.size) {
    console.log(`\n[fuzz] ${findings.size} distinct finding(s):`);
    for (const f of findings.values()) {
      console.log(`  ${f.outcome.toUpperCase().padEnd(5)} ${f.target.padEnd(9)} x${f.count}  ${f.detail.split('\n')[0].slice(0, 160)}${f.unreproduced && !f.files.length ? ' (did not reproduce: not saved)' : ''}`);
      for (const file of f.files) console.log(`        ${file}`);
    }
    console.log('\n[fuzz] saved inputs are replayed by test/fuzz-regressions.test.ts (npx vitest run test/fuzz-regressions.test.ts)');
  } else {
    console.log('\n[fuzz] nothing found');
  }
  return findings.size ? 1 : 0;
}

main().then(
  (code) => {
    cleanup();
    process.exit(code);
  },
  (e) => {
    cleanup();
    console.error(`[fuzz] ${(e as Error).stack ?? e}`);
    process.exit(2);
  },
);
