// The checking pass in front of llama.cpp's JSON-schema converter (issue 13, §4): malformed schemas,
// keywords the grammar cannot enforce, contradictions, limits. Pure TypeScript: no model, no native code.
import { describe, expect, it } from 'vitest';
import { checkJsonSchema, LlamaError, SCHEMA_LIMITS, type JsonSchema, type SchemaErrorDetails } from 'llama-addon';
import { prng } from './helpers/prng.js';

type SchemaError = LlamaError & SchemaErrorDetails;

function fails(schema: unknown, mode: 'strict' | 'best-effort' = 'strict'): SchemaError {
  try {
    checkJsonSchema(schema as JsonSchema, { schemaMode: mode });
  } catch (e) {
    expect(e).toBeInstanceOf(LlamaError);
    return e as SchemaError;
  }
  throw new Error(`no error for ${JSON.stringify(schema)?.slice(0, 300)}`);
}

function expectError(schema: unknown, code: string, pointer?: string, keyword?: string, mode: 'strict' | 'best-effort' = 'strict'): SchemaError {
  const e = fails(schema, mode);
  expect(e.code, e.message).toBe(code);
  if (pointer !== undefined) expect(e.pointer, e.message).toBe(pointer);
  if (keyword !== undefined) expect(e.keyword, e.message).toBe(keyword);
  // The message names both.
  if (pointer !== undefined) expect(e.message).toContain(pointer);
  if (keyword) expect(e.message).toContain(keyword);
  return e;
}

