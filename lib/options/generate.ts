// The options of a generation: their public type, their checks, and the native options they become.
import { callSite, llamaError } from '../base/errors.js';
import { prepareJsonSchemaSoon, preparedGrammar, preparedGrammarAsync, type JsonSchema, type PreparedSchema, type SchemaMode } from '../schema/json-schema.js';
import { parseLora, type LoraSpec } from '../core/lora.js';
import { parseSampling, SAMPLING_OPTION_NAMES, type SamplingOptions } from './sampling.js';
import type { NativeGenerateOptions } from '../native/native.js';
import { checkOptions, invalid, optInteger, optNumber, optSignal, tokenIds } from '../base/validate.js';

/** Triggers of a lazy grammar: text is free until one appears, and follows the grammar from there on. */
export interface GrammarTriggers {
  /** Literal words; the grammar applies from the start of the word (so the grammar should begin with it). */
  words?: readonly string[];
  /**
   * Regular expressions (ECMAScript-like, as llama.cpp's std::regex reads them); the grammar applies from the
   * first capture group, or from the start of the match. They must be bounded (no `*`, `+` or `{n,}`: write
   * `{0,N}`) and cheap to match from any position; the README's "Grammars and JSON schemas" gives the limits
   * (ERR_LIMIT_EXCEEDED). Each is searched only near the new output at each token.
   */
  patterns?: readonly string[];
  /** Token ids that trigger the grammar when generated. */
  tokens?: readonly number[];
}

/**
 * Options of {@link LlamaSession.generate}. The sampling options (`temperature`, `topK`, `topP`, `minP`, ...)
 * are declared in `SAMPLING_OPTIONS`, with their ranges and defaults.
 */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default: until the model ends or the context is full). */
  maxTokens?: number;
  /** Bias added to the logits of tokens, by token id; `-Infinity` bans a token. */
  logitBias?: Readonly<Record<number, number>> | ReadonlyMap<number, number>;
  /** Stop when one of these strings appears; it is not part of the output. */
  stop?: string | readonly string[];
  /** Aborts the generation: the stream ends normally with `stopReason: 'abort'`. */
  signal?: AbortSignal;
  /**
   * Most generated tokens held for a consumer that has not read them yet (default 32); when they are
   * reached, the engine pauses this generation. Output produced between two reads is handed over as one
   * chunk, so `queueSize: 1` gives one chunk per token (text held back for UTF-8 or stop strings joins the
   * next chunk).
   */
  queueSize?: number;
  /**
   * A GBNF grammar (llama.cpp's format) the output must follow; sampling never picks a token that leaves
   * it. The grammar's `root` rule is the whole output.
   */
  grammar?: string;
  /**
   * A JSON schema the output must follow: checked, converted to a grammar by llama.cpp's converter, and the
   * output validated against it; the result's `json` holds the parsed value (see the README's "Grammars and
   * JSON schemas" for what is enforced).
   */
  jsonSchema?: JsonSchema;
  /**
   * With `jsonSchema`: `'strict'` (default) rejects keywords the grammar cannot enforce with
   * `ERR_UNSUPPORTED_SCHEMA`; `'best-effort'` accepts them, and an output that does not match the schema
   * is `ERR_SCHEMA_MISMATCH`.
   */
  schemaMode?: SchemaMode;
  /** Makes `grammar` (or `jsonSchema`) lazy: it applies only once one of these triggers is generated. */
  grammarTriggers?: GrammarTriggers;
  /**
   * Report each generated token's log-probability, with this many most likely alternatives (0 up to the
   * vocabulary size; 0: the chosen token only). Chunks and the result then carry `logprobs`.
   */
  logprobs?: number;
  /**
   * When a step of the context's batch cannot take every running generation (its batch is full), higher
   * priorities go first (default 0); equal priorities take turns.
   */
  priority?: number;
  /** LoRA adapters for this request, instead of the context's (`[]`: none). */
  lora?: readonly LoraSpec[];
  /** `false` turns the context's speculative decoding off for this request (default true). */
  speculative?: boolean;
}

const generateKeys = [
  'maxTokens', ...SAMPLING_OPTION_NAMES, 'logitBias', 'stop', 'signal', 'queueSize', 'grammar', 'jsonSchema', 'schemaMode',
  'grammarTriggers', 'logprobs', 'priority', 'lora', 'speculative',
] as const;

function stringList(value: unknown, name: string, caller: Function): string[] {
  if (!Array.isArray(value) || !value.every((s) => typeof s === 'string' && s.length > 0)) {
    throw invalid(name, 'an array of non-empty strings', value, caller);
  }
  return [...value];
}

