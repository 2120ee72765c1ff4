// JSON schemas for constrained generation, and the TypeScript type of the values they describe.
//
// A schema goes through a checking pass (lib/schema/) before llama.cpp's converter: structural limits,
// the draft's meta-schema, then a rewrite into what the converter enforces exactly, where every keyword is
// enforced, or an error (see README, "Grammars and JSON schemas"). Every value handed back as `json` is then
// validated against the schema with ajv.
import { LlamaError, callSite, toLlamaError, type LlamaErrorCode } from '../base/errors.js';
import { native } from '../native/native.js';
import { compile, firstFailure, type Validator } from './ajv.js';
import { ajvRequest } from './ajv-client.js';
import { schemaError, type Json, type SchemaMode, type SchemaNote } from './normalize.js';
import { analyzeSchema, schemaText, type Analysis } from './prepare.js';

export type { SchemaErrorDetails, SchemaMode, SchemaNote } from './normalize.js';
export { SCHEMA_LIMITS } from './limits.js';

/** A JSON schema (draft 2020-12, 2019-09 or draft-07; see the README for what the grammar enforces). */
export type JsonSchema = boolean | JsonSchemaObject;

/** A JSON schema object. */
export interface JsonSchemaObject {
  type?: JsonTypeName | readonly JsonTypeName[];
  properties?: { readonly [name: string]: JsonSchema };
  required?: readonly string[];
  additionalProperties?: JsonSchema;
  patternProperties?: { readonly [pattern: string]: JsonSchema };
  propertyNames?: JsonSchema;
  minProperties?: number;
  maxProperties?: number;
  dependentRequired?: { readonly [name: string]: readonly string[] };
  /** A schema for every item, or (draft-07) the schemas of the first items. */
  items?: JsonSchema | readonly JsonSchema[];
  prefixItems?: readonly JsonSchema[];
  uniqueItems?: boolean;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  multipleOf?: number;
  pattern?: string;
  format?: string;
  enum?: readonly unknown[];
  const?: unknown;
  anyOf?: readonly JsonSchema[];
  oneOf?: readonly JsonSchema[];
  allOf?: readonly JsonSchema[];
  $ref?: string;
  $defs?: { readonly [name: string]: JsonSchema };
  definitions?: { readonly [name: string]: JsonSchema };
  $schema?: string;
  description?: string;
  title?: string;
  [keyword: string]: unknown;
}

type JsonTypeName = 'string' | 'number' | 'integer' | 'boolean' | 'null' | 'array' | 'object';

type TypeOfName<T> = T extends 'string'
  ? string
  : T extends 'number' | 'integer'
    ? number
    : T extends 'boolean'
      ? boolean
      : T extends 'null'
        ? null
        : T extends 'array'
          ? unknown[]
          : T extends 'object'
            ? { [key: string]: unknown }
            : unknown;

type RequiredKeys<S> = S extends { required: readonly (infer R)[] } ? R : never;

type Simplify<T> = { [K in keyof T]: T[K] } & {};

type ObjectOf<S> = S extends { properties: infer P }
  ? Simplify<
      { -readonly [K in keyof P as K extends RequiredKeys<S> ? K : never]: FromSchema<P[K]> } & {
        -readonly [K in keyof P as K extends RequiredKeys<S> ? never : K]?: FromSchema<P[K]>;
      }
    >
  : { [key: string]: unknown };

/**
 * The TypeScript type of the values a JSON schema describes, for schemas written as literals (use
 * {@link defineSchema} or pass the schema inline): `type`, `properties`/`required`, `items`, `enum`, `const`,
 * `anyOf`/`oneOf`. What it cannot express (`$ref`, ...) becomes `unknown`.
 */
