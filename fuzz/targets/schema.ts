// schema: random JSON schemas (deep nesting, contradictory bounds, random keywords) through
// session.complete({ jsonSchema, maxTokens: 64 }). Every `json` returned must validate (ajv) against its
// schema, else the case is a wrong result. Errors: ERR_INVALID_SCHEMA, ERR_UNSUPPORTED_SCHEMA,
// ERR_LIMIT_EXCEEDED, ERR_INCOMPLETE_OUTPUT (output cut off by maxTokens).
import { createRequire } from 'node:module';
import type { Rng } from '../prng.js';
import { randomText } from '../prng.js';
import { expand, runSteps, step, wrong, type Env, type Target } from './common.js';
import { freshSession, loadGen } from './gen-model.js';

interface Input {
  schema: unknown;
  /** The library's schemaMode (default strict: what the grammar cannot enforce is refused up front). */
  schemaMode?: 'strict' | 'best-effort';
  /** Seeds of the generations tried (a schema's bug may show for some samples only). */
  seeds: number[];
  temperature: number;
  /** Set by regression files whose schema no value satisfies: the case must end in an error. */
  mustFail?: boolean;
  /** Validate output cut off by maxTokens too (regression files whose values stay valid when cut: a number in [0, 1]). */
  validateTruncated?: boolean;
}

const REJECTED = ['ERR_INVALID_SCHEMA', 'ERR_UNSUPPORTED_SCHEMA'];
const ALLOWED = ['ERR_INVALID_SCHEMA', 'ERR_UNSUPPORTED_SCHEMA', 'ERR_LIMIT_EXCEEDED', 'ERR_INCOMPLETE_OUTPUT', 'ERR_INVALID_ARGUMENT'];

const patterns = ['^a{3,2}$', '^[a-z]+$', '^\\d{3}-\\d{4}$', 'a|b', '^(a|b)*c$', '^$', '.*', '^\\w+@\\w+\\.com$', '[', '(?=a)', '^a{1000000}$',
  '^(((((a)))))$', '\\p{L}+', '^[^"]*$', '^\\u00e9$', '^.{2,3}$', 'a{2}{3}', '^a*?$', '^(?:ab)+$', '\\', '^x{,3}$', '^[z-a]$'];
const formats = ['date', 'time', 'date-time', 'uuid', 'email', 'uri', 'ipv4', 'hostname', 'bogus', ''];
const bound = (r: Rng) => r.pick([0, 1, 2, 3, 5, 10, -1, -5, 0.5, 1.5, 1e9, 2 ** 31, 2 ** 53, 1e300, -1e300, 1e-9]);

function schemaOf(r: Rng, depth: number, defs: string[]): unknown {
  if (depth > 5 || r.chance(0.05)) return r.pick([true, false, {}, { type: 'string' }, { type: 'integer' }]);
  if (r.chance(0.02)) return r.pick([null, 1, 'string', [], [{ type: 'string' }]]); // not a schema
  const s: Record<string, unknown> = {};
  const type = r.weighted<() => unknown>([
    [3, () => 'string'], [2, () => 'number'], [2, () => 'integer'], [1, () => 'boolean'], [1, () => 'null'],
    [3, () => 'object'], [3, () => 'array'], [1, () => undefined], [0.5, () => ['string', 'null']], [0.2, () => 'bogus'], [0.2, () => []],
  ])();
  if (type !== undefined) s.type = type;
  const t = Array.isArray(type) ? type[0] : type;
  if (t === 'string' || (t === undefined && r.chance(0.3))) {
    if (r.chance(0.4)) s.minLength = r.pick([0, 1, 2, 3, 5, 10, 100, -1, 1.5]);
    if (r.chance(0.4)) s.maxLength = r.pick([0, 1, 2, 3, 5, 10, 1000, -1]);
    if (r.chance(0.25)) s.pattern = r.pick(patterns);
    if (r.chance(0.15)) s.format = r.pick(formats);
  }
  if (t === 'number' || t === 'integer') {
    for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']) if (r.chance(0.35)) s[k] = bound(r);
    if (r.chance(0.1)) s.multipleOf = r.pick([0, 2, 0.5, -1, 3]);
  }
  if (t === 'array') {
    if (r.chance(0.7)) s.items = schemaOf(r, depth + 1, defs);
    if (r.chance(0.2)) s.prefixItems = Array.from({ length: r.int(0, 3) }, () => schemaOf(r, depth + 1, defs));
    if (r.chance(0.4)) s.minItems = r.pick([0, 1, 2, 3, 5, 100, -1]);
    if (r.chance(0.4)) s.maxItems = r.pick([0, 1, 2, 3, 5, 1e9, -1]);
    if (r.chance(0.1)) s.uniqueItems = true;
  }
  if (t === 'object') {
    const names = Array.from({ length: r.int(0, 4) }, () => r.pick(['a', 'b', 'name', 'café', '', ' ', '"q"', '\\', '🙂', 'x'.repeat(50), randomText(r, 5)]));
    if (names.length || r.chance(0.5)) s.properties = Object.fromEntries(names.map((n) => [n, schemaOf(r, depth + 1, defs)]));
    if (r.chance(0.5)) s.required = r.chance(0.8) ? names.filter(() => r.chance(0.6)) : ['missing', ...names];
    if (r.chance(0.4)) s.additionalProperties = r.chance(0.5) ? r.chance(0.5) : schemaOf(r, depth + 1, defs);
    if (r.chance(0.1)) s.minProperties = r.int(0, 4);
    if (r.chance(0.1)) s.maxProperties = r.int(0, 2);
  }
  if (r.chance(0.08)) s.enum = Array.from({ length: r.int(0, 4) }, () => r.pick<unknown>(['a', 1, 1.5, null, true, { k: [1] }, [], 'é', '"', '']));
  if (r.chance(0.05)) s.const = r.pick<unknown>(['x', 0, null, { a: 1 }, [1, 'b'], '\u0000']);
  if (depth < 4) {
    for (const k of ['anyOf', 'oneOf', 'allOf']) if (r.chance(0.05)) s[k] = Array.from({ length: r.int(0, 3) }, () => schemaOf(r, depth + 1, defs));
    if (r.chance(0.03)) s.not = schemaOf(r, depth + 1, defs);
  }
  if (r.chance(0.06)) s.$ref = r.chance(0.8) && defs.length ? `#/$defs/${r.pick(defs)}` : r.pick(['#', '#/$defs/missing', 'http://example.com/x.json', '#/properties/a', '#/definitions/d0', '']);
  if (r.chance(0.05)) s[r.pick(['foo', '$comment', 'if', 'then', 'else', 'dependentRequired', 'contains', 'propertyNames', 'patternProperties', '$schema', 'x-extra'])] = r.pick<unknown>([1, 'x', {}, { type: 'string' }, ['a'], true]);
  if (r.chance(0.05)) s.description = randomText(r, 20);
  return s;
}