export function parseGenerateOptions(options: GenerateOptions | undefined, vocabSize: number, caller: Function) {
  const o = checkOptions('generate', options, generateKeys, caller);
  const out: NativeGenerateOptions = { sampling: parseSampling(o, caller) };
  const maxTokens = optInteger(o, 'maxTokens', 1, 2 ** 31 - 1, caller);
  if (maxTokens !== undefined) out.maxTokens = maxTokens;
  const nums: Array<[keyof NativeGenerateOptions, number, number, boolean]> = [
    ['queueSize', 1, 1_000_000, true],
    ['logprobs', 0, vocabSize, true],
    ['priority', -1_000_000, 1_000_000, true],
  ];
  for (const [name, min, max, integer] of nums) {
    const v = integer ? optInteger(o, name, min, max, caller) : optNumber(o, name, min, max, caller);
    if (v !== undefined) (out as unknown as Record<string, number>)[name] = v;
  }
  if (o.stop !== undefined) {
    const stop = typeof o.stop === 'string' ? [o.stop] : o.stop;
    if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string' && s.length > 0)) {
      throw invalid('stop', 'a non-empty string or an array of non-empty strings', o.stop, caller);
    }
    out.stop = [...stop];
  }
  if (o.logitBias !== undefined) {
    const lb = o.logitBias;
    if (lb === null || typeof lb !== 'object') throw invalid('logitBias', 'an object or Map of token id to bias', lb, caller);
    const entries = lb instanceof Map ? [...lb.entries()] : Object.entries(lb);
    out.logitBias = entries.map(([k, v]) => {
      // An object's keys are strings: only a token id's own decimal form names it (" 407", "407.0", "0x197"
      // and "" did, through Number()), as in the server.
      const token = typeof k === 'string' ? (/^(0|[1-9][0-9]{0,9})$/.test(k) ? Number(k) : NaN) : k;
      if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
        throw invalid('logitBias', `token ids from 0 to ${vocabSize - 1} as keys`, k, caller);
      }
      if (typeof v !== 'number' || Number.isNaN(v) || v === Infinity) {
        throw invalid('logitBias', 'finite biases or -Infinity', v, caller);
      }
      return [token, v] as [number, number];
    });
    // Banning every token leaves nothing to sample (llama.cpp would pick one anyway).
    if (new Set(out.logitBias.filter(([, v]) => v === -Infinity).map(([t]) => t)).size >= vocabSize) {
      throw invalid('logitBias', 'at least one token that is not banned (-Infinity)', `all ${vocabSize} tokens banned`, caller);
    }
  }
  if (o.grammar !== undefined && o.jsonSchema !== undefined) {
    throw invalid('grammar', 'either grammar or jsonSchema, not both', o.grammar, caller);
  }
  if (o.grammar !== undefined) {
    if (typeof o.grammar !== 'string' || o.grammar.trim().length === 0) throw invalid('grammar', 'a GBNF grammar (a non-empty string)', o.grammar, caller);
    out.grammar = o.grammar;
    out.grammarType = 'user';
  }
  if (o.schemaMode !== undefined && o.schemaMode !== 'strict' && o.schemaMode !== 'best-effort') {
    throw invalid('schemaMode', "'strict' or 'best-effort'", o.schemaMode, caller);
  }
  let schema: PreparedSchema | undefined;
  // A large schema that is not in the cache is checked and converted off the JS thread: the grammar comes later.
  let schemaLater: Promise<PreparedSchema> | undefined;
  if (o.jsonSchema !== undefined) {
    const soon = prepareJsonSchemaSoon(o.jsonSchema, (o.schemaMode as SchemaMode | undefined) ?? 'strict', caller);
    out.grammarType = 'output';
    if (soon instanceof Promise) {
      const atCaller = callSite(caller);
      schemaLater = soon.then(async (p) => {
        out.grammar = await preparedGrammarAsync(p, caller).catch((e: unknown) => Promise.reject(atCaller(e)));
        p.warm();
        return p;
      });
      // (a call that fails after this point leaves the promise unread: it must not be an unhandled rejection)
      schemaLater.catch(() => {});
    } else {
      schema = soon;
      out.grammar = preparedGrammar(schema, caller);
      schema.warm();
    }
  }
  if (o.grammarTriggers !== undefined) {
    const t = checkOptions('grammarTriggers', o.grammarTriggers, ['words', 'patterns', 'tokens'], caller);
    if (out.grammar === undefined && schemaLater === undefined) throw invalid('grammarTriggers', 'a grammar or jsonSchema to trigger', o.grammarTriggers, caller);
    const triggers: NonNullable<NativeGenerateOptions['grammarTriggers']> = [];
    if (t.words !== undefined) {
      for (const w of stringList(t.words, 'grammarTriggers.words', caller)) {
        // llama.cpp compiles each word into a regular expression, with std::regex's compiler recursing once per
        // character: 100,000 characters overflowed the stack of the thread that builds the sampler.
        if (w.length > MAX_TRIGGER_WORD) {
          throw llamaError('ERR_LIMIT_EXCEEDED', `Invalid option "grammarTriggers.words": words of at most ${MAX_TRIGGER_WORD} characters were expected, received one of ${w.length}`, caller);
        }
        triggers.push({ type: 'word', value: w });
      }
    }
    if (t.patterns !== undefined) {
      for (const p of stringList(t.patterns, 'grammarTriggers.patterns', caller)) {
        checkTriggerPattern(p, caller);
        triggers.push({ type: 'pattern', value: p });
      }
    }
    if (t.tokens !== undefined) {
      if (!Array.isArray(t.tokens)) throw invalid('grammarTriggers.tokens', 'an array of token ids', t.tokens, caller);
      for (const token of tokenIds('grammarTriggers.tokens', t.tokens, vocabSize, caller)) triggers.push({ type: 'token', value: '', token });
    }
    if (triggers.length === 0) throw invalid('grammarTriggers', 'at least one word, pattern or token', o.grammarTriggers, caller);
    if (triggers.length > MAX_TRIGGERS) {
      // Each is searched for at every token until one appears.
      throw llamaError('ERR_LIMIT_EXCEEDED', `Invalid option "grammarTriggers": at most ${MAX_TRIGGERS} words, patterns and tokens in all were expected, received ${triggers.length}`, caller);
    }
    out.grammarLazy = true;
    out.grammarTriggers = triggers;
  }
  if (o.speculative !== undefined) {
    if (typeof o.speculative !== 'boolean') throw invalid('speculative', 'a boolean', o.speculative, caller);
    out.speculative = o.speculative;
  }
  let loraKey: string | undefined;
  if (o.lora !== undefined) {
    const { pairs, key } = parseLora(o.lora, caller);
    out.lora = pairs;
    loraKey = key;
  }
  const signal = optSignal(o, 'signal', caller);
  return { native: out, signal, jsonSchema: o.jsonSchema !== undefined, schema, schemaLater, loraKey };
}