export type FromSchema<S> = S extends true
  ? unknown
  : S extends { const: infer C }
    ? C
    : S extends { enum: readonly (infer E)[] }
      ? E
      : S extends { anyOf: readonly (infer A)[] }
        ? FromSchema<A>
        : S extends { oneOf: readonly (infer A)[] }
          ? FromSchema<A>
          : S extends { type: 'array'; items: infer I }
            ? FromSchema<I>[]
            : S extends { type: 'object' }
              ? ObjectOf<S>
              : S extends { properties: object }
                ? ObjectOf<S>
                : S extends { type: infer T }
                  ? T extends readonly (infer U)[]
                    ? TypeOfName<U>
                    : TypeOfName<T>
                  : unknown;

/**
 * Returns the schema unchanged, keeping its literal type, so that {@link FromSchema} (and the `json` of a
 * `complete()` result) can see it: `const Person = defineSchema({ type: 'object', properties: { ... } })`.
 */
export function defineSchema<const S extends JsonSchema>(schema: S): S {
  return schema;
}

/** Options of {@link jsonSchemaToGrammar} (and, as `schemaMode`, of generation options with `jsonSchema`). */
export interface JsonSchemaOptions {
  /**
   * `'strict'` (the default): a keyword the grammar cannot enforce is `ERR_UNSUPPORTED_SCHEMA`.
   * `'best-effort'`: the grammar enforces what it can and the rest is left to the validation of the output
   * (a result that does not match is `ERR_SCHEMA_MISMATCH`); {@link checkJsonSchema} lists what is left.
   */
  schemaMode?: SchemaMode;
}

/** A schema checked and rewritten for the converter, with its validator (not exported from the package). */
export interface PreparedSchema {
  readonly mode: SchemaMode;
  /** The schema given to llama.cpp's converter. */
  readonly converterText: string;
  /** What the grammar depends on: the converter's schema and the values' rules. */
  readonly grammarKey: string;
  /** Keywords the grammar does not enforce (best-effort mode only). */
  readonly notes: readonly SchemaNote[];
  /** The converter's grammar with the values' rules put in. */
  splice(grammar: string): string;
  /** Compiles the validator soon, off the caller's path. */
  warm(): void;
  /**
   * null, or the ERR_SCHEMA_MISMATCH error for a value that does not match the schema: at once for a small
   * schema, through a worker thread for a large one (its compile would hold the event loop).
   */
  check(value: unknown): LlamaError | null | Promise<LlamaError | null>;
}

const CACHE_SIZE = 64;
/** Schemas of this many characters or more are checked, compiled and validated on a worker thread: the checking pass and the converter take 5-10 ms per KB, so a smaller one holds the JS thread for at most about 20 ms. */
const WORKER_SCHEMA_CHARS = 2048;
const prepared = new Map<string, PreparedSchema>();
const grammars = new Map<string, string>();

function remember<V>(map: Map<string, V>, key: string, value: V): V {
  map.delete(key);
  if (map.size >= CACHE_SIZE) map.delete(map.keys().next().value!);
  map.set(key, value);
  return value;
}

function withStack<E extends Error>(err: E, caller: Function): E {
  Error.captureStackTrace(err, caller);
  return err;
}

