// Runs fuzz cases in a child process (fuzz/worker.ts) and classifies how each ended: ok, expected (an
// allowed LlamaError), crash (a signal, an abnormal exit, an uncaught exception or an unexpected error),
// hang (no answer within the timeout), oom (the child outgrew the memory limit) or wrong (a wrong answer).
// The child runs in its own process group, which is killed on a timeout, so nothing is left running.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './fixtures.js';
import type { CaseResult } from './targets/common.js';

export type Outcome = 'ok' | 'expected' | 'crash' | 'hang' | 'oom' | 'wrong';
export const FINDINGS: ReadonlySet<Outcome> = new Set(['crash', 'hang', 'oom', 'wrong']);

export interface Verdict {
  outcome: Outcome;
  /** One line: what happened. */
  detail: string;
  /** The step (tokenize, load, complete, ...). */
  op?: string;
  code?: string;
  signal?: string;
  exitCode?: number;
  /** The end of the child's stderr, for crashes. */
  stderr?: string;
  ms: number;
}

export interface WorkerOptions {
  /** Kill the child when its resident memory passes this (MiB; default 4096). */
  maxRssMb?: number;
}

const workerPath = join(repoRoot, 'fuzz', 'worker.ts');
const STDERR_KEEP = 16_384;

/** The distinctive line of a crash's stderr: an assertion, an abort, an exception's what(). */
export function crashLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const pick = lines.find((l) => /GGML_ASSERT|GGML_ABORT|terminate called|what\(\):|Assertion .* failed|Segmentation|FATAL ERROR|Fatal error|RangeError|Maximum call stack|heap out of memory|double free|corrupted|stack smashing|AddressSanitizer/.test(l));
  return (pick ?? lines[lines.length - 1] ?? '').slice(0, 300);
}

export class FuzzWorker {
  readonly child: ChildProcess;
  readonly tmp: string;
  #stderr = '';
  #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  #listeners = new Set<(m: any) => void>();
  #nextId = 1;
  /** Cases this worker has run. */
  cases = 0;

