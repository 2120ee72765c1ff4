// The main-thread side of lib/schema/ajv-worker.ts: one worker, started on first use, referenced only
// while requests are in flight (it never keeps a process alive). Running from TypeScript sources (tests),
// the worker loads the .ts file through tsx's require hook.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Draft } from './ajv.js';
import type { AjvReply, AjvRequest } from './ajv-worker.js';

type Pending = (r: AjvReply) => void;
type Request = AjvRequest extends infer R ? (R extends AjvRequest ? Omit<R, 'id'> : never) : never;

let worker: Worker | null = null;
let nextId = 1;
const pending = new Map<number, Pending>();

function start(): Worker {
  const js = fileURLToPath(new URL('./ajv-worker.js', import.meta.url));
  // From the TypeScript sources (tests), the worker loads the .ts file through tsx's require hook.
  const w = existsSync(js)
    ? new Worker(js)
    : new Worker(`require('tsx/cjs'); require(${JSON.stringify(fileURLToPath(new URL('./ajv-worker.ts', import.meta.url)))});`, { eval: true });
  w.unref();
  w.on('message', (r: AjvReply) => {
    const done = pending.get(r.id);
    pending.delete(r.id);
    if (pending.size === 0) w.unref();
    done?.(r);
  });
  const fail = (e: Error) => {
    worker = null;
    for (const [id, done] of pending) done({ id, ok: false, compileError: `the validator's worker failed: ${e.message}` });
    pending.clear();
  };
  w.on('error', fail);
  w.on('exit', (code) => {
    if (pending.size > 0) fail(new Error(`it exited with code ${code}`));
    worker = null;
  });
  return w;
}

/** Sends a request to the worker; resolves with its reply. */
export function ajvRequest(req: Request): Promise<AjvReply> {
  worker ??= start();
  const w = worker;
  const id = nextId++;
  return new Promise<AjvReply>((resolve) => {
    pending.set(id, resolve);
    w.ref();
    w.postMessage({ ...req, id } as AjvRequest);
  });
}

export type { Draft };