/** A PreparedSchema from the checking pass's analysis, with its validator (compiled when first needed). */
function build(key: string, text: string, mode: SchemaMode, a: Analysis): PreparedSchema {
  const { draft, prefix } = a;
  // ajv takes about 7 ms per KB of schema to compile. A small schema compiles on first use, or soon once a
  // generation has started (warm); a large one compiles and validates on a worker thread.
  const offThread = text.length >= WORKER_SCHEMA_CHARS;
  let validator: Validator | LlamaError | undefined;
  const cannotCompile = (message: string) => schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema: ajv cannot compile it: ${message}`, '#', '');
  const mismatch = (f: { pointer: string; keyword: string; message: string }, value: unknown) =>
    Object.assign(
      schemaError('ERR_SCHEMA_MISMATCH', `The output does not match the JSON schema at ${f.pointer || '/'}: "${f.keyword}": ${f.message}`, f.pointer, f.keyword),
      { value },
    );
  const validatorOf = (): Validator | LlamaError => {
    if (validator === undefined) {
      try {
        validator = compile(JSON.parse(text) as Json, draft);
      } catch (e) {
        validator = cannotCompile((e as Error).message);
      }
    }
    return validator;
  };
  // The converter writes each placeholder const as the GBNF literal "\"<name>\"": one pass puts the rule names in.
  const wanted = new Set(a.placeholders);
  const literal = new RegExp(`"\\\\"(${prefix}-leaf-\\d+)\\\\""`, 'g');
  return {
    mode,
    converterText: a.converterText,
    grammarKey: `${mode}\0${a.converterText}\n${a.rules}`,
    notes: a.notes,
    splice(grammar: string): string {
      const found = new Set<string>();
      const out = grammar.replace(literal, (whole, name: string) => {
        if (!wanted.has(name)) return whole;
        found.add(name);
        return name;
      });
      if (found.size !== wanted.size) {
        const missing = a.placeholders.find((name) => !found.has(name));
        throw new LlamaError('ERR_INVALID_GRAMMAR', `The converter's grammar lacks the value ${missing} the checking pass put in the schema`);
      }
      return out + a.rules;
    },
    warm(): void {
      if (offThread) void ajvRequest({ op: 'compile', key, schema: text, draft }).catch(() => {});
      else if (validator === undefined) setImmediate(validatorOf).unref();
    },
    check(value: unknown): LlamaError | null | Promise<LlamaError | null> {
      if (offThread) {
        return ajvRequest({ op: 'check', key, schema: text, draft, value: JSON.stringify(value) }).then((r) =>
          r.ok ? null : 'compileError' in r ? cannotCompile(r.compileError) : 'failure' in r ? mismatch(r.failure, value) : cannotCompile('unexpected reply'),
        );
      }
      const v = validatorOf();
      if (v instanceof LlamaError) return v;
      let ok: boolean;
      try {
        ok = v(value);
      } catch (e) {
        return schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema: ajv could not validate against it: ${(e as Error).message}`, '#', '');
      }
      if (ok) return null;
      return mismatch(firstFailure(v), value);
    },
  };
}

/**
 * Checks a schema and prepares it for the converter (cached by its text and mode). @internal
 * @throws LlamaError ERR_INVALID_SCHEMA, ERR_UNSUPPORTED_SCHEMA, ERR_LIMIT_EXCEEDED, ERR_INVALID_ARGUMENT.
 */
export function prepareJsonSchema(schema: unknown, mode: SchemaMode, caller: Function): PreparedSchema {
  let text: string;
  try {
    text = schemaText(schema);
  } catch (e) {
    throw withStack(toLlamaError(e), caller);
  }
  return preparedFromText(text, mode, caller);
}

/** The prepared schema of a schema's JSON text (from schemaText), from the cache or the checking pass here. */
function preparedFromText(text: string, mode: SchemaMode, caller: Function): PreparedSchema {
  const key = `${mode}\0${text}`;
  const known = prepared.get(key);
  if (known) return remember(prepared, key, known);
  try {
    return remember(prepared, key, build(key, text, mode, analyzeSchema(text, mode)));
  } catch (e) {
    throw withStack(toLlamaError(e), caller);
  }
}

/**
 * The prepared schema if it is in the cache (after the limits' walk, which is linear), or else a promise of
 * it: a schema of {@link WORKER_SCHEMA_CHARS} characters or more goes through the checking pass on the
 * validator's worker thread (2–6 ms per KB on this one). Errors are those of {@link prepareJsonSchema},
 * with the caller's stack. @internal
 */
export function prepareJsonSchemaSoon(schema: unknown, mode: SchemaMode, caller: Function): PreparedSchema | Promise<PreparedSchema> {
  let text: string;
  try {
    text = schemaText(schema);
  } catch (e) {
    throw withStack(toLlamaError(e), caller);
  }
  if (text.length < WORKER_SCHEMA_CHARS) return preparedFromText(text, mode, caller);
  const key = `${mode}\0${text}`;
  const known = prepared.get(key);
  if (known) return remember(prepared, key, known);
  const atCaller = callSite(caller);
  return ajvRequest({ op: 'prepare', schema: text, mode }).then((r) => {
    if ('analysis' in r) {
      const again = prepared.get(key);
      return remember(prepared, key, again ?? build(key, text, mode, r.analysis));
    }
    const err =
      'error' in r
        ? Object.assign(new LlamaError(r.error.code as LlamaErrorCode, r.error.message), r.error.details)
        : new LlamaError('ERR_NATIVE', `The JSON schema's checking pass failed on its worker thread: ${'compileError' in r ? r.compileError : 'no analysis came back'}`);
    throw atCaller(err);
  });
}

