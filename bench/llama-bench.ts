// llama.cpp's llama-bench, built on demand from the same build tree (and objects) as the addon.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { own } from './children.js';
import { repoRoot } from './models.js';
import { stat, type WorkerArgs, type WorkerResult } from './stats.js';

const buildDir = join(repoRoot, 'build');

export function llamaBenchPath(): string {
  if (process.env.LLAMA_BENCH_BIN) return process.env.LLAMA_BENCH_BIN;
  for (const p of [join(buildDir, 'Release', 'llama-bench'), join(buildDir, 'bin', 'llama-bench'), join(buildDir, 'tools', 'llama-bench', 'llama-bench')]) {
    if (existsSync(p)) return p;
  }
  return join(buildDir, 'bin', 'llama-bench');
}

export function ensureLlamaBench(): string {
  if (!existsSync(join(buildDir, 'build.ninja')) && !existsSync(join(buildDir, 'Makefile'))) {
    throw new Error(`no configured build in ${buildDir}: run \`npm run build\` first`);
  }
  console.error('[bench] building llama-bench from the addon build tree (first use only)');
  // Build output goes to stderr: stdout carries the report.
  const r = spawnSync('cmake', ['--build', buildDir, '--target', 'llama-bench', '--parallel'], { stdio: ['ignore', 2, 2] });
  if (r.status !== 0) throw new Error('building llama-bench failed');
  return llamaBenchPath();
}

/** Peak RSS of a running process, polled from /proc (Linux); null elsewhere. */
function watchRss(pid: number): () => number | null {
  let peak: number | null = null;
  const read = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak ?? 0, Number(m[1]) / 1024);
    } catch {
      // the process has ended
    }
  };
  read();
  const timer = setInterval(read, 5);
  return () => {
    clearInterval(timer);
    return peak;
  };
}

interface LlamaBenchRow {
  n_prompt: number;
  n_gen: number;
  n_threads: number;
  avg_ts: number;
  samples_ts: number[];
}

export async function runLlamaBench(args: WorkerArgs): Promise<WorkerResult> {
  const bin = existsSync(llamaBenchPath()) ? llamaBenchPath() : ensureLlamaBench();
  const cli = ['-m', args.model, '-p', String(args.prompt), '-n', String(args.gen), '-r', String(args.reps), '-o', 'json'];
  if (args.threads) cli.push('-t', String(args.threads));
  if (args.gpuLayers !== undefined) cli.push('-ngl', String(args.gpuLayers));
  const child = own(spawn(bin, cli, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const stopWatch = watchRss(child.pid!);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code: number = await new Promise((resolve) => child.on('close', resolve));
  const peak = stopWatch();
  if (code !== 0) throw new Error(`llama-bench failed (${code}): ${stderr.slice(-2000)}`);
  const rows = JSON.parse(stdout) as LlamaBenchRow[];
  const ppRow = rows.find((r) => r.n_prompt > 0 && r.n_gen === 0);
  const tgRow = rows.find((r) => r.n_gen > 0 && r.n_prompt === 0);
  const pp = stat(ppRow?.samples_ts ?? []);
  const tg = stat(tgRow?.samples_ts ?? []);
  // llama-bench reports no load time or time to first token; derive TTFT from its own pp and tg speeds.
  const ttft = ppRow && tgRow ? stat(ppRow.samples_ts.map((ts, i) => (args.prompt / ts) * 1000 + 1000 / (tgRow.samples_ts[i] ?? tgRow.avg_ts))) : null;
  return {
    system: 'llama-bench',
    gpuLayers: args.gpuLayers ?? 0,
    threads: ppRow?.n_threads ?? tgRow?.n_threads ?? null,
    loadMs: null,
    promptTokensPerSecond: pp,
    generateTokensPerSecond: tg,
    timeToFirstTokenMs: ttft,
    eventLoopP99Ms: null,
    peakRssMb: peak,
    notes: ['time to first token derived from its pp and tg speeds; it reports no load time'],
  };
}
