// The checking pass: rewrites a JSON schema into the subset llama.cpp's converter enforces exactly, or
// fails. Every keyword ends up enforced by the grammar (possibly narrowed: the grammar may admit fewer
// values than the schema, never more), ignored as an annotation, an error (ERR_INVALID_SCHEMA for a schema
// no value can satisfy, ERR_UNSUPPORTED_SCHEMA for what the grammar cannot enforce, ERR_LIMIT_EXCEEDED), or,
// in best-effort mode, noted and left to the validation of the output.
//
// What the converter gets: `type` (one), `properties`/`required`/`additionalProperties`, `items`,
// `prefixItems` (a closed tuple), `minItems`/`maxItems`, `anyOf`, `const`, `enum`, and `$ref`s into a
// `$defs` of its own. Strings with a pattern, format or length and every number with bounds become a
// placeholder `const` that the grammar of the value replaces after conversion (see lib/schema/json-schema.ts):
// the converter writes llama.cpp's own rules for structure, and this pass the rules for values.
import { LlamaError } from '../base/errors.js';
import { compile, firstFailure, type Draft } from './ajv.js';
import { lit, rep, seq, GbnfRules, type Expr } from './expr.js';
import { NUMBER_FORMAT_BOUNDS, STRING_FORMAT_PATTERNS } from './formats.js';
import { SCHEMA_LIMITS } from './limits.js';
import { boundsSatisfiable, effectiveBounds, numberExpr, type Bounds } from './number.js';
import { ANY, jsonText, patternExpr, PatternLimit, UnsupportedPattern, withLengths } from './pattern.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

/** `strict`: what the grammar cannot enforce is an error. `best-effort`: it is noted, and left to validation. */
export type SchemaMode = 'strict' | 'best-effort';

/** A keyword the grammar does not enforce, accepted in best-effort mode. */
export interface SchemaNote {
  /** JSON pointer (as a URI fragment) of the schema object that has the keyword. */
  pointer: string;
  keyword: string;
  reason: string;
}

/** Details of ERR_INVALID_SCHEMA, ERR_UNSUPPORTED_SCHEMA and ERR_SCHEMA_MISMATCH errors. */
export interface SchemaErrorDetails {
  /** Where: in the schema (a URI fragment such as `#/properties/age`), or in the output for a mismatch (`/age`). */
  pointer: string;
  /** The keyword at fault. */
  keyword: string;
}

export function schemaError(code: 'ERR_INVALID_SCHEMA' | 'ERR_UNSUPPORTED_SCHEMA' | 'ERR_LIMIT_EXCEEDED' | 'ERR_SCHEMA_MISMATCH', message: string, pointer: string, keyword: string): LlamaError {
  return Object.assign(new LlamaError(code, message), { pointer, keyword });
}

/** The pointer of a keyword of the schema object at `at`. */
function kw(at: string, keyword: string): string {
  return keyword ? `${at}/${esc(keyword)}` : at;
}

/** ERR_INVALID_SCHEMA for `keyword` of the schema object at `at` (or at `exact`). */
function invalid(at: string, keyword: string, what: string, exact?: string): never {
  const pointer = exact ?? kw(at, keyword);
  throw schemaError('ERR_INVALID_SCHEMA', `Invalid JSON schema at ${pointer}${keyword ? ` ("${keyword}")` : ''}: ${what}`, pointer, keyword);
}

export function overLimit(what: string, at = '#', keyword = ''): never {
  const pointer = kw(at, keyword);
  throw schemaError('ERR_LIMIT_EXCEEDED', `The JSON schema is over a limit at ${pointer}: ${what}`, pointer, keyword);
}

class Empty {
  constructor(
    readonly reason: string,
    readonly pointer: string,
  ) {}
}
type N = Obj | Empty;

const ANNOTATIONS = new Set([
  'title', 'description', '$comment', 'examples', 'default', 'deprecated', 'readOnly', 'writeOnly', '$schema', '$id',
  '$anchor', '$dynamicAnchor', '$recursiveAnchor', '$vocabulary', 'contentMediaType', 'contentEncoding', 'contentSchema',
  'discriminator', '$defs', 'definitions',
]);

const COMMON = ['type', 'enum', 'const', '$ref', 'allOf', 'anyOf', 'oneOf', 'not', 'if', 'then', 'else', 'format'];
const STRING_KEYS = ['minLength', 'maxLength', 'pattern'];
const NUMBER_KEYS = ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf'];
const ARRAY_KEYS = ['items', 'contains', 'minItems', 'maxItems', 'uniqueItems'];
const OBJECT_KEYS = ['properties', 'required', 'additionalProperties', 'patternProperties', 'propertyNames', 'minProperties', 'maxProperties'];

const KEYWORDS: Record<Draft, Set<string>> = {
  'draft-07': new Set([...COMMON, ...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, 'additionalItems', 'dependencies']),
  '2019-09': new Set([
    ...COMMON, ...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, 'additionalItems', 'minContains', 'maxContains',
    'unevaluatedItems', 'dependentRequired', 'dependentSchemas', 'unevaluatedProperties', '$recursiveRef',
  ]),
  '2020-12': new Set([
    ...COMMON, ...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, 'prefixItems', 'minContains', 'maxContains',
    'unevaluatedItems', 'dependentRequired', 'dependentSchemas', 'unevaluatedProperties', '$dynamicRef',
  ]),
};

const FAMILIES: ReadonlyArray<[string, readonly string[]]> = [
  ['string', STRING_KEYS],
  ['number', NUMBER_KEYS],
  ['array', [...ARRAY_KEYS, 'prefixItems', 'additionalItems', 'minContains', 'maxContains', 'unevaluatedItems']],
  [
    'object',
    [...OBJECT_KEYS, 'dependentRequired', 'dependentSchemas', 'dependencies', 'unevaluatedProperties'],
  ],
];

const APPLICATORS = ['allOf', 'anyOf', 'oneOf', '$ref', 'if', 'not', 'dependentSchemas', '$dynamicRef', '$recursiveRef'];

// ---------------------------------------------------------------------------------------------------------
// JSON helpers

export function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export function deepEqual(a: Json, b: Json): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as Json[];
    return a.length === bb.length && a.every((x, i) => deepEqual(x, bb[i]));
  }
  const ka = Object.keys(a);
  const ob = b as Obj;
  return ka.length === Object.keys(ob).length && ka.every((k) => Object.hasOwn(ob, k) && deepEqual((a as Obj)[k], ob[k]));
}

/** A name as a JSON pointer's token (RFC 6901: ~ is ~0, / is ~1). */
export function esc(name: string): string {
  return name.replace(/~/g, '~0').replace(/\//g, '~1');
}

/**
 * An object for names that come from the schema (property names, $defs): without a prototype, so that
 * "__proto__" is a key like any other and "constructor" is not found unless it is there.
 */
function dict(from?: Obj): Obj {
  const d = Object.create(null) as Obj;
  if (from) for (const k of Object.keys(from)) d[k] = from[k];
  return d;
}

/** The value of an own property, never an inherited one ("toString" of a schema's properties is absent). */
function own(o: Obj | undefined, k: string): Json | undefined {
  return o !== undefined && Object.hasOwn(o, k) ? o[k] : undefined;
}

function without(o: Obj, keys: readonly string[]): Obj {
  const out: Obj = dict();
  for (const k of Object.keys(o)) if (!keys.includes(k)) out[k] = o[k];
  return out;
}

function assertions(o: Obj): string[] {
  return Object.keys(o).filter((k) => !ANNOTATIONS.has(k) && !k.startsWith('x-'));
}

function containsRef(v: Json): boolean {
  if (Array.isArray(v)) return v.some(containsRef);
  if (isObj(v)) return Object.keys(v).some((k) => k === '$ref' || k === '$dynamicRef' || k === '$recursiveRef' || containsRef(v[k]));
  return false;
}

function typeOfValue(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'object') return 'object';
  return typeof v; // boolean, number, string
}

