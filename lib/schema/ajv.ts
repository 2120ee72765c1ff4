// ajv: the meta-schema check of a schema, and the validation of every `json` result against its schema.
import { createRequire } from 'node:module';
import type { Ajv, AnySchema, ErrorObject, ValidateFunction } from 'ajv';
import type { Ajv2019 } from 'ajv/dist/2019.js';
import type { Ajv2020 } from 'ajv/dist/2020.js';
import type { fullFormats } from 'ajv-formats/dist/formats.js';
import { AJV_FORMATS } from './formats.js';

// ajv loads on first use: it adds about 150 ms to importing the package.
const require = createRequire(import.meta.url);

export type Draft = '2020-12' | '2019-09' | 'draft-07';

const DRAFT_URIS: ReadonlyArray<[RegExp, Draft]> = [
  [/^https?:\/\/json-schema\.org\/draft\/2020-12\/schema#?$/, '2020-12'],
  [/^https?:\/\/json-schema\.org\/draft\/2019-09\/schema#?$/, '2019-09'],
  [/^https?:\/\/json-schema\.org\/draft-07\/schema#?$/, 'draft-07'],
];

/** The draft a `$schema` names, or undefined when it names another one. */
export function draftOf(uri: string): Draft | undefined {
  return DRAFT_URIS.find(([re]) => re.test(uri))?.[1];
}

type AnyAjv = Ajv;
const instances = new Map<Draft, AnyAjv>();

/**
 * ajv compares values for `const`, `enum` and `uniqueItems` with fast-deep-equal, which calls an object's
 * `valueOf` and `toString` when they are not Object.prototype's: for JSON data with those keys
 * (`{"toString": 1}`) it throws a TypeError, and for `{"valueOf": 1}` against `{"valueOf": 1, "x": 2}` it
 * answers from the values of those keys alone. ajv reads its comparison from one module property at
 * compile time; plain objects and arrays (all JSON data) are compared here by their own keys instead, and
 * everything else (Dates, RegExps, Maps of a host application's own schemas) still by fast-deep-equal.
 */
function installJsonEqual(): void {
  const runtime = require('ajv/dist/runtime/equal') as { default: ((a: unknown, b: unknown) => boolean) & { code?: string; json?: true } };
  const original = runtime.default;
  if (original.json) return;
  const plain = (v: unknown): v is Record<string, unknown> => {
    if (v === null || typeof v !== 'object') return false;
    const p = Object.getPrototypeOf(v) as unknown;
    return p === Object.prototype || p === null;
  };
  const equal = (a: unknown, b: unknown): boolean => {
    if (a === b) return true;
    if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => equal(x, b[i]));
    if (plain(a) && plain(b)) {
      const ka = Object.keys(a);
      if (ka.length !== Object.keys(b).length) return false;
      return ka.every((k) => Object.hasOwn(b, k) && equal(a[k], b[k]));
    }
    if (Array.isArray(a) || Array.isArray(b) || plain(a) || plain(b)) return false;
    return original(a, b);
  };
  runtime.default = Object.assign(equal, { code: original.code, json: true as const });
}

function ajvFor(draft: Draft): AnyAjv {
  let a = instances.get(draft);
  if (!a) {
    installJsonEqual();
    const options = {
      // Unknown keywords are the checking pass's business; ajv checks what it knows.
      strict: false,
      logger: false as const,
      // Inlining references can grow the code exponentially with chains of $defs.
      inlineRefs: false,
      // ajv's optimizing passes over the generated code grow faster than the schema: without them a 100 KB
      // schema compiles in 0.7 s instead of 3.8 s (measured on a 2-core EPYC), and validates the same.
      code: { optimize: false },
      allErrors: false,
      // Properties are the value's own: {} has no "constructor" or "hasOwnProperty" property, whatever its prototype says.
      ownProperties: true,
      // Every format ajv-formats knows is checked (best-effort mode lets the grammar ignore most of them).
      formats: { ...(require('ajv-formats/dist/formats.js') as { fullFormats: typeof fullFormats }).fullFormats, ...AJV_FORMATS },
    };
    // The constructors are taken out first: TypeScript 7 drops the parentheses of `new (require(x) as T).C()`
    // when it removes the `as`, which makes it `new require(x).C()` in dist/ (test/readme.test.ts runs dist/).
    if (draft === '2020-12') {
      const { Ajv2020: Ctor } = require('ajv/dist/2020.js') as { Ajv2020: typeof Ajv2020 };
      a = new Ctor(options);
    } else if (draft === '2019-09') {
      const { Ajv2019: Ctor } = require('ajv/dist/2019.js') as { Ajv2019: typeof Ajv2019 };
      a = new Ctor(options);
    } else {
      const { Ajv: Ctor } = require('ajv') as { Ajv: typeof Ajv };
      a = new Ctor(options);
    }
    instances.set(draft, a);
  }
  return a;
}

function withoutSchemaUri(schema: unknown): AnySchema {
  if (schema === null || typeof schema !== 'object') return schema as AnySchema;
  const copy = { ...(schema as Record<string, unknown>) };
  delete copy.$schema;
  return copy as AnySchema;
}

/** The error the checking pass reports for a meta-schema failure: the deepest one, an `enum` first. */
function pickError(errors: readonly ErrorObject[]): ErrorObject {
  let best = errors[0];
  for (const e of errors) {
    const d = e.instancePath.split('/').length;
    const bd = best.instancePath.split('/').length;
    if (d > bd || (d === bd && best.keyword === 'anyOf' && e.keyword !== 'anyOf')) best = e;
  }
  return best;
}

export interface SchemaProblem {
  /** JSON pointer of the offending value in the schema. */
  pointer: string;
  /** The schema keyword at fault. */
  keyword: string;
  message: string;
}

function describe(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  if (e.keyword === 'enum' && Array.isArray(p.allowedValues)) return `must be one of ${p.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  return e.message ?? e.keyword;
}

/** Checks the schema against its draft's meta-schema. */
export function metaCheck(schema: unknown, draft: Draft): SchemaProblem | null {
  const a = ajvFor(draft);
  // The instance's own meta-schema is the draft's ($schema may spell its URI differently).
  const copy = withoutSchemaUri(schema);
  if (a.validateSchema(copy)) return null;
  const e = pickError(a.errors ?? []);
  const parts = e.instancePath.split('/').slice(1);
  // The keyword is the last part that is not an index or a property name of the schema's maps.
  let keyword = parts[parts.length - 1] ?? e.keyword;
  if (/^\d+$/.test(keyword) && parts.length > 1) keyword = parts[parts.length - 2];
  return { pointer: `#${e.instancePath}`, keyword, message: describe(e) };
}

/** A compiled validator of a schema. */
export interface Validator {
  (value: unknown): boolean;
  errors?: ErrorObject[] | null;
}

/** Compiles the schema; throws ajv's error (a message) when it cannot. */
export function compile(schema: unknown, draft: Draft): Validator {
  const a = ajvFor(draft);
  const s = withoutSchemaUri(schema);
  let v: ValidateFunction;
  try {
    v = a.compile(s);
  } finally {
    // ajv keeps every compiled schema (and its $id) for later references: drop it, the function stays.
    // (A boolean schema is not kept, and removeSchema refuses one.)
    if (typeof s === 'object' && s !== null) a.removeSchema(s);
  }
  return v;
}

/** The first failure of a validation, for an error message. */
export function firstFailure(v: Validator): { pointer: string; keyword: string; message: string } {
  const e = v.errors?.[0];
  if (!e) return { pointer: '', keyword: '', message: 'does not match' };
  let pointer = e.instancePath;
  const p = e.params as Record<string, unknown>;
  if (e.keyword === 'required' && typeof p.missingProperty === 'string') pointer += `/${p.missingProperty.replace(/~/g, '~0').replace(/\//g, '~1')}`;
  if (e.keyword === 'additionalProperties' && typeof p.additionalProperty === 'string') {
    pointer += `/${p.additionalProperty.replace(/~/g, '~0').replace(/\//g, '~1')}`;
  }
  return { pointer, keyword: e.keyword, message: describe(e) };
}
