// Bench scenarios beyond one session: continuous batching against llama-batched-bench, and speculative
// decoding (a draft model, prompt lookup) against the target model alone.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readGguf } from '../lib/gguf/index.js';
import { own } from './children.js';
import { benchRoot, models, repoRoot, sharedDir } from './models.js';
import { stat, type Stat } from './stats.js';
import type { ScenarioArgs } from './scenario-worker.js';
import { runLlamaBench } from './llama-bench.js';

const buildDir = join(repoRoot, 'build');
const log = (m: string) => console.error(`[bench] ${m}`);

function batchedBenchPath(): string {
  if (process.env.LLAMA_BATCHED_BENCH_BIN) return process.env.LLAMA_BATCHED_BENCH_BIN;
  for (const p of [join(buildDir, 'Release', 'llama-batched-bench'), join(buildDir, 'bin', 'llama-batched-bench'), join(buildDir, 'tools', 'batched-bench', 'llama-batched-bench')]) {
    if (existsSync(p)) return p;
  }
  log('building llama-batched-bench from the addon build tree (first use only)');
  const r = spawnSync('cmake', ['--build', buildDir, '--target', 'llama-batched-bench', '--parallel'], { stdio: ['ignore', 2, 2] });
  if (r.status !== 0) throw new Error('building llama-batched-bench failed');
  return batchedBenchPath();
}