  private constructor(readonly options: WorkerOptions) {
    this.tmp = mkdtempSync(join(tmpdir(), 'llama-fuzz-'));
    this.child = spawn(process.execPath, ['--import', 'tsx', workerPath], {
      cwd: repoRoot,
      detached: true, // its own process group: killed as a whole
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, LLAMA_FUZZ_TMP: this.tmp, LLAMA_ADDON_LOG: process.env.LLAMA_ADDON_LOG ?? '' },
    });
    const keep = (b: Buffer) => {
      this.#stderr = (this.#stderr + b.toString('utf8')).slice(-STDERR_KEEP);
    };
    this.child.stdout!.on('data', keep);
    this.child.stderr!.on('data', keep);
    this.child.on('message', (m) => {
      for (const l of this.#listeners) l(m);
    });
    this.#exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.#exit = { code, signal };
        resolve(this.#exit);
      });
    });
  }

  /** Starts a worker and waits until it has loaded the library. */
  static async start(options: WorkerOptions = {}, timeoutMs = 120_000): Promise<FuzzWorker> {
    const w = new FuzzWorker(options);
    const ready = await w.#waitFor((m) => m?.type === 'ready', timeoutMs);
    if (ready !== 'message') {
      const why = ready === 'timeout' ? `did not start within ${timeoutMs} ms` : `exited (${w.#exit?.signal ?? w.#exit?.code})`;
      const err = new Error(`The fuzz worker ${why}: ${w.#stderr.slice(-2000)}`);
      await w.kill();
      throw err;
    }
    return w;
  }

  get alive(): boolean {
    return this.#exit === null;
  }

  /** Resident memory of the child in MiB (Linux), or 0 where unknown. */
  rssMb(): number {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
      return m ? Number(m[1]) / 1024 : 0;
    } catch {
      return 0;
    }
  }

  #waitFor(match: (m: any) => boolean, timeoutMs: number, onMemory?: () => boolean): Promise<'message' | 'exit' | 'timeout' | 'oom'> & { message?: any } {
    let resolveOuter!: (v: 'message' | 'exit' | 'timeout' | 'oom') => void;
    const p = new Promise<'message' | 'exit' | 'timeout' | 'oom'>((r) => (resolveOuter = r)) as Promise<'message' | 'exit' | 'timeout' | 'oom'> & { message?: any };
    let done = false;
    const finish = (v: 'message' | 'exit' | 'timeout' | 'oom') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      this.#listeners.delete(listener);
      resolveOuter(v);
    };
    const listener = (m: any) => {
      if (match(m)) {
        p.message = m;
        finish('message');
      }
    };
    this.#listeners.add(listener);
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    const poll = setInterval(() => {
      if (onMemory?.()) finish('oom');
    }, 200);
    void this.#exited.then(() => {
      // Give a last IPC message (an uncaught exception's report) a moment to arrive.
      setTimeout(() => finish('exit'), 50);
    });
    return p;
  }

  /** Runs one case and classifies it. The worker is dead afterwards unless the outcome is ok/expected/wrong. */
  async run(target: string, input: unknown, timeoutMs: number): Promise<Verdict> {
    const id = this.#nextId++;
    const started = performance.now();
    this.cases++;
    const maxRss = this.options.maxRssMb ?? 4096;
    let uncaught: any = null;
    let lastOp: string | undefined;
    const onStepMessage = (m: any) => {
      if (m?.type === 'step' && m.id === id) lastOp = m.op;
    };
    this.#listeners.add(onStepMessage);
    const wait = this.#waitFor(
      (m) => (m?.type === 'result' || m?.type === 'uncaught') && (m.id === id || m.id === null),
      timeoutMs,
      () => this.rssMb() > maxRss,
    );
    this.child.send({ type: 'case', id, target, input });
    const how = await wait;
    this.#listeners.delete(onStepMessage);
    const ms = performance.now() - started;
    const m = wait.message;
    if (how === 'message' && m.type === 'result') {
      const r = m.result as CaseResult;
      const detail = r.status === 'ok' ? 'ok' : `${r.op}: ${r.code ? `${r.code}: ` : ''}${r.message ?? ''}`.slice(0, 500);
      if (r.status === 'ok' || r.status === 'expected') return { outcome: r.status, detail, op: r.op, code: r.code, ms };
      if (r.status === 'wrong') return { outcome: 'wrong', detail, op: r.op, ms };
      // An error the API should not raise here: counted with crashes (the process survived it, though).
      return { outcome: 'crash', detail: `unexpected error at ${detail}`, op: r.op, code: r.code, ms };
    }
    if (how === 'message' && m.type === 'uncaught') uncaught = m;
    if (how === 'timeout' || how === 'oom') {
      const rss = this.rssMb();
      await this.kill();
      if (how === 'timeout') return { outcome: 'hang', detail: `${lastOp ?? 'case'}: no answer within ${timeoutMs} ms`, op: lastOp, ms, stderr: this.#stderr.slice(-4000) };
      return { outcome: 'oom', detail: `${lastOp ?? 'case'}: the worker grew past ${maxRss} MiB (${Math.round(rss)} MiB)`, op: lastOp, ms, stderr: this.#stderr.slice(-4000) };
    }
    // The worker died: wait for its exit status.
    const exit = await Promise.race([this.#exited, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
    if (!exit) await this.kill();
    const e = this.#exit ?? { code: null, signal: null };
    const stderr = this.#stderr.slice(-4000);
    const at = lastOp ?? 'case';
    if (uncaught) return { outcome: 'crash', detail: `${at}: ${uncaught.kind}: ${String(uncaught.message).split('\n')[0]}`, op: lastOp, code: uncaught.kind, ms, stderr, exitCode: e.code ?? undefined };
    const how2 = e.signal ? `killed by ${e.signal}` : `exited with code ${e.code}`;
    const line = crashLine(this.#stderr);
    return { outcome: 'crash', detail: `${at}: ${how2}${line ? `: ${line}` : ''}`, op: lastOp, signal: e.signal ?? undefined, exitCode: e.code ?? undefined, ms, stderr };
  }

  /** Kills the worker's whole process group and removes its temporary folder. */
  async kill(): Promise<void> {
    if (this.#exit === null && this.child.pid !== undefined) {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        try {
          this.child.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
      await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    rmSync(this.tmp, { recursive: true, force: true });
  }

  /** Kills at once, without waiting (for process exit handlers). */
  killSync(): void {
    if (this.#exit === null && this.child.pid !== undefined) {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    try {
      rmSync(this.tmp, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
}

/** A short stable identity of a finding: the same bug found twice gets the same signature. */
export function signature(target: string, v: Verdict): string {
  const norm = (s: string) =>
    s
      .replace(/\/[^\s'":]+/g, '<path>')
      .replace(/0x[0-9a-f]+/gi, 'N')
      .replace(/\d+(\.\d+)?/g, 'N')
      .replace(/"[^"]*"/g, '"…"')
      .slice(0, 120);
  let what: string;
  if (v.outcome === 'hang' || v.outcome === 'oom') what = v.outcome;
  else if (v.signal) what = `signal ${v.signal} ${norm(crashLine(v.stderr ?? ''))}`;
  else if (v.outcome === 'crash' && v.stderr !== undefined) what = `exit ${v.exitCode} ${norm(v.code ?? '')} ${norm(crashLine(v.stderr))}`;
  else what = `${v.code ?? ''} ${norm(v.detail.replace(/^[^:]+: /, ''))}`;
  return `${target}/${v.op ?? '?'}/${v.outcome}/${what}`;
}

export function shortHash(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 10);
}

/**
 * Runs `input` in a fresh worker after `before` (inputs that ran first in the worker where a finding showed,
 * for findings that depend on what came before). A before-case that kills the worker ends the replay with
 * its verdict. The worker is killed afterwards.
 */
export async function replay(target: string, input: unknown, before: readonly unknown[], timeoutMs: number, options: WorkerOptions = {}): Promise<Verdict> {
  const w = await FuzzWorker.start(options);
  try {
    for (const b of before) {
      const v = await w.run(target, b, timeoutMs);
      if (!w.alive) return { ...v, detail: `a case before it: ${v.detail}` };
    }
    return await w.run(target, input, timeoutMs);
  } finally {
    await w.kill();
  }
}
