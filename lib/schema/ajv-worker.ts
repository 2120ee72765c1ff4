// A worker thread that runs the checking pass over large JSON schemas, compiles them with ajv and validates
// values against them, so that a large schema (2–6 ms per KB to check, about 7 to compile) does not hold
// the caller's event loop (lib/schema/ajv-client.ts).
import { parentPort } from 'node:worker_threads';
import { compile, firstFailure, type Draft, type Validator } from './ajv.js';
import type { SchemaMode } from './normalize.js';
import { analyzeSchema, type Analysis } from './prepare.js';

export type AjvRequest =
  | { id: number; op: 'compile'; key: string; schema: string; draft: Draft }
  | { id: number; op: 'check'; key: string; schema: string; draft: Draft; value: string }
  | { id: number; op: 'prepare'; schema: string; mode: SchemaMode };

export type AjvReply =
  | { id: number; ok: true }
  | { id: number; ok: false; failure: { pointer: string; keyword: string; message: string } }
  | { id: number; ok: false; compileError: string }
  | { id: number; ok: true; analysis: Analysis }
  | { id: number; ok: false; error: { code: string; message: string; details: Record<string, unknown> } };

const CACHE_SIZE = 64;
const validators = new Map<string, Validator | Error>();

function validatorFor(key: string, schema: string, draft: Draft): Validator | Error {
  let v = validators.get(key);
  if (v === undefined) {
    try {
      v = compile(JSON.parse(schema), draft);
    } catch (e) {
      v = e instanceof Error ? e : new Error(String(e));
    }
    if (validators.size >= CACHE_SIZE) validators.delete(validators.keys().next().value!);
  } else {
    validators.delete(key);
  }
  validators.set(key, v);
  return v;
}

parentPort!.on('message', (m: AjvRequest) => {
  let reply: AjvReply;
  if (m.op === 'prepare') {
    try {
      reply = { id: m.id, ok: true, analysis: analyzeSchema(m.schema, m.mode) };
    } catch (e) {
      const err = e as Error & { code?: string };
      const { pointer, keyword } = err as { pointer?: unknown; keyword?: unknown };
      reply = {
        id: m.id,
        ok: false,
        error: {
          code: typeof err.code === 'string' ? err.code : 'ERR_NATIVE',
          message: err.message,
          details: { ...(pointer !== undefined ? { pointer } : {}), ...(keyword !== undefined ? { keyword } : {}) },
        },
      };
    }
    parentPort!.postMessage(reply);
    return;
  }
  try {
    const v = validatorFor(m.key, m.schema, m.draft);
    if (v instanceof Error) reply = { id: m.id, ok: false, compileError: v.message };
    else if (m.op === 'compile') reply = { id: m.id, ok: true };
    else if (v(JSON.parse(m.value))) reply = { id: m.id, ok: true };
    else reply = { id: m.id, ok: false, failure: firstFailure(v) };
  } catch (e) {
    reply = { id: m.id, ok: false, compileError: (e as Error).message };
  }
  parentPort!.postMessage(reply);
});
