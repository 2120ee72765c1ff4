// An OpenAI-compatible HTTP server over llama-addon: chat completions (streaming, JSON schema, tools,
// log-probabilities), completions, embeddings, models, health and Prometheus metrics.
import { createHash, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ChatResult, ChatTool, ToolChoice } from '../chat.js';
import type { ChatMessage } from '../chat-template.js';
import type { LlamaContext } from '../context.js';
import type { GenerateOptions } from '../generate-options.js';
import type { Generation, GenerationResult, TokenLogprob } from '../generation.js';
import { prepareJsonSchemaSoon, type JsonSchema } from '../json-schema.js';
import type { GpuOption } from '../backends.js';
import { loadModel, type LlamaModel } from '../model.js';
import type { LlamaSession } from '../session.js';
import { samplingFromRequest } from '../options/sampling.js';
import { jsonDepth } from './limits.js';
import { ApiError, chatCompletionSchema, completionSchema, embeddingSchema, toApiError } from './openai.js';
import { chatPage } from './page.js';

/** A model the server serves, under an alias that requests name in `model`. */
export interface ServerModel {
  alias: string;
  path: string;
  /**
   * A model already loaded (or being loaded) to serve instead of loading `path` (which /v1/models still
   * shows, and a reload loads). The server frees it when it closes.
   */
  model?: LlamaModel | Promise<LlamaModel>;
}

/** Options of {@link startServer}. */
export interface ServerOptions {
  /** The models; the first is used when a request names none. */
  models: ServerModel[];
  /** Default 127.0.0.1: only this machine can connect. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Requests generated at once per model (resident sequences of its context; default 4). */
  parallel?: number;
  /**
   * Conversations per model that keep their KV cache between requests (default 64, at least `parallel`):
   * beyond `parallel`, their caches wait in host memory (within `cacheRamBytes`) and come back when the
   * conversation goes on. Past this many, the least recently used conversation's session is reused.
   */
  conversations?: number;
  /** Host memory for those caches, bytes per model (default 1 GiB: the context option `cacheRamBytes`). */
  cacheRamBytes?: number;
  /** Tokens each of those sessions holds (default: the model's training context, at most 4096). */
  contextSize?: number;
  /** With a key, every endpoint but /health needs `Authorization: Bearer <key>`. */
  apiKey?: string;
  /** Requests that may wait for a free session per model before the server answers 429 (default 64). */
  maxQueue?: number;
  /** Largest request body in bytes (default 1 MiB); a larger one is a 413. */
  bodyLimit?: number;
  /**
   * How deeply a JSON request body (and a tool call's `arguments` in it) may nest arrays and objects
   * (default 128); a deeper one is a 400 before anything else reads it.
   */
  maxBodyDepth?: number;
  /** Largest `max_tokens` a request may ask for, and the default (default 4096). */
  maxTokensLimit?: number;
  /** GPU layers for the models (default 'auto'). */
  gpuLayers?: number | 'auto' | 'max';
  /** GPU backend for the models (default 'auto'; see {@link LoadModelOptions.gpu}). */
  gpu?: GpuOption;
  /** llama.cpp RPC servers (`host:port`) to split the models across. */
  rpcServers?: string[];
  /** Print each request (default false). */
  log?: boolean;
  /** Allow POST /admin/reload without an API key (with a key it is always on, behind the key). */
  admin?: boolean;
  /**
   * Remember this many responses of deterministic requests (temperature 0, or a seed) and answer an
   * identical request from memory, without decoding (default 0: off). Streamed requests are not cached.
   */
  cacheResponses?: number;
}

interface Entry {
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

/** A running server. */
export interface LlamaServer {
  /** Where it listens, for example `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Resolves when every model has loaded (rejects if one failed). */
  readonly ready: Promise<void>;
  /**
   * Loads `path` (default: the file it serves now) and, once it is ready, serves it under `alias`: requests
   * that arrive afterwards use it, running ones finish on the model they started with, which is then freed.
   * Resolves with what the alias serves afterwards; on failure the old model stays.
   */
  reload(alias: string, path?: string): Promise<{ model: string; path: string; version: number; fingerprint: string }>;
  /**
   * Stops accepting requests, lets running ones finish for up to `deadlineMs` (default 10 s), aborts the
   * rest, and frees the models.
   */
  close(deadlineMs?: number): Promise<void>;
}

const conversationKey = (messages: ReadonlyArray<{ role: string; content: string }>) =>
  createHash('sha256').update(JSON.stringify(messages.map((m) => [m.role, m.content]))).digest('hex');

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p: { text?: string }) => p.text ?? '').join('');
  return '';
}

