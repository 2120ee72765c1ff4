// LlamaContext: a llama_context with its engine thread, its resident sequences and the sessions over them.
import * as os from 'node:os';
import { LlamaError, callNative, toLlamaError, llamaError } from '../base/errors.js';
import type { LlamaModel } from './model.js';
import type { NativeContext, NativeContextInfo, NativeModel } from '../native/native.js';
import { LlamaChat, type ChatOptions } from './chat.js';
import { parseLora, type LoraSpec } from './lora.js';
import { LlamaSession, type SessionOptions } from './session.js';
import { Residency } from './residency.js';
import { attentionShape, kvBytesPerToken } from './memory.js';
import { getSystemInfo } from '../native/system.js';

/** Key and value heads of at most this many dimensions run without flash attention on the CPU (`flashAttention: 'auto'`). */
const SMALL_HEAD_DIMENSIONS = 8;
/** The most attention scores (bytes) that `flashAttention: 'auto'` lets a context keep by turning flash attention off. */
const PLAIN_ATTENTION_SCORES_BYTES = 256 * 2 ** 20;

/**
 * What `flashAttention: 'auto'` asks of llama.cpp: false for small heads on the CPU (see
 * {@link ContextOptions.flashAttention}), else `'auto'` (llama.cpp's choice). `microBatch`: tokens per
 * micro-batch, which the attention scores of plain attention grow with. Generation contexts of a model
 * decide alike, kvUnified or not, so that their sessions' states (whose V layout flash attention decides)
 * move between them. An embedding context keeps no session state and holds several sequences in one KV
 * stream, where llama.cpp's flash-attention kernel skips the cells a token may not see and plain attention
 * computes them all (a hostile review: embeddings of 8 texts at once took 2-2.5x the time without it, and
 * one context could not allocate its scores): it leaves the choice to llama.cpp.
 */
function autoFlashAttention(model: LlamaModel, contextSize: number, microBatch: number, embeddings: boolean): false | 'auto' {
  if (embeddings) return 'auto';
  if (model.placement.devices.length > 0) return 'auto';  // a GPU or an RPC server may run the attention
  const shape = attentionShape(model.metadata);
  if (shape === null || Math.max(shape.keyLength, shape.valueLength) > SMALL_HEAD_DIMENSIONS) return 'auto';
  if (shape.heads * contextSize * microBatch * 4 > PLAIN_ATTENTION_SCORES_BYTES) return 'auto';
  return false;
}

/** Default of {@link ContextOptions.cacheRamBytes}: 1 GiB. */
export const DEFAULT_CACHE_RAM_BYTES = 2 ** 30;

/** KV cache the default number of resident sequences may take together: 256 MiB. */
export const DEFAULT_SEQUENCES_KV_BYTES = 256 * 2 ** 20;

/**
 * Default of {@link ContextOptions.sequences}: as many as fit in 256 MiB of KV cache at `contextSize`
 * tokens each (F16, from the model's metadata), from 1 to 4. A 1B model at 4096 tokens gets 2; a 7B gets 1;
 * a tiny one 4.
 */
export function defaultSequences(model: LlamaModel, contextSize: number): number {
  const perToken = kvBytesPerToken(model.metadata);
  if (perToken <= 0) return 1;
  return Math.max(1, Math.min(4, Math.floor(DEFAULT_SEQUENCES_KV_BYTES / (perToken * contextSize))));
}
import { checkOptions, invalid, optBoolean, optInteger, optIntegerOr, optSignal, tokenIds } from '../base/validate.js';