describe('malformed schemas: ERR_INVALID_SCHEMA naming the keyword and its path', () => {
  it.each([
    [{ type: 'strng' }, '#/type', 'type'],
    [{ minLength: -1 }, '#/minLength', 'minLength'],
    [{ required: 'a' }, '#/required', 'required'],
    [{ type: 'object', properties: { a: { type: ['string', 'strng'] } } }, '#/properties/a/type/1', 'type'],
    [{ type: 'object', properties: { a: { maxItems: 1.5 } } }, '#/properties/a/maxItems', 'maxItems'],
    [{ anyOf: [] }, '#/anyOf', 'anyOf'],
    [{ properties: { a: 3 } }, '#/properties/a', 'a'],
  ])('%j', (schema, pointer, keyword) => {
    expectError(schema, 'ERR_INVALID_SCHEMA', pointer, keyword);
  });

  it('rejects patterns that are not regular expressions, and $refs that lead nowhere', () => {
    expectError({ type: 'string', pattern: '(' }, 'ERR_INVALID_SCHEMA', '#/pattern', 'pattern');
    expectError({ type: 'string', pattern: '^a{3,2}$' }, 'ERR_INVALID_SCHEMA', '#/pattern', 'pattern');
    expectError({ type: 'object', patternProperties: { '(': {} }, additionalProperties: false }, 'ERR_INVALID_SCHEMA', '#/patternProperties', 'patternProperties');
    expectError({ type: 'object', properties: { a: { $ref: '#/$defs/missing' } } }, 'ERR_INVALID_SCHEMA', '#/properties/a/$ref', '$ref');
  });

  it('rejects what is not JSON', () => {
    const cyclic: Record<string, unknown> = { type: 'object' };
    cyclic.properties = { self: cyclic };
    expectError(cyclic, 'ERR_INVALID_SCHEMA');
    expectError({ type: 'integer', minimum: 10n }, 'ERR_INVALID_SCHEMA', '#/minimum');
    expect(fails([{ type: 'string' }]).code).toBe('ERR_INVALID_ARGUMENT');
    expect(fails('string').code).toBe('ERR_INVALID_ARGUMENT');
    // Every value JSON cannot hold, where it is: JSON.stringify would have written NaN, Infinity and holes
    // as null (a const NaN became const null, and null was returned as the schema's value) and dropped
    // functions and symbols (a const function became "any value").
    const nonJson: Array<[unknown, string, string]> = [
      [{ const: NaN }, '#/const', 'NaN'],
      [{ const: Infinity }, '#/const', 'Infinity'],
      [{ enum: [{ a: -Infinity }] }, '#/enum/0/a', '-Infinity'],
      [{ type: 'number', maximum: Infinity }, '#/maximum', 'Infinity'],
      // eslint-disable-next-line no-sparse-arrays
      [{ enum: [1, , 2] }, '#/enum/1', 'a hole in an array'],
      [{ enum: [1, undefined] }, '#/enum/1', 'undefined'],
      [{ const: () => 1 }, '#/const', 'a function'],
      [{ type: 'string', minLength: Symbol('x') }, '#/minLength', 'a symbol'],
      [{ type: 'object', properties: { 'a/b~c': { const: NaN } } }, '#/properties/a~1b~0c/const', 'NaN'],
    ];
    for (const [schema, pointer, what] of nonJson) {
      const e = expectError(schema, 'ERR_INVALID_SCHEMA', pointer);
      expect(e.message).toContain(`received ${what}, which JSON cannot hold`);
    }
    // Only plain data: a Date, RegExp, Map, Buffer or typed array wrote as something else, and an own toJSON
    // replaced the schema (a hostile review's {type:'string', toJSON} became an integer schema).
    for (const [schema, pointer, what] of [
      [{ type: 'string', toJSON: () => ({ type: 'integer' }) }, '#/toJSON', 'a function'],
      [{ const: new Date(0) }, '#/const', 'a Date'],
      [{ const: /x/ }, '#/const', 'a RegExp'],
      [{ const: Buffer.from('hi') }, '#/const', 'a Buffer'],
      [{ enum: [new Uint8Array([1])] }, '#/enum/0', 'a Uint8Array'],
      [new Map([['type', 'string']]), '#', 'a Map'],
    ] as Array<[unknown, string, string]>) {
      expect(expectError(schema, 'ERR_INVALID_SCHEMA', pointer).message).toContain(`received ${what}, which JSON cannot hold`);
    }
    // A property set to undefined is absent, as in JSON (an optional field of a TypeScript caller).
    expect(checkJsonSchema({ type: 'string', description: undefined, const: undefined } as JsonSchema).notes).toEqual([]);
    // Reading the schema may throw (a getter, a Proxy): an invalid schema, not an error of native code.
    const getter = Object.defineProperty({ type: 'string' }, 'minLength', { enumerable: true, get() { throw new Error('boom'); } });
    expect(expectError(getter, 'ERR_INVALID_SCHEMA', '#/minLength').message).toContain('reading it threw Error: boom');
    const deep = Object.defineProperty({}, 'type', { enumerable: true, get() { throw new Error('deep'); } });
    expectError({ type: 'object', properties: { a: deep } }, 'ERR_INVALID_SCHEMA', '#/properties/a/type');
  });

  it('a schema that some value satisfies is never called a contradiction (only unsupported)', () => {
    // Found by a hostile review: each was ERR_INVALID_SCHEMA though {"é": 1}, {"a": 1, "x": 2} and "\ud83d" satisfy it.
    expectError({ type: 'object', patternProperties: { '^[é😀]{1,2}$': { type: 'integer' } }, additionalProperties: false, minProperties: 1 }, 'ERR_UNSUPPORTED_SCHEMA', '#/minProperties', 'minProperties');
    expectError({ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'], minProperties: 2 }, 'ERR_UNSUPPORTED_SCHEMA', '#/minProperties', 'minProperties');
    expectError({ type: 'string', pattern: '^\\uD83D$' }, 'ERR_UNSUPPORTED_SCHEMA', '#/pattern', 'pattern');
    // The schema itself allows no more properties: a contradiction.
    expectError({ type: 'object', properties: { a: { type: 'integer' } }, additionalProperties: false, minProperties: 2 }, 'ERR_INVALID_SCHEMA', '#/minProperties', 'minProperties');
    // "" refers to the document itself, as "#" does (it was "refers outside itself").
    expect(checkJsonSchema({ type: 'object', properties: { a: { type: 'integer' }, next: { $ref: '' } } } as JsonSchema).notes).toEqual([]);
  });

  it('resolves percent-encoded $refs once (#/$defs/%25 is the name "%")', () => {
    const defs = { '%': { type: 'integer' }, '%41': { type: 'boolean' }, 'a b': { type: 'null' } };
    for (const ref of ['#/$defs/%25', '#/$defs/%2541', '#/$defs/a%20b']) {
      for (const schema of [{ $defs: defs, $ref: ref }, { $defs: defs, type: 'object', properties: { x: { $ref: ref } }, required: ['x'] }, { $defs: defs, allOf: [{ $ref: ref }] }]) {
        expect(checkJsonSchema(schema as JsonSchema).notes, `${ref} in ${JSON.stringify(schema)}`).toEqual([]);
      }
    }
    expectError({ $ref: '#/$defs/%E0%A4%A' }, 'ERR_INVALID_SCHEMA', '#/$ref', '$ref');
  });

  it('checks against the draft the schema names', () => {
    // draft-07's array form of items, named or guessed
    expect(checkJsonSchema({ $schema: 'http://json-schema.org/draft-07/schema#', type: 'array', items: [{ type: 'string' }] }).notes).toEqual([]);
    expect(checkJsonSchema({ type: 'array', items: [{ type: 'string' }], additionalItems: false }).notes).toEqual([]);
    expect(checkJsonSchema({ $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'array', prefixItems: [{ type: 'string' }] }).notes).toEqual([]);
    expectError({ $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'array', items: [{ type: 'string' }] }, 'ERR_INVALID_SCHEMA', '#/items', 'items');
    expectError({ $schema: 'http://json-schema.org/draft-04/schema#', type: 'string' }, 'ERR_UNSUPPORTED_SCHEMA', '#/$schema', '$schema');
  });
});

describe('keywords the grammar cannot enforce: ERR_UNSUPPORTED_SCHEMA, or accepted in best-effort mode', () => {
  const cases: Array<[string, unknown, string, string]> = [
    ['not', { not: { type: 'string' } }, '#/not', 'not'],
    ['if/then/else', { if: { type: 'string' }, then: { minLength: 2 } }, '#/if', 'if'],
    ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }, '#/uniqueItems', 'uniqueItems'],
    ['contains', { type: 'array', contains: { const: 1 } }, '#/contains', 'contains'],
    ['multipleOf', { type: 'integer', multipleOf: 3 }, '#/multipleOf', 'multipleOf'],
    ['multipleOf on numbers', { type: 'number', multipleOf: 0.01 }, '#/multipleOf', 'multipleOf'],
    ['patternProperties on an open object', { type: 'object', patternProperties: { '^x-': { type: 'string' } } }, '#/patternProperties', 'patternProperties'],
    ['propertyNames on an open object', { type: 'object', additionalProperties: { type: 'integer' }, propertyNames: { maxLength: 3 } }, '#/propertyNames', 'propertyNames'],
    ['dependentSchemas', { type: 'object', properties: { a: {} }, dependentSchemas: { a: { required: ['b'] } } }, '#/dependentSchemas', 'dependentSchemas'],
    ['oneOf with overlapping alternatives', { oneOf: [{ type: 'string' }, { type: 'string', maxLength: 3 }] }, '#/oneOf', 'oneOf'],
    ['format email', { type: 'string', format: 'email' }, '#/format', 'format'],
    ['format beside pattern', { type: 'string', format: 'date', pattern: '^2' }, '#/format', 'format'],
    ['a lookahead', { type: 'string', pattern: '^(?=a)\\w+$' }, '#/pattern', 'pattern'],
    ['a backreference', { type: 'string', pattern: '^(a)\\1$' }, '#/pattern', 'pattern'],
    ['a word boundary', { type: 'string', pattern: '\\bcat\\b' }, '#/pattern', 'pattern'],
    ['a Unicode property', { type: 'string', pattern: '^\\p{L}+$' }, '#/pattern', 'pattern'],
    ['an anchor inside', { type: 'string', pattern: 'a^b' }, '#/pattern', 'pattern'],
    ['lengths beside a pattern they cannot be folded into', { type: 'string', pattern: '^x(a|bc)y$', maxLength: 3 }, '#/maxLength', 'maxLength'],
    ['an unknown keyword (a typo)', { type: 'string', maxlength: 3 }, '#/maxlength', 'maxlength'],
    ['a keyword of another draft', { type: 'array', additionalItems: false, items: { type: 'string' }, $schema: 'https://json-schema.org/draft/2020-12/schema' }, '#/additionalItems', 'additionalItems'],
    ['unevaluatedProperties beside allOf', { allOf: [{ properties: { a: {} } }], unevaluatedProperties: false }, '#/unevaluatedProperties', 'unevaluatedProperties'],
    ['$dynamicRef', { $dynamicRef: '#meta' }, '#/$dynamicRef', '$dynamicRef'],
    ['numbers beyond 1e15', { type: 'number', minimum: 1e20 }, '#/minimum', 'minimum'],
    // (The pointer is the part that brings the conflict in, a place in the caller's schema.)
    ['allOf with two patterns', { allOf: [{ type: 'string', pattern: '^a' }, { pattern: 'b$' }] }, '#/allOf/1/pattern', 'pattern'],
    [
      'a recursive $ref merged through allOf',
      { $defs: { n: { type: 'object', properties: { c: { allOf: [{ $ref: '#/$defs/n' }, { required: ['x'] }] } } } }, $ref: '#/$defs/n' },
      '#/$defs/n/properties/c/properties/c/allOf/0/$ref',
      '$ref',
    ],
  ];
  for (const [name, schema, pointer, keyword] of cases) {
    it(name, () => {
      expectError(schema, 'ERR_UNSUPPORTED_SCHEMA', pointer, keyword);
      expect(fails(schema).message).toMatch(/best-effort/);
      const { notes } = checkJsonSchema(schema as JsonSchema, { schemaMode: 'best-effort' });
      expect(notes.map((n) => n.keyword)).toContain(keyword);
      expect(notes.find((n) => n.keyword === keyword)!.pointer).toBe(pointer);
    });
  }

  it('remote and anchor references are unsupported in either mode', () => {
    for (const mode of ['strict', 'best-effort'] as const) {
      expectError({ $ref: 'https://example.com/remote.json' }, 'ERR_UNSUPPORTED_SCHEMA', '#/$ref', '$ref', mode);
      expectError({ $ref: '#node', $defs: { n: { $anchor: 'node', type: 'string' } } }, 'ERR_UNSUPPORTED_SCHEMA', '#/$ref', '$ref', mode);
    }
  });

  it('accepts annotations, extensions and what is enforced', () => {
    const ok: JsonSchema[] = [
      { title: 't', description: 'd', $comment: 'c', examples: [1], default: 2, deprecated: true, readOnly: true, type: 'integer', 'x-vendor': { any: 1 } },
      { type: 'string', format: 'date' },
      { type: 'string', format: 'date-time', maxLength: 40 },
      { type: 'string', pattern: '^\\d{3}-\\d{4}$', minLength: 8, maxLength: 8 },
      { type: 'string', pattern: '^[a-z]+$', maxLength: 10 },
      { type: 'string', pattern: 'abc', maxLength: 10 },
      { type: 'string', pattern: '^a(bc)?d$', minLength: 3 },
      { type: 'integer', format: 'int32' },
      { type: 'number', minimum: -1.5, exclusiveMaximum: 2.25 },
      { type: 'array', items: { enum: ['a'] }, uniqueItems: true, maxItems: 1 },
      { type: 'object', properties: { a: {}, b: {} }, patternProperties: { '^x': {} }, additionalProperties: false },
      { type: 'object', properties: { ab: {}, abcdef: {} }, propertyNames: { maxLength: 4 } },
      { type: 'object', properties: { a: {}, b: {} }, dependentRequired: { a: ['b'] } },
      { type: 'object', properties: { a: {}, b: {}, c: {} }, minProperties: 2, maxProperties: 2 },
      { oneOf: [{ type: 'string' }, { type: 'integer' }] },
      { oneOf: [{ const: 1 }, { const: 2 }] },
      {
        oneOf: [
          { type: 'object', properties: { kind: { const: 'a' }, x: { type: 'string' } }, required: ['kind'] },
          { $ref: '#/$defs/b' },
        ],
        $defs: { b: { type: 'object', properties: { kind: { const: 'b' } }, required: ['kind'] } },
      },
      { allOf: [{ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] }, { $ref: '#/$defs/b' }], $defs: { b: { properties: { b: { type: 'string' } } } } },
      { $ref: '#/$defs/node', $defs: { node: { type: 'object', properties: { value: { type: 'integer' }, next: { $ref: '#/$defs/node' } }, required: ['value'] } } },
      { type: 'object', properties: { child: { $ref: '#' } } },
      { type: ['string', 'null'], maxLength: 4 },
    ];
    for (const s of ok) expect(checkJsonSchema(s).notes, JSON.stringify(s)).toEqual([]);
  });
});

