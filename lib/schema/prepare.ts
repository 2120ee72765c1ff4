// The checking pass of a JSON schema, without llama.cpp: limits, the draft's meta-schema and the rewrite for
// the converter (normalize.ts). Pure JavaScript, so that it runs on the main thread for small schemas and
// on the validator's worker thread (ajv-worker.ts) for large ones; lib/schema/json-schema.ts builds on it.
import { LlamaError } from '../base/errors.js';
import { jsonDepth } from '../base/json-depth.js';
import { draftOf, metaCheck, type Draft } from './ajv.js';
import { SCHEMA_LIMITS } from './limits.js';
import { esc, isObj, normalizeSchema, overLimit, schemaError, type Json, type SchemaMode, type SchemaNote } from './normalize.js';

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The schema as JSON text, after the limits on depth and size, by an iterative walk (no recursion: a
 * schema nested 20000 deep is an error, not a stack overflow).
 */
export function schemaText(schema: unknown): string {
  if (typeof schema !== 'boolean' && !isObj(schema)) {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid option "jsonSchema": expected a JSON schema object, received ${Array.isArray(schema) ? 'an array' : schema === null ? 'null' : typeof schema}`);
  }
  const { maxDepth, maxBytes } = SCHEMA_LIMITS;
  let bytes = 0;
  const onPath = new Set<object>();
  // A value JSON cannot hold is an error where it is, not a silent change of meaning: JSON.stringify writes
  // NaN, Infinity, undefined in an array and an array's holes as null, and drops functions and symbols (a
  // `const` of each became "any value"). A property whose value is undefined is absent, as in JSON.
  const threw = (e: unknown, at: string) =>
    schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema${at === '#' ? '' : ` at ${at}`}: reading it threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`, at, '');
  const notJson = (what: string, at: string) =>
    schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${at}: expected a JSON value, received ${what}, which JSON cannot hold`, at, '');
  const stack: Array<[unknown, number, boolean, string]> = [[schema, 1, false, '#']];
  try {
    while (stack.length > 0) {
      const [v, depth, exit, at] = stack.pop()!;
      if (exit) {
        onPath.delete(v as object);
        continue;
      }
      if (typeof v === 'string') {
        bytes += v.length + 2;
        if (LONE_SURROGATE.test(v)) throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${at}: the string ${JSON.stringify(v.slice(0, 40))} has a lone surrogate, which is not Unicode text`, at, '');
      } else if (typeof v === 'number') {
        if (!Number.isFinite(v)) throw notJson(String(v), at);
        bytes += 8;
      } else if (typeof v === 'boolean') bytes += 8;
      else if (typeof v === 'bigint') throw notJson('a BigInt', at);
      else if (v === undefined) throw notJson('undefined', at);
      else if (typeof v === 'function') throw notJson('a function', at);
      else if (typeof v === 'symbol') throw notJson('a symbol', at);
      else if (v !== null && typeof v === 'object') {
        if (onPath.has(v)) throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${at}: it contains itself (a cycle of objects), which JSON cannot`, at, '');
        if (depth > maxDepth) overLimit(`objects and arrays nested more than ${maxDepth} deep`);
        // Plain objects and arrays only: a Date, RegExp, Map, Buffer or typed array writes as something else
        // (a string, {}, {"type":"Buffer",...}), and an own toJSON replaced the whole schema: each is an
        // error where it is, not a silent change (a toJSON function is refused as the function it is).
        const proto = Object.getPrototypeOf(v) as unknown;
        if (!Array.isArray(v) && proto !== Object.prototype && proto !== null) {
          const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
          throw notJson(typeof name === 'string' && name ? `a ${name}` : 'an object that is not plain data', at);
        }
        onPath.add(v);
        stack.push([v, depth, true, at]);
        if (Array.isArray(v)) {
          bytes += 2 + v.length;
          for (let i = v.length - 1; i >= 0; i--) {
            if (!(i in v)) throw notJson('a hole in an array', `${at}/${i}`);
            stack.push([v[i], depth + 1, false, `${at}/${i}`]);
          }
        } else {
          const keys = Object.keys(v);
          bytes += 2 + keys.length;
          for (let i = keys.length - 1; i >= 0; i--) {
            const k = keys[i]!;
            const where = `${at}/${esc(k)}`;
            let x: unknown;
            try {
              x = (v as Record<string, unknown>)[k];
            } catch (e) {
              // A getter of the caller's that throws: where it is.
              throw threw(e, where);
            }
            // A property set to undefined is absent, as in JSON (a TypeScript caller's optional field).
            if (x === undefined) continue;
            bytes += k.length + 2;
            if (LONE_SURROGATE.test(k)) throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${at}: the name ${JSON.stringify(k.slice(0, 40))} has a lone surrogate, which is not Unicode text`, at, '');
            stack.push([x, depth + 1, false, where]);
          }
        }
      }
      if (bytes > maxBytes) overLimit(`more than ${maxBytes} bytes of JSON`);
    }
  } catch (e) {
    if (e instanceof LlamaError) throw e;
    // A Proxy's trap that throws (ownKeys, getPrototypeOf): reading the schema failed.
    throw threw(e, '#');
  }
  // The text may differ from what was walked (getters and Proxies may answer twice): it is checked again.
  let text: string;
  try {
    text = JSON.stringify(schema);
  } catch (e) {
    if (e instanceof RangeError) overLimit(`objects and arrays nested more than ${maxDepth} deep (through a getter or Proxy)`);
    throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema: it cannot be written as JSON: ${(e as Error).message}`, '#', '');
  }
  if (typeof text !== 'string') throw schemaError('ERR_INVALID_SCHEMA', 'Invalid JSON schema: it writes as no JSON at all (a Proxy gave undefined)', '#', '');
  const size = Buffer.byteLength(text);
  if (size > maxBytes) overLimit(`${size} bytes of JSON (at most ${maxBytes})`);
  if (jsonDepth(text, maxDepth) > maxDepth) overLimit(`objects and arrays nested more than ${maxDepth} deep`);
  return text;
}

/** The draft of a schema: its $schema, or 2020-12 unless it uses draft-07's array form of items. */
function draftFor(root: Json): Draft {
  if (isObj(root) && root.$schema !== undefined) {
    const uri = root.$schema;
    const d = typeof uri === 'string' ? draftOf(uri) : undefined;
    if (d === undefined) {
      throw schemaError(
        'ERR_UNSUPPORTED_SCHEMA',
        `The JSON schema's $schema at #/$schema, ${JSON.stringify(uri)}, is not a draft this library checks (2020-12, 2019-09, draft-07)`,
        '#/$schema',
        '$schema',
      );
    }
    return d;
  }
  const stack: Json[] = [root];
  while (stack.length > 0) {
    const v = stack.pop()!;
    if (Array.isArray(v)) stack.push(...v);
    else if (isObj(v)) {
      if (Array.isArray(v.items) || 'additionalItems' in v) return 'draft-07';
      for (const [k, x] of Object.entries(v)) if (k !== 'enum' && k !== 'const' && k !== 'default' && k !== 'examples') stack.push(x);
    }
  }
  return '2020-12';
}