/** The grammar of a prepared schema, with llama.cpp's converter on this thread (cached). @internal */
export function preparedGrammar(p: PreparedSchema, caller: Function): string {
  const known = grammars.get(p.grammarKey);
  if (known !== undefined) return remember(grammars, p.grammarKey, known);
  let converted: string;
  try {
    converted = native().jsonSchemaToGrammar(p.converterText, p.mode === 'best-effort');
  } catch (e) {
    throw withStack(toLlamaError(e), caller);
  }
  return remember(grammars, p.grammarKey, p.splice(converted));
}

function mode(options: JsonSchemaOptions | undefined, caller: Function): SchemaMode {
  const m = options?.schemaMode ?? 'strict';
  if (m !== 'strict' && m !== 'best-effort') {
    throw withStack(new LlamaError('ERR_INVALID_ARGUMENT', `Invalid option "schemaMode": expected 'strict' or 'best-effort', received ${JSON.stringify(m)}`), caller);
  }
  return m;
}

/**
 * Converts a JSON schema to a GBNF grammar: the checking pass, then llama.cpp's own converter (the one
 * llama-server uses) on this thread; see {@link jsonSchemaToGrammarAsync} to keep the thread free.
 * @throws LlamaError `ERR_INVALID_SCHEMA`, `ERR_UNSUPPORTED_SCHEMA`, `ERR_LIMIT_EXCEEDED`, `ERR_INVALID_GRAMMAR`.
 */
export function jsonSchemaToGrammar(schema: JsonSchema, options?: JsonSchemaOptions): string {
  return preparedGrammar(prepareJsonSchema(schema, mode(options, jsonSchemaToGrammar), jsonSchemaToGrammar), jsonSchemaToGrammar);
}

/**
 * {@link jsonSchemaToGrammar} with llama.cpp's converter off the JS thread. The grammar is cached: a
 * generation with the same `jsonSchema` afterwards does not convert it again.
 */
export async function jsonSchemaToGrammarAsync(schema: JsonSchema, options?: JsonSchemaOptions): Promise<string> {
  const p = await prepareJsonSchemaSoon(schema, mode(options, jsonSchemaToGrammarAsync), jsonSchemaToGrammarAsync);
  return preparedGrammarAsync(p, jsonSchemaToGrammarAsync);
}

/** {@link preparedGrammar} with llama.cpp's converter on a libuv worker (cached). @internal */
export async function preparedGrammarAsync(p: PreparedSchema, caller: Function): Promise<string> {
  const known = grammars.get(p.grammarKey);
  if (known !== undefined) return remember(grammars, p.grammarKey, known);
  const addon = native();
  if (typeof addon.jsonSchemaToGrammarAsync !== 'function') return preparedGrammar(p, caller);
  const atCaller = callSite(caller);
  let converted: string;
  try {
    converted = await addon.jsonSchemaToGrammarAsync(p.converterText, p.mode === 'best-effort');
  } catch (e) {
    throw atCaller(e);
  }
  return remember(grammars, p.grammarKey, p.splice(converted));
}

/**
 * Runs the checking pass alone (no conversion): throws what a generation with this schema would throw
 * before generating, and lists the keywords best-effort mode leaves to validation.
 */
export function checkJsonSchema(schema: JsonSchema, options?: JsonSchemaOptions): { notes: readonly SchemaNote[] } {
  const p = prepareJsonSchema(schema, mode(options, checkJsonSchema), checkJsonSchema);
  return { notes: p.notes };
}
