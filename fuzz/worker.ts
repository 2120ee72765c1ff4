// The child process that runs fuzz cases: the parent (fuzz/harness.ts) sends one case at a time over IPC
// and gets its result back. A crash (signal, abort), an uncaught exception or a hang ends this process; the
// parent sees it and blames the case in flight. Run with `node --import tsx fuzz/worker.ts`.
import { mkdirSync } from 'node:fs';
import type { CaseResult, Env } from './targets/common.js';
import { onStep } from './targets/common.js';
import { getTarget } from './targets/index.js';

interface CaseMessage {
  type: 'case';
  id: number;
  target: string;
  input: unknown;
}

let current: number | null = null;

function fatal(kind: string, e: unknown): void {
  const message = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e);
  const report = { type: 'uncaught', id: current, kind, message: message.slice(0, 4000) };
  try {
    if (process.connected) {
      process.send!(report, () => process.exit(70));
      setTimeout(() => process.exit(70), 1000).unref();
      return;
    }
  } catch {
    // fall through
  }
  process.exit(70);
}

process.on('uncaughtException', (e) => fatal('uncaughtException', e));
process.on('unhandledRejection', (e) => fatal('unhandledRejection', e));
process.on('disconnect', () => process.exit(0));

const tmp = process.env.LLAMA_FUZZ_TMP ?? `/tmp/llama-fuzz-${process.pid}`;
mkdirSync(tmp, { recursive: true });
const lib = await import('../lib/index.js');
lib.setLogLevel('error');
const env: Env = { lib, tmp, cache: new Map() };
onStep((op) => {
  if (current !== null) process.send!({ type: 'step', id: current, op });
});

process.on('message', (m: CaseMessage) => {
  if (m?.type !== 'case') return;
  current = m.id;
  const started = performance.now();
  void (async () => {
    let result: CaseResult;
    try {
      result = await getTarget(m.target).run(m.input, env);
    } catch (e) {
      result = { status: 'unexpected', op: 'harness', code: (e as Error)?.name ?? typeof e, message: String((e as Error)?.message ?? e) };
    }
    current = null;
    process.send!({ type: 'result', id: m.id, result, ms: performance.now() - started, rss: process.memoryUsage.rss() });
  })();
});

process.send!({ type: 'ready' });