// Contradictions, as a general rule: a schema (or a part of it that must hold) that no value satisfies is
// ERR_INVALID_SCHEMA at the keyword at fault, wherever it sits.
describe('contradictions: ERR_INVALID_SCHEMA', () => {
  it.each([
    [{ type: 'string', minLength: 5, maxLength: 2 }, '#/minLength', 'minLength'],
    [{ type: 'array', minItems: 3, maxItems: 2 }, '#/minItems', 'minItems'],
    [{ type: 'number', minimum: 2, maximum: 1 }, '#/minimum', 'minimum'],
    [{ type: 'number', exclusiveMinimum: 1, exclusiveMaximum: 1 }, '#/exclusiveMinimum', 'exclusiveMinimum'],
    [{ type: 'integer', minimum: 1.2, maximum: 1.8 }, '#/minimum', 'minimum'],
    [{ type: 'object', properties: { a: {} }, required: ['b'], additionalProperties: false }, '#/required', 'required'],
    [{ type: 'string', const: 1 }, '#/const', 'const'],
    [{ type: 'integer', enum: [1, 'two'] }, '#/enum/1', 'enum'],
    [{ enum: [] }, '#/enum', 'enum'],
    [{ const: 'a', enum: ['b'] }, '#/const', 'const'],
    [{ type: 'string', pattern: '^[^\\s\\S]$' }, '#/pattern', 'pattern'],
    [{ type: 'string', pattern: '^\\d{3}$', maxLength: 2 }, '#/maxLength', 'maxLength'],
    [{ type: 'string', format: 'date', maxLength: 5 }, '#/maxLength', 'maxLength'],
    [{ allOf: [{ type: 'string' }, { type: 'integer' }] }, '#/allOf/1/type', 'type'],
    [{ allOf: [{ const: 1 }, { const: 2 }] }, '#/allOf/1/const', 'const'],
    [{ type: 'object', properties: { a: {} }, minProperties: 2, additionalProperties: false }, '#/minProperties', 'minProperties'],
    [{ type: 'object', properties: { a: {}, b: {} }, required: ['a', 'b'], maxProperties: 1 }, '#/maxProperties', 'maxProperties'],
    [{ type: 'array', prefixItems: [{}, {}], items: false, minItems: 3 }, '#/minItems', 'minItems'],
    [{ type: 'object', properties: { next: { $ref: '#' } }, required: ['next'] }, '#', ''],
    // references back to themselves without descending into the value: validators never finish on them
    [{ type: 'null', $ref: '#' }, '#/$ref', '$ref'],
    [{ anyOf: [{ $ref: '#' }, { type: 'null' }] }, '#/anyOf/0/$ref', '$ref'],
    [{ $ref: '#/$defs/a', $defs: { a: { $ref: '#/$defs/b' }, b: { allOf: [{ $ref: '#/$defs/a' }] } } }, '#/$defs/b/allOf/0/$ref', '$ref'],
    [false, '#', ''],
    [{ type: 'object', properties: { a: false }, required: ['a'] }, '#/properties/a', ''],
  ])('%j', (schema, pointer, keyword) => {
    expectError(schema, 'ERR_INVALID_SCHEMA', pointer, keyword);
    // Best-effort mode does not accept contradictions.
    expectError(schema, 'ERR_INVALID_SCHEMA', pointer, keyword, 'best-effort');
  });

  // Each generator makes a contradictory schema and the same schema made consistent.
  type Gen = (r: () => number) => { bad: Record<string, unknown>; good: Record<string, unknown>; keyword: string };
  const int = (r: () => number, a: number, b: number) => a + Math.floor(r() * (b - a + 1));
  const values = [null, true, 0, 1.5, -3, 'x', '', [1], { a: 1 }];
  const typeOf = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v);
  const types = ['null', 'boolean', 'integer', 'number', 'string', 'array', 'object'];
  const gens: Gen[] = [
    (r) => {
      const a = int(r, 1, 50);
      const b = int(r, 0, a - 1);
      return { bad: { type: 'string', minLength: a, maxLength: b }, good: { type: 'string', minLength: b, maxLength: a }, keyword: 'minLength' };
    },
    (r) => {
      const a = int(r, 1, 50);
      const b = int(r, 0, a - 1);
      return { bad: { type: 'array', minItems: a, maxItems: b }, good: { type: 'array', minItems: b, maxItems: a }, keyword: 'minItems' };
    },
    (r) => {
      const a = Math.round((r() - 0.5) * 2000) / 10;
      const b = a - (int(r, 1, 100) / 10);
      const t = r() < 0.5 ? 'number' : 'integer';
      return { bad: { type: t, minimum: a, maximum: b }, good: { type: t, minimum: Math.floor(b), maximum: Math.ceil(a) }, keyword: 'minimum' };
    },
    (r) => {
      const a = Math.round((r() - 0.5) * 2000) / 10;
      return { bad: { type: 'number', exclusiveMinimum: a, maximum: a }, good: { type: 'number', minimum: a, maximum: a }, keyword: 'exclusiveMinimum' };
    },
    (r) => {
      const a = int(r, 1, 6);
      return {
        bad: { type: 'object', properties: Object.fromEntries(Array.from({ length: a }, (_, i) => [`p${i}`, {}])), minProperties: a + 1, additionalProperties: false },
        good: { type: 'object', properties: Object.fromEntries(Array.from({ length: a }, (_, i) => [`p${i}`, {}])), minProperties: a, additionalProperties: false },
        keyword: 'minProperties',
      };
    },
    (r) => {
      const v = values[int(r, 0, values.length - 1)];
      const t = types.filter((x) => x !== typeOf(v) && !(x === 'number' && typeOf(v) === 'integer'))[int(r, 0, 4)];
      return { bad: { type: t, const: v }, good: { type: typeOf(v), const: v }, keyword: 'const' };
    },
    (r) => {
      const vs = values.filter(() => r() < 0.5);
      const v = values[int(r, 0, values.length - 1)];
      const t = types.filter((x) => x !== typeOf(v) && !(x === 'number' && typeOf(v) === 'integer'))[int(r, 0, 4)];
      const ok = vs.filter((x) => typeOf(x) === t || (t === 'number' && typeOf(x) === 'integer'));
      return { bad: { type: t, enum: [...ok, v] }, good: { type: t, enum: [...ok, ...(ok.length ? [] : [t === 'null' ? null : t === 'boolean' ? true : t === 'string' ? 's' : t === 'array' ? [] : t === 'object' ? {} : 1])] }, keyword: 'enum' };
    },
    (r) => {
      const n = int(r, 1, 5);
      return { bad: { type: 'object', properties: { a: {} }, required: ['a', `missing${n}`], additionalProperties: false }, good: { type: 'object', properties: { a: {} }, required: ['a', `missing${n}`] }, keyword: 'required' };
    },
    (r) => {
      const m = int(r, 2, 9);
      return { bad: { type: 'string', pattern: `^x{${m}}$`, maxLength: m - 1 }, good: { type: 'string', pattern: `^x{${m}}$`, maxLength: m }, keyword: 'maxLength' };
    },
    (r) => {
      const m = int(r, 1, 9);
      const n = int(r, 0, m - 1);
      return { bad: { type: 'string', pattern: `^a{${m},${n}}$` }, good: { type: 'string', pattern: `^a{${n},${m}}$` }, keyword: 'pattern' };
    },
    (r) => {
      const [a, b] = [types[int(r, 0, 2)], types[int(r, 4, 6)]];
      return { bad: { allOf: [{ type: a }, { type: b }] }, good: { allOf: [{ type: a }, { type: [a, b] }] }, keyword: 'type' };
    },
  ];

  // Where the contradiction sits: at the top, in a property (required or not), in items, in an anyOf
  // alternative, behind a $ref, or merged through allOf. Each wrapper says where the error must point.
  type Wrap = (s: Record<string, unknown>) => { schema: Record<string, unknown>; at: string };
  const wraps: Wrap[] = [
    (s) => ({ schema: s, at: '#' }),
    (s) => ({ schema: { type: 'object', properties: { deep: s } }, at: '#/properties/deep' }),
    (s) => ({ schema: { type: 'object', properties: { deep: s }, required: ['deep'] }, at: '#/properties/deep' }),
    (s) => ({ schema: { type: 'array', items: s }, at: '#/items' }),
    (s) => ({ schema: { anyOf: [{ type: 'boolean' }, s] }, at: '#/anyOf/1' }),
    (s) => ({ schema: { $ref: '#/$defs/x', $defs: { x: s } }, at: '#/$defs/x' }),
    (s) => ({ schema: { type: 'object', properties: { a: { type: 'array', items: { type: 'object', properties: { b: s } } } } }, at: '#/properties/a/items/properties/b' }),
  ];

  it('a sweep over generated contradictions, wherever they are', () => {
    const r = prng(13);
    let n = 0;
    for (let i = 0; i < 600; i++) {
      const g = gens[i % gens.length](r);
      const w = wraps[Math.floor(r() * wraps.length)];
      const bad = w(g.bad);
      const e = fails(bad.schema);
      expect(e.code, `${e.message} for ${JSON.stringify(bad.schema)}`).toBe('ERR_INVALID_SCHEMA');
      expect(e.keyword, e.message).toBe(g.keyword);
      expect(e.pointer.startsWith(bad.at), `${e.pointer} in ${bad.at} for ${JSON.stringify(bad.schema)}`).toBe(true);
      const good = w(g.good);
      expect(() => checkJsonSchema(good.schema as JsonSchema), JSON.stringify(good.schema)).not.toThrow();
      n++;
    }
    expect(n).toBe(600);
  });
});