/** Starts the server; models load in the background (`/health` answers 503 until they have). */
export async function startServer(options: ServerOptions): Promise<LlamaServer> {
  if (!options.models?.length) throw new ApiError(400, 'At least one model is needed', 'invalid_request_error');
  const parallel = options.parallel ?? 4;
  const conversations = Math.max(parallel, options.conversations ?? 64);
  const maxQueue = options.maxQueue ?? 64;
  const maxTokensLimit = options.maxTokensLimit ?? 4096;
  const maxBodyDepth = options.maxBodyDepth ?? 128;
  // The key is compared as SHA-256 digests with timingSafeEqual: the time taken says nothing about the key,
  // its length included.
  const keyDigest = options.apiKey ? createHash('sha256').update(`Bearer ${options.apiKey}`).digest() : null;
  const authorized = (header: string | undefined) =>
    keyDigest === null || timingSafeEqual(createHash('sha256').update(header ?? '').digest(), keyDigest);
  const entries = new Map<string, Entry>();
  const preloaded = new Map<string, LlamaModel | Promise<LlamaModel>>();
  for (const m of options.models) {
    entries.set(m.alias, newEntry(m.alias, m.path, 1));
    if (m.model) preloaded.set(m.alias, m.model);
  }
  const defaultAlias = options.models[0].alias;
  /** Every entry that holds a model: the one each alias serves, and replaced ones finishing their requests. */
  const live = new Set<Entry>();
  function newEntry(alias: string, path: string, version: number): Entry {
    return { alias, path, version, state: 'loading', created: Math.floor(Date.now() / 1000), idle: [], sessions: [], active: 0, keys: new Map(), waiters: [], embedding: 0 };
  }

  // ---------------------------------------------------------------- metrics
  const registry = new Registry();
  const requests = new Counter({ name: 'llama_requests_total', help: 'Requests, by endpoint and status', labelNames: ['endpoint', 'status'], registers: [registry] });
  const promptTokens = new Counter({ name: 'llama_prompt_tokens_total', help: 'Prompt tokens of completed requests', labelNames: ['model'], registers: [registry] });
  const cachedTokens = new Counter({ name: 'llama_prompt_tokens_cached_total', help: 'Prompt tokens reused from a KV cache', labelNames: ['model'], registers: [registry] });
  const completionTokens = new Counter({ name: 'llama_completion_tokens_total', help: 'Generated tokens', labelNames: ['model'], registers: [registry] });
  const ttft = new Histogram({
    name: 'llama_time_to_first_token_seconds', help: 'Time from request to first generated token', labelNames: ['model'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry],
  });
  const cacheHits = new Counter({ name: 'llama_response_cache_hits_total', help: 'Requests answered from the response cache', labelNames: ['model'], registers: [registry] });
  const cacheMisses = new Counter({ name: 'llama_response_cache_misses_total', help: 'Cacheable requests that had to be generated', labelNames: ['model'], registers: [registry] });
  const tps = new Gauge({ name: 'llama_tokens_per_second', help: 'Generation speed of the last completed request', labelNames: ['model'], registers: [registry] });
  new Gauge({
    name: 'llama_queue_length', help: 'Requests waiting for a free session', labelNames: ['model'], registers: [registry],
    collect() {
      for (const e of entries.values()) this.set({ model: e.alias }, e.waiters.length);
    },
  });
  new Gauge({
    name: 'llama_kv_cache_usage_ratio', help: 'Share of the KV cache the sessions hold', labelNames: ['model'], registers: [registry],
    collect() {
      for (const e of entries.values()) {
        if (!e.ctx) continue;
        // Sessions that hold a sequence now (the others' caches wait in host memory).
        const held = e.sessions.reduce((n, s) => n + (s.disposed || s.sequence === null ? 0 : s.tokens.length), 0);
        this.set({ model: e.alias }, held / (e.ctx.contextSize * e.ctx.sequences));
      }
    },
  });
  new Gauge({
    name: 'llama_models_loaded', help: 'Models in memory: the one served, and replaced ones finishing their requests', labelNames: ['model'], registers: [registry],
    collect() {
      this.reset();
      for (const e of entries.values()) this.set({ model: e.alias }, 0);
      for (const e of live) this.inc({ model: e.alias });
    },
  });
  new Gauge({
    name: 'llama_requests_running', help: 'Requests generating now', labelNames: ['model'], registers: [registry],
    collect() {
      for (const e of entries.values()) this.set({ model: e.alias }, e.active);
    },
  });

  // ---------------------------------------------------------------- models
  async function loadInto(e: Entry): Promise<void> {
    try {
      // A model given to startServer is served once; a reload loads the file.
      const given = preloaded.get(e.alias);
      preloaded.delete(e.alias);
      e.model = given ? await given : await loadModel(e.path, {
            gpuLayers: options.gpuLayers ?? 'auto',
            ...(options.gpu !== undefined ? { gpu: options.gpu } : {}),
            ...(options.rpcServers ? { rpcServers: options.rpcServers } : {}),
          });
      live.add(e);
      const contextSize = options.contextSize ?? Math.min(e.model.info.contextLength || 4096, 4096);
      e.ctx = await e.model.createContext({ contextSize, sequences: parallel, ...(options.cacheRamBytes !== undefined ? { cacheRamBytes: options.cacheRamBytes } : {}) });
      e.state = 'ready';
    } catch (err) {
      e.state = 'error';
      e.error = (err as Error).message;
      live.delete(e);
      await e.model?.dispose().catch(() => {});
      e.model = undefined;
      e.ctx = undefined;
      e.idle = [];
      e.sessions = [];
      throw err;
    }
  }

  /** Frees a replaced model once its last request has finished. */
  function disposeIfRetired(e: Entry): void {
    if (!e.retired || e.active > 0 || e.waiters.length > 0 || e.embedding > 0) return;
    e.retired = false;
    void free(e);
  }

  /**
   * Frees an entry's model, its contexts and sessions, and drops every reference the entry holds, so that
   * nothing of a replaced model outlives it. Never rejects.
   */
  async function free(e: Entry): Promise<void> {
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
      live.delete(e);
    }
  }

  const loading = [...entries.values()].map((e) => (e.loading = loadInto(e)));
  const ready = Promise.all(loading).then(() => undefined);
  ready.catch(() => {});

  function entryFor(model: string | undefined): Entry {
    const e = entries.get(model ?? defaultAlias);
    if (!e) {
      throw new ApiError(404, `The model '${model}' does not exist: this server serves ${[...entries.keys()].join(', ')}`, 'invalid_request_error', 'model', 'model_not_found');
    }
    if (e.state === 'loading') throw new ApiError(503, `The model '${e.alias}' is still loading`, 'server_error', null, 'model_loading');
    if (e.state === 'error') throw new ApiError(500, `The model '${e.alias}' failed to load: ${e.error}`, 'server_error', null, 'model_error');
    return e;
  }

  /**
   * The session for a request: the one that served this conversation's previous turn (it holds its tokens,
   * in the KV cache or in host memory), else a new one while fewer than `conversations` exist, else the
   * least recently used idle one (others' cached prefixes are still shared by copying cells).
   */
  function pick(e: Entry, key: string | null): LlamaSession {
    e.active++;
    const i = key === null ? -1 : e.idle.findIndex((s) => e.keys.get(s) === key);
    if (i >= 0) return e.idle.splice(i, 1)[0];
    if (e.sessions.length < conversations || e.idle.length === 0) {
      const s = e.ctx!.createSession({ contextShift: 'auto' });
      e.sessions.push(s);
      return s;
    }
    const s = e.idle.shift()!;
    e.keys.delete(s);
    return s;
  }

  function acquire(e: Entry, key: string | null, signal: AbortSignal): Promise<LlamaSession> {
    // At most `parallel` requests generate at once: one per resident sequence.
    if (e.active < parallel) return Promise.resolve(pick(e, key));
    if (e.waiters.length >= maxQueue) {
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

  function release(e: Entry, s: LlamaSession): void {
    e.active--;
    if (!s.disposed) e.idle.push(s);
    const w = e.waiters.shift();
    if (w && e.ctx && !e.ctx.disposed) w.grant(pick(e, w.key));
    disposeIfRetired(e);
  }

  // ---------------------------------------------------------------- HTTP
  const app: FastifyInstance = Fastify({
    logger: options.log ? { level: 'info' } : false,
    bodyLimit: options.bodyLimit ?? 1 << 20,
    forceCloseConnections: 'idle',
    // A request Node's HTTP parser rejects (a bad Transfer-Encoding, say) gets a 400 without a body, then the
    // connection closes: its method is unknown then, and a body after a HEAD request's answer would be read
    // as the next response (fastify's default writes one).
    // Nothing is written where an answer has begun on that connection (as Node's own handler does): a
    // request whose answer was sent early can be followed by its unread, malformed body.
    clientErrorHandler: (_err, socket) => {
      const answering = (socket as unknown as { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
      if (socket.writable && !answering?.headersSent) socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    },
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } },
  });
  const running = new Set<AbortController>();
  let closing = false;
  /** The route a request matched (its path pattern, without the query), for metrics. */
  const endpointOf = (req: FastifyRequest) => req.routeOptions?.url ?? 'unmatched';

  // Request bodies: at most bodyLimit bytes (else 413), nested at most maxBodyDepth levels (else 400, found
  // by a scan of the text before JSON.parse), then fastify's own parser (which refuses __proto__ keys).
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (jsonDepth(body as string, maxBodyDepth) > maxBodyDepth) {
      done(new ApiError(400, `The request body nests arrays and objects more than ${maxBodyDepth} levels deep`, 'invalid_request_error', null, 'body_too_deep'), undefined);
      return;
    }
    parseJson(req, body as string, done);
  });

  // Whatever a request's processing throws ends here, as a status and OpenAI's error body (see toApiError).
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const api = toApiError(err);
    requests.inc({ endpoint: endpointOf(req), status: String(api.status) });
    if (reply.sent || reply.raw.headersSent) {
      // A stream that had begun: it ends here rather than hang.
      if (!reply.raw.writableEnded) reply.raw.end();
      return;
    }
    if (api.status === 429) void reply.header('Retry-After', '1');
    void reply.status(api.status === 499 ? 400 : api.status).send(api.body());
  });

  app.setNotFoundHandler(async (req) => {
    throw new ApiError(404, `There is no ${req.method} ${req.url.split('?')[0]} on this server`, 'not_found_error', null, 'not_found');
  });

  app.addHook('onRequest', async (req) => {
    if (closing) throw new ApiError(503, 'The server is shutting down', 'server_error');
    // Matched on the route, never on the raw URL, so that a query string (/health?x=1) changes nothing.
    // The page holds no data; it sends the key (from ?key=) with its own requests.
    const route = req.routeOptions.url;
    if (route === '/health' || route === '/') return;
    if (!authorized(req.headers.authorization)) {
      throw new ApiError(401, 'Missing or wrong API key: send Authorization: Bearer <key>', 'authentication_error', null, 'invalid_api_key');
    }
  });

  app.get('/', async (_req, reply) => {
    void reply.header('Content-Type', 'text/html; charset=utf-8');
    return chatPage;
  });

  app.get('/health', async (_req, reply) => {
    const states = [...entries.values()].map((e) => e.state);
    if (states.includes('error')) return reply.status(500).send({ status: 'error', models: Object.fromEntries([...entries.values()].map((e) => [e.alias, e.state])) });
    if (states.includes('loading')) return reply.status(503).send({ status: 'loading' });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_req, reply) => {
    void reply.header('Content-Type', registry.contentType);
    return registry.metrics();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [...entries.values()].map((e) => ({
      id: e.alias,
      object: 'model',
      created: e.created,
      owned_by: 'llama-addon',
      path: e.path,
      version: e.version,
      state: e.state,
      ...(e.model ? { fingerprint: e.model.fingerprint } : {}),
    })),
  }));

  // Reloads of one alias run one after another, in the order they were asked for (after the first load):
  // each that succeeds is served from then on under the next version number, so concurrent reloads get
  // distinct versions and the last one asked for is the one served at the end. A failed one changes
  // nothing. `reloads` holds the tail of each alias's queue.
  const reloads = new Map<string, Promise<unknown>>();
  function reload(alias: string, path?: string): Promise<{ model: string; path: string; version: number; fingerprint: string }> {
    if (closing) return Promise.reject(new ApiError(503, 'The server is shutting down', 'server_error'));
    const first = entries.get(alias);
    if (!first) return Promise.reject(new ApiError(404, `The model '${alias}' does not exist`, 'invalid_request_error', 'model', 'model_not_found'));
    const before = reloads.get(alias) ?? first.loading ?? Promise.resolve();
    const run = before.catch(() => {}).then(() => replace(alias, path));
    const tail = run.catch(() => {});
    reloads.set(alias, tail);
    void tail.then(() => {
      if (reloads.get(alias) === tail) reloads.delete(alias);
    });
    return run;
  }

  async function replace(alias: string, path?: string) {
    if (closing) throw new ApiError(503, 'The server is shutting down', 'server_error');
    const old = entries.get(alias)!;
    const next = newEntry(alias, path ?? old.path, old.version + 1);
    await (next.loading = loadInto(next));
    if (closing) {
      await free(next);
      throw new ApiError(503, 'The server is shutting down', 'server_error');
    }
    entries.set(alias, next);
    old.retired = true;
    disposeIfRetired(old);
    return { model: alias, path: next.path, version: next.version, fingerprint: next.model!.fingerprint };
  }

  app.post('/admin/reload', {
    preHandler: async () => {
      if (!options.apiKey && !options.admin) {
        throw new ApiError(403, 'The admin endpoint is off: start the server with an API key, or with admin: true (--admin)', 'invalid_request_error', null, 'admin_disabled');
      }
    }, schema: { body: { type: 'object', required: ['model'], properties: { model: { type: 'string' }, path: { type: 'string', minLength: 1 } } } } }, async (req) => {
    const body = req.body as { model: string; path?: string };
    try {
      return await reload(body.model, body.path);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw new ApiError(400, `The model could not be loaded (the old one stays): ${(err as Error).message}`, 'invalid_request_error', 'path', 'model_load_failed');
    }
  });

  // Response cache: deterministic requests, keyed by the model's content and the whole request.
  const responses = new Map<string, unknown>();
  const cacheSize = options.cacheResponses ?? 0;
  function cacheKey(e: Entry, endpoint: string, body: Record<string, unknown>): string | null {
    if (cacheSize <= 0 || body.stream === true) return null;
    if (body.temperature !== 0 && body.seed === undefined) return null;
    const { user: _user, ...rest } = body;
    return createHash('sha256').update(`${endpoint}\0${e.model!.fingerprint}\0${JSON.stringify(rest)}`).digest('hex');
  }
  /** A remembered response for this request (counted as a served request), or undefined. */
  function cached(e: Entry, key: string | null, reply: FastifyReply, endpoint: string): unknown {
    if (key === null) return undefined;
    const hit = responses.get(key);
    if (hit === undefined) {
      cacheMisses.inc({ model: e.alias });
      return undefined;
    }
    responses.delete(key);
    responses.set(key, hit);
    cacheHits.inc({ model: e.alias });
    requests.inc({ endpoint, status: '200' });
    void reply.header('x-cache', 'hit');
    return { ...(hit as object), created: Math.floor(Date.now() / 1000) };
  }
  function remember(key: string | null, response: unknown): void {
    if (key === null) return;
    responses.set(key, response);
    while (responses.size > cacheSize) responses.delete(responses.keys().next().value!);
  }

  /** Runs a generation for a request: aborts it when the client goes away or the server closes. */
  async function withRequest<T>(req: FastifyRequest, reply: FastifyReply, e: Entry, key: string | null, fn: (s: LlamaSession, signal: AbortSignal) => Promise<T>): Promise<T> {
    const controller = new AbortController();
    const onClose = () => {
      if (!reply.raw.writableFinished) controller.abort();
    };
    reply.raw.on('close', onClose);
    running.add(controller);
    let session: LlamaSession | null = null;
    try {
      session = await acquire(e, key, controller.signal);
      return await fn(session, controller.signal);
    } finally {
      running.delete(controller);
      reply.raw.off('close', onClose);
      if (session) release(e, session);
    }
  }

  function account(e: Entry, r: GenerationResult): void {
    promptTokens.inc({ model: e.alias }, r.usage.promptTokens);
    cachedTokens.inc({ model: e.alias }, r.usage.cachedTokens);
    completionTokens.inc({ model: e.alias }, r.usage.completionTokens);
    if (r.usage.completionTokens > 0) ttft.observe({ model: e.alias }, r.timings.timeToFirstTokenMs / 1000);
    if (r.timings.tokensPerSecond > 0) tps.set({ model: e.alias }, r.timings.tokensPerSecond);
  }

  const newId = (prefix: string) => `${prefix}-${createHash('sha1').update(`${Date.now()}${Math.random()}`).digest('hex').slice(0, 24)}`;

  function sampling(body: Record<string, unknown>, signal: AbortSignal): GenerateOptions {
    const maxTokens = Math.min((body.max_completion_tokens ?? body.max_tokens ?? maxTokensLimit) as number, maxTokensLimit);
    const requested = (body.max_completion_tokens ?? body.max_tokens) as number | undefined;
    if (requested !== undefined && requested > maxTokensLimit) {
      throw new ApiError(400, `max_tokens may be at most ${maxTokensLimit} on this server`, 'invalid_request_error', body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens');
    }
    const o: GenerateOptions = { maxTokens, signal, ...samplingFromRequest(body) };
    if (body.stop !== undefined && body.stop !== null) {
      const stops = (typeof body.stop === 'string' ? [body.stop] : (body.stop as string[])).filter((x) => x.length > 0);
      if (stops.length) o.stop = stops;
    }
    if (body.logit_bias) {
      const lb: Record<number, number> = {};
      for (const [k, v] of Object.entries(body.logit_bias as Record<string, number>)) {
        if (!/^\d+$/.test(k)) throw new ApiError(400, `logit_bias keys must be token ids, received '${k}'`, 'invalid_request_error', 'logit_bias');
        lb[Number(k)] = v === -100 ? -Infinity : v;
      }
      o.logitBias = lb;
    }
    return o;
  }

  const finishReason = (r: GenerationResult, toolCalls = 0) =>
    toolCalls > 0 ? 'tool_calls' : r.stopReason === 'maxTokens' || r.stopReason === 'contextFull' ? 'length' : 'stop';

  const openaiLogprobs = (lp: TokenLogprob[] | undefined) =>
    lp?.map((p) => ({
      token: p.text,
      logprob: p.logprob,
      bytes: [...Buffer.from(p.text)],
      top_logprobs: p.top.map((a) => ({ token: a.text, logprob: a.logprob, bytes: [...Buffer.from(a.text)] })),
    }));

  function usage(r: GenerationResult) {
    return {
      prompt_tokens: r.usage.promptTokens,
      completion_tokens: r.usage.completionTokens,
      total_tokens: r.usage.promptTokens + r.usage.completionTokens,
      prompt_tokens_details: { cached_tokens: r.usage.cachedTokens },
    };
  }

  function sse(reply: FastifyReply): (data: unknown) => void {
    reply.hijack();
    reply.raw.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
    return (data) => {
      if (!reply.raw.writableEnded) reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    };
  }

  app.post('/v1/chat/completions', { schema: { body: chatCompletionSchema } }, async function chatCompletions(req, reply) {
    const body = req.body as Record<string, unknown> & { messages: Array<Record<string, unknown>> };
    const e = entryFor(body.model as string | undefined);
    const id = newId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const messages: ChatMessage[] = body.messages.map((m) => {
      const role = m.role === 'developer' ? 'system' : (m.role as ChatMessage['role']);
      const out: ChatMessage = { role, content: textOf(m.content) };
      if (Array.isArray(m.tool_calls)) {
        out.toolCalls = (m.tool_calls as Array<{ id: string; function: { name: string; arguments: string } }>).map((c) => {
          let args: Record<string, unknown>;
          if (jsonDepth(c.function.arguments, maxBodyDepth) > maxBodyDepth) {
            throw new ApiError(400, `messages: the arguments of tool call ${c.id} nest more than ${maxBodyDepth} levels deep`, 'invalid_request_error', 'messages', 'body_too_deep');
          }
          try {
            args = JSON.parse(c.function.arguments) as Record<string, unknown>;
            if (args === null || typeof args !== 'object' || Array.isArray(args)) throw new Error('not an object');
          } catch {
            throw new ApiError(400, `messages: the arguments of tool call ${c.id} are not a JSON object`, 'invalid_request_error', 'messages');
          }
          return { id: c.id, name: c.function.name, arguments: args };
        });
      }
      if (typeof m.tool_call_id === 'string') out.toolCallId = m.tool_call_id;
      if (role === 'tool' && typeof m.name === 'string') out.name = m.name;
      return out;
    });
    const last = messages[messages.length - 1];
    const history = last.role === 'user' ? messages.slice(0, -1) : messages;
    const tools: ChatTool[] | undefined = (body.tools as Array<{ function: { name: string; description?: string; parameters?: JsonSchema } }> | undefined)?.map((t) => ({
      name: t.function.name,
      ...(t.function.description !== undefined ? { description: t.function.description } : {}),
      ...(t.function.parameters !== undefined ? { parameters: t.function.parameters } : {}),
    }));
    const tc = body.tool_choice as string | { function: { name: string } } | undefined;
    const toolChoice: ToolChoice | undefined = tc === undefined ? undefined : typeof tc === 'string' ? (tc as ToolChoice) : { name: tc.function.name };
    const rf = body.response_format as { type: string; json_schema?: { schema: JsonSchema } } | undefined;
    const jsonSchema: JsonSchema | undefined = rf?.type === 'json_schema' ? rf.json_schema?.schema : rf?.type === 'json_object' ? { type: 'object' } : undefined;
    if (rf?.type === 'json_schema' && !rf.json_schema) throw new ApiError(400, 'response_format.json_schema is required with type json_schema', 'invalid_request_error', 'response_format.json_schema');
    // A large schema's checking pass runs on the validator's worker thread; the chat then finds it cached.
    if (jsonSchema !== undefined) await prepareJsonSchemaSoon(jsonSchema, 'strict', chatCompletions);
    const wantLogprobs = body.logprobs === true;
    const stream = body.stream === true;
    // The conversation this request continues: its messages before the new one.
    const key = history.length > 0 ? conversationKey(history) : null;
    const rkey = cacheKey(e, 'chat', body);
    const hit = cached(e, rkey, reply, '/v1/chat/completions');
    if (hit !== undefined) return hit;
    return withRequest(req, reply, e, key, async (session, signal) => {
      const chat = e.ctx!.createChat({
        session,
        messages: history,
        ...(tools?.length ? { tools, toolChoice: toolChoice ?? 'auto', parallelToolCalls: body.parallel_tool_calls === true } : {}),
      });
      const opts = {
        ...sampling(body, signal),
        ...(wantLogprobs ? { logprobs: (body.top_logprobs as number | undefined) ?? 0 } : {}),
        ...(jsonSchema !== undefined ? { jsonSchema } : {}),
      };
      const gen: Generation<ChatResult> = chat.send(last.role === 'user' ? last : undefined, opts);
      const finish = (r: ChatResult) => {
        account(e, r);
        const reply = { role: 'assistant' as const, content: r.content };
        e.keys.set(session, conversationKey([...history, ...(last.role === 'user' ? [last] : []), reply]));
        requests.inc({ endpoint: '/v1/chat/completions', status: '200' });
      };
      if (!stream) {
        const r = await gen.result;
        finish(r);
        const toolCalls = r.toolCalls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) } }));
        const response = {
          id,
          object: 'chat.completion',
          created,
          model: e.alias,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: toolCalls.length && !r.content ? null : r.content, ...(toolCalls.length ? { tool_calls: toolCalls } : {}), ...(r.reasoning ? { reasoning_content: r.reasoning } : {}) },
              logprobs: wantLogprobs ? { content: openaiLogprobs(r.logprobs) ?? [] } : null,
              finish_reason: finishReason(r, toolCalls.length),
            },
          ],
          usage: usage(r),
        };
        if (r.stopReason !== 'abort') remember(rkey, response);
        return response;
      }
      const send = sse(reply);
      const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) =>
        send({ id, object: 'chat.completion.chunk', created, model: e.alias, choices: [{ index: 0, delta, logprobs: extra.logprobs ?? null, finish_reason: finish }] });
      chunk({ role: 'assistant', content: '' }, null);
      // With tools, the raw text holds the call markup: the template's parser reads what has come so far,
      // and the differences go out as content and tool-call deltas, as OpenAI streams them.
      const live = !tools?.length;
      let raw = '';
      let sentContent = '';
      const sentCalls: Array<{ id: string; name: string; args: string }> = [];
      const emitParsed = (partial: boolean) => {
        const p = chat.parseReply(raw, partial);
        if (p.content.startsWith(sentContent) && p.content.length > sentContent.length) {
          chunk({ content: p.content.slice(sentContent.length) }, null);
          sentContent = p.content;
        }
        p.toolCalls.forEach((c, index) => {
          if (!c.name) return;
          let sent = sentCalls[index];
          if (!sent) {
            sent = { id: `call${createHash('sha1').update(`${id}${index}`).digest('hex').slice(0, 5)}`, name: c.name, args: '' };
            sentCalls[index] = sent;
            chunk({ tool_calls: [{ index, id: sent.id, type: 'function', function: { name: c.name, arguments: '' } }] }, null);
          }
          if (c.arguments.startsWith(sent.args) && c.arguments.length > sent.args.length) {
            chunk({ tool_calls: [{ index, function: { arguments: c.arguments.slice(sent.args.length) } }] }, null);
            sent.args = c.arguments;
          }
        });
      };
      try {
        for await (const c of gen) {
          if (live && c.text) chunk({ content: c.text }, null, wantLogprobs ? { logprobs: { content: openaiLogprobs(c.logprobs) } } : {});
          if (!live && c.text) {
            raw += c.text;
            emitParsed(true);
          }
        }
        const r = await gen.result;
        finish(r);
        if (!live) {
          emitParsed(false);
          chunk({}, finishReason(r, sentCalls.length));
        } else {
          chunk({}, finishReason(r));
        }
        if ((body.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
          send({ id, object: 'chat.completion.chunk', created, model: e.alias, choices: [], usage: usage(r) });
        }
      } catch (err) {
        const api = toApiError(err);
        requests.inc({ endpoint: '/v1/chat/completions', status: String(api.status) });
        send(api.body());
      }
      send('[DONE]');
      reply.raw.end();
      return reply;
    });
  });

  app.post('/v1/completions', { schema: { body: completionSchema } }, async (req, reply) => {
    const body = req.body as Record<string, unknown>;
    const e = entryFor(body.model as string | undefined);
    const prompt = typeof body.prompt === 'string' ? body.prompt : (body.prompt as string[])[0];
    const id = newId('cmpl');
    const created = Math.floor(Date.now() / 1000);
    const logprobs = typeof body.logprobs === 'number' ? body.logprobs : undefined;
    const rkey = cacheKey(e, 'completions', body);
    const hit = cached(e, rkey, reply, '/v1/completions');
    if (hit !== undefined) return hit;
    return withRequest(req, reply, e, null, async (session, signal) => {
      const gen = session.generate(prompt, { ...sampling(body, signal), ...(logprobs !== undefined ? { logprobs } : {}) });
      const legacy = (lp: TokenLogprob[] | undefined) =>
        lp && {
          tokens: lp.map((p) => p.text),
          token_logprobs: lp.map((p) => p.logprob),
          top_logprobs: lp.map((p) => Object.fromEntries(p.top.map((a) => [a.text, a.logprob]))),
        };
      if (body.stream !== true) {
        const r = await gen.result;
        account(e, r);
        requests.inc({ endpoint: '/v1/completions', status: '200' });
        const response = {
          id, object: 'text_completion', created, model: e.alias,
          choices: [{ text: r.text, index: 0, logprobs: legacy(r.logprobs) ?? null, finish_reason: finishReason(r) }],
          usage: usage(r),
        };
        if (r.stopReason !== 'abort') remember(rkey, response);
        return response;
      }
      const send = sse(reply);
      try {
        for await (const c of gen) {
          if (c.text) send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: c.text, index: 0, logprobs: legacy(c.logprobs) ?? null, finish_reason: null }] });
        }
        const r = await gen.result;
        account(e, r);
        requests.inc({ endpoint: '/v1/completions', status: '200' });
        send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: '', index: 0, logprobs: null, finish_reason: finishReason(r) }] });
      } catch (err) {
        const api = toApiError(err);
        requests.inc({ endpoint: '/v1/completions', status: String(api.status) });
        send(api.body());
      }
      send('[DONE]');
      reply.raw.end();
      return reply;
    });
  });

  app.post('/v1/embeddings', { schema: { body: embeddingSchema } }, async (req) => {
    const body = req.body as { model?: string; input: string | string[] | number[] | number[][]; encoding_format?: 'float' | 'base64'; dimensions?: number };
    const e = entryFor(body.model);
    // Mean pooling unless the model says otherwise (generative models default to none: one vector per token).
    e.embedCtx ??= e.model!
      .createContext({
        contextSize: Math.min(e.ctx!.contextSize, 2048), sequences: 8, embeddings: true,
        ...(typeof e.model!.metadata[`${e.model!.info.architecture}.pooling_type`] === 'number' ? {} : { pooling: 'mean' as const }),
      })
      .catch((err: unknown) => {
        e.embedCtx = undefined; // let a later request try again
        throw err;
      });
    e.embedding++;
    try {
      return await embedWith(e, await e.embedCtx, body);
    } finally {
      e.embedding--;
      disposeIfRetired(e);
    }
  });

  async function embedWith(e: Entry, ctx: LlamaContext, body: { input: string | string[] | number[] | number[][]; encoding_format?: 'float' | 'base64'; dimensions?: number }) {
    const inputs: Array<string | Int32Array> =
      typeof body.input === 'string'
        ? [body.input]
        : typeof body.input[0] === 'number'
          ? [Int32Array.from(body.input as number[])]
          : (body.input as Array<string | number[]>).map((x) => (typeof x === 'string' ? x : Int32Array.from(x)));
    const tokens = inputs.map((x) => (typeof x === 'string' ? e.model!.tokenize(x) : x));
    const bad = tokens.findIndex((t) => t.some((id) => id >= e.model!.vocab.size));
    if (bad >= 0) throw new ApiError(400, `input ${bad} holds token ids outside the vocabulary`, 'invalid_request_error', 'input');
    const vectors = await ctx.embed(tokens);
    if (body.dimensions !== undefined && body.dimensions !== vectors[0]?.length) {
      throw new ApiError(400, `This model's embeddings have ${vectors[0]?.length} dimensions`, 'invalid_request_error', 'dimensions');
    }
    const n = tokens.reduce((s, t) => s + t.length, 0);
    promptTokens.inc({ model: e.alias }, n);
    requests.inc({ endpoint: '/v1/embeddings', status: '200' });
    return {
      object: 'list',
      data: vectors.map((v, index) => ({
        object: 'embedding',
        index,
        embedding: body.encoding_format === 'base64' ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : Array.from(v),
      })),
      model: e.alias,
      usage: { prompt_tokens: n, total_tokens: n },
    };
  }

  await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 8080 });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port ?? 8080;
  const host = options.host ?? '127.0.0.1';
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  return {
    url,
    ready,
    reload,
    async close(deadlineMs = 10_000) {
      if (closing) return;
      closing = true;
      for (const e of new Set([...entries.values(), ...live])) for (const w of e.waiters.splice(0)) w.fail(new ApiError(503, 'The server is shutting down', 'server_error'));
      // Running requests may finish until the deadline; then they are aborted (and end as they are).
      const timer = setTimeout(() => {
        for (const c of running) c.abort();
      }, deadlineMs);
      // A connection whose request finishes after this would otherwise stay open (keep-alive) until its
      // timeout, 72 s, holding up the close: close each as soon as it is idle.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
      try {
        await app.close();
      } finally {
        clearInterval(sweep);
        clearTimeout(timer);
      }
      await ready.catch(() => {});
      // A reload still loading frees what it loaded when it finishes.
      await Promise.allSettled([...reloads.values()]);
      await Promise.allSettled(
        [...new Set([...entries.values(), ...live])].map((e) => {
          e.retired = false;
          return free(e);
        }),
      );
    },
  };
}