function run(cmd: string, argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = own(spawn(cmd, argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} failed (${code}): ${err.slice(-1500)}`))));
  });
}

async function scenarioWorker(args: ScenarioArgs): Promise<Record<string, number[]>> {
  const bundled = join(benchRoot, 'scenario-worker.mjs');
  const entry = existsSync(bundled) ? [bundled] : ['--import', 'tsx', join(benchRoot, 'scenario-worker.ts')];
  const out = await run(process.execPath, [...entry, JSON.stringify(args)]);
  return JSON.parse(out.trim().split('\n').pop()!) as Record<string, number[]>;
}

export interface BatchedResult {
  model: string;
  prompt: number;
  gen: number;
  rows: Array<{ sequences: number; reference: Stat | null; addon: Stat | null; ratio: number | null }>;
}

export async function batchedScenario(o: { threads: number; reps: number; parallel: number[]; prompt: number; gen: number }): Promise<BatchedResult> {
  const m = models.find((x) => x.id === 'llama-415m-q8_0')!;
  const path = await m.path();
  const header = await readGguf(path);
  const bos = header.metadata['tokenizer.ggml.bos_token_id'];
  const vocabSize = (header.metadata['tokenizer.ggml.tokens'] as unknown as { length: number }).length;
  const maxPl = Math.max(...o.parallel);
  const ref: Record<number, number[]> = {};
  const addon: Record<number, number[]> = {};
  for (let r = 0; r < o.reps; r++) {
    log(`batched: llama-batched-bench (round ${r + 1} of ${o.reps})`);
    const out = await run(batchedBenchPath(), [
      '-m', path, '-c', String(maxPl * (o.prompt + o.gen) + 256), '-b', '2048', '-ub', '512',
      '-npp', String(o.prompt), '-ntg', String(o.gen), '-npl', o.parallel.join(','), '-t', String(o.threads),
      '--output-format', 'jsonl',
    ]);
    for (const line of out.split('\n').filter((l) => l.startsWith('{'))) {
      const row = JSON.parse(line) as { pl: number; speed_tg: number };
      (ref[row.pl] ??= []).push(row.speed_tg);
    }
    log(`batched: llama-addon (round ${r + 1} of ${o.reps})`);
    const res = await scenarioWorker({
      scenario: 'batched', model: path, threads: o.threads, prompt: o.prompt, gen: o.gen, parallel: o.parallel, reps: 1,
      vocabSize, bos: typeof bos === 'number' ? bos : null,
    });
    for (const pl of o.parallel) (addon[pl] ??= []).push(...(res[`tg${pl}`] ?? []));
  }
  return {
    model: m.id,
    prompt: o.prompt,
    gen: o.gen,
    rows: o.parallel.map((pl) => {
      const a = stat(addon[pl] ?? []);
      const b = stat(ref[pl] ?? []);
      return { sequences: pl, reference: b, addon: a, ratio: a && b ? a.median / b.median : null };
    }),
  };
}

export interface SpeculativeResult {
  target: string;
  draft: string;
  gen: number;
  rows: Array<{ mode: string; tokensPerSecond: Stat | null; speedup: number | null; acceptance: Stat | null }>;
}

export async function speculativeScenario(o: { threads: number; reps: number; gen: number }): Promise<SpeculativeResult> {
  const target = join(sharedDir, 'tinystories-656k-f16.gguf');
  const draft = join(sharedDir, 'tinystories-656k-q8_0.gguf');
  if (!existsSync(target) || !existsSync(draft)) throw new Error('the speculative scenario needs ../shared/models (tinystories-656k F16 and Q8_0)');
  log('speculative: llama-addon');
  const res = await scenarioWorker({ scenario: 'speculative', model: target, draft, threads: o.threads, prompt: 16, gen: o.gen, parallel: [], reps: o.reps, vocabSize: 0, bos: null });
  const plain = stat(res['plain.tps'] ?? []);
  return {
    target: 'tinystories-656k-f16',
    draft: 'tinystories-656k-q8_0',
    gen: o.gen,
    rows: ['plain', 'draft', 'lookup'].map((mode) => {
      const tps = stat(res[`${mode}.tps`] ?? []);
      return { mode, tokensPerSecond: tps, speedup: tps && plain ? tps.median / plain.median : null, acceptance: stat(res[`${mode}.acceptance`] ?? []) };
    }),
  };
}

export interface SessionsResult {
  model: string;
  chats: number;
  turns: number;
  sequences: number;
  prompt: number;
  gen: number;
  rows: Array<{ mode: 'kept' | 'redecoded'; hitRate: number | null; ttft: Stat | null; ttftP90: number | null; seconds: number | null; savedMiB: number | null }>;
}

/**
 * Many conversations on few resident sequences (lib/core/residency.ts): turns 2..N of each, with caches kept in
 * host memory against a run where every turn decodes its prompt again. Reports the share of prompt tokens
 * served from a cache and the time to first token of those turns.
 */
export async function sessionsScenario(o: { threads: number; modelId: string; chats: number; turns: number; sequences: number; prompt: number; gen: number }): Promise<SessionsResult> {
  const m = models.find((x) => x.id === o.modelId);
  if (!m) throw new Error(`unknown model ${o.modelId}`);
  const path = await m.path();
  const header = await readGguf(path);
  const bos = header.metadata['tokenizer.ggml.bos_token_id'];
  const vocabSize = (header.metadata['tokenizer.ggml.tokens'] as unknown as { length: number }).length;
  log(`sessions: ${o.chats} conversations × ${o.turns} turns on ${o.sequences} sequences (${m.id})`);
  const res = await scenarioWorker({
    scenario: 'sessions', model: path, threads: o.threads, prompt: o.prompt, gen: o.gen, parallel: [], reps: 1,
    vocabSize, bos: typeof bos === 'number' ? bos : null, chats: o.chats, turns: o.turns, sequences: o.sequences,
  });
  const p90 = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))] : null);
  return {
    model: m.id, chats: o.chats, turns: o.turns, sequences: o.sequences, prompt: o.prompt, gen: o.gen,
    rows: (['kept', 'redecoded'] as const).map((mode) => ({
      mode,
      hitRate: res[`${mode}.hitRate`]?.[0] ?? null,
      ttft: stat(res[`${mode}.ttft`] ?? []),
      ttftP90: p90(res[`${mode}.ttft`] ?? []),
      seconds: res[`${mode}.seconds`]?.[0] ?? null,
      savedMiB: res[`${mode}.savedMiB`]?.[0] ?? null,
    })),
  };
}

export interface ContentionResult {
  busyCores: number;
  threads: number;
  prompt: number;
  gen: number;
  rows: Array<{
    model: string;
    condition: 'idle' | 'busy';
    /** tg tok/s of llama-bench at `threads`, and of llama-addon at each fixed count and at 'auto' */
    llamaBench: Stat | null;
    fixed: Record<number, { pp: Stat | null; tg: Stat | null }>;
    auto: { pp: Stat | null; tg: Stat | null; threadsInUse: number[] };
    /** auto's tg against the best fixed count's, and (idle) against llama-bench's */
    autoVsBestFixed: number | null;
    autoVsLlamaBench: number | null;
  }>;
}

/** Busy loops in child processes, one per core to keep busy (the host application's own work). */
function busyLoops(n: number): () => void {
  // (Ended with the bench however it ends, bench/children.ts: one left running would keep a core busy for good.)
  const children = Array.from({ length: n }, () => own(spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })));
  return () => children.forEach((c) => c.kill('SIGKILL'));
}

/**
 * Generation with cores kept busy (issue 16): each model idle and with `busyCores` busy loops beside it,
 * llama-addon at every fixed thread count up to `threads` and at 'auto', and llama-bench at `threads`.
 */
export async function contentionScenario(o: { threads: number; busyCores: number; reps: number; prompt: number; gen: number; seconds: number; modelIds: string[] }): Promise<ContentionResult> {
  const rows: ContentionResult['rows'] = [];
  for (const id of o.modelIds) {
    const m = models.find((x) => x.id === id);
    if (!m) throw new Error(`unknown model ${id}`);
    const path = await m.path();
    const header = await readGguf(path);
    const bos = header.metadata['tokenizer.ggml.bos_token_id'];
    const vocabSize = (header.metadata['tokenizer.ggml.tokens'] as unknown as { length: number }).length;
    for (const condition of ['idle', 'busy'] as const) {
      const stop = condition === 'busy' ? busyLoops(o.busyCores) : () => {};
      try {
        if (condition === 'busy') await new Promise((r) => setTimeout(r, 500));
        const worker = (threadSetting: number | 'auto') =>
          scenarioWorker({ scenario: 'contention', model: path, threadSetting, seconds: o.seconds, prompt: o.prompt, gen: o.gen, parallel: [], reps: o.reps, vocabSize, bos: typeof bos === 'number' ? bos : null });
        const fixed: ContentionResult['rows'][number]['fixed'] = {};
        for (let n = 1; n <= o.threads; n++) {
          log(`contention: ${id}, ${condition}, threads ${n}`);
          const r = await worker(n);
          fixed[n] = { pp: stat(r.pp ?? []), tg: stat(r.tg ?? []) };
        }
        log(`contention: ${id}, ${condition}, threads 'auto'`);
        const a = await worker('auto');
        let llamaBench: Stat | null = null;
        try {
          log(`contention: ${id}, ${condition}, llama-bench -t ${o.threads}`);
          // Busy, llama-bench at every thread runs many times slower: fewer tokens, so that it ends.
          const gen = condition === 'busy' ? Math.min(o.gen, 32) : o.gen;
          const lb = await runLlamaBench({ model: path, threads: o.threads, prompt: 0, gen, reps: condition === 'busy' ? 2 : o.reps, budgetSeconds: 0, vocabSize, bos: null });
          llamaBench = lb.generateTokensPerSecond;
        } catch (e) {
          log(`contention: llama-bench failed: ${(e as Error).message}`);
        }
        const auto = { pp: stat(a.pp ?? []), tg: stat(a.tg ?? []), threadsInUse: a.threadsInUse ?? [] };
        const best = Math.max(...Object.values(fixed).map((f) => f.tg?.median ?? 0));
        rows.push({
          model: id,
          condition,
          llamaBench,
          fixed,
          auto,
          autoVsBestFixed: auto.tg && best > 0 ? auto.tg.median / best : null,
          autoVsLlamaBench: auto.tg && llamaBench ? auto.tg.median / llamaBench.median : null,
        });
      } finally {
        stop();
      }
    }
  }
  return { busyCores: o.busyCores, threads: o.threads, prompt: o.prompt, gen: o.gen, rows };
}