/** Resolves a JSON pointer (already URI-decoded, "" or "/..."). */
function resolvePointer(root: Json, pointer: string): Json | undefined {
  if (pointer === '') return root;
  let cur: Json | undefined = root;
  for (const raw of pointer.slice(1).split('/')) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      if (!/^(0|[1-9]\d*)$/.test(part)) return undefined;
      cur = cur[Number(part)];
    } else if (isObj(cur)) {
      cur = Object.hasOwn(cur, part) ? cur[part] : undefined;
    } else {
      return undefined;
    }
    if (cur === undefined) return undefined;
  }
  return cur;
}

// ---------------------------------------------------------------------------------------------------------

interface Leaf {
  expr: Expr;
}

interface Def {
  name: string;
  pointer: string;
  target: Json;
  node?: N;
}

export interface Normalized {
  /** The schema for llama.cpp's converter. */
  doc: Obj;
  /** GBNF rules of the placeholders in `doc` (the rule of placeholder P is named P). */
  rules: string;
  /** The placeholders that `doc` holds. */
  placeholders: string[];
  notes: SchemaNote[];
}

class Checker {
  readonly defs = new Map<string, Def>();
  readonly pending: Def[] = [];
  readonly leaves = new Map<string, Leaf>();
  readonly notes: SchemaNote[] = [];
  readonly inlining: string[] = [];
  readonly keywords: Set<string>;
  nodes = 0;
  expansions = 0;
  depth = 0;
  #validators = new Map<string, ReturnType<typeof compile>>();

  constructor(
    readonly root: Json,
    readonly draft: Draft,
    readonly mode: SchemaMode,
    readonly prefix: string,
  ) {
    this.keywords = KEYWORDS[draft];
  }

  /** What the grammar cannot enforce: an error, or in best-effort mode a note (and the caller goes on). */
  unsupported(at: string, keyword: string, reason: string): void {
    const pointer = kw(at, keyword);
    if (this.mode === 'strict') {
      throw schemaError(
        'ERR_UNSUPPORTED_SCHEMA',
        `The JSON schema uses what the grammar cannot enforce, at ${pointer} ("${keyword}"): ${reason} (schemaMode: 'best-effort' accepts it and validates the output instead)`,
        pointer,
        keyword,
      );
    }
    this.notes.push({ pointer, keyword, reason });
  }

  validator(schema: Json, pointer: string, keyword: string): ReturnType<typeof compile> | null {
    if (containsRef(schema)) {
      this.unsupported(pointer, keyword, `"${keyword}" is checked against the rest of the schema, which uses $ref here`);
      return null;
    }
    const key = JSON.stringify(schema);
    let v = this.#validators.get(key);
    if (!v) {
      try {
        v = compile(schema, this.draft);
      } catch (e) {
        invalid(pointer, keyword, (e as Error).message);
      }
      this.#validators.set(key, v);
    }
    return v;
  }

  count(pointer: string): void {
    if (++this.nodes > SCHEMA_LIMITS.maxSubschemas) overLimit(`more than ${SCHEMA_LIMITS.maxSubschemas} subschemas to check (with $ref targets and allOf merges)`, pointer);
  }

  expand(pointer: string): void {
    if (++this.expansions > SCHEMA_LIMITS.maxRefExpansions) overLimit(`more than ${SCHEMA_LIMITS.maxRefExpansions} $ref expansions`, pointer, '$ref');
  }

  leaf(expr: Expr): Obj {
    const name = `${this.prefix}-leaf-${this.leaves.size}`;
    this.leaves.set(name, { expr });
    return { const: name };
  }

  // -------------------------------------------------------------------------------------------------------

  norm(s: Json, ptr: string): N {
    this.count(ptr);
    if (++this.depth > 4 * SCHEMA_LIMITS.maxDepth) overLimit(`subschemas nested more than ${4 * SCHEMA_LIMITS.maxDepth} deep once $ref and allOf are followed`, ptr);
    try {
      return this.#norm(s, ptr);
    } finally {
      this.depth--;
    }
  }

  #norm(s: Json, ptr: string): N {
    if (s === true) return {};
    if (s === false) return new Empty('the schema is false', ptr);
    if (!isObj(s)) invalid(ptr, 'type', 'a schema must be an object or a boolean');
    let w: Obj = { ...s };
    const drop = (k: string) => {
      delete w[k];
    };

    for (const k of Object.keys(w)) {
      if (k.startsWith('x-') || ANNOTATIONS.has(k)) {
        if (k === '$id' && ptr !== '#') this.unsupported(ptr, k, '$id inside a schema changes how its $refs resolve');
        continue;
      }
      if (!this.keywords.has(k)) {
        this.unsupported(ptr, k, `not a keyword of JSON schema ${this.draft}, so nothing checks it (name extensions x-...)`);
        drop(k);
      }
    }
    if (('unevaluatedProperties' in w || 'unevaluatedItems' in w) && APPLICATORS.some((k) => k in w)) {
      for (const k of ['unevaluatedProperties', 'unevaluatedItems']) {
        if (k in w) {
          this.unsupported(ptr, k, `${k} beside ${APPLICATORS.filter((a) => a in w).join(', ')}`);
          drop(k);
        }
      }
    }
    for (const k of ['not', 'if', '$dynamicRef', '$recursiveRef']) {
      if (k in w) {
        this.unsupported(ptr, k, k === 'not' ? 'the grammar cannot exclude values' : k === 'if' ? 'conditional subschemas (if/then/else)' : 'dynamic references');
        drop(k);
        if (k === 'if') {
          drop('then');
          drop('else');
        }
      }
    }
    // then/else without if have no effect
    drop('then');
    drop('else');

    if ('$ref' in w) {
      const siblings = assertions(w).filter((k) => k !== '$ref');
      if (siblings.length === 0) return this.ref(w.$ref, ptr);
      // The reference and its siblings both apply.
      const rest = without(w, ['$ref', 'allOf']);
      w = { allOf: [{ $ref: w.$ref }, rest, ...((w.allOf as Json[] | undefined) ?? [])] };
    }
    if ('allOf' in w) return this.#allOf(w, ptr);
    if ('anyOf' in w || 'oneOf' in w) return this.#anyOf(w, ptr);
    if ('const' in w || 'enum' in w) return this.#enum(w, ptr);

    let types: string[];
    if ('type' in w) {
      types = Array.isArray(w.type) ? (w.type as string[]) : [w.type as string];
    } else {
      // Without a type, type-specific keywords hold only for their type: the grammar writes those types.
      types = FAMILIES.filter(([, keys]) => keys.some((k) => k in w)).map(([t]) => t);
      if (typeof w.format === 'string' && !types.length) types = [w.format in NUMBER_FORMAT_BOUNDS ? 'number' : 'string'];
      if (types.length === 0) return {};
    }
    if (types.includes('number')) types = types.filter((t) => t !== 'integer');
    const branches: N[] = types.map((t) => this.#typed(w, t, ptr));
    const kept = branches.filter((b): b is Obj => !(b instanceof Empty));
    if (kept.length === 0) return branches[0];
    return kept.length === 1 ? kept[0] : { anyOf: kept };
  }