/** Longest trigger pattern (characters). */
export const MAX_TRIGGER_PATTERN = 1000;
/** Longest trigger word (characters). */
export const MAX_TRIGGER_WORD = 1000;
/** Most triggers (words, patterns and tokens together) of one generation. */
export const MAX_TRIGGERS = 256;
/** Most characters a trigger pattern's match may read (its longest match, lookaheads included). */
export const MAX_TRIGGER_SPAN = 4096;
/** Most ways a trigger pattern may try to match from one position (alternatives × repetition counts), times its span. */
export const MAX_TRIGGER_WORK = 1 << 20;

interface PatternCost {
  /** Most characters a match reads. */
  len: number;
  /** Ways a backtracking matcher may try from one start position. */
  ways: number;
}

/**
 * Trigger patterns run with std::regex (a recursive backtracking matcher) at every token, on the context's
 * engine thread, where nothing can interrupt them; llama.cpp searches a bounded pattern only near the new
 * output (patches/llama.cpp/0005). So a pattern must be bounded, and cheap from every position: no `*`,
 * `+` or `{n,}` (write `{0,N}`), no backreferences, a match of at most MAX_TRIGGER_SPAN characters, and at
 * most MAX_TRIGGER_WORK steps from one position (a chain of alternatives or optional parts multiplies
 * them: `(?:.|.)` 25 times is 2^25). Refused with ERR_LIMIT_EXCEEDED; what std::regex cannot compile is
 * ERR_INVALID_GRAMMAR when the generation starts.
 */
