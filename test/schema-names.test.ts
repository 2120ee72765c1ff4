// Property names that are also members of Object.prototype ("__proto__", "constructor", "hasOwnProperty",
// "toString", ...) are ordinary names in JSON. A sweep over every such name, in every place a schema uses
// names (properties, required, dependentRequired, dependentSchemas, patternProperties, propertyNames, $defs,
// const and enum objects), checks that the grammar and the validator agree with ajv reading own properties
// only: each candidate document the grammar accepts validates, and each that validates is accepted.
// (A hostile review found a required "__proto__" dropped from the grammar, and "hasOwnProperty" refused by
// the validator because ajv read Object.prototype's.)
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { checkJsonSchema, jsonSchemaToGrammar, loadModel, type LlamaModel } from 'llama-addon';
import { describeShared, shared } from './helpers/models.js';

// (Not "": ajv's own required check passes {} for required [""].)
const names = Object.getOwnPropertyNames(Object.prototype).concat(['prototype']);
const ajv = new Ajv2020({ strict: false, ownProperties: true });

/** Schemas over the name `n`, and documents to try against each (as JSON text). */
function cases(n: string): Array<{ schema: unknown; docs: string[] }> {
  const k = JSON.stringify(n);
  const obj = (inner: string) => JSON.parse(inner) as unknown;
  return [
    { schema: obj(`{"type":"object","properties":{${k}:{"type":"integer"}},"required":[${k}],"additionalProperties":false}`), docs: ['{}', `{${k}:1}`, `{${k}:"x"}`] },
    { schema: obj(`{"type":"object","properties":{${k}:{"type":"string"},"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`), docs: ['{"n":1}', `{"n":1,${k}:"a"}`, `{"n":1,${k}:2}`] },
    { schema: obj(`{"type":"object","properties":{"a":{"type":"integer"},${k}:{"type":"integer"}},"required":["a"],"dependentRequired":{"a":[${k}]},"additionalProperties":false}`), docs: ['{"a":1}', `{"a":1,${k}:2}`] },
    { schema: obj(`{"type":"object","properties":{${k}:{"type":"integer"}},"additionalProperties":false}`), docs: ['{}', `{${k}:3}`, '{"other":1}'] },
    { schema: obj(`{"$defs":{${k}:{"type":"boolean"}},"$ref":"#/$defs/${n.replace(/~/g, '~0').replace(/\//g, '~1')}"}`), docs: ['true', '1'] },
    { schema: obj(`{"const":{${k}:1}}`), docs: [`{${k}:1}`, '{}'] },
    { schema: obj(`{"enum":[{${k}:1},{"x":2}]}`), docs: [`{${k}:1}`, '{"x":2}', '{}'] },
    { schema: obj(`{"type":"object","propertyNames":{"enum":[${k}]},"additionalProperties":{"type":"integer"}}`), docs: ['{}', `{${k}:1}`, '{"zz":1}'] },
  ];
}

describeShared('property names that are Object.prototype members', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'), { vocabOnly: true });
  });
  afterAll(() => model.dispose());

  it(`grammar and ajv agree for ${names.length} names in 8 positions`, async () => {
    const disagreements: string[] = [];
    let checked = 0;
    for (const n of names) {
      for (const { schema, docs } of cases(n)) {
        const where = `${JSON.stringify(n)} in ${JSON.stringify(schema)}`;
        let grammar: string;
        try {
          expect(checkJsonSchema(schema as never).notes).toBeDefined();
          grammar = jsonSchemaToGrammar(schema as never);
        } catch (e) {
          // Refusing a schema is allowed only as unsupported, never as a wrong contradiction.
          const code = (e as { code?: string }).code;
          if (code !== 'ERR_UNSUPPORTED_SCHEMA') disagreements.push(`${where}: ${code} ${(e as Error).message}`);
          continue;
        }
        const validate = ajv.compile(schema as object);
        for (const d of docs) {
          const valid = validate(JSON.parse(d));
          const accepted = await model.matchesGrammar(d, grammar);
          checked++;
          // The grammar may be narrower than the schema only where it says so; here it must be exact.
          if (accepted !== valid) disagreements.push(`${where}: ${d} accepted=${accepted} valid=${valid}`);
        }
      }
    }
    expect(disagreements).toEqual([]);
    expect(checked).toBeGreaterThan(names.length * 15);
  }, 120_000);

  it('generates and returns such properties, validated by own properties (was ERR_SCHEMA_MISMATCH on valid output)', async () => {
    await using full = await loadModel(shared('stories260k.gguf'));
    await using ctx = await full.createContext({ contextSize: 512 });
    const schema = {
      type: 'object',
      properties: { hasOwnProperty: { type: 'string', maxLength: 8 }, toString: { type: 'integer' }, valueOf: { const: { toString: 1 } }, n: { type: 'integer' } },
      required: ['n', 'valueOf'],
      additionalProperties: false,
    } as const;
    const validate = ajv.compile(schema);
    let withOptional = 0;
    for (let seed = 1; seed <= 8; seed++) {
      const r = await ctx.createSession().complete('Once upon a time', { jsonSchema: schema, temperature: 1, seed, maxTokens: 120 });
      expect(validate(r.json), r.text).toBe(true);
      if (Object.hasOwn(r.json as object, 'hasOwnProperty') || Object.hasOwn(r.json as object, 'toString')) withOptional++;
    }
    expect(withOptional).toBeGreaterThan(0);
  }, 60_000);
});

describeShared('boolean schemas', () => {
  it('jsonSchema: true generates any JSON value; false is refused before anything generates', async () => {
    await using model = await loadModel(shared('stories260k.gguf'));
    await using ctx = await model.createContext({ contextSize: 256 });
    // true used to fail after conversion with "ajv.removeSchema: invalid parameter".
    for (const seed of [1, 2, 3]) {
      const r = await ctx.createSession().complete('x', { jsonSchema: true, seed, temperature: 1, maxTokens: 60 });
      expect(JSON.parse(r.text)).toEqual(r.json);
    }
    await expect(ctx.createSession().complete('x', { jsonSchema: false, maxTokens: 4 })).rejects.toMatchObject({ code: 'ERR_INVALID_SCHEMA' });
  });
});
