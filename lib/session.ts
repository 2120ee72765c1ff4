import type { LlamaContext } from './context.js';
import { LlamaError, callNative } from './errors.js';
import { Generation, type GenerationResult } from './generation.js';
import type { NativeGenerateOptions, NativeGenerationResult } from './native.js';
import { checkOptions, invalid, optInteger, optNumber, optSignal } from './validate.js';

/** Options of {@link LlamaSession.generate}. */
export interface GenerateOptions {
  /** Most tokens to generate (default: until the model ends or the context is full). */
  maxTokens?: number;
  /** Sampling temperature; 0 is greedy (always the most likely token). Default 0.8. */
  temperature?: number;
  /** Keep only the K most likely tokens (default 40; 0 disables). */
  topK?: number;
  /** Nucleus sampling: keep the most likely tokens up to this total probability (default 0.95; 1 disables). */
  topP?: number;
  /** Drop tokens less likely than this fraction of the most likely one (default 0.05; 0 disables). */
  minP?: number;
  /** Locally typical sampling (default 1, disabled). */
  typicalP?: number;
  /** Random seed; the same seed, prompt and options give the same text (default: random). */
  seed?: number;
  /** Penalty for repeating recent tokens (default 1, disabled). */
  repeatPenalty?: number;
  /** Penalty for tokens that appeared at all (default 0). */
  presencePenalty?: number;
  /** Penalty growing with how often a token appeared (default 0). */
  frequencyPenalty?: number;
  /** How many recent tokens the penalties look at (default 64; -1: the whole context). */
  penaltyLastN?: number;
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
}

const generateKeys = [
  'maxTokens', 'temperature', 'topK', 'topP', 'minP', 'typicalP', 'seed', 'repeatPenalty', 'presencePenalty',
  'frequencyPenalty', 'penaltyLastN', 'logitBias', 'stop', 'signal', 'queueSize',
] as const;