function checkTriggerPattern(p: string, caller: Function): void {
  const shown = JSON.stringify(p.length > 80 ? p.slice(0, 80) + '...' : p);
  const fail = (why: string): never => {
    throw llamaError('ERR_LIMIT_EXCEEDED', `Invalid option "grammarTriggers.patterns": ${why}, received ${shown}`, caller);
  };
  const syntax = (why: string): never => {
    throw llamaError('ERR_INVALID_GRAMMAR', `Invalid option "grammarTriggers.patterns": a regular expression with ${why} was expected, received ${shown}`, caller);
  };
  if (p.length > MAX_TRIGGER_PATTERN) fail(`a pattern of at most ${MAX_TRIGGER_PATTERN} characters was expected`);
  const cap = (x: number) => Math.min(x, Number.MAX_SAFE_INTEGER);
  let i = 0;
  const alternation = (): PatternCost => {
    let len = 0;
    let ways = 0;
    for (;;) {
      const s = sequence();
      len = Math.max(len, s.len);
      ways = cap(ways + s.ways);
      if (p[i] !== '|') return { len, ways };
      i++;
    }
  };
  const sequence = (): PatternCost => {
    let len = 0;
    let ways = 1;
    while (i < p.length && p[i] !== '|' && p[i] !== ')') {
      const at = i;
      let a = atom();
      if (i <= at) syntax('well-formed escapes'); // every atom reads at least one character: the scan ends
      a = quantified(a);
      len = cap(len + a.len);
      ways = cap(ways * a.ways);
    }
    return { len, ways };
  };
  const atom = (): PatternCost => {
    const c = p[i++];
    if (c === '(') {
      if (p[i] === '?') i += p[i + 1] === '<' && (p[i + 2] === '=' || p[i + 2] === '!') ? 3 : 2;
      const inner = alternation();
      if (p[i] !== ')') syntax('balanced parentheses');
      i++;
      return inner;
    }
    if (c === '[') {
      // ECMAScript: the first ] after [ or [^ closes the class ([] matches nothing, [^] anything).
      if (p[i] === '^') i++;
      while (i < p.length && p[i] !== ']') i += p[i] === '\\' ? 2 : 1;
      if (i >= p.length) syntax('closed character classes');
      i++;
      return { len: 1, ways: 1 };
    }
    if (c === '\\') {
      const e = p[i++] ?? '';
      if (/[1-9]/.test(e) || e === 'k') fail('a pattern without backreferences was expected');
      if (e === 'c') fail('a pattern without \\c control escapes was expected (std::regex reads them differently)');
      // std::regex (ECMAScript) reads \xHH and \uHHHH; \u{...} is not in its grammar.
      if (e === 'x' && !/^[0-9a-fA-F]{2}/.test(p.slice(i, i + 2))) syntax('\\x followed by two hex digits');
      if (e === 'u' && !/^[0-9a-fA-F]{4}/.test(p.slice(i, i + 4))) syntax('\\u followed by four hex digits');
      if (e === 'x') i += 2;
      else if (e === 'u') i += 4;
      return { len: e === 'b' || e === 'B' ? 0 : 1, ways: 1 };
    }
    if (c === '^' || c === '$') return { len: 0, ways: 1 };
    if (c === ')') syntax('balanced parentheses');
    if (c === '*' || c === '+' || c === '?' || c === '{') {
      if (c !== '{' || /^\{\d*,?\d*\}/.test(p.slice(i - 1))) syntax('quantifiers after something to repeat');
    }
    return { len: 1, ways: 1 };
  };
  const quantified = (a: PatternCost): PatternCost => {
    const c = p[i];
    let min: number;
    let max: number;
    if (c === '*' || c === '+') {
      fail(`a bounded pattern was expected: "${c}" repeats without end (write {0,N} with N at most ${MAX_TRIGGER_SPAN})`);
    }
    if (c === '?') {
      i++;
      [min, max] = [0, 1];
    } else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(p.slice(i));
      if (!m) return a;
      if (m[2] !== undefined && m[3] === '') fail(`a bounded pattern was expected: {${m[1]},} repeats without end (write {${m[1]},N})`);
      min = Number(m[1]);
      max = m[3] !== undefined ? Number(m[3]) : min;
      if (max < min) syntax('repetitions {m,n} where m <= n');
      i += m[0].length;
    } else {
      return a;
    }
    if (p[i] === '?') i++; // lazy
    if (max > MAX_TRIGGER_SPAN || a.len * max > MAX_TRIGGER_SPAN) {
      fail(`a pattern whose matches read at most ${MAX_TRIGGER_SPAN} characters was expected (a repetition of up to ${max})`);
    }
    let ways = 0;
    for (let k = min, w = cap(a.ways ** min); k <= max && ways < Number.MAX_SAFE_INTEGER; k++, w = cap(w * a.ways)) ways = cap(ways + w);
    return { len: cap(a.len * max), ways };
  };
  const cost = alternation();
  if (i < p.length) syntax('balanced parentheses');
  if (cost.len > MAX_TRIGGER_SPAN) fail(`a pattern whose matches read at most ${MAX_TRIGGER_SPAN} characters was expected (this one: ${cost.len})`);
  // (A pattern whose matches are empty still tries each way from every position: at least one step each.)
  if (Math.max(cost.len, 1) * cost.ways > MAX_TRIGGER_WORK) {
    fail(`a pattern with fewer ways to try from one position was expected (${cost.ways} ways over ${cost.len} characters; at most ${MAX_TRIGGER_WORK} steps): alternatives and optional parts in a row multiply`);
  }
}
