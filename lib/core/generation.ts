// Generation: a running generation as an async iterator of chunks and a promise of its result.
import { LlamaError } from '../base/errors.js';
import type { NativeGeneration, NativeGenerationResult, NativeTake } from '../native/native.js';

/** A generated token's log-probability under the model, with the most likely alternatives. */
export interface TokenLogprob {
  token: number;
  /** The token's text (special tokens render as nothing). */
  text: string;
  /** Natural log of the token's probability (softmax of the model's raw logits, before sampling). */
  logprob: number;
  /** The `logprobs` most likely tokens at this position, most likely first. */
  top: Array<{ token: number; text: string; logprob: number }>;
}

/** One hypothesis of a beam search. */
export interface BeamResult {
  text: string;
  tokens: number[];
  /** Sum of the tokens' log-probabilities (the end token's included when it `finished`). */
  logprob: number;
  /** `logprob / length^lengthPenalty`: what beams are ranked by. */
  score: number;
  /** It ended with an end-of-generation token (otherwise it reached `maxTokens`). */
  finished: boolean;
}

/** One piece of streamed output: everything generated since the consumer last read. */
export interface GenerationChunk {
  /** New text: whole UTF-8 characters only, never any part of a stop string. */
  text: string;
  /** The tokens that produced it (a token whose text is held back is reported with that text). */
  tokens: number[];
  /** With the `logprobs` option: one entry per token of `tokens`. */
  logprobs?: TokenLogprob[];
}

/** Why a generation ended. */
export type StopReason = 'eog' | 'stop' | 'maxTokens' | 'abort' | 'contextFull';

/** The outcome of a generation. */
export interface GenerationResult {
  /** All generated text (stop string excluded). */
  text: string;
  /** Every generated token (the end-of-generation token excluded). */
  tokens: number[];
  /**
   * `eog`: the model ended its output; `stop`: a stop string appeared; `maxTokens`: the limit was reached;
   * `abort`: aborted by a signal, `break`, or dispose; `contextFull`: the sequence ran out of context.
   */
  stopReason: StopReason;
  usage: {
    /** Tokens of the prompt. */
    promptTokens: number;
    /** Prompt tokens reused from the session's KV cache instead of being decoded again. */
    cachedTokens: number;
    /** Generated tokens. */
    completionTokens: number;
  };
  timings: {
    /** Time spent decoding the prompt. */
    promptMs: number;
    /** Time from the first generated token to the last. */
    generateMs: number;
    /** Time from the `generate()` call to the first generated token. */
    timeToFirstTokenMs: number;
    /** Decoding speed: tokens generated after the first, per second of `generateMs` (0 for a single token). */
    tokensPerSecond: number;
  };
  /** With `jsonSchema`: the parsed output. */
  json?: unknown;
  /** With the `logprobs` option: one entry per generated token. */
  logprobs?: TokenLogprob[];
  /** With `beams`: every beam found, best first (the result's text and tokens are the first one's). */
  beams?: BeamResult[];
  /** With speculative decoding: draft tokens proposed, and how many of them the model kept. */
  speculative?: { drafted: number; accepted: number; acceptanceRate: number };
}

/**
 * A running generation: an async iterable of {@link GenerationChunk}s, and a {@link result} promise.
 * Iterating applies backpressure (the engine pauses this generation while its output queue is full);
 * `break` out of the loop ends the generation promptly.
 */
export class Generation<R extends GenerationResult = GenerationResult> implements AsyncIterable<GenerationChunk> {
  #native: NativeGeneration;
  #buffer: GenerationChunk[] = [];
  #final: R | LlamaError | null = null;
  #waiter: (() => void) | null = null;
  #drain = false;
  #keepChunks = true;
  #result: Promise<R> | null = null;
  #resolve: ((r: R) => void) | null = null;
  #reject: ((e: LlamaError) => void) | null = null;
  #finish: (r: NativeGenerationResult) => R | LlamaError | Promise<R | LlamaError>;
  /** The native generation ended and its result is being finished (checked against a schema). */
  #finishing = false;