/** A prefix for the rules of the checking pass that the schema's text does not contain. */
function prefixFor(text: string): string {
  for (let i = 0; ; i++) if (!text.includes(`xla${i}-`)) return `xla${i}`;
}

/** What the checking pass makes of a schema: plain data, so that it can cross from a worker thread. */
export interface Analysis {
  draft: Draft;
  /** The schema for llama.cpp's converter, as JSON text. */
  converterText: string;
  /** GBNF rules of the placeholders in the converter's schema. */
  rules: string;
  placeholders: string[];
  /** The placeholders' rule prefix. */
  prefix: string;
  notes: SchemaNote[];
}

/**
 * The checking pass over a schema's JSON text (from {@link schemaText}).
 * @throws LlamaError ERR_INVALID_SCHEMA, ERR_UNSUPPORTED_SCHEMA, ERR_LIMIT_EXCEEDED.
 */
export function analyzeSchema(text: string, mode: SchemaMode): Analysis {
  const root = JSON.parse(text) as Json;
  const draft = draftFor(root);
  const problem = metaCheck(root, draft);
  if (problem) {
    throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${problem.pointer}: "${problem.keyword}": ${problem.message}`, problem.pointer, problem.keyword);
  }
  const prefix = prefixFor(text);
  const n = normalizeSchema(root, draft, mode, prefix);
  return { draft, converterText: JSON.stringify(n.doc), rules: n.rules, placeholders: n.placeholders, prefix, notes: n.notes };
}