  ref(value: Json, ptr: string): N {
    if (typeof value !== 'string') invalid(ptr, '$ref', 'must be a string');
    // "" is this document, as "#" is (a URI reference with nothing to resolve against the base).
    if (value === '') value = '#';
    if (!value.startsWith('#')) {
      throw schemaError('ERR_UNSUPPORTED_SCHEMA', `The JSON schema refers outside itself at ${kw(ptr, '$ref')}: "${value}" (only references into the schema, #/..., are supported)`, kw(ptr, '$ref'), '$ref');
    }
    let pointer: string;
    try {
      pointer = decodeURIComponent(value.slice(1));
    } catch {
      invalid(ptr, '$ref', `"${value}" is not a valid URI fragment`);
    }
    if (pointer !== '' && !pointer.startsWith('/')) {
      throw schemaError('ERR_UNSUPPORTED_SCHEMA', `The JSON schema uses an anchor reference at ${kw(ptr, '$ref')}: "${value}" (only JSON pointers, #/..., are supported)`, kw(ptr, '$ref'), '$ref');
    }
    const key = `#${pointer}`;
    let d = this.defs.get(key);
    if (!d) {
      const target = resolvePointer(this.root, pointer);
      if (target === undefined) invalid(ptr, '$ref', `"${value}" does not resolve to anything in the schema`);
      this.expand(ptr);
      d = { name: `d${this.defs.size}`, pointer: key, target };
      this.defs.set(key, d);
      // Targets are checked from a work list, so that chains of references do not nest calls.
      this.pending.push(d);
    }
    return { $ref: `#/$defs/${d.name}` };
  }