function parseGenerateOptions(options: GenerateOptions | undefined, vocabSize: number, caller: Function) {
  const o = checkOptions('generate', options, generateKeys, caller);
  const out: NativeGenerateOptions = {};
  const maxTokens = optInteger(o, 'maxTokens', 1, 2 ** 31 - 1, caller);
  if (maxTokens !== undefined) out.maxTokens = maxTokens;
  const nums: Array<[keyof NativeGenerateOptions, number, number, boolean]> = [
    ['temperature', 0, 100, false], ['topK', 0, 2 ** 31 - 1, true], ['topP', 0, 1, false], ['minP', 0, 1, false],
    ['typicalP', 0, 1, false], ['seed', 0, 2 ** 32 - 1, true], ['repeatPenalty', 0, 100, false],
    ['presencePenalty', -100, 100, false], ['frequencyPenalty', -100, 100, false], ['penaltyLastN', -1, 2 ** 31 - 1, true],
    ['queueSize', 1, 1_000_000, true],
  ];
  for (const [name, min, max, integer] of nums) {
    const v = integer ? optInteger(o, name, min, max, caller) : optNumber(o, name, min, max, caller);
    if (v !== undefined) (out as Record<string, number>)[name] = v;
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
  const signal = optSignal(o, 'signal', caller);
  return { native: out, signal };
}

function commonPrefix(a: readonly number[], b: Int32Array): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * A session: one sequence of a context, with its own KV cache. A new prompt that starts with what the
 * session already holds only decodes the new part (see `usage.cachedTokens`).
 */
export class LlamaSession {
  #context: LlamaContext;
  #seq: number;
  #tokens: number[] = [];
  #running: Generation | null = null;
  #disposed = false;

  /** @internal use {@link LlamaContext.createSession} */
  constructor(context: LlamaContext, seq: number) {
    this.#context = context;
    this.#seq = seq;
  }

  /** The context this session belongs to. */
  get context(): LlamaContext {
    return this.#context;
  }

  /** The sequence id of this session in its context. */
  get sequence(): number {
    return this.#seq;
  }

  /** The tokens held in this session's KV cache. */
  get tokens(): Int32Array {
    return Int32Array.from(this.#tokens);
  }

  /** True once the session (or its context) has been disposed. */
  get disposed(): boolean {
    return this.#disposed || this.#context.disposed;
  }

  #check(caller: Function): void {
    if (this.disposed) {
      const err = new LlamaError('ERR_DISPOSED', 'The session has been disposed');
      Error.captureStackTrace(err, caller);
      throw err;
    }
  }

  /**
   * Generates text after `input` (text, or token ids). Returns at once; iterate the result for chunks or
   * await `.result`.
   *
   * @throws LlamaError `ERR_CONTEXT_FULL` when the prompt is longer than the context, `ERR_BUSY` while another
   * generation of this session runs, `ERR_INVALID_ARGUMENT` for bad options.
   */
  generate(input: string | Int32Array | readonly number[], options?: GenerateOptions): Generation {
    return this.#start(input, options, true, this.generate);
  }

  #start(input: string | Int32Array | readonly number[], options: GenerateOptions | undefined, stream: boolean, caller: Function): Generation {
    this.#check(caller);
    const ctx = this.#context;
    const model = ctx.model;
    const { native: nativeOptions, signal } = parseGenerateOptions(options, model.vocab.size, caller);
    if (!stream) nativeOptions.stream = false;
    let prompt: Int32Array;
    if (typeof input === 'string') prompt = model.tokenize(input);
    else if (input instanceof Int32Array) prompt = input;
    else if (Array.isArray(input) && input.every((t) => Number.isInteger(t))) prompt = Int32Array.from(input);
    else throw invalid('input', 'a string, an Int32Array or an array of token ids', input, caller);
    if (prompt.length === 0) throw invalid('input', 'a prompt of at least one token', input, caller);
    if (prompt.length > ctx.contextSize) {
      const err = new LlamaError(
        'ERR_CONTEXT_FULL',
        `The prompt has ${prompt.length} tokens, but a sequence of this context holds ${ctx.contextSize}: shorten it or create the context with a larger contextSize`,
      );
      Error.captureStackTrace(err, caller);
      throw err;
    }
    if (this.#running) {
      const err = new LlamaError('ERR_BUSY', 'This session is already generating: await its result, or abort it, first');
      Error.captureStackTrace(err, caller);
      throw err;
    }
    const keep = commonPrefix(this.#tokens, prompt);
    const handle = ctx.handle(caller);
    const promptCopy = Array.from(prompt);
    const gen = new Generation(
      (onNotify) => callNative(caller, () => handle.generate(this.#seq, prompt, keep, nativeOptions, onNotify)),
      (r) => this.#finished(gen, promptCopy, r),
      signal,
    );
    this.#running = gen;
    return gen;
  }

  #finished(gen: Generation, prompt: number[], r: NativeGenerationResult): GenerationResult | LlamaError {
    if (this.#running === gen) this.#running = null;
    const tokens = Array.from(r.tokens);
    if (r.stopReason === 'error') {
      this.#tokens = [];
      if (!this.disposed) this.#context.handle(this.generate).clearSequence(this.#seq);
      return new LlamaError('ERR_DECODE', `Generation failed: ${r.error ?? 'llama_decode failed'}`);
    }
    this.#tokens = prompt.concat(tokens).slice(0, r.sequenceTokens);
    return {
      text: r.text,
      tokens,
      stopReason: r.stopReason,
      usage: { promptTokens: r.promptTokens, cachedTokens: r.promptTokens - r.evaluatedTokens, completionTokens: tokens.length },
      timings: {
        promptMs: r.promptMs,
        generateMs: r.generateMs,
        timeToFirstTokenMs: r.timeToFirstTokenMs,
        tokensPerSecond: r.generateMs > 0 && tokens.length > 1 ? ((tokens.length - 1) * 1000) / r.generateMs : 0,
      },
    };
  }

  /** Same as `generate(input, options).result`. */
  complete(input: string | Int32Array | readonly number[], options?: GenerateOptions): Promise<GenerationResult> {
    try {
      return this.#start(input, options, false, this.complete).discardChunks().result;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Empties the session's KV cache. */
  reset(): void {
    this.#check(this.reset);
    if (this.#running) {
      const err = new LlamaError('ERR_BUSY', 'Cannot reset a session while it generates: abort the generation first');
      Error.captureStackTrace(err, this.reset);
      throw err;
    }
    this.#tokens = [];
    this.#context.handle(this.reset).clearSequence(this.#seq);
  }

  /** Ends a running generation (with `stopReason: 'abort'`) and frees the sequence for another session. */
  dispose(): void {
    if (this.#disposed) return;
    this.#running?.abort();
    this.#disposed = true;
    this.#tokens = [];
    this.#context.releaseSequence(this, this.#seq);
  }

  /** Same as {@link dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal the context was disposed */
  markDisposed(): void {
    this.#disposed = true;
  }
}
