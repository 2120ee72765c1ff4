import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { defineSchema, jsonSchemaToGrammar, loadModel, LlamaError, setLogLevel, type LlamaContext, type LlamaModel } from 'llama-addon';
import { llamaCppDir, tinySynthetic } from './helpers/models.js';
import { rejectsWith } from './helpers/errors.js';
import { prng } from './helpers/prng.js';

setLogLevel('error');

const grammarsDir = join(llamaCppDir, 'grammars');


// The synthetic model has random weights: whatever it says comes from the grammar alone.
describe('grammar-constrained sampling (random-weight model)', () => {
  let model: LlamaModel;
  let ctx: LlamaContext;
  beforeAll(async () => {
    model = await loadModel(await tinySynthetic());
    ctx = await model.createContext({ contextSize: 1024, sequences: 2 });
  });
  afterAll(() => model.dispose());

  const person = defineSchema({
    type: 'object',
    properties: {
      name: { type: 'string', minLength: 1, maxLength: 12 },
      age: { type: 'integer', minimum: 0, maximum: 150 },
      email: { type: 'string', pattern: '^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$' },
      role: { enum: ['admin', 'user', 'guest'] },
      active: { type: 'boolean' },
      tags: { type: 'array', items: { type: 'string', maxLength: 6 }, minItems: 1, maxItems: 3 },
      address: { $ref: '#/$defs/address' },
      score: { oneOf: [{ type: 'number' }, { type: 'null' }] },
      kind: { const: 'person' },
    },
    required: ['name', 'age', 'email', 'role', 'tags', 'kind', 'address'],
    additionalProperties: false,
    $defs: {
      address: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 10 }, zip: { type: 'string', pattern: '^[0-9]{5}$' } },
        required: ['city', 'zip'],
        additionalProperties: false,
      },
    },
  });

  it('every completion under a JSON schema parses and validates, over many seeds', { timeout: 240_000 }, async () => {
    const validate = new Ajv({ strict: false }).compile(person);
    using s = ctx.createSession();
    // 16 seeds at temperature 1.5 (each a few seconds with this 32000-token random-weight model under the
    // grammar): enough to cross every optional part and length bound of the schema.
    for (let seed = 1; seed <= 16; seed++) {
      s.reset();
      const r = await s.complete('Describe a person as JSON:', { jsonSchema: person, seed, temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 600 });
      expect(r.stopReason, r.text).toBe('eog');
      expect(validate(r.json), `${JSON.stringify(validate.errors)} in ${r.text}`).toBe(true);
      expect(JSON.parse(r.text)).toEqual(r.json);
      // The schema's type flows to the result.
      expectTypeOf(r.json.role).toEqualTypeOf<'admin' | 'user' | 'guest'>();
      expectTypeOf(r.json.age).toEqualTypeOf<number>();
      expectTypeOf(r.json.active).toEqualTypeOf<boolean | undefined>();
      expect(['admin', 'user', 'guest']).toContain(r.json.role);
      expect(r.json.kind).toBe('person');
    }
  });

  // A token element (`<[id]>`, `!<[id]>`) matches a whole token, so only at a token boundary. llama.cpp's
  // filter let a parse state that reached one after reading part of a token's text take that token by its
  // id, and accepting it then left no state: `"a" !<[id]> "b"` failed every generation with "Unexpected empty
  // grammar stack" (found by a hostile review). Random sequences of letters and token elements, several
  // seeds each: every generation ends, and its tokens line up with the elements.
  it('matches token elements at token boundaries, after characters too', async () => {
    const rand = prng(11);
    const letters = () => Array.from({ length: 1 + Math.floor(rand() * 3) }, () => 'abcdefgh'[Math.floor(rand() * 8)]).join('');
    const someToken = () => 100 + Math.floor(rand() * (model.vocab.size - 100));
    for (let round = 0; round < 12; round++) {
      const [before, after] = [letters(), letters()];
      const positive = rand() < 0.5;
      const id = positive ? someToken() : model.tokenize(after, { addBos: false })[0]!;
      const grammar = `root ::= "${before}" ${positive ? '' : '!'}<[${id}]> "${after}"`;
      for (const seed of [1, 2]) {
        using s = ctx.createSession();
        const r = await s.complete('Hello', { grammar, temperature: 1, seed, maxTokens: 32 });
        expect(r.stopReason, grammar).toBe('eog');
        // The token element's token follows exactly the tokens that spell `before`.
        const k = r.tokens.findIndex((_, i) => model.detokenize(r.tokens.slice(0, i)) === before);
        expect(k, `${grammar}: ${JSON.stringify(r.text)}`).toBeGreaterThan(0);
        if (positive) expect(r.tokens[k]).toBe(id);
        else expect(r.tokens[k]).not.toBe(id);
        expect(r.text.startsWith(before) && r.text.endsWith(after), `${grammar}: ${JSON.stringify(r.text)}`).toBe(true);
      }
    }
  });

  it('streams grammar-constrained output like any other', async () => {
    using s = ctx.createSession();
    const gen = s.generate('Pick:', { grammar: 'root ::= ("yes" | "no") "!"', temperature: 1, seed: 9 });
    let streamed = '';
    for await (const c of gen) streamed += c.text;
    const r = await gen.result;
    expect(['yes!', 'no!']).toContain(r.text);
    expect(streamed).toBe(r.text);
  });

  const files = readdirSync(grammarsDir).filter((f) => f.endsWith('.gbnf')).sort();
  it(`finds the pinned source's grammars (${files.length})`, () => {
    expect(files.length).toBeGreaterThanOrEqual(8);
  });

  // Biases steer the random model toward characters that close structures and toward the end, so that
  // generations finish; the grammar decides what is allowed.
  function closingBias(): Record<number, number> {
    const bias: Record<number, number> = { [model.vocab.eos!]: 12 };
    for (const text of ['"', '}', ']', '\n', '=', ')', ';', '.', '1']) {
      for (const t of model.tokenize(text, { addBos: false })) bias[t] = (bias[t] ?? 0) + 3;
    }
    return bias;
  }

  describe('every grammar of the pinned source compiles and constrains generation', () => {
    for (const file of files) {
      it(file, async () => {
        const grammar = readFileSync(join(grammarsDir, file), 'utf8');
        using s = ctx.createSession();
        let complete = 0;
        for (let seed = 1; seed <= 3; seed++) {
          s.reset();
          const r = await s.complete('Output:', { grammar, seed, temperature: 1, maxTokens: 300, logitBias: closingBias() });
          if (r.stopReason === 'eog') {
            complete++;
            // Checked from scratch by llama.cpp's own grammar parser.
            expect(await model.matchesGrammar(r.text, grammar), r.text).toBe(true);
            if (file === 'json.gbnf') expect(typeof JSON.parse(r.text)).toBe('object');
            if (file === 'json_arr.gbnf') expect(Array.isArray(JSON.parse(r.text))).toBe(true);
            if (file === 'list.gbnf') expect(r.text).toMatch(/^(- [^\r\n]+\n)+$/);
            if (file === 'chess.gbnf') expect(r.text.startsWith('1. ')).toBe(true);
          } else {
            expect(r.stopReason).toBe('maxTokens');
          }
        }
        expect(complete, `${file}: no generation finished`).toBeGreaterThan(0);
      });
    }
  });

  it('checks texts against grammars', async () => {
    const g = 'root ::= "a" [0-9]+ ("." [0-9]+)?';
    expect(await model.matchesGrammar('a12.5', g)).toBe(true);
    expect(await model.matchesGrammar('a12.', g)).toBe(false);
    expect(await model.matchesGrammar('b12', g)).toBe(false);
    expect(await model.matchesGrammar('', g)).toBe(false);
    const json = readFileSync(join(grammarsDir, 'json.gbnf'), 'utf8');
    expect(await model.matchesGrammar('{"a": [1, 2, {"b": null}]}', json)).toBe(true);
    expect(await model.matchesGrammar('{"a": [1, 2,]}', json)).toBe(false);
  });

  it('says so when a lazy grammar does not begin with what its trigger matched', async () => {
    // llama.cpp hands the grammar the output from the trigger on: "CALL..." cannot be read by root ::= "x".
    const bias: Record<number, number> = {};
    for (const t of model.tokenize('CALL', { addBos: false })) bias[t] = 30;
    using s = ctx.createSession();
    const e = await rejectsWith(s.complete('Go:', { grammar: 'root ::= "x"', grammarTriggers: { words: ['CALL'] }, temperature: 0, maxTokens: 40, logitBias: bias }), 'ERR_INVALID_GRAMMAR');
    expect(e.message).toMatch(/the lazy grammar does not accept the output from its trigger on: it rejected "C/);
    // A grammar that begins with the trigger's text goes on under the grammar.
    const ok = await s.complete('Go:', { grammar: 'root ::= "CALL" "(1)"', grammarTriggers: { words: ['CALL'] }, temperature: 0, maxTokens: 40, logitBias: bias });
    expect(ok.text).toMatch(/CALL\(1\)$/);
  });

  it('applies a lazy grammar only after its trigger', async () => {
    const grammar = 'root ::= "CALL(" [0-9] [0-9] ")"';
    const trigger = model.tokenize('CALL', { addBos: false });
    using s = ctx.createSession();
    let triggered = 0;
    for (let seed = 1; seed <= 6; seed++) {
      s.reset();
      const bias: Record<number, number> = { [model.vocab.eos!]: 4 };
      for (const t of trigger) bias[t] = 6;
      const r = await s.complete('Go:', { grammar, grammarTriggers: { words: ['CALL'] }, seed, temperature: 1, maxTokens: 40, logitBias: bias });
      const at = r.text.indexOf('CALL');
      if (at < 0) continue;
      triggered++;
      // Free text before the trigger; from the trigger on, only the grammar.
      expect(r.text.slice(at), r.text).toMatch(/^CALL\([0-9][0-9]\)$/);
      expect(r.stopReason).toBe('eog');
    }
    expect(triggered).toBeGreaterThan(0);
  });

  // Trigger words are searched only in the output not searched yet (patches/llama.cpp/0004): a word that
  // spans tokens, or comes after long free text, still triggers at its first occurrence.
  it('trigger words still fire at their first occurrence, also after long free text (a sweep of seeds)', async () => {
    const grammar = 'root ::= "CALL(" [0-9] [0-9] ")"';
    const trigger = model.tokenize('CALL', { addBos: false });
    using s = ctx.createSession();
    const positions: number[] = [];
    for (let seed = 1; seed <= 16; seed++) {
      s.reset();
      const bias: Record<number, number> = { [model.vocab.eos!]: -4 };
      for (const t of trigger) bias[t] = 3;
      const r = await s.complete('Go:', { grammar, grammarTriggers: { words: ['CALL'] }, seed, temperature: 1, maxTokens: 120, logitBias: bias });
      const at = r.text.indexOf('CALL');
      if (at < 0) continue;
      positions.push(at);
      expect(r.text.slice(at), r.text).toMatch(/^CALL\([0-9][0-9]\)$/);
    }
    expect(positions.length).toBeGreaterThan(0);
    expect(Math.max(...positions)).toBeGreaterThan(20);
  });

  // Bounded trigger patterns (no *, + or {n,}) are searched only near the output not searched yet
  // (patches/llama.cpp/0005): each still fires at its first match in the whole output, as JavaScript's
  // RegExp finds it, with anchors, word boundaries, lookaheads, classes (ECMAScript's [^] too), capture
  // groups and alternations.
  it('trigger patterns fire at their first match (a sweep of patterns and seeds)', async () => {
    const grammar = 'root ::= "CALL(" [0-9] [0-9] ")"';
    const trigger = model.tokenize('CALL', { addBos: false });
    // (each matches only where "CALL" starts, so that the grammar can follow from the match)
    // (bounded ones only: unbounded patterns are refused; [^] is any character, a class that ends at once)
    const patterns = ['C[A]LL', 'CAL{2}', 'CALL{1,3}', '(?:CALL|CALL\\()', '\\bCALL', 'CALL(?!x)', '(C)ALL', 'x?CALL', '[^]{0,3}(CALL)', '[^]{0,2}(C)[A]LL', '[C]A[^\\s]L'];
    using s = ctx.createSession();
    const fired = new Map<string, number[]>();
    for (const pattern of patterns) {
      const re = new RegExp(pattern, 'd');
      for (let seed = 1; seed <= 10; seed++) {
        s.reset();
        const bias: Record<number, number> = { [model.vocab.eos!]: -4 };
        for (const t of trigger) bias[t] = 4;
        const r = await s.complete('Go:', { grammar, grammarTriggers: { patterns: [pattern] }, seed, temperature: 1, maxTokens: 120, logitBias: bias });
        const at = r.text.indexOf('CALL(');
        if (at < 0) continue;
        // Free text before: no match of the pattern ends before the grammar's start (it would have fired).
        const m = re.exec(r.text.slice(0, at + 'CALL'.length));
        expect(m, `${pattern}: ${JSON.stringify(r.text)}`).not.toBeNull();
        // The grammar applies from the first capture group that matched, or from the match's start.
        const group = m!.indices!.slice(1).find((x) => x !== undefined && x[1] > x[0]);
        expect(group ? group[0] : m!.index, `${pattern}: ${JSON.stringify(r.text)}`).toBe(at);
        expect(r.text.slice(at), r.text).toMatch(/^CALL\([0-9][0-9]\)$/);
        fired.set(pattern, [...(fired.get(pattern) ?? []), at]);
      }
    }
    // Every pattern fired, and some only after long free text (where the bounded search starts late).
    expect([...fired.keys()].sort()).toEqual([...patterns].sort());
    expect(Math.max(...[...fired.values()].flat())).toBeGreaterThan(300);
  });

  it('reports grammars and schemas that do not parse as ERR_INVALID_GRAMMAR, without harm to the process', async () => {
    using s = ctx.createSession();
    const bad = [
      'root ::= undefined-rule',
      'root ::= "unterminated',
      'root ::= [a-',
      'root ::= ("a" | "b"',
      'not a grammar at all',
      'root ::= root "a"',
      'x ::= "a"',
    ];
    for (const g of bad) {
      const e = await rejectsWith(s.complete('x', { grammar: g }), 'ERR_INVALID_GRAMMAR');
      expect(e.message).toMatch(/grammar could not be parsed/);
    }
    expect((await rejectsWith(s.complete('x', { grammar: 'root ::= foo' }), 'ERR_INVALID_GRAMMAR')).message).toMatch(/Undefined rule identifier 'foo'/);
    // A rule defined twice (llama.cpp kept the last without a word), and a token reference past the
    // vocabulary (it parsed, then failed at the first token with "no token is allowed").
    const n = ctx.model.vocab.size;
    for (const [g, message] of [
      ['root ::= "a"\nroot ::= "b"', /The rule "root" is defined twice/],
      ['root ::= x\nx ::= "a"\nx ::= "b"', /The rule "x" is defined twice/],
      ['root ::= [] "a"', /empty character class \[\], which no character matches/],
      ['root ::= [^] "a"', /empty negated class \[\^\], which llama\.cpp reads as nothing at all/],
      // Ids past 32 bits wrapped (<[4294967596]> became token 300); the message names the id as written.
      ['root ::= <[4294967596]>', /The token reference <\[4294967596\]> names no token \(token ids are below 2\^31\)/],
      ['root ::= !<[18446744073709552116]>', /The token reference <\[18446744073709552116\]> names no token/],
      ['root ::= <[999999]>', new RegExp(`The token reference <\\[999999\\]> names no token: the vocabulary has tokens 0 to ${n - 1}`)],
      [`root ::= "a" !<[${n}]>`, new RegExp(`The token reference <\\[${n}\\]> names no token`)],
    ] as const) {
      expect((await rejectsWith(s.complete('x', { grammar: g, maxTokens: 2 }), 'ERR_INVALID_GRAMMAR')).message).toMatch(message);
    }
    await expect(ctx.model.matchesGrammar('a', 'root ::= "a"\nroot ::= "b"')).rejects.toMatchObject({ code: 'ERR_INVALID_GRAMMAR' });
    expect((await s.complete('x', { grammar: `root ::= <[${n - 1}]> | "a"`, maxTokens: 1 })).usage.completionTokens).toBe(1);
    // Schemas are checked before conversion (test/schema-*.test.ts): their errors have codes of their own.
    expect(() => jsonSchemaToGrammar({ type: 'object', properties: { a: { $ref: '#/$defs/missing' } } })).toThrowError(/does not resolve/);
    await rejectsWith(s.complete('x', { jsonSchema: { $ref: 'https://example.com/remote.json' } }), 'ERR_UNSUPPORTED_SCHEMA');
    await rejectsWith(s.complete('x', { grammar: 'root ::= "a"', jsonSchema: { type: 'string' } }), 'ERR_INVALID_ARGUMENT');
    await rejectsWith(s.complete('x', { grammarTriggers: { words: ['a'] } }), 'ERR_INVALID_ARGUMENT');
    // A grammar that leaves no token once logitBias has banned some: an error, not a crash.
    const banned: Record<number, number> = {};
    for (let t = 0; t < model.vocab.size; t++) if (model.vocab.isEndOfGeneration(t)) banned[t] = -Infinity;
    expect((await rejectsWith(s.complete('x', { grammar: 'root ::= "ok"', logitBias: banned }), 'ERR_INVALID_GRAMMAR')).message).toMatch(
      /no token is allowed here by the grammar and logitBias: the grammar allows no token of this vocabulary after the text so far/,
    );
    // The session works afterwards.
    expect((await s.complete('x', { grammar: 'root ::= "ok"' })).text).toBe('ok');
  });

  it('gives ERR_INCOMPLETE_OUTPUT when a JSON generation is cut short', async () => {
    using s = ctx.createSession();
    const e = await rejectsWith(s.complete('x', { jsonSchema: { type: 'array', items: { type: 'string' }, minItems: 50 }, maxTokens: 5 }), 'ERR_INCOMPLETE_OUTPUT');
    expect(e.message).toMatch(/maxTokens/);
    // Aborted: the message says so, not to raise maxTokens.
    const a = await rejectsWith(s.complete('x', { jsonSchema: { type: 'array', items: { type: 'string' } }, maxTokens: 50, signal: AbortSignal.abort() }), 'ERR_INCOMPLETE_OUTPUT');
    expect(a.message).toMatch(/stopReason "abort" after 0 tokens \(it was aborted, or its session or context disposed\)/);
  });
});