/** Options of {@link LlamaModel.createContext}. */
export interface ContextOptions {
  /**
   * Tokens each sequence (session) can hold (default: the model's training context, at most 4096).
   * llama.cpp rounds it up to a multiple of 256.
   */
  contextSize?: number;
  /**
   * Most tokens decoded in one step (default 512; at least `sequences`, else `ERR_INVALID_ARGUMENT`).
   * Prompts longer than this are decoded in chunks.
   */
  batchSize?: number;
  /**
   * Sequences resident in the KV cache at once: how many sessions generate in parallel, each
   * with `contextSize` tokens of its own. Any number of sessions and chats can exist: a session that
   * needs a sequence while all are taken gets an idle session's (the least recently used, or one next to a
   * generating session's where host memory holds its cache), whose cache is saved to host memory (see
   * `cacheRamBytes`) and restored when it is used again. Work that finds every
   * sequence busy waits for one (higher `priority` first, then in order). Default: as many as fit in
   * 256 MiB of KV cache (F16) at `contextSize` tokens each, from 1 to 4 (a 1B model at 4096 tokens: 2).
   */
  sequences?: number;
  /**
   * One KV cache of `contextSize` cells that all sequences draw from (llama.cpp's `kv_unified`), instead of
   * `contextSize` cells for each (default `false`). A session alone can then use the whole context, and
   * sessions that hold few tokens leave the rest to the others, for the memory of one sequence. Idle
   * sessions give up their cells when a new prompt, a restore or a load needs them (their caches are saved
   * to host memory like any session's that gives up its sequence). A generation starts when its prompt
   * and reserved output (up to 256 tokens) fit beside the generating sessions' cells, else it waits; one
   * whose output outgrows its reserve and finds the cache full ends with `stopReason: 'contextFull'` (with
   * context shift, a session shifts only when it alone fills the context). Output equals that without it
   * up to floating-point rounding (where cells lie changes the order of attention sums). Default
   * `sequences` with it: 4.
   */
  kvUnified?: boolean;
  /**
   * Host memory for the KV caches of sessions that gave up their sequence, bytes (default 1 GiB; 0 keeps
   * none). Past it the least recently used caches are dropped, and those sessions decode their tokens
   * again on next use (llama-server's `--cache-ram` works the same way).
   */
  cacheRamBytes?: number;
  /**
   * CPU threads for generation: a count, or `'auto'` (the default): up to the machine's physical cores, as
   * llama.cpp's tools choose, with the count of each decode step chosen from measured step times. ggml's
   * threads wait for each other at every step, so when the host keeps cores busy (a UI, a server, a build),
   * a fixed count can run many times slower than fewer threads (on 2 cores with one busy, 2 threads ran 20x
   * slower than 1); `'auto'` drops threads while that lasts and tries more again when the host is quiet.
   * Steps of one token, of a few tokens (several sessions) and of prompt chunks adapt separately.
   * A number fixes the count, as in llama.cpp, and is needed for bit-for-bit reproducible output: with flash
   * attention over 512 or more cached tokens, llama.cpp's CPU kernels sum in an order that depends on the count.
   * A number above the logical CPUs this process may use (`os.availableParallelism()`) is capped at them:
   * more threads than CPUs only wait for each other (16 threads on 2 CPUs ran 4,000x slower). `ctx.threads`
   * says the count used.
   */
  threads?: number | 'auto';
  /** CPU threads for prompt processing and steps of several tokens: a count or `'auto'` (default: `threads`). */
  threadsBatch?: number | 'auto';
  /**
   * Flash attention: `true`, `false`, or `'auto'` (the default). `'auto'` turns it off for a model that runs
   * on the CPU alone and whose key and value heads have at most 8 dimensions (stories260k's shape), as long as
   * the attention scores it then keeps (heads × `contextSize` × micro-batch, 4 bytes each) come to at most
   * 256 MiB, in a generation context (not an embedding context; `kvUnified` or not, so that sessions move
   * between a model's contexts):
   * llama.cpp's CPU flash-attention kernel ran such heads half as fast as plain attention, prompts and
   * generation alike (`bench/results/2026-11-30-flash-attention.txt`). Otherwise llama.cpp decides (on where
   * the attention runs). A draft model's context decides for the draft's heads.
   * {@link LlamaContext.flashAttention} says what was asked of llama.cpp. A saved session loads only into a
   * context with the same flash attention as the one that saved it (`ERR_INVALID_STATE` otherwise).
   */
  flashAttention?: boolean | 'auto';
  /** An embedding context: {@link LlamaContext.embed} (and {@link LlamaContext.rank}) instead of generation. */
  embeddings?: boolean;
  /**
   * How token vectors become one vector per text in an embedding context (default: the model's own):
   * `'mean'`, `'cls'` (first token), `'last'`, `'none'` (every token's vector), or `'rank'` (a reranking
   * model's score, for {@link LlamaContext.rank}).
   */
  pooling?: 'mean' | 'cls' | 'last' | 'none' | 'rank';
  /**
   * Tokens of each waiting prompt decoded in one step while other sessions are generating (default 128,
   * at most `batchSize` in all; what a shorter prompt leaves of its share goes to the others, first come,
   * first served): a long new prompt is split so that it does not stall the running generations for long. With nothing generating, prompts are decoded 512 tokens each a step, up to
   * `batchSize`; prompts that came with the running ones (a burst the first step could not hold) are
   * decoded whole once their rest fits one step.
   */
  promptChunkSize?: number;
  /** LoRA adapters every request of this context uses unless it names its own. */
  lora?: readonly LoraSpec[];
  /**
   * Speculative decoding with a draft model: a smaller model with the same vocabulary proposes
   * `draftTokens` tokens, which this model checks in one batch. Greedy output is the same as without it
   * (up to near-ties, as for any batch shape); sampled output follows the same distribution and repeats
   * itself for a `seed`, but need not match plain decoding's token for token (see the README's
   * *Speculative decoding*). Disposing the draft model disposes this context too.
   */
  draftModel?: LlamaModel;
  /**
   * Speculative decoding by prompt lookup, without a draft model: the continuation of the latest earlier
   * occurrence of the last `n` tokens (this option's value, 2 to 16) is proposed as the draft. Pays off when
   * the output repeats the prompt (editing, extraction, code). Ignored with `draftModel`.
   */
  lookupNgram?: number;
  /** Most draft tokens per step (default 8 with a draft model, 10 with prompt lookup). */
  draftTokens?: number;
}