function deep(r: Rng): unknown {
  return { $nest: r.pick(['array', 'object', 'anyOf']), depth: r.pick([50, 500, 5000, 20_000]), leaf: { type: r.pick(['string', 'integer']) } };
}

export function randomSchema(r: Rng): unknown {
  if (r.chance(0.05)) return deep(r);
  const defs = r.chance(0.15) ? ['d0', 'd1'] : [];
  const s = schemaOf(r, 0, defs);
  if (defs.length && s && typeof s === 'object' && !Array.isArray(s)) {
    (s as Record<string, unknown>).$defs = { d0: schemaOf(r, 2, defs), d1: { type: 'object', properties: { next: { $ref: '#/$defs/d1' } } } };
  }
  return s;
}

let ajv: { compile(s: unknown): ((v: unknown) => boolean) & { errors?: unknown } } | null = null;
function validator(schema: unknown): ((v: unknown) => boolean) & { errors?: unknown } | null {
  if (!ajv) {
    const require = createRequire(import.meta.url);
    const Ajv = require('ajv/dist/2020.js').default;
    const addFormats = require('ajv-formats').default ?? require('ajv-formats');
    ajv = new Ajv({ strict: false, allErrors: false, validateFormats: true });
    addFormats(ajv);
  }
  try {
    return ajv!.compile(schema);
  } catch {
    return null; // a schema ajv cannot compile (bad pattern, bad $ref): nothing to validate against
  }
}

export const schema: Target<Input> = {
  name: 'schema',
  description: 'random JSON schemas through session.complete({ jsonSchema, maxTokens: 64 }); results validated with ajv',
  timeoutMs: 20_000,
  generate(r: Rng): Input {
    return { schema: randomSchema(r), seeds: [r.int(0, 100_000)], temperature: r.pick([0, 0.8, 1.5]), ...(r.chance(0.25) ? { schemaMode: 'best-effort' as const } : {}) };
  },
  run(input: Input, env: Env) {
    return runSteps('complete', async () => {
      const gen = await step('setup', [], () => loadGen(env));
      const jsonSchema = expand(input.schema);
      const validate = validator(jsonSchema);
      for (const seed of input.seeds) {
        const s = freshSession(env, gen);
        const bestEffort = input.schemaMode === 'best-effort';
        const r = await step('complete', input.mustFail ? REJECTED : bestEffort ? [...ALLOWED, 'ERR_SCHEMA_MISMATCH'] : ALLOWED, () =>
          s.complete('Answer in JSON:', { jsonSchema: jsonSchema as never, maxTokens: 64, temperature: input.temperature, seed, ...(input.schemaMode ? { schemaMode: input.schemaMode } : {}) } as never),
        ).catch((e) => {
          // Strict mode promises that the grammar enforces the schema: output that does not match is a wrong result.
          const res = (e as { result?: { code?: string; message?: string } }).result;
          if (res?.code === 'ERR_SCHEMA_MISMATCH' && !input.mustFail && !bestEffort) wrong('complete', `strict mode, yet the output does not match the schema: ${res.message}`);
          throw e;
        });
        if (input.mustFail) wrong('complete', `no value satisfies this schema, yet it produced ${JSON.stringify(r.json)?.slice(0, 200)} (expected an error)`);
        // Output cut off by maxTokens may parse (a number, say) without being the value the grammar was heading for.
        if (validate && (r.stopReason !== 'maxTokens' || input.validateTruncated) && !validate(r.json)) {
          wrong('complete', `the output ${JSON.stringify(r.text).slice(0, 300)} does not validate against its schema: ${JSON.stringify(validate.errors).slice(0, 300)}`);
        }
      }
    });
  },
  shrink(input: Input): Input[] {
    const out: Input[] = [];
    if (input.seeds.length > 1) for (const seed of input.seeds) out.push({ ...input, seeds: [seed] });
    const s = input.schema;
    if (s && typeof s === 'object' && !Array.isArray(s)) {
      const o = s as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        const { [k]: _, ...rest } = o;
        out.push({ ...input, schema: rest });
        const v = o[k];
        if (v && typeof v === 'object' && !Array.isArray(v) && (k === 'items' || k === 'not' || k === 'additionalProperties')) out.push({ ...input, schema: v });
        if (k === 'properties' && v && typeof v === 'object') for (const p of Object.values(v)) out.push({ ...input, schema: p });
      }
    }
    return out;
  },
};
