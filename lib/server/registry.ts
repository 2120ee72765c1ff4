// The models the server serves, and the sessions of each: loading, reloading under an alias (running
// requests finish on the model they started with), freeing, and handing a request a session (the one
// that served its conversation, when there is one) while at most `parallel` generate at once.
import type { LlamaContext } from '../core/context.js';
import { loadModel, type LlamaModel } from '../core/model.js';
import type { LlamaSession } from '../core/session.js';
import { ApiError } from './openai.js';
import type { ResolvedServerOptions } from './options.js';

/** One model under one alias, with its context and sessions. @internal */
export interface Entry {
  alias: string;
  path: string;
  /** 1 for the first load, one more for each reload. */
  version: number;
  /** Replaced by a reload: it finishes its running requests, then frees its model. */
  retired?: boolean;
  /** Its load, settled or not. */
  loading?: Promise<void>;
  /** Embedding requests running on it. */
  embedding: number;
  state: 'loading' | 'ready' | 'error';
  error?: string;
  created: number;
  model?: LlamaModel;
  ctx?: LlamaContext;
  embedCtx?: Promise<LlamaContext>;
  /** Sessions not serving a request, least recently used first. */
  idle: LlamaSession[];
  sessions: LlamaSession[];
  /** Requests being served. */
  active: number;
  keys: Map<LlamaSession, string>;
  waiters: Array<{ key: string | null; grant: (s: LlamaSession) => void; fail: (e: Error) => void }>;
}

export interface ReloadResult {
  model: string;
  path: string;
  version: number;
  fingerprint: string;
}

const shuttingDown = () => new ApiError(503, 'The server is shutting down', 'server_error');

/** @internal */
export class ModelRegistry {
  /** The entry each alias serves. */
  readonly entries = new Map<string, Entry>();
  /** Every entry that holds a model: the one each alias serves, and replaced ones finishing their requests. */
  readonly live = new Set<Entry>();
  /** Resolves when every first load is done (rejects if one failed). */
  readonly ready: Promise<void>;
  closing = false;
  readonly #options: ResolvedServerOptions;
  readonly #preloaded = new Map<string, LlamaModel | Promise<LlamaModel>>();
  readonly #default: string;
  /** The tail of each alias's queue of reloads. */
  readonly #reloads = new Map<string, Promise<unknown>>();