  /** @internal use {@link LlamaSession.generate} */
  constructor(
    start: (onNotify: (done: boolean) => void) => NativeGeneration,
    finish: (r: NativeGenerationResult) => R | LlamaError | Promise<R | LlamaError>,
    signal?: AbortSignal,
  ) {
    this.#finish = finish;
    this.#native = start((done) => {
      if (done || this.#drain || this.#waiter) this.#pull();
    });
    if (signal) {
      if (signal.aborted) this.abort();
      else {
        const onAbort = () => this.abort();
        signal.addEventListener('abort', onAbort, { once: true });
        this.#cleanup = () => signal.removeEventListener('abort', onAbort);
      }
    }
  }

  #cleanup: () => void = () => {};

  #pull(): void {
    if (this.#final || this.#finishing) return;
    const t = this.#native.take();
    if (this.#keepChunks) {
      for (const c of t.chunks) {
        this.#buffer.push({ text: c.text, tokens: Array.from(c.tokens), ...(c.logprobs ? { logprobs: c.logprobs } : {}) });
      }
    }
    if (t.done && t.result) {
      const f = this.#finish(t.result);
      if (f instanceof Promise) {
        this.#finishing = true;
        const finished = (v: R | LlamaError) => {
          this.#finishing = false;
          this.#end(v);
        };
        f.then(finished, (e: unknown) => finished(e instanceof LlamaError ? e : new LlamaError('ERR_NATIVE', String(e))));
        return this.#wake();
      }
      return this.#end(f);
    }
    this.#wake();
  }

  /** The final result is known: settles `result` and wakes the iterator. */
  #end(f: R | LlamaError): void {
    this.#final = f;
    this.#cleanup();
    if (this.#resolve) this.#settle();
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  #settle(): void {
    const f = this.#final;
    if (f instanceof LlamaError) this.#reject!(f);
    else if (f) this.#resolve!(f);
  }

  /**
   * The final result. It resolves whether or not anyone iterates; reading it makes the generation run to
   * the end without waiting for a consumer.
   */
  get result(): Promise<R> {
    if (!this.#result) {
      this.#drain = true;
      this.#result = new Promise<R>((resolve, reject) => {
        this.#resolve = resolve;
        this.#reject = reject;
      });
      if (this.#final) this.#settle();
      else this.#pull();
    }
    return this.#result;
  }

  /** @internal ends a generation that never started (its launch failed) with an error. */
  fail(e: LlamaError): void {
    if (this.#final || this.#finishing) return;
    this.#end(e);
  }

  /** @internal: for complete(), which needs no chunks. */
  discardChunks(): this {
    this.#keepChunks = false;
    this.#buffer = [];
    return this;
  }

  /** Ends the generation; the stream ends normally and `result.stopReason` is `'abort'`. */
  abort(): void {
    if (this.#final) return;
    this.#aborting = true;
    this.#native.abort();
    this.#drain = true;
  }

  #aborting = false;

  /** @internal Aborted (by abort(), `break` or its signal) and not ended yet: the engine is finishing it. */
  get ending(): boolean {
    return this.#aborting && this.#final === null;
  }

  [Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    return {
      next: async (): Promise<IteratorResult<GenerationChunk>> => {
        for (;;) {
          const chunk = this.#buffer.shift();
          if (chunk) return { value: chunk, done: false };
          if (this.#final) {
            if (this.#final instanceof LlamaError) throw this.#final;
            return { value: undefined, done: true };
          }
          this.#pull();
          if (this.#buffer.length || this.#final) continue;
          await new Promise<void>((resolve) => (this.#waiter = resolve));
        }
      },
      return: async (): Promise<IteratorResult<GenerationChunk>> => {
        this.abort();
        this.#buffer = [];
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * @internal A native generation that starts later, when its session gets a sequence (lib/core/residency.ts).
 * Until then it has nothing to take; aborted meanwhile, it ends as aborted without starting.
 */
export class DeferredNative implements NativeGeneration {
  #real: NativeGeneration | null = null;
  #ended: NativeTake | null = null;
  #onNotify: ((done: boolean) => void) | null = null;
  /** Aborts the wait for a sequence. */
  readonly controller = new AbortController();

  bind(onNotify: (done: boolean) => void): this {
    this.#onNotify = onNotify;
    return this;
  }

  get aborted(): boolean {
    return this.controller.signal.aborted;
  }

  /** Passes the started generation's notifications on. */
  readonly notify = (done: boolean): void => {
    this.#onNotify?.(done);
  };

  attach(real: NativeGeneration): void {
    this.#real = real;
  }

  /** Ends it without starting, with this result. */
  end(result: NativeGenerationResult): void {
    this.#ended = { chunks: [], done: true, result };
    this.#onNotify?.(true);
  }

  take(): NativeTake {
    if (this.#real) return this.#real.take();
    return this.#ended ?? { chunks: [], done: false };
  }

  abort(): void {
    if (this.#real) this.#real.abort();
    else this.controller.abort();
  }
}
