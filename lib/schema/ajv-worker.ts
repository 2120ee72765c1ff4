// A worker thread that compiles JSON schemas with ajv and validates values against them, so that a large
// schema's compile (about 7 ms per KB) does not hold the caller's event loop (lib/schema/ajv-client.ts).
import { parentPort } from 'node:worker_threads';
import { compile, firstFailure, type Draft, type Validator } from './ajv.js';

export type AjvRequest =
  | { id: number; op: 'compile'; key: string; schema: string; draft: Draft }
  | { id: number; op: 'check'; key: string; schema: string; draft: Draft; value: string };

export type AjvReply =
  | { id: number; ok: true }
  | { id: number; ok: false; failure: { pointer: string; keyword: string; message: string } }
  | { id: number; ok: false; compileError: string };

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