describe('limits: ERR_LIMIT_EXCEEDED', () => {
  it('a schema nested 20000 deep is an error, not a stack overflow', () => {
    let deep: Record<string, unknown> = { type: 'string' };
    for (let i = 0; i < 20000; i++) deep = { type: 'object', properties: { a: deep } };
    expectError(deep, 'ERR_LIMIT_EXCEEDED');
    let arrays: unknown = {};
    for (let i = 0; i < 20000; i++) arrays = { anyOf: [arrays] };
    expectError(arrays, 'ERR_LIMIT_EXCEEDED');
    // Just under the limit is fine.
    let ok: Record<string, unknown> = { type: 'string' };
    for (let i = 0; i < Math.floor((SCHEMA_LIMITS.maxDepth - 1) / 2); i++) ok = { type: 'object', properties: { a: ok } };
    expect(() => checkJsonSchema(ok as JsonSchema)).not.toThrow();
  });

  it('size, patterns, repetitions, items, $ref chains and expansions', () => {
    const many = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`property_number_${i}`, { type: 'string', description: 'x'.repeat(20) }]));
    expectError({ type: 'object', properties: many }, 'ERR_LIMIT_EXCEEDED');
    expectError({ type: 'string', pattern: 'a'.repeat(SCHEMA_LIMITS.maxPatternLength + 1) }, 'ERR_LIMIT_EXCEEDED', '#/pattern', 'pattern');
    expectError({ type: 'string', pattern: `^a{0,${SCHEMA_LIMITS.maxStringRepetition + 1}}$` }, 'ERR_LIMIT_EXCEEDED', '#/pattern', 'pattern');
    expectError({ type: 'string', maxLength: SCHEMA_LIMITS.maxStringRepetition + 1 }, 'ERR_LIMIT_EXCEEDED', '#/maxLength', 'maxLength');
    expectError({ type: 'array', maxItems: SCHEMA_LIMITS.maxItems + 1 }, 'ERR_LIMIT_EXCEEDED', '#/maxItems', 'maxItems');
    expectError({ type: 'array', minItems: SCHEMA_LIMITS.maxItems + 1 }, 'ERR_LIMIT_EXCEEDED', '#/minItems', 'minItems');
    const chain: Record<string, unknown> = { d0: { type: 'string' } };
    for (let i = 1; i <= SCHEMA_LIMITS.maxRefChain + 2; i++) chain[`d${i}`] = { $ref: `#/$defs/d${i - 1}` };
    expectError({ $ref: `#/$defs/d${SCHEMA_LIMITS.maxRefChain + 2}`, $defs: chain }, 'ERR_LIMIT_EXCEEDED');
    // A "billion laughs" of allOf: each level merges the one below twice.
    const laughs: Record<string, unknown> = { l0: { type: 'object', properties: { a: { type: 'string' } } } };
    for (let i = 1; i <= 30; i++) laughs[`l${i}`] = { allOf: [{ $ref: `#/$defs/l${i - 1}` }, { $ref: `#/$defs/l${i - 1}` }] };
    expectError({ $ref: '#/$defs/l30', $defs: laughs }, 'ERR_LIMIT_EXCEEDED');
    // ... and anyOf with siblings, copied into each alternative.
    const wide: Record<string, unknown> = { w0: { type: 'string' } };
    for (let i = 1; i <= 30; i++) wide[`w${i}`] = { anyOf: [{ $ref: `#/$defs/w${i - 1}` }, { $ref: `#/$defs/w${i - 1}` }], minLength: 1 };
    expectError({ $ref: '#/$defs/w30', $defs: wide }, 'ERR_LIMIT_EXCEEDED');
  });

  it('checks large schemas quickly', () => {
    const props = Object.fromEntries(
      Array.from({ length: 150 }, (_, i) => [
        `field_${i}`,
        { type: 'object', properties: { name: { type: 'string', maxLength: 40 }, n: { type: 'integer', minimum: 0, maximum: 1000 }, x: { type: 'number', minimum: 0, maximum: 1 }, tags: { type: 'array', items: { enum: ['a', 'b'] } } }, required: ['name'] },
      ]),
    );
    const schema = { type: 'object', properties: props } as JsonSchema;
    expect(JSON.stringify(schema).length).toBeGreaterThan(35_000);
    const t = performance.now();
    checkJsonSchema(schema);
    expect(performance.now() - t).toBeLessThan(2000);
  });
});