  /** The raw schema a $ref points to, for merging; a reference back into what is being merged is unsupported. */
  #inline(value: Json, ptr: string, within: readonly string[]): [Json, string | null] {
    if (value === '') value = '#';
    if (typeof value !== 'string' || !value.startsWith('#')) return this.ref(value, ptr) as never;
    let pointer: string;
    try {
      pointer = decodeURIComponent(value.slice(1));
    } catch {
      invalid(ptr, '$ref', `"${value}" is not a valid URI fragment`);
    }
    if (pointer !== '' && !pointer.startsWith('/')) return this.ref(value, ptr) as never;
    const target = resolvePointer(this.root, pointer);
    if (target === undefined) invalid(ptr, '$ref', `"${value}" does not resolve to anything in the schema`);
    if (this.inlining.includes(pointer) || within.includes(pointer)) {
      this.unsupported(ptr, '$ref', `"${value}" refers back to a schema it is merged into (allOf, or $ref beside other keywords)`);
      return [true, null];
    }
    this.expand(ptr);
    return [target, pointer];
  }

  /** The schemas an allOf stands for, with $refs followed; false when one is false. */
  #flatten(s: Json, ptr: string, out: Obj[], within: string[], followed: string[], origins: string[] = []): boolean {
    if (s === true) return true;
    if (s === false) return false;
    if (!isObj(s)) invalid(ptr, 'allOf', 'a schema must be an object or a boolean');
    let rest = s;
    if ('$ref' in rest) {
      const [target, pointer] = this.#inline(rest.$ref, ptr, within);
      if (pointer !== null) {
        followed.push(pointer);
        within.push(pointer);
      }
      const ok = this.#flatten(target, pointer !== null ? `#${pointer}` : ptr, out, within, followed, origins);
      if (pointer !== null) within.pop();
      if (!ok) return false;
      rest = without(rest, ['$ref']);
    }
    if (Array.isArray(rest.allOf)) {
      const parts = rest.allOf;
      for (let i = 0; i < parts.length; i++) if (!this.#flatten(parts[i], `${ptr}/allOf/${i}`, out, within, followed, origins)) return false;
      rest = without(rest, ['allOf']);
    }
    out.push(rest);
    origins.push(ptr);
    return true;
  }

  #allOf(w: Obj, ptr: string): N {
    const depth = this.inlining.length;
    try {
      const parts: Obj[] = [];
      const origins: string[] = [];
      const followed: string[] = [];
      const ok = this.#flatten(w, ptr, parts, [], followed, origins);
      // What the merged schema holds must not be merged into itself again further down.
      this.inlining.push(...followed);
      if (!ok) return new Empty('allOf has a false schema', `${ptr}/allOf`);
      let merged: Obj = dict();
      // A conflict is reported where the part that brings it in is (#/allOf/1, not #/allOf).
      parts.forEach((p, i) => {
        merged = this.#merge(merged, p, origins[i]!);
      });
      return this.norm(merged, ptr);
    } finally {
      this.inlining.length = depth;
    }
  }

  /** Both schemas at once, as one schema (what allOf of the two means). */
  #merge(a: Obj, b: Obj, ptr: string): Obj {
    const out: Obj = { ...a };
    const conflict = (k: string) => {
      this.unsupported(ptr, k, `allOf with two different "${k}" values (the grammar cannot enforce both)`);
    };
    const objectish = (o: Obj) => ['properties', 'additionalProperties', 'patternProperties', 'required'].some((k) => k in o);
    if ((('patternProperties' in a) && objectish(b)) || (('patternProperties' in b) && objectish(a))) conflict('patternProperties');
    // A tuple and other item keywords: the grammar cannot apply both to the same positions.
    const itemish = (o: Obj) => ['items', 'prefixItems', 'additionalItems', 'unevaluatedItems'].some((k) => k in o);
    const tupleish = (o: Obj) => 'prefixItems' in o || Array.isArray(o.items);
    if ((tupleish(a) && itemish(b)) || (tupleish(b) && itemish(a))) {
      if (!['items', 'prefixItems', 'additionalItems'].every((k) => deepEqual(a[k] ?? null, b[k] ?? null))) conflict('prefixItems');
    }
    for (const k of Object.keys(b)) {
      const bv = b[k];
      if (!(k in out)) {
        if (k !== 'properties' && k !== 'additionalProperties') out[k] = bv;
        continue;
      }
      const av = out[k];
      switch (k) {
        case 'type': {
          const ta = Array.isArray(av) ? (av as string[]) : [av as string];
          const tb = Array.isArray(bv) ? (bv as string[]) : [bv as string];
          const both: string[] = [];
          for (const t of ta) {
            if (tb.includes(t)) both.push(t);
            else if (t === 'number' && tb.includes('integer')) both.push('integer');
            else if (t === 'integer' && tb.includes('number')) both.push('integer');
          }
          if (both.length === 0) invalid(ptr, 'type', `the merged schemas' types ${JSON.stringify(av)} and ${JSON.stringify(bv)} have nothing in common`);
          out.type = [...new Set(both)];
          break;
        }
        case 'const':
          if (!deepEqual(av, bv)) invalid(ptr, 'const', `two different const values, ${JSON.stringify(av)} and ${JSON.stringify(bv)}`);
          break;
        case 'enum': {
          const common = (av as Json[]).filter((x) => (bv as Json[]).some((y) => deepEqual(x, y)));
          if (common.length === 0) invalid(ptr, 'enum', 'the merged enums have no value in common');
          out.enum = common;
          break;
        }
        case 'minimum':
        case 'exclusiveMinimum':
        case 'minLength':
        case 'minItems':
        case 'minProperties':
        case 'minContains':
          out[k] = Math.max(av as number, bv as number);
          break;
        case 'maximum':
        case 'exclusiveMaximum':
        case 'maxLength':
        case 'maxItems':
        case 'maxProperties':
        case 'maxContains':
          out[k] = Math.min(av as number, bv as number);
          break;
        case 'uniqueItems':
          out[k] = av === true || bv === true;
          break;
        case 'required':
          out[k] = [...new Set([...(av as string[]), ...(bv as string[])])];
          break;
        case 'dependentRequired': {
          const m: Obj = dict(av as Obj);
          for (const [key, deps] of Object.entries(bv as Obj)) m[key] = [...new Set([...((own(m, key) as string[] | undefined) ?? []), ...(deps as string[])])];
          out[k] = m;
          break;
        }
        case 'items':
          if (!Array.isArray(av) && !Array.isArray(bv)) out[k] = { allOf: [av, bv] };
          break;
        case 'properties':
        case 'additionalProperties':
          break;
        default:
          if (ANNOTATIONS.has(k) || k.startsWith('x-')) break;
          if (!deepEqual(av, bv)) conflict(k);
      }
    }
    // Properties: a name one side does not list must satisfy that side's additionalProperties.
    if (objectish(a) || objectish(b)) {
      const pa = (a.properties as Obj | undefined) ?? {};
      const pb = (b.properties as Obj | undefined) ?? {};
      const A = a.additionalProperties;
      const B = b.additionalProperties;
      const props: Obj = dict();
      for (const name of new Set([...Object.keys(pa), ...Object.keys(pb)])) {
        const parts: Json[] = [];
        if (Object.hasOwn(pa, name)) parts.push(pa[name]);
        else if (A !== undefined && A !== true) parts.push(A);
        if (Object.hasOwn(pb, name)) parts.push(pb[name]);
        else if (B !== undefined && B !== true) parts.push(B);
        props[name] = parts.length === 1 ? parts[0] : { allOf: parts };
      }
      if (Object.keys(props).length > 0) out.properties = props;
      else delete out.properties;
      const open = (x: Json | undefined) => x === undefined || x === true;
      if (open(A) && open(B)) {
        if (A === true || B === true) out.additionalProperties = true;
        else delete out.additionalProperties;
      } else if (open(A)) out.additionalProperties = B!;
      else if (open(B)) out.additionalProperties = A!;
      else out.additionalProperties = A === false || B === false ? false : { allOf: [A!, B!] };
    }
    return out;
  }

  #anyOf(w: Obj, ptr: string): N {
    let key: 'anyOf' | 'oneOf' = 'anyOf' in w ? 'anyOf' : 'oneOf';
    let alts = w[key] as Json[];
    let siblings = without(w, ['anyOf', 'oneOf']);
    if ('anyOf' in w && 'oneOf' in w) {
      const one = w.oneOf as Json[];
      if (one.length === 1) {
        siblings = { ...siblings, allOf: [one[0]] };
      } else if (alts.length === 1) {
        siblings = { ...siblings, allOf: [alts[0]] };
        key = 'oneOf';
        alts = one;
      } else {
        this.unsupported(ptr, 'oneOf', 'anyOf and oneOf side by side (the grammar takes anyOf)');
      }
    }
    const shared = assertions(siblings).length > 0;
    const raws: Json[] = alts.map((a) => (shared ? { allOf: [siblings, a] } : a));
    const branches = raws.map((r, i) => this.norm(r, `${ptr}/${key}/${i}`));
    const keptIdx = branches.map((b, i) => (b instanceof Empty ? -1 : i)).filter((i) => i >= 0);
    if (keptIdx.length === 0) return new Empty(`no alternative of ${key} can be satisfied`, `${ptr}/${key}`);
    if (key === 'oneOf' && keptIdx.length > 1) {
      const shapes = keptIdx.map((i) => this.#shape(raws[i], 0));
      for (let x = 0; x < shapes.length; x++) {
        for (let y = x + 1; y < shapes.length; y++) {
          if (!disjoint(shapes[x], shapes[y])) {
            this.unsupported(
              ptr,
              'oneOf',
              `alternatives ${keptIdx[x]} and ${keptIdx[y]} may both match a value, and the grammar cannot exclude such values (use anyOf, or tell them apart by type or by a required property with const values)`,
            );
            x = shapes.length;
            break;
          }
        }
      }
    }
    const kept = keptIdx.map((i) => branches[i] as Obj);
    return kept.length === 1 ? kept[0] : { anyOf: kept };
  }

  #enum(w: Obj, ptr: string): N {
    let values: Json[];
    let keyword: 'enum' | 'const';
    if ('const' in w) {
      keyword = 'const';
      values = [w.const];
      if ('enum' in w && !(w.enum as Json[]).some((v) => deepEqual(v, w.const))) invalid(ptr, 'const', `the const value ${JSON.stringify(w.const)} is not in enum`);
    } else {
      keyword = 'enum';
      values = w.enum as Json[];
      if (values.length === 0) invalid(ptr, 'enum', 'an empty enum: no value can satisfy it');
    }
    const rest = without(w, ['const', 'enum']);
    if (assertions(rest).length > 0) {
      const v = this.validator(rest, ptr, keyword);
      if (v) {
        values.forEach((value, i) => {
          if (!v(value)) {
            const f = firstFailure(v);
            invalid(ptr, keyword, `the value ${JSON.stringify(value)} does not satisfy the schema's other keywords ("${f.keyword}"${f.pointer ? ` at ${f.pointer}` : ''}: ${f.message})`, keyword === 'enum' ? `${ptr}/enum/${i}` : undefined);
          }
        });
      }
    }
    const unique: Json[] = [];
    for (const v of values) if (!unique.some((u) => deepEqual(u, v))) unique.push(v);
    return unique.length === 1 ? { const: unique[0] } : { enum: unique };
  }

  #typed(w: Obj, t: string, ptr: string): N {
    switch (t) {
      case 'null':
      case 'boolean':
        return { type: t };
      case 'integer':
      case 'number':
        return this.#number(w, t === 'integer', ptr);
      case 'string':
        return this.#string(w, ptr);
      case 'array':
        return this.#array(w, ptr);
      case 'object':
        return this.#object(w, ptr);
      default:
        return invalid(ptr, 'type', `unknown type ${JSON.stringify(t)}`);
    }
  }

  #number(w: Obj, integer: boolean, ptr: string): N {
    const b: Bounds = {};
    for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'] as const) if (typeof w[k] === 'number') b[k] = w[k] as number;
    if ('multipleOf' in w) {
      if (w.multipleOf === 1) integer = true;
      else this.unsupported(ptr, 'multipleOf', 'multiples other than 1 (the grammar writes any digits)');
    }
    if (typeof w.format === 'string') {
      const f = NUMBER_FORMAT_BOUNDS[w.format];
      if (f) {
        if (w.format === 'int32' || w.format === 'int64') integer = true;
        if (f.minimum !== undefined) b.minimum = b.minimum === undefined ? f.minimum : Math.max(b.minimum, f.minimum);
        if (f.maximum !== undefined) b.maximum = b.maximum === undefined ? f.maximum : Math.min(b.maximum, f.maximum);
      } else if (!(w.format in STRING_FORMAT_PATTERNS)) {
        this.unsupported(ptr, 'format', `the format "${w.format}" (the grammar enforces date, time, date-time, uuid, ipv4, int32, int64, float, double)`);
      }
    }
    if (!boundsSatisfiable(b, integer)) {
      const e = effectiveBounds(b);
      const k = e.lo !== undefined ? (e.loEx ? 'exclusiveMinimum' : 'minimum') : e.hiEx ? 'exclusiveMaximum' : 'maximum';
      invalid(ptr, k, `no ${integer ? 'integer' : 'number'} satisfies ${Object.entries(b).map(([key, v]) => `${key} ${v}`).join(', ')}`);
    }
    if (integer && Object.keys(b).length === 0) return { type: 'integer' };
    const e = numberExpr(b, integer);
    if (e === null) {
      this.unsupported(ptr, Object.keys(b)[0] ?? 'type', 'bounds beyond what the grammar writes (numbers below 10^15 in magnitude, with at most 20 decimals)');
      return { type: integer ? 'integer' : 'number' };
    }
    return this.leaf(e);
  }

  #string(w: Obj, ptr: string): N {
    const minL = typeof w.minLength === 'number' ? w.minLength : 0;
    const maxL = typeof w.maxLength === 'number' ? w.maxLength : Infinity;
    const maxRep = SCHEMA_LIMITS.maxStringRepetition;
    for (const k of ['minLength', 'maxLength'] as const) {
      if (typeof w[k] === 'number' && (w[k] as number) > maxRep) overLimit(`"${k}" ${w[k]} is above ${maxRep}`, ptr, k);
    }
    if (minL > maxL) invalid(ptr, 'minLength', `minLength ${minL} is above maxLength ${maxL}`);
    let e: Expr | null | undefined;
    let source = '';
    if (typeof w.pattern === 'string') {
      const p = w.pattern;
      if ([...p].length > SCHEMA_LIMITS.maxPatternLength) overLimit(`a pattern of ${[...p].length} characters (at most ${SCHEMA_LIMITS.maxPatternLength})`, ptr, 'pattern');
      try {
        new RegExp(p, 'u');
      } catch (err) {
        invalid(ptr, 'pattern', `not a valid regular expression: ${(err as Error).message}`);
      }
      try {
        e = patternExpr(p, maxRep);
        source = 'the pattern';
      } catch (err) {
        if (err instanceof PatternLimit) overLimit(`the pattern has ${err.message}`, ptr, 'pattern');
        if (!(err instanceof UnsupportedPattern)) throw err;
        this.unsupported(ptr, 'pattern', `the pattern has ${err.message}, which the grammar cannot express`);
      }
      if (e === null) invalid(ptr, 'pattern', 'no string matches the pattern');
    }
    if (typeof w.format === 'string') {
      const f = STRING_FORMAT_PATTERNS[w.format];
      if (f !== undefined) {
        if (e !== undefined) this.unsupported(ptr, 'format', 'format beside pattern (the grammar enforces one of them: the pattern)');
        else {
          e = patternExpr(f, maxRep);
          source = `the format "${w.format}"`;
        }
      } else if (!(w.format in NUMBER_FORMAT_BOUNDS)) {
        this.unsupported(ptr, 'format', `the format "${w.format}" (the grammar enforces date, time, date-time, uuid, ipv4)`);
      }
    }
    if (e === undefined) {
      if (minL === 0 && maxL === Infinity) return { type: 'string' };
      e = rep(ANY, 0, Infinity);
      source = 'any string';
    }
    let n = withLengths(e, minL, maxL);
    if (n === null) invalid(ptr, 'minLength' in w ? 'minLength' : 'maxLength', `no string of ${source} has a length from ${minL} to ${maxL}`);
    if (n === undefined) {
      this.unsupported(ptr, 'minLength' in w ? 'minLength' : 'maxLength', `lengths beside ${source} (the grammar cannot enforce both; write the length into the pattern)`);
      n = e;
    }
    const text = jsonText(n!);
    if (text === null) invalid(ptr, 'pattern', `${source} matches only characters a JSON string cannot hold`);
    return this.leaf(seq(lit('"'), text, lit('"'))!);
  }

  #array(w: Obj, ptr: string): N {
    const minI = typeof w.minItems === 'number' ? w.minItems : 0;
    const maxI = typeof w.maxItems === 'number' ? w.maxItems : Infinity;
    for (const k of ['minItems', 'maxItems'] as const) {
      if (typeof w[k] === 'number' && (w[k] as number) > SCHEMA_LIMITS.maxItems) overLimit(`"${k}" ${w[k]} is above ${SCHEMA_LIMITS.maxItems}`, ptr, k);
    }
    if (minI > maxI) invalid(ptr, 'minItems', `minItems ${minI} is above maxItems ${maxI}`);
    if ('contains' in w) this.unsupported(ptr, 'contains', 'the grammar cannot require an item among others');
    const unique = w.uniqueItems === true;
    let tuple: Json[] | undefined;
    let rest: Json | undefined;
    let restKey = 'items';
    if (this.draft === '2020-12') {
      tuple = w.prefixItems as Json[] | undefined;
      rest = w.items;
    } else if (Array.isArray(w.items)) {
      tuple = w.items;
      rest = w.additionalItems;
      restKey = 'additionalItems';
    } else {
      rest = w.items;
    }
    if (rest === undefined && 'unevaluatedItems' in w) {
      rest = w.unevaluatedItems;
      restKey = 'unevaluatedItems';
    }
    const tupleKey = this.draft === '2020-12' ? 'prefixItems' : 'items';
    if (tuple) {
      const items: Obj[] = [];
      const n = Math.min(tuple.length, maxI);
      for (let i = 0; i < n; i++) {
        const x = this.norm(tuple[i], `${ptr}/${tupleKey}/${i}`);
        if (x instanceof Empty) {
          // Items are optional from minItems on: the tuple stops before this one.
          if (i >= minI) break;
          return new Empty(`item ${i} cannot have any value`, x.pointer);
        }
        items.push(x);
      }
      if (items.length < minI) {
        const r = rest === undefined ? {} : this.norm(rest, `${ptr}/${restKey}`);
        if (r instanceof Empty) {
          if (items.length < tuple.length) return new Empty(`minItems ${minI} needs items the tuple cannot have`, ptr);
          invalid(ptr, 'minItems', `minItems ${minI} needs more items than the ${tuple.length} of ${tupleKey}, and ${restKey} allows no more`);
        }
        while (items.length < minI) items.push(r);
      }
      if (unique && items.length > 1) this.unsupported(ptr, 'uniqueItems', 'the grammar cannot keep items apart');
      return items.length === 0 ? { type: 'array', maxItems: 0 } : { type: 'array', prefixItems: items };
    }
    const it = rest === undefined ? {} : this.norm(rest, `${ptr}/${restKey}`);
    if (it instanceof Empty) {
      if (minI > 0) return new Empty(`minItems ${minI} but items cannot have any value`, it.pointer);
      return { type: 'array', maxItems: 0 };
    }
    if (unique && maxI > 1) this.unsupported(ptr, 'uniqueItems', 'the grammar cannot keep items apart');
    const out: Obj = { type: 'array', items: it };
    if (minI > 0) out.minItems = minI;
    if (maxI !== Infinity) out.maxItems = maxI;
    return out;
  }

  #object(w: Obj, ptr: string): N {
    const listed = new Map<string, { raw: Json; ptr: string }>();
    for (const [name, raw] of Object.entries((w.properties as Obj | undefined) ?? {})) listed.set(name, { raw, ptr: `${ptr}/properties/${esc(name)}` });
    const required = new Set<string>((w.required as string[] | undefined) ?? []);
    // ajv builds a lookup of the listed names as an object literal, where "__proto__" sets the prototype
    // instead of adding a name: it would count such a property as additional, and refuse valid output.
    // Unsupported in either mode, since best effort relies on that validator.
    for (const [where, names] of [['properties', [...listed.keys()]], ['required', [...required]]] as const) {
      if (names.includes('__proto__')) {
        const pointer = kw(ptr, where);
        throw schemaError('ERR_UNSUPPORTED_SCHEMA', `The JSON schema names a property "__proto__" at ${pointer} ("${where}"): the validator (ajv) cannot check a property of that name`, pointer, where);
      }
    }
    let addRaw: Json | undefined = w.additionalProperties;
    if (addRaw === undefined && 'unevaluatedProperties' in w && !('patternProperties' in w)) addRaw = w.unevaluatedProperties;
    const open = addRaw !== false;
    const addSchema = (): Json => (addRaw === undefined || addRaw === true ? {} : addRaw);
    const patterns = Object.keys((w.patternProperties as Obj | undefined) ?? {}).map((p) => {
      try {
        return new RegExp(p, 'u');
      } catch (err) {
        return invalid(ptr, 'patternProperties', `${JSON.stringify(p)} is not a valid regular expression: ${(err as Error).message}`);
      }
    });
    const matchesPattern = (name: string) => patterns.some((re) => re.test(name));

    // dependentRequired (and the array form of draft-07 dependencies): when the trigger may appear, its
    // dependencies are required (narrower than "when it appears").
    const dependent: Array<[string, string[]]> = [];
    const schemaDeps: string[] = [];
    for (const key of ['dependentRequired', 'dependencies']) {
      for (const [k, v] of Object.entries((w[key] as Obj | undefined) ?? {})) {
        if (Array.isArray(v)) dependent.push([k, v as string[]]);
        else schemaDeps.push(k);
      }
    }
    for (const k of Object.keys((w.dependentSchemas as Obj | undefined) ?? {})) schemaDeps.push(k);
    const mayAppear = (name: string) => listed.has(name) || open;
    for (let changed = true; changed; ) {
      changed = false;
      for (const [k, deps] of dependent) {
        if (!mayAppear(k)) continue;
        for (const d of deps) {
          if (mayAppear(d)) {
            if (!required.has(d)) {
              required.add(d);
              changed = true;
            }
          } else if (required.has(k)) {
            invalid(ptr, 'dependentRequired', `"${k}" is required and needs "${d}", which the object cannot have`);
          } else {
            listed.delete(k);
            changed = true;
          }
        }
      }
    }
    for (const k of schemaDeps) if (mayAppear(k)) this.unsupported(ptr, 'dependentSchemas', `a subschema that applies when "${k}" is present`);

    // Required names the properties do not list: enforced as properties with the additionalProperties schema.
    for (const name of required) {
      if (listed.has(name)) continue;
      if (!open) invalid(ptr, 'required', `"${name}" is required, but additionalProperties is false and properties does not list it`);
      listed.set(name, { raw: addSchema(), ptr: addRaw === undefined || addRaw === true ? `${ptr}/required` : `${ptr}/additionalProperties` });
    }
    if (patterns.length > 0) {
      const hit = [...listed.keys()].find(matchesPattern);
      if (hit !== undefined) this.unsupported(ptr, 'patternProperties', `the property "${hit}" also matches a pattern of patternProperties`);
    }

    // propertyNames: checked against every listed name; the object is closed.
    if ('propertyNames' in w) {
      if (open && (addRaw !== undefined || listed.size === 0)) this.unsupported(ptr, 'propertyNames', 'names of additional properties (the grammar can check only listed names)');
      const v = this.validator(w.propertyNames, ptr, 'propertyNames');
      if (v) {
        for (const name of [...listed.keys()]) {
          if (v(name)) continue;
          if (required.has(name)) invalid(ptr, 'propertyNames', `the required property "${name}" does not satisfy propertyNames`);
          listed.delete(name);
        }
      }
    }

    const props: Obj = dict();
    let forbidden = false;
    for (const [name, { raw, ptr: p }] of listed) {
      const n = this.norm(raw, p);
      if (n instanceof Empty) {
        if (required.has(name)) return new Empty(`the required property "${name}" cannot have any value`, n.pointer);
        forbidden = true;
        continue;
      }
      props[name] = n;
    }
    // What else may appear: nothing ('closed'), any value, or values of a schema.
    let add: 'closed' | 'any' | Obj;
    // Whether the schema itself allows no other properties (not only the grammar, which closes more).
    let closedBySchema = addRaw === false && patterns.length === 0;
    if (addRaw === false) add = 'closed';
    else if (addRaw === undefined) add = Object.keys(props).length > 0 || forbidden ? 'closed' : 'any'; // llama.cpp closes listed objects
    else if (addRaw === true) add = 'any';
    else {
      const n = this.norm(addRaw, `${ptr}/additionalProperties`);
      add = n instanceof Empty ? 'closed' : n;
      if (n instanceof Empty && patterns.length === 0) closedBySchema = true;
    }
    // A property dropped above could come back as an additional one: close the object.
    if (forbidden && add !== 'closed') add = 'closed';
    // llama.cpp's converter writes the names that additional properties must not have into GBNF character
    // classes unescaped: a listed name with \ ] - ^ or a control character would break the grammar, so such
    // an object gets no additional properties (narrower).
    if (add !== 'closed' && Object.keys(props).some((n) => /[\\\]\-^\x00-\x1f]/.test(n))) add = 'closed';
    if (patterns.length > 0 && add !== 'closed') this.unsupported(ptr, 'patternProperties', 'additional properties matching a pattern');
    if ('propertyNames' in w && add !== 'closed') add = 'closed';

    const names = Object.keys(props);
    const req = names.filter((n) => required.has(n));
    if (typeof w.minProperties === 'number' && w.minProperties > req.length) {
      // At least minProperties: the first optional properties become required (narrower).
      for (const n of names) {
        if (req.length >= w.minProperties) break;
        if (!required.has(n)) {
          required.add(n);
          req.push(n);
        }
      }
      if (req.length < w.minProperties) {
        // A contradiction only when the schema itself allows no more; else the grammar cannot write them.
        if (closedBySchema) invalid(ptr, 'minProperties', `minProperties ${w.minProperties}, but the object can have only ${names.length} properties`);
        this.unsupported(ptr, 'minProperties', `${w.minProperties} properties, more than the ${names.length} the grammar can write here (it writes listed properties only, or cannot require additional ones)`);
      }
    }
    let keep = names;
    if (typeof w.maxProperties === 'number') {
      const maxP = w.maxProperties;
      if (maxP < req.length) invalid(ptr, 'maxProperties', `maxProperties ${maxP}, but ${req.length} properties are required`);
      // At most maxProperties: no additional ones, and optional ones only up to the count (narrower).
      add = 'closed';
      let room = maxP - req.length;
      keep = names.filter((n) => required.has(n) || room-- > 0);
    }
    const out: Obj = { type: 'object' };
    if (keep.length > 0) {
      const kept: Obj = dict();
      for (const n of keep) kept[n] = props[n];
      out.properties = kept;
      const r = keep.filter((n) => required.has(n));
      if (r.length > 0) out.required = r;
    }
    if (add === 'closed') {
      out.additionalProperties = false;
    } else if (add === 'any') {
      if (keep.length > 0) out.additionalProperties = true;
    } else {
      out.additionalProperties = add;
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------------------
  // Shapes of raw schemas: what oneOf needs to tell that two alternatives never match the same value.

  #shape(s: Json, depth: number): Shape {
    const all: Shape = { types: new Set(ALL_TYPES) };
    if (s === true || depth > 16) return all;
    if (s === false) return { types: new Set() };
    if (!isObj(s)) return all;
    if (typeof s.$ref === 'string' && s.$ref.startsWith('#')) {
      let target: Json | undefined;
      try {
        target = resolvePointer(this.root, decodeURIComponent(s.$ref.slice(1)));
      } catch {
        target = undefined;
      }
      const inner = target === undefined ? all : this.#shape(target, depth + 1);
      return assertions(s).length > 1 ? intersectShapes(inner, this.#shape(without(s, ['$ref']), depth + 1)) : inner;
    }
    let sh: Shape = all;
    if ('const' in s) sh = { types: new Set([typeOfValue(s.const)]), values: [s.const] };
    else if (Array.isArray(s.enum)) sh = { types: new Set(s.enum.map(typeOfValue)), values: s.enum };
    else if (s.type !== undefined) sh = { types: new Set((Array.isArray(s.type) ? s.type : [s.type]) as string[]) };
    if (sh.types.has('integer')) sh.types.add('number');
    sh.types.delete('integer');
    if (isObj(s.properties) && Array.isArray(s.required)) {
      const disc = new Map<string, Json[]>();
      for (const r of s.required as string[]) {
        const p = own(s.properties as Obj, r);
        if (p === undefined) continue;
        const ps = this.#shape(p, depth + 1);
        if (ps.values) disc.set(r, ps.values);
      }
      if (disc.size) sh = { ...sh, disc };
    }
    for (const k of ['allOf'] as const) {
      if (Array.isArray(s[k])) for (const x of s[k] as Json[]) sh = intersectShapes(sh, this.#shape(x, depth + 1));
    }
    for (const k of ['anyOf', 'oneOf'] as const) {
      if (Array.isArray(s[k])) {
        const parts = (s[k] as Json[]).map((x) => this.#shape(x, depth + 1));
        const u: Shape = { types: new Set(parts.flatMap((p) => [...p.types])) };
        if (parts.every((p) => p.values)) u.values = parts.flatMap((p) => p.values!);
        sh = intersectShapes(sh, u);
      }
    }
    return sh;
  }
}

const ALL_TYPES = ['null', 'boolean', 'number', 'string', 'array', 'object'];

interface Shape {
  types: Set<string>;
  /** Every value it admits, when it admits only these. */
  values?: Json[];
  /** Required properties whose values are among these. */
  disc?: Map<string, Json[]>;
}

function intersectShapes(a: Shape, b: Shape): Shape {
  const types = new Set([...a.types].filter((t) => b.types.has(t)));
  let values: Json[] | undefined;
  if (a.values && b.values) values = a.values.filter((x) => b.values!.some((y) => deepEqual(x, y)));
  else values = a.values ?? b.values;
  const disc = new Map([...(a.disc ?? []), ...(b.disc ?? [])]);
  return { types, ...(values ? { values } : {}), ...(disc.size ? { disc } : {}) };
}

function disjoint(a: Shape, b: Shape): boolean {
  const common = [...a.types].filter((t) => b.types.has(t));
  if (common.length === 0) return true;
  if (a.values && b.values && !a.values.some((x) => b.values!.some((y) => deepEqual(x, y)))) return true;
  if (common.length === 1 && common[0] === 'object' && a.disc && b.disc) {
    for (const [k, va] of a.disc) {
      const vb = b.disc.get(k);
      if (vb && !va.some((x) => vb.some((y) => deepEqual(x, y)))) return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// Values that must be infinite (a required $ref cycle): found by a fixed point over the definitions, and
// pruned where they are optional.

type Env = Map<string, boolean>;

function defName(node: Obj): string | null {
  const r = node.$ref;
  return typeof r === 'string' && r.startsWith('#/$defs/') ? r.slice(8) : null;
}

function productive(n: Json, env: Env): boolean {
  if (!isObj(n)) return true;
  const d = defName(n);
  if (d !== null) return env.get(d) === true;
  if (Array.isArray(n.anyOf)) return n.anyOf.some((x) => productive(x, env));
  if (n.type === 'object') {
    const props = (n.properties as Obj | undefined) ?? {};
    return ((n.required as string[] | undefined) ?? []).every((r) => productive(own(props, r) as Json, env));
  }
  if (n.type === 'array') {
    if (Array.isArray(n.prefixItems)) return n.prefixItems.every((x) => productive(x, env));
    return !(typeof n.minItems === 'number' && n.minItems > 0) || productive(n.items, env);
  }
  return true;
}

function prune(n: Obj, env: Env): Obj {
  if (defName(n) !== null) return n;
  if (Array.isArray(n.anyOf)) {
    const kept = (n.anyOf as Obj[]).filter((x) => productive(x, env)).map((x) => prune(x, env));
    return kept.length === 1 ? kept[0] : { ...n, anyOf: kept };
  }
  if (n.type === 'object') {
    const out: Obj = { ...n };
    const req = new Set((n.required as string[] | undefined) ?? []);
    if (isObj(n.properties)) {
      const props: Obj = dict();
      let dropped = false;
      for (const [k, v] of Object.entries(n.properties)) {
        if (!req.has(k) && !productive(v, env)) dropped = true;
        else props[k] = prune(v as Obj, env);
      }
      out.properties = props;
      if (dropped) out.additionalProperties = false;
    }
    if (isObj(out.additionalProperties)) {
      out.additionalProperties = productive(out.additionalProperties, env) ? prune(out.additionalProperties, env) : false;
    }
    return out;
  }
  if (n.type === 'array') {
    const out: Obj = { ...n };
    if (Array.isArray(n.prefixItems)) out.prefixItems = (n.prefixItems as Obj[]).map((x) => prune(x, env));
    else if (isObj(n.items)) {
      if (productive(n.items, env)) out.items = prune(n.items, env);
      else {
        out.items = {};
        out.maxItems = 0;
      }
    }
    return out;
  }
  return n;
}

function collectPlaceholders(n: Json, prefix: string, out: Set<string>): void {
  if (Array.isArray(n)) for (const x of n) collectPlaceholders(x, prefix, out);
  else if (isObj(n)) {
    if (typeof n.const === 'string' && n.const.startsWith(`${prefix}-leaf-`) && Object.keys(n).length === 1) out.add(n.const);
    for (const k of Object.keys(n)) if (k !== 'const' && k !== 'enum') collectPlaceholders(n[k], prefix, out);
  }
}

function depthOf(n: Json): number {
  if (Array.isArray(n)) return 1 + Math.max(0, ...n.map(depthOf));
  if (isObj(n)) return 1 + Math.max(0, ...Object.values(n).map(depthOf));
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// References that come back to where they started without descending into the value (`{"$ref": "#",
// "type": "null"}`, `{"anyOf": [{"$ref": "#"}, ...]}`): a validator recurses on them forever, and the grammar
// would be left-recursive. Found on the graph of in-place subschemas, iteratively.

const IN_PLACE_LISTS = ['allOf', 'anyOf', 'oneOf'];
const IN_PLACE_ONE = ['not', 'if', 'then', 'else'];
const DESCENDING_MAPS = ['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas'];
const DESCENDING_ONE = ['additionalProperties', 'propertyNames', 'items', 'additionalItems', 'contains', 'unevaluatedItems', 'unevaluatedProperties'];

function refTarget(root: Json, ref: Json): string | null {
  if (typeof ref !== 'string' || !ref.startsWith('#')) return null;
  let pointer: string;
  try {
    pointer = decodeURIComponent(ref.slice(1));
  } catch {
    return null;
  }
  if (pointer !== '' && !pointer.startsWith('/')) return null;
  return resolvePointer(root, pointer) === undefined ? null : `#${pointer}`;
}

function inPlaceCycle(root: Json): string | null {
  // Every schema position, by pointer, with its in-place edges.
  const edges = new Map<string, string[]>();
  const nodes = new Map<string, Json>();
  const todo: Array<[string, Json]> = [['#', root]];
  while (todo.length > 0) {
    const [ptr, node] = todo.pop()!;
    if (nodes.has(ptr)) continue;
    nodes.set(ptr, node);
    if (nodes.size > SCHEMA_LIMITS.maxSubschemas * 4) overLimit(`more than ${SCHEMA_LIMITS.maxSubschemas * 4} subschemas`);
    const out: string[] = [];
    edges.set(ptr, out);
    if (!isObj(node)) continue;
    const visit = (p: string, v: Json, inPlace: boolean) => {
      if (inPlace) out.push(p);
      todo.push([p, v]);
    };
    for (const k of IN_PLACE_LISTS) if (Array.isArray(node[k])) (node[k] as Json[]).forEach((x, i) => visit(`${ptr}/${k}/${i}`, x, true));
    for (const k of IN_PLACE_ONE) if (k in node) visit(`${ptr}/${k}`, node[k], true);
    for (const k of DESCENDING_MAPS) if (isObj(node[k])) for (const [n, x] of Object.entries(node[k] as Obj)) visit(`${ptr}/${k}/${esc(n)}`, x, k === 'dependentSchemas');
    for (const k of DESCENDING_ONE) {
      if (Array.isArray(node[k])) (node[k] as Json[]).forEach((x, i) => visit(`${ptr}/${k}/${i}`, x, false));
      else if (k in node) visit(`${ptr}/${k}`, node[k], false);
    }
    if (Array.isArray(node.prefixItems)) (node.prefixItems as Json[]).forEach((x, i) => visit(`${ptr}/prefixItems/${i}`, x, false));
    if ('$ref' in node) {
      const t = refTarget(root, node.$ref);
      if (t !== null) {
        out.push(t);
        // t is `#` and the pointer, decoded already (decoding it twice made #/$defs/%25 a URIError).
        const target = resolvePointer(root, t.slice(1));
        if (target !== undefined) todo.push([t, target]);
      }
    }
  }
  // Iterative depth-first search for a cycle (0: new, 1: on the path, 2: done).
  const state = new Map<string, number>();
  for (const start of edges.keys()) {
    if (state.get(start)) continue;
    const stack: Array<[string, number]> = [[start, 0]];
    state.set(start, 1);
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const next = edges.get(top[0])?.[top[1]++];
      if (next === undefined) {
        state.set(top[0], 2);
        stack.pop();
        continue;
      }
      const st = state.get(next) ?? 0;
      if (st === 1) return top[0];
      if (st === 0) {
        state.set(next, 1);
        stack.push([next, 0]);
      }
    }
  }
  return null;
}

/** The checking pass over a schema that has passed the structural limits and its meta-schema. */
export function normalizeSchema(root: Json, draft: Draft, mode: SchemaMode, prefix: string): Normalized {
  const cycle = inPlaceCycle(root);
  if (cycle !== null) {
    invalid(cycle, '$ref', 'a reference that comes back to this schema without descending into the value (allOf, anyOf, oneOf and $ref apply to the same value): no validator can finish on it');
  }
  const c = new Checker(root, draft, mode, prefix);
  const top = c.norm(root, '#');
  for (let i = 0; i < c.pending.length; i++) {
    const d = c.pending[i];
    d.node = c.norm(d.target, d.pointer);
  }
  if (top instanceof Empty) invalid(top.pointer, '', `no value satisfies the schema (${top.reason})`);
  // Definitions that must be infinite, or are empty, are not productive.
  const env: Env = new Map();
  for (const d of c.defs.values()) env.set(d.name, false);
  for (let changed = true; changed; ) {
    changed = false;
    for (const d of c.defs.values()) {
      if (env.get(d.name) || d.node instanceof Empty) continue;
      if (productive(d.node!, env)) {
        env.set(d.name, true);
        changed = true;
      }
    }
  }
  if (!productive(top, env)) invalid('#', '', 'no finite value satisfies the schema (its required parts refer back to themselves)');
  const doc = prune(top, env);
  const byName = new Map([...c.defs.values()].map((d) => [d.name, d]));
  // Chains of references straight to references.
  for (const d of c.defs.values()) {
    if (!env.get(d.name)) continue;
    let n = d.node;
    let hops = 0;
    while (n && !(n instanceof Empty) && defName(n) !== null && hops <= SCHEMA_LIMITS.maxRefChain) {
      n = byName.get(defName(n)!)?.node;
      hops++;
    }
    if (hops > SCHEMA_LIMITS.maxRefChain) overLimit(`a chain of more than ${SCHEMA_LIMITS.maxRefChain} $refs that lead straight to other $refs`, d.pointer, '$ref');
  }
  const defs: Obj = dict();
  for (const d of c.defs.values()) if (env.get(d.name)) defs[d.name] = prune(d.node as Obj, env);
  // llama.cpp's converter names a top-level property's rule after the property: one named "" would take the
  // name "root", so such an object is moved into a definition of its own.
  let top2 = doc;
  if (isObj(doc.properties) && Object.hasOwn(doc.properties, '')) {
    defs.top = doc;
    top2 = { $ref: '#/$defs/top' };
  }
  const out: Obj = Object.keys(defs).length > 0 ? { ...top2, $defs: defs } : top2;
  // llama.cpp's converter is limited to 128 levels of JSON; splitting types can nest the output deeper.
  if (depthOf(out) > 128) overLimit('the schema nests too deep once rewritten for the converter (128 levels of JSON)');
  const used = new Set<string>();
  collectPlaceholders(out, prefix, used);
  const g = new GbnfRules(`${prefix}-r`);
  for (const name of used) {
    g.rule(g.render(c.leaves.get(name)!.expr), name);
    if (g.size > SCHEMA_LIMITS.maxGrammarBytes) overLimit(`the grammar of its patterns and numbers is over ${SCHEMA_LIMITS.maxGrammarBytes} bytes`);
  }
  return { doc: out, rules: g.text(), placeholders: [...used], notes: c.notes };
}