const contextKeys = ['contextSize', 'batchSize', 'sequences', 'kvUnified', 'cacheRamBytes', 'threads', 'threadsBatch', 'flashAttention', 'embeddings', 'promptChunkSize', 'pooling', 'lora', 'draftModel', 'lookupNgram', 'draftTokens'] as const;

/**
 * A context: KV cache and compute buffers for up to `sequences` sessions. One engine thread per context
 * decodes the next token of every running session in one batch.
 */
export class LlamaContext implements AsyncDisposable {
  #native: NativeContext | null;
  #disposing: Promise<void> | null = null;
  #residency: Residency;
  #sessions = new Set<LlamaSession>();
  #waiters: Array<{ grant: () => void; fail: (e: LlamaError) => void }> = [];
  /** The model this context runs. */
  readonly model: LlamaModel;
  /**
   * Tokens each sequence can hold (after llama.cpp's rounding). With `kvUnified`, the cells of the one cache
   * that all sequences share: what a session alone can hold.
   */
  readonly contextSize: number;
  /** Whether all sequences share one KV cache (`kvUnified: true`). */
  readonly kvUnified: boolean;
  /** Number of sequences (sessions that can exist at once). */
  readonly sequences: number;
  /** Most tokens decoded in one step. */
  readonly batchSize: number;
  /** Most CPU threads a generation step uses (the count itself unless `threads: 'auto'`). */
  readonly threads: number;
  /** Whether the thread counts adapt to the machine's load (`threads: 'auto'`, the default). */
  readonly adaptiveThreads: boolean;
  /**
   * Flash attention as asked of llama.cpp: `true`, `false`, or `'auto'` (llama.cpp enables it where the
   * device supports it). The option's `'auto'` becomes `false` for small heads on the CPU
   * ({@link ContextOptions.flashAttention}).
   */
  readonly flashAttention: boolean | 'auto';
  /** Whether the KV cache can move tokens, which context shift needs (true for most models). */
  readonly canShift: boolean;
  /** The model uses sliding-window attention (sessions then do not share cache cells). */
  readonly slidingWindow: boolean;
  /** Whether this is an embedding context (`embeddings: true`). */
  readonly embeddings: boolean;
  /** The pooling of an embedding context. */
  readonly pooling: 'none' | 'mean' | 'cls' | 'last' | 'rank';