  constructor(options: ResolvedServerOptions) {
    this.#options = options;
    for (const m of options.models) {
      this.entries.set(m.alias, this.#newEntry(m.alias, m.path, 1));
      if (m.model) this.#preloaded.set(m.alias, m.model);
    }
    this.#default = options.models[0].alias;
    const loading = [...this.entries.values()].map((e) => (e.loading = this.#loadInto(e)));
    this.ready = Promise.all(loading).then(() => undefined);
    this.ready.catch(() => {});
  }

  #newEntry(alias: string, path: string, version: number): Entry {
    return { alias, path, version, state: 'loading', created: Math.floor(Date.now() / 1000), idle: [], sessions: [], active: 0, keys: new Map(), waiters: [], embedding: 0 };
  }

  async #loadInto(e: Entry): Promise<void> {
    const o = this.#options;
    try {
      // A model given to startServer is served once; a reload loads the file.
      const given = this.#preloaded.get(e.alias);
      this.#preloaded.delete(e.alias);
      e.model = given
        ? await given
        : await loadModel(e.path, { gpuLayers: o.gpuLayers, ...(o.gpu !== undefined ? { gpu: o.gpu } : {}), ...(o.rpcServers ? { rpcServers: o.rpcServers } : {}) });
      this.live.add(e);
      const contextSize = o.contextSize ?? Math.min(e.model.info.contextLength || 4096, 4096);
      e.ctx = await e.model.createContext({ contextSize, sequences: o.parallel, batchSize: o.batchSize, ...(o.kvUnified ? { kvUnified: true } : {}), threads: o.threads, ...(o.cacheRamBytes !== undefined ? { cacheRamBytes: o.cacheRamBytes } : {}) });
      e.state = 'ready';
    } catch (err) {
      e.state = 'error';
      e.error = (err as Error).message;
      this.live.delete(e);
      await e.model?.dispose().catch(() => {});
      e.model = undefined;
      e.ctx = undefined;
      e.idle = [];
      e.sessions = [];
      throw err;
    }
  }

  /** The ready entry a request names (or the first model's). */
  entryFor(model: string | undefined): Entry {
    const e = this.entries.get(model ?? this.#default);
    if (!e) {
      throw new ApiError(404, `The model '${model}' does not exist: this server serves ${[...this.entries.keys()].join(', ')}`, 'invalid_request_error', 'model', 'model_not_found');
    }
    this.checkAlive(e);
    if (e.state === 'loading') throw new ApiError(503, `The model '${e.alias}' is still loading`, 'server_error', null, 'model_loading');
    if (e.state === 'error') throw new ApiError(500, `The model '${e.alias}' failed to load: ${e.error}`, 'server_error', null, 'model_error');
    return e;
  }

  /** A model given to startServer that its owner disposed: the entry fails from then on. */
  checkAlive(e: Entry): void {
    if (e.state === 'ready' && (!e.ctx || e.ctx.disposed || e.model?.disposed)) {
      e.state = 'error';
      e.error = 'the model was disposed while the server served it';
    }
  }

  /** Frees a replaced model once its last request has finished. */
  disposeIfRetired(e: Entry): void {
    if (!e.retired || e.active > 0 || e.waiters.length > 0 || e.embedding > 0) return;
    e.retired = false;
    void this.#free(e);
  }

  /**
   * Frees an entry's model, its contexts and sessions, and drops every reference the entry holds, so that
   * nothing of a replaced model outlives it. Never rejects.
   */
  async #free(e: Entry): Promise<void> {
    const { model, embedCtx } = e;
    e.model = undefined;
    e.ctx = undefined;
    e.embedCtx = undefined;
    e.idle = [];
    e.sessions = [];
    e.keys.clear();
    try {
      if (embedCtx) await (await embedCtx.catch(() => null))?.dispose();
      await model?.dispose();
    } catch {
      // already freed, or freeing failed: nothing more to do with it
    } finally {
      this.live.delete(e);
    }
  }

  /**
   * Reloads of one alias run one after another, in the order they were asked for (after the first load):
   * each that succeeds is served from then on under the next version number, so concurrent reloads get
   * distinct versions and the last one asked for is the one served at the end. A failed one changes
   * nothing.
   */
  reload(alias: string, path?: string): Promise<ReloadResult> {
    if (this.closing) return Promise.reject(shuttingDown());
    const first = this.entries.get(alias);
    if (!first) return Promise.reject(new ApiError(404, `The model '${alias}' does not exist`, 'invalid_request_error', 'model', 'model_not_found'));
    const before = this.#reloads.get(alias) ?? first.loading ?? Promise.resolve();
    const run = before.catch(() => {}).then(() => this.#replace(alias, path));
    const tail = run.catch(() => {});
    this.#reloads.set(alias, tail);
    void tail.then(() => {
      if (this.#reloads.get(alias) === tail) this.#reloads.delete(alias);
    });
    return run;
  }

  async #replace(alias: string, path?: string): Promise<ReloadResult> {
    if (this.closing) throw shuttingDown();
    const old = this.entries.get(alias)!;
    const next = this.#newEntry(alias, path ?? old.path, old.version + 1);
    await (next.loading = this.#loadInto(next));
    if (this.closing) {
      await this.#free(next);
      throw shuttingDown();
    }
    this.entries.set(alias, next);
    old.retired = true;
    this.disposeIfRetired(old);
    return { model: alias, path: next.path, version: next.version, fingerprint: next.model!.fingerprint };
  }

  /**
   * The session for a request: the one that served this conversation's previous turn (it holds its tokens,
   * in the KV cache or in host memory), else a new one while fewer than `conversations` exist, else the
   * least recently used idle one (others' cached prefixes are still shared by copying cells).
   */
  #pick(e: Entry, key: string | null): LlamaSession {
    e.active++;
    const i = key === null ? -1 : e.idle.findIndex((s) => e.keys.get(s) === key);
    if (i >= 0) return e.idle.splice(i, 1)[0];
    if (e.sessions.length < this.#options.conversations || e.idle.length === 0) {
      const s = e.ctx!.createSession({ contextShift: 'auto' });
      e.sessions.push(s);
      return s;
    }
    const s = e.idle.shift()!;
    e.keys.delete(s);
    return s;
  }

  /** A session for a request; at most `parallel` requests generate at once (one per resident sequence). */
  acquire(e: Entry, key: string | null, signal: AbortSignal): Promise<LlamaSession> {
    this.checkAlive(e);
    if (e.state !== 'ready') return Promise.reject(new ApiError(500, `The model '${e.alias}' cannot serve: ${e.error}`, 'server_error', null, 'model_error'));
    if (e.active < this.#options.parallel) return Promise.resolve(this.#pick(e, key));
    if (e.waiters.length >= this.#options.maxQueue) {
      return Promise.reject(new ApiError(429, `Too many requests are waiting for '${e.alias}'; retry shortly`, 'rate_limit_error', null, 'queue_full'));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        key,
        grant: (s: LlamaSession) => {
          signal.removeEventListener('abort', onAbort);
          resolve(s);
        },
        fail: (err: Error) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      const onAbort = () => {
        e.waiters = e.waiters.filter((w) => w !== waiter);
        reject(new ApiError(499, 'The client went away', 'invalid_request_error'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      e.waiters.push(waiter);
    });
  }

  release(e: Entry, s: LlamaSession): void {
    e.active--;
    if (!s.disposed) e.idle.push(s);
    const w = e.waiters.shift();
    this.checkAlive(e);
    if (w && e.state === 'ready') w.grant(this.#pick(e, w.key));
    else if (w) {
      // No context to serve it any more: every waiting request is answered, none left hanging.
      for (const x of [w, ...e.waiters.splice(0)]) x.fail(new ApiError(500, `The model '${e.alias}' cannot serve: ${e.error ?? 'it was freed'}`, 'server_error', null, 'model_error'));
    }
    this.disposeIfRetired(e);
  }

  /** Stops: waiting requests are refused; once running ones are done (close), every model is freed. */
  refuseWaiting(): void {
    this.closing = true;
    for (const e of new Set([...this.entries.values(), ...this.live])) for (const w of e.waiters.splice(0)) w.fail(shuttingDown());
  }

  /** Frees every model, after the first loads and any reload still loading have settled. */
  async close(): Promise<void> {
    this.closing = true;
    await this.ready.catch(() => {});
    await Promise.allSettled([...this.#reloads.values()]);
    await Promise.allSettled(
      [...new Set([...this.entries.values(), ...this.live])].map((e) => {
        e.retired = false;
        return this.#free(e);
      }),
    );
  }
}
