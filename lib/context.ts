import { LlamaError, callNative, toLlamaError } from './errors.js';
import type { LlamaModel } from './model.js';
import type { NativeContext, NativeModel } from './native.js';
import { LlamaSession } from './session.js';
import { checkOptions, invalid, optBoolean, optInteger } from './validate.js';

/** Options of {@link LlamaModel.createContext}. */
export interface ContextOptions {
  /**
   * Tokens each sequence (session) can hold (default: the model's training context, at most 4096).
   * llama.cpp rounds it up to a multiple of 256.
   */
  contextSize?: number;
  /** Most tokens decoded in one step (default 512). Prompts longer than this are decoded in chunks. */
  batchSize?: number;
  /** Number of sequences: sessions that can exist at once, each with its own KV cache (default 1). */
  sequences?: number;
  /** CPU threads for generation (default: the machine's physical cores, as llama.cpp's tools choose). */
  threads?: number;
  /** CPU threads for prompt processing (default: `threads`). */
  threadsBatch?: number;
  /** Flash attention: `true`, `false`, or `'auto'` (the default: llama.cpp decides). */
  flashAttention?: boolean | 'auto';
  /** Also compute embeddings (default false). */
  embeddings?: boolean;
}

const contextKeys = ['contextSize', 'batchSize', 'sequences', 'threads', 'threadsBatch', 'flashAttention', 'embeddings'] as const;

/**
 * A context: KV cache and compute buffers for up to `sequences` sessions. One engine thread per context
 * decodes the next token of every running session in one batch.
 */
export class LlamaContext implements AsyncDisposable {
  #native: NativeContext | null;
  #disposing: Promise<void> | null = null;
  #free: number[];
  #sessions = new Set<LlamaSession>();
  /** The model this context runs. */
  readonly model: LlamaModel;
  /** Tokens each sequence can hold (after llama.cpp's rounding). */
  readonly contextSize: number;
  /** Number of sequences (sessions that can exist at once). */
  readonly sequences: number;
  /** Most tokens decoded in one step. */
  readonly batchSize: number;
  /** CPU threads used for generation. */
  readonly threads: number;

  private constructor(model: LlamaModel, nativeContext: NativeContext) {
    this.model = model;
    this.#native = nativeContext;
    const info = nativeContext.info();
    this.contextSize = info.contextSize;
    this.sequences = info.sequences;
    this.batchSize = info.batchSize;
    this.threads = info.threads;
    this.#free = Array.from({ length: info.sequences }, (_, i) => i);
  }

  /** @internal */
  static async create(model: LlamaModel, nativeModel: NativeModel, options: ContextOptions | undefined, caller: Function): Promise<LlamaContext> {
    const o = checkOptions('createContext', options, contextKeys, caller);
    const contextSize = optInteger(o, 'contextSize', 1, 1 << 24, caller) ?? Math.min(model.info.contextLength || 4096, 4096);
    const batchSize = optInteger(o, 'batchSize', 1, 1 << 20, caller);
    const sequences = optInteger(o, 'sequences', 1, 256, caller);
    const threads = optInteger(o, 'threads', 1, 1024, caller);
    const threadsBatch = optInteger(o, 'threadsBatch', 1, 1024, caller);
    const fa = o.flashAttention;
    if (fa !== undefined && fa !== 'auto' && typeof fa !== 'boolean') throw invalid('flashAttention', 'true, false or "auto"', fa, caller);
    const embeddings = optBoolean(o, 'embeddings', caller);
    const promise = callNative(caller, () =>
      nativeModel.createContext({
        contextSize,
        ...(batchSize !== undefined ? { batchSize } : {}),
        ...(sequences !== undefined ? { sequences } : {}),
        ...(threads !== undefined ? { threads } : {}),
        ...(threadsBatch !== undefined ? { threadsBatch } : {}),
        ...(fa !== undefined ? { flashAttention: fa as boolean | 'auto' } : {}),
        ...(embeddings !== undefined ? { embeddings } : {}),
      }),
    );
    try {
      return new LlamaContext(model, await promise);
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /** True once {@link dispose} has been called (or the model was disposed). */
  get disposed(): boolean {
    return this.#native === null;
  }

  /** Sequences not taken by a session. */
  get freeSequences(): number {
    return this.#free.length;
  }

  /** @internal */
  handle(caller: Function): NativeContext {
    if (this.#native === null) {
      const err = new LlamaError('ERR_DISPOSED', 'The context has been disposed');
      Error.captureStackTrace(err, caller);
      throw err;
    }
    return this.#native;
  }

  /**
   * Creates a session: one sequence of this context with its own KV cache.
   * @throws LlamaError `ERR_NO_SEQUENCE` when all `sequences` are taken by sessions that are not disposed.
   */
  createSession(): LlamaSession {
    this.handle(this.createSession);
    const seq = this.#free.shift();
    if (seq === undefined) {
      const err = new LlamaError(
        'ERR_NO_SEQUENCE',
        `All ${this.sequences} sequences of this context are in use: dispose a session, or create the context with a larger "sequences" option`,
      );
      Error.captureStackTrace(err, this.createSession);
      throw err;
    }
    const session = new LlamaSession(this, seq);
    this.#sessions.add(session);
    return session;
  }

  /** @internal called by a disposed session */
  releaseSequence(session: LlamaSession, seq: number): void {
    if (!this.#sessions.delete(session)) return;
    if (this.#native) {
      this.#native.clearSequence(seq);
      this.#free.push(seq);
      this.#free.sort((a, b) => a - b);
    }
  }

  /**
   * Frees the context. Running generations end with `stopReason: 'abort'`; its sessions are disposed.
   * Calling it again does nothing.
   */
  dispose(): Promise<void> {
    if (this.#disposing) return this.#disposing;
    const h = this.#native;
    this.#native = null;
    for (const s of this.#sessions) s.markDisposed();
    this.#sessions.clear();
    this.model.forgetContext(this);
    this.#disposing = h ? h.dispose() : Promise.resolve();
    return this.#disposing;
  }

  /** Same as {@link dispose}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}
