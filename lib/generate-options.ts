import { LlamaError, callSite, llamaError } from './errors.js';
import { prepareJsonSchemaSoon, preparedGrammar, preparedGrammarAsync, type JsonSchema, type PreparedSchema, type SchemaMode } from './json-schema.js';
import { parseLora, type LoraSpec } from './lora.js';
import { parseSampling, SAMPLING_OPTION_NAMES, type SamplingOptions } from './options/sampling.js';
import type { NativeGenerateOptions } from './native.js';
import { checkOptions, invalid, optInteger, optNumber, optSignal } from './validate.js';

/** Triggers of a lazy grammar: text is free until one appears, and follows the grammar from there on. */
export interface GrammarTriggers {
  /** Literal words; the grammar applies from the start of the word (so the grammar should begin with it). */
  words?: readonly string[];
  /**
   * Regular expressions (ECMAScript-like, as llama.cpp's std::regex reads them); the grammar applies from the
   * first capture group, or from the start of the match. A pattern without `*`, `+` or `{n,}` is searched
   * only near the new output at each token; one with them, over the whole output (time that grows with the
   * square of the output's length).
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
      const token = Number(k);
      if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
        throw invalid('logitBias', `token ids from 0 to ${vocabSize - 1}`, k, caller);
      }
      if (typeof v !== 'number' || Number.isNaN(v) || v === Infinity) {
        throw invalid('logitBias', 'finite biases or -Infinity', v, caller);
      }
      return [token, v] as [number, number];
    });
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
    if (t.words !== undefined) for (const w of stringList(t.words, 'grammarTriggers.words', caller)) triggers.push({ type: 'word', value: w });
    if (t.patterns !== undefined) {
      for (const p of stringList(t.patterns, 'grammarTriggers.patterns', caller)) {
        checkTriggerPattern(p, caller);
        triggers.push({ type: 'pattern', value: p });
      }
    }
    if (t.tokens !== undefined) {
      if (!Array.isArray(t.tokens) || !t.tokens.every((x) => Number.isInteger(x) && x >= 0 && x < vocabSize)) {
        throw invalid('grammarTriggers.tokens', `token ids from 0 to ${vocabSize - 1}`, t.tokens, caller);
      }
      for (const token of t.tokens as number[]) triggers.push({ type: 'token', value: '', token });
    }
    if (triggers.length === 0) throw invalid('grammarTriggers', 'at least one word, pattern or token', o.grammarTriggers, caller);
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

/**
 * Trigger patterns run with std::regex (a backtracking matcher) over the generated text at every token, on
 * the context's engine thread, where nothing can interrupt them. Patterns that backtrack exponentially are
 * refused: a quantified group that holds a quantifier or an alternation (`(a+)+`, `(a|a)*`), and
 * backreferences. What is left matches in time polynomial in the text.
 */
function checkTriggerPattern(p: string, caller: Function): void {
  const fail = (why: string) => {
    throw llamaError('ERR_LIMIT_EXCEEDED', `Invalid option "grammarTriggers.patterns": ${why}, received ${JSON.stringify(p.length > 80 ? p.slice(0, 80) + '...' : p)}`, caller);
  };
  if (p.length > MAX_TRIGGER_PATTERN) fail(`a pattern of at most ${MAX_TRIGGER_PATTERN} characters was expected`);
  // Per open group: whether it holds a quantifier or an alternation so far.
  const groups: Array<{ risky: boolean }> = [];
  let lastGroupRisky = false; // the group that just closed, for a quantifier right after it
  let inClass = false;
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === '\\') {
      if (!inClass && /[1-9]/.test(p[i + 1] ?? '')) fail('a pattern without backreferences was expected');
      i++;
      lastGroupRisky = false;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      continue;
    }
    const quantifier = c === '*' || c === '+' || (c === '{' && /^\{\d*,?\d*\}/.test(p.slice(i)));
    if (quantifier) {
      if (lastGroupRisky) fail('a pattern without nested quantifiers or quantified alternations was expected (they backtrack exponentially)');
      if (groups.length > 0) groups[groups.length - 1].risky = true;
      lastGroupRisky = false;
      continue;
    }
    lastGroupRisky = false;
    if (c === '[') inClass = true;
    else if (c === '(') groups.push({ risky: false });
    else if (c === '|' && groups.length > 0) groups[groups.length - 1].risky = true;
    else if (c === ')') {
      const g = groups.pop();
      lastGroupRisky = g?.risky ?? false;
      if (g?.risky && groups.length > 0) groups[groups.length - 1].risky = true;
    }
  }
}