  #info: NativeContextInfo;

  /** @internal identifies the context's default LoRA set */
  readonly loraKey: string;

  private constructor(model: LlamaModel, nativeContext: NativeContext, embeddings: boolean, loraKey: string, cacheRamBytes: number, adaptive: boolean, kvUnified: boolean, flashAttention: boolean | 'auto') {
    this.loraKey = loraKey;
    this.flashAttention = flashAttention;
    this.model = model;
    this.#native = nativeContext;
    const info = nativeContext.info();
    this.contextSize = info.contextSize;
    this.kvUnified = kvUnified;
    this.sequences = info.sequences;
    this.batchSize = info.batchSize;
    this.threads = info.threads;
    this.adaptiveThreads = adaptive;
    this.canShift = info.canShift;
    this.slidingWindow = info.slidingWindow;
    this.#info = info;
    this.pooling = info.pooling;
    this.embeddings = embeddings;
    this.#residency = new Residency(info.sequences, cacheRamBytes, () => this.#native, this.kvUnified ? info.contextSize : null, kvBytesPerToken(model.metadata));
  }

  /** @internal */
  static async create(model: LlamaModel, nativeModel: NativeModel, options: ContextOptions | undefined, caller: Function): Promise<LlamaContext> {
    const o = checkOptions('createContext', options, contextKeys, caller);
    const contextSize = optInteger(o, 'contextSize', 1, 1 << 24, caller) ?? Math.min(model.info.contextLength || 4096, 4096);
    const batchSize = optInteger(o, 'batchSize', 1, 1 << 20, caller);
    const kvUnified = optBoolean(o, 'kvUnified', caller) ?? false;
    if (kvUnified && o.embeddings === true) throw invalid('kvUnified', 'to be left out for an embedding context (it always shares one cache)', kvUnified, caller);
    const sequences = optInteger(o, 'sequences', 1, 256, caller) ?? (kvUnified ? 4 : defaultSequences(model, contextSize));
    // A step can hold a token of every sequence: llama.cpp asserts on a batch smaller than the sequences
    // (GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max); found by a hostile review).
    if (batchSize !== undefined && batchSize < sequences) throw invalid('batchSize', `an integer of at least sequences (${sequences})`, batchSize, caller);
    const cacheRamBytes = optInteger(o, 'cacheRamBytes', 0, Number.MAX_SAFE_INTEGER, caller) ?? DEFAULT_CACHE_RAM_BYTES;
    const threadsOpt = optIntegerOr(o, 'threads', 1, 512, ['auto'], caller) ?? 'auto';
    const threadsBatchOpt = optIntegerOr(o, 'threadsBatch', 1, 512, ['auto'], caller) ?? threadsOpt;
    const physical = getSystemInfo().defaultThreads;
    // More threads than logical CPUs only wait for each other at ggml's barriers (16 threads on 2 CPUs: 35 s
    // for 4 tokens of stories260k, against 8 ms; found by a hostile review): a count is capped at them.
    const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : Math.max(1, os.cpus().length);
    const threads = threadsOpt === 'auto' ? physical : Math.min(threadsOpt, cpus);
    const threadsBatch = threadsBatchOpt === 'auto' ? physical : Math.min(threadsBatchOpt, cpus);
    const faOpt = o.flashAttention;
    if (faOpt !== undefined && faOpt !== 'auto' && typeof faOpt !== 'boolean') throw invalid('flashAttention', 'true, false or "auto"', faOpt, caller);
    const embeddings = optBoolean(o, 'embeddings', caller);
    const microBatch = Math.min(batchSize ?? 512, 512);
    const fa = typeof faOpt === 'boolean' ? faOpt : autoFlashAttention(model, contextSize, microBatch, embeddings === true);
    const promptChunkSize = optInteger(o, 'promptChunkSize', 1, 1 << 20, caller);
    const pooling = o.pooling;
    if (pooling !== undefined && !['mean', 'cls', 'last', 'none', 'rank'].includes(pooling as string)) {
      throw invalid('pooling', '"mean", "cls", "last", "none" or "rank"', pooling, caller);
    }
    if (pooling !== undefined && embeddings !== true) throw invalid('pooling', 'to be given with embeddings: true', pooling, caller);
    const lora = o.lora === undefined ? undefined : parseLora(o.lora, caller);
    const lookupNgram = optInteger(o, 'lookupNgram', 2, 16, caller);
    const draftTokens = optInteger(o, 'draftTokens', 1, 64, caller);
    let draftModel: NativeModel | undefined;
    let draftFa: boolean | 'auto' | undefined;
    if (o.draftModel !== undefined) {
      const dm = o.draftModel as LlamaModel;
      if (dm === null || typeof dm !== 'object' || typeof (dm as { nativeHandle?: unknown }).nativeHandle !== 'function') {
        throw invalid('draftModel', 'a loaded LlamaModel', o.draftModel, caller);
      }
      draftModel = dm.nativeHandle(caller);
      // The draft model's own heads decide its context's 'auto'.
      if (typeof faOpt !== 'boolean') draftFa = autoFlashAttention(dm, contextSize, microBatch, false);
    }
    const promise = callNative(caller, () =>
      nativeModel.createContext({
        contextSize,
        ...(batchSize !== undefined ? { batchSize } : {}),
        sequences,
        ...(kvUnified ? { kvUnified } : {}),
        threads,
        threadsBatch,
        adaptiveThreads: threadsOpt === 'auto',
        adaptiveThreadsBatch: threadsBatchOpt === 'auto',
        flashAttention: fa,
        ...(embeddings !== undefined ? { embeddings } : {}),
        ...(promptChunkSize !== undefined ? { promptChunkSize } : {}),
        ...(pooling !== undefined ? { pooling: pooling as NonNullable<ContextOptions['pooling']> } : {}),
        ...(lora ? { lora: lora.pairs } : {}),
        ...(draftModel ? { draftModel } : {}),
        ...(draftFa !== undefined ? { draftFlashAttention: draftFa } : {}),
        ...(lookupNgram !== undefined ? { lookupNgram } : {}),
        ...(draftTokens !== undefined ? { draftTokens } : {}),
      }),
    );
    try {
      return new LlamaContext(model, await promise, embeddings === true, lora?.key ?? '', cacheRamBytes, threadsOpt === 'auto', kvUnified, fa);
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /**
   * The thread counts the last decode steps used: `generation` for steps of one token, `batch` for larger
   * ones (prompts, several sessions). With `threads: 'auto'` they move between 1 and {@link threads}.
   */
  get threadsInUse(): { generation: number; batch: number } {
    const info = this.handle(threadsInUseGetter).info();
    return { generation: info.threadsInUse, batch: info.threadsBatchInUse };
  }

  /** True once {@link dispose} has been called (or the model was disposed). */
  get disposed(): boolean {
    return this.#native === null;
  }

  /** Resident sequences not held by a session now. */
  get freeSequences(): number {
    return this.#residency.free;
  }

  /** Bytes of sessions' KV caches kept in host memory now (at most `cacheRamBytes`). */
  get savedCacheBytes(): number {
    return this.#residency.savedBytes;
  }

  /** @internal the sessions' sequences */
  get residency(): Residency {
    return this.#residency;
  }

  /**
   * @internal A prompt on its way to this context (a request being parsed, a chat rendered and tokenized):
   * an idle engine waits for it (up to 50 ms), to decode it in one step with others that arrive together.
   * Call the function returned once its generation is queued, or it failed (more calls do nothing).
   */
  expectPrompt(): () => void {
    const h = this.#native;
    if (h === null) return () => {};
    h.expectPrompts(1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (this.#native === h) h.expectPrompts(-1);
    };
  }

  /** @internal */
  handle(caller: Function): NativeContext {
    if (this.#native === null) {
      throw llamaError('ERR_DISPOSED', 'The context has been disposed', caller);
    }
    return this.#native;
  }

  /**
   * Creates a session: a conversation's tokens and KV cache in this context. It never fails for lack of a
   * sequence: the session gets one when it needs one (see {@link ContextOptions.sequences}).
   */
  createSession(options?: SessionOptions): LlamaSession {
    this.handle(this.createSession);
    return this.#newSession(options, this.createSession);
  }

  /**
   * Creates a session once fewer sessions than `sequences` exist (first come, first served): for callers
   * that bound concurrency themselves, one session per resident sequence. Rejects with `ERR_ABORTED` when
   * `signal` aborts, and `ERR_DISPOSED` when the context is disposed first.
   */
  async acquireSession(options?: SessionOptions & { signal?: AbortSignal }): Promise<LlamaSession> {
    const { signal, ...rest } = options ?? {};
    this.handle(this.acquireSession);
    optSignal({ signal }, 'signal', this.acquireSession);
    checkSessionOptions(rest, this.acquireSession);
    if (this.#sessions.size >= this.sequences || this.#waiters.length > 0) {
      if (signal?.aborted) throw new LlamaError('ERR_ABORTED', 'Waiting for a session was aborted');
      // The wait keeps the process alive, as a pending socket does: a script that awaits it at top level
      // otherwise ended with code 13 ("unsettled top-level await") before a session was disposed elsewhere.
      const alive = setInterval(() => {}, 2 ** 30);
      try {
        await new Promise<void>((resolve, reject) => {
          const waiter = {
            grant: () => {
              signal?.removeEventListener('abort', onAbort);
              resolve();
            },
            fail: (e: LlamaError) => {
              signal?.removeEventListener('abort', onAbort);
              reject(e);
            },
          };
          const onAbort = () => {
            this.#waiters = this.#waiters.filter((w) => w !== waiter);
            reject(new LlamaError('ERR_ABORTED', 'Waiting for a session was aborted'));
          };
          signal?.addEventListener('abort', onAbort, { once: true });
          this.#waiters.push(waiter);
        });
      } finally {
        clearInterval(alive);
      }
      if (this.disposed) throw new LlamaError('ERR_DISPOSED', 'The context was disposed while waiting for a session');
    }
    return this.#newSession(rest, this.acquireSession);
  }

  /**
   * Creates a chat: a session that keeps a conversation and renders it with the model's chat template.
   * Context shift defaults to `'auto'`, keeping the system prompt.
   * @throws LlamaError `ERR_INVALID_TEMPLATE` when the template does not parse.
   */
  createChat(options?: ChatOptions): LlamaChat {
    return LlamaChat.create(this, options, this.createChat);
  }

  #newSession(options: SessionOptions | undefined, caller: Function): LlamaSession {
    if (this.embeddings) {
      throw new LlamaError('ERR_INVALID_STATE', 'An embedding context does not generate: create another context (without embeddings) for sessions');
    }
    const o = checkSessionOptions(options, caller);
    const session = new LlamaSession(this, o.contextShift, o.sharePrefix);
    this.#sessions.add(session);
    try {
      if (o.prefix !== undefined) session.startFrom(o.prefix, caller);
    } catch (e) {
      session.dispose();
      throw e;
    }
    return session;
  }

  #embedding(caller: Function): NativeContext {
    const h = this.handle(caller);
    if (!this.embeddings) {
      throw llamaError('ERR_INVALID_STATE', 'This context computes no embeddings: create it with embeddings: true', caller);
    }
    return h;
  }

  async #embedTokens(inputs: Int32Array[], normalize: boolean, caller: Function): Promise<Float32Array[]> {
    const h = this.#embedding(caller);
    // An embedding context has no sessions: its sequences are all free.
    const promise = callNative(caller, () => h.embed(inputs, this.#residency.freeList(), normalize));
    try {
      return await promise;
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /**
   * Embeds texts (or token arrays): one vector per input, of the model's embedding size
   * (`model.info.embeddingLength`), L2-normalized unless `normalize: false`. With `pooling: 'none'`, each
   * input's result holds every token's vector, one after another. Many inputs are decoded together (as many
   * as the context has free sequences and fit in a batch); each vector is the same as when embedded alone.
   * @throws LlamaError `ERR_INVALID_STATE` for a context without `embeddings: true`, `ERR_CONTEXT_FULL` for an
   * input longer than the context's `batchSize`.
   */
  async embed(texts: string | Int32Array | ReadonlyArray<string | Int32Array | readonly number[]>, options?: { normalize?: boolean }): Promise<Float32Array[]> {
    const o = checkOptions('embed', options, ['normalize'], this.embed);
    const normalize = optBoolean(o, 'normalize', this.embed) ?? true;
    this.#embedding(this.embed);
    const list = typeof texts === 'string' || texts instanceof Int32Array ? [texts] : texts;
    if (!Array.isArray(list)) throw invalid('texts', 'a string, an Int32Array, or an array of them', texts, this.embed);
    const inputs = list.map((t) => {
      if (typeof t === 'string') return this.model.tokenize(t);
      if (t instanceof Int32Array || Array.isArray(t)) return tokenIds('texts', t, this.model.vocab.size, this.embed);
      throw invalid('texts', 'strings, Int32Arrays or arrays of token ids', t, this.embed);
    });
    if (inputs.length === 0) return [];
    return this.#embedTokens(inputs, normalize, this.embed);
  }

  /**
   * Scores how relevant each document is to the query, with a reranking model (a context created with
   * `embeddings: true, pooling: 'rank'`): one number per document, higher is more relevant. Query and
   * document are joined with the model's rerank template when it has one, as llama-server does.
   * @throws LlamaError `ERR_INVALID_STATE` when the context or the model cannot rank.
   */
  async rank(query: string, documents: readonly string[]): Promise<number[]> {
    if (typeof query !== 'string') throw invalid('query', 'a string', query, this.rank);
    if (!Array.isArray(documents) || !documents.every((d) => typeof d === 'string')) throw invalid('documents', 'an array of strings', documents, this.rank);
    this.#embedding(this.rank);
    if (this.pooling !== 'rank' || !this.model.info.canRank) {
      throw llamaError(
        'ERR_INVALID_STATE',
        !this.model.info.canRank
          ? `${this.model.info.name} has no classification head, so it cannot rank: use a reranking model`
          : "This context does not rank: create it with embeddings: true, pooling: 'rank'",
        this.rank,
      );
    }
    const inputs = documents.map((d) => this.#rerankTokens(query, d));
    const scores = await this.#embedTokens(inputs, false, this.rank);
    return scores.map((s) => s[0]);
  }

  #rerankTokens(query: string, doc: string): Int32Array {
    const m = this.model;
    const template = m.metadata['tokenizer.chat_template.rerank'];
    if (typeof template === 'string') {
      return m.tokenize(template.replaceAll('{query}', query).replaceAll('{document}', doc), { special: true, addBos: false });
    }
    const flag = (k: string) => m.metadata[`tokenizer.ggml.${k}`] === true;
    const sep = typeof m.metadata['tokenizer.ggml.seperator_token_id'] === 'number' ? (m.metadata['tokenizer.ggml.seperator_token_id'] as number) : null;
    const eos = m.vocab.eos ?? sep;
    const out: number[] = [];
    if (flag('add_bos_token') && m.vocab.bos !== null) out.push(m.vocab.bos);
    out.push(...m.tokenize(query, { addBos: false }));
    if (flag('add_eos_token') && eos !== null) out.push(eos);
    if (flag('add_sep_token') && sep !== null) out.push(sep);
    out.push(...m.tokenize(doc, { addBos: false }));
    if (flag('add_eos_token') && eos !== null) out.push(eos);
    return Int32Array.from(out);
  }

  /** @internal throws when the context can never lend `n` sequences besides a session's own */
  checkBorrow(n: number, caller: Function): void {
    this.handle(caller);
    if (this.sequences - 1 < n) {
      throw llamaError(
        'ERR_NO_SEQUENCE',
        `This needs ${n} sequences besides the session's, but the context has ${this.sequences} in all: create it with at least ${n + 1} "sequences"`,
        caller,
      );
    }
  }

  /**
   * @internal the session's sequence and `n` more for a while (beam search), from free ones and idle
   * sessions, all at once; waits until they can be had. Resolves null once `stopped()` (the search was
   * aborted; checked at each kick of the residency); rejects when the session or context is disposed.
   */
  async borrowSequences(n: number, session: LlamaSession, stopped: () => boolean): Promise<{ seq: number; extra: number[] } | null> {
    for (;;) {
      this.handle(this.borrowSequences);
      if (stopped()) return null;  // aborted while it waited
      if (session.disposed) throw new LlamaError('ERR_DISPOSED', 'The session was disposed while its search waited for sequences');
      const got = this.#residency.acquireWith(session, n);
      if (got) return got;
      await this.#residency.changed();
    }
  }

  /** @internal */
  returnSequences(seqs: number[]): void {
    if (!this.#native) return;
    this.#residency.giveBack(seqs);
  }

  /** @internal resident sessions whose cached tokens another session may copy */
  *sessionsForSharing(): Iterable<LlamaSession> {
    for (const s of this.#sessions) if (this.#residency.sequenceOf(s) !== undefined) yield s;
  }

  /** @internal called by a disposed session */
  releaseSequence(session: LlamaSession): void {
    if (!this.#sessions.delete(session)) return;
    if (this.#native) this.#residency.release(session);
    if (this.#sessions.size < this.sequences) this.#waiters.shift()?.grant();
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
    for (const w of this.#waiters.splice(0)) w.fail(new LlamaError('ERR_DISPOSED', 'The context was disposed while waiting for a session'));
    this.#residency.close();
    this.model.forgetContext(this);
    this.#disposing = h ? h.dispose() : Promise.resolve();
    return this.#disposing;
  }

  /** Same as {@link dispose}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/** The getter whose caller an error from `threadsInUse` names (looked up once). */
const threadsInUseGetter = Object.getOwnPropertyDescriptor(LlamaContext.prototype, 'threadsInUse')!.get!;

const sessionKeys = ['contextShift', 'prefix', 'sharePrefix'] as const;

function checkSessionOptions(
  options: SessionOptions | undefined,
  caller: Function,
): { contextShift: 'auto' | false | { keep: number }; sharePrefix: boolean; prefix?: LlamaSession } {
  const o = checkOptions('createSession', options, sessionKeys, caller);
  const cs = o.contextShift;
  let contextShift: 'auto' | false | { keep: number } = false;
  if (cs === 'auto' || cs === false || cs === undefined) contextShift = cs ?? false;
  else if (
    typeof cs === 'object' && cs !== null && Object.keys(cs).every((k) => k === 'keep') &&
    Number.isInteger((cs as { keep?: unknown }).keep) && (cs as { keep: number }).keep >= 0
  ) {
    contextShift = { keep: (cs as { keep: number }).keep };
  } else {
    throw invalid('contextShift', '"auto", false, or { keep: a non-negative integer }', cs, caller);
  }
  if (o.prefix !== undefined && !(o.prefix instanceof LlamaSession)) throw invalid('prefix', 'a LlamaSession', o.prefix, caller);
  const sharePrefix = optBoolean(o, 'sharePrefix', caller) ?? true;
  return { contextShift, sharePrefix, ...(o.prefix !== undefined ? { prefix: o.prefix as LlamaSession } : {}) };
}
