// An OpenAI-compatible HTTP server over llama-addon: chat completions (streaming, JSON schema, tools,
// log-probabilities), completions, embeddings, models, health and Prometheus metrics.
//
// A fastify instance with the shared state decorated onto it (lib/server/state.ts: options, the model
// registry and session pool, metrics, the response cache), hooks that every route goes through (the API
// key, shutdown, request counting), one error handler, and one plugin per route group (routes/).
import { createHash, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { llamaError } from '../base/errors.js';
import { jsonDepth, prototypeKeyPath } from './limits.js';
import { Metrics } from './metrics.js';
import { ApiError, toApiError } from './openai.js';
import { resolveServerOptions, type ServerOptions } from './options.js';
import { ModelRegistry, type ReloadResult } from './registry.js';
import { adminRoutes } from './routes/admin.js';
import { chatRoutes } from './routes/chat.js';
import { completionRoutes } from './routes/completions.js';
import { embeddingRoutes } from './routes/embeddings.js';
import { modelRoutes } from './routes/models.js';
import { ResponseCache, type ServerState } from './state.js';

export type { ServerModel, ServerOptions } from './options.js';

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
  reload(alias: string, path?: string): Promise<ReloadResult>;
  /**
   * Stops accepting requests, lets running ones finish for up to `deadlineMs` (default 10 s), aborts the
   * rest, and frees the models.
   */
  close(deadlineMs?: number): Promise<void>;
}

/**
 * Starts the server; models load in the background (`/health` answers 503 until they have).
 * @throws LlamaError ERR_INVALID_ARGUMENT for a bad option.
 */
export async function startServer(options: ServerOptions): Promise<LlamaServer> {
  const o = resolveServerOptions(options, startServer);
  const models = new ModelRegistry(o);
  const metrics = new Metrics(models);
  const s: ServerState = { options: o, models, metrics, responses: new ResponseCache(o.cacheResponses, metrics), running: new Set() };
  // The key is compared as SHA-256 digests with timingSafeEqual: the time taken says nothing about the key,
  // its length included.
  // The scheme is case-insensitive (RFC 7235: "bearer" and "BEARER" are "Bearer").
  const keyDigest = o.apiKey ? createHash('sha256').update(o.apiKey).digest() : null;
  const authorized = (header: string | undefined) => {
    if (keyDigest === null) return true;
    const m = /^bearer +(.*)$/is.exec(header ?? '');
    return timingSafeEqual(createHash('sha256').update(m ? m[1]! : '\0not a bearer token').digest(), keyDigest);
  };

  const app: FastifyInstance = Fastify({
    logger: o.log ? { level: 'info' } : false,
    bodyLimit: o.bodyLimit,
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
    // verbose: errors carry their schema, whose description names a field's forms (see toApiError).
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false, verbose: true } },
  });
  app.decorate('llama', s);
  metrics.hook(app);

  // Request bodies: at most bodyLimit bytes (else 413), nested at most maxBodyDepth levels (else 400, found
  // by a scan of the text before JSON.parse), then JSON.parse, whose own message says where the text is
  // not JSON, then refused if a key could poison a prototype (__proto__, constructor.prototype: what
  // fastify's default parser refuses, there with the wording of invalid JSON).
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = body as string;
    const bad = (message: string, code: string) => done(new ApiError(400, message, 'invalid_request_error', null, code), undefined);
    if (text.length === 0) return bad('The request body is empty; expected a JSON object', 'invalid_json');
    if (jsonDepth(text, o.maxBodyDepth) > o.maxBodyDepth) {
      return bad(`The request body nests arrays and objects more than ${o.maxBodyDepth} levels deep`, 'body_too_deep');
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return bad(`The request body is not valid JSON: ${(e as Error).message}`, 'invalid_json');
    }
    const poison = prototypeKeyPath(value);
    if (poison !== null) return bad(`The request body has the key "${poison}", which this server refuses (it could change an object's prototype)`, 'forbidden_key');
    done(null, value);
  });

  // Whatever a request's processing throws ends here, as a status and OpenAI's error body (see toApiError).
  app.setErrorHandler((err: unknown, _req: FastifyRequest, reply: FastifyReply) => {
    const api = toApiError(err);
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
    if (models.closing) throw new ApiError(503, 'The server is shutting down', 'server_error');
    // Matched on the route, never on the raw URL, so that a query string (/health?x=1) changes nothing.
    // The page holds no data; it sends the key (from ?key=) with its own requests.
    const route = req.routeOptions.url;
    if (route === '/health' || route === '/') return;
    if (!authorized(req.headers.authorization)) {
      throw new ApiError(401, 'Missing or wrong API key: send Authorization: Bearer <key>', 'authentication_error', null, 'invalid_api_key');
    }
  });

  await app.register(modelRoutes);
  await app.register(adminRoutes);
  await app.register(chatRoutes);
  await app.register(completionRoutes);
  await app.register(embeddingRoutes);

  try {
    await app.listen({ host: o.host, port: o.port });
  } catch (err) {
    // Nothing listens: the models that started loading are freed, and the error has a code.
    models.refuseWaiting();
    metrics.close();
    await app.close().catch(() => {});
    await models.close();
    const code = (err as { code?: string }).code;
    throw Object.assign(llamaError('ERR_IO', `The server cannot listen on ${o.host}:${o.port}: ${code === 'EADDRINUSE' ? 'the port is in use' : (err as Error).message}`, startServer), {
      cause: err,
      syscallCode: code,
    });
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : o.port;
  const url = `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`;

  return {
    url,
    ready: models.ready,
    reload: (alias, path) => models.reload(alias, path),
    async close(deadlineMs = 10_000) {
      if (models.closing) return;
      models.refuseWaiting();
      // Running requests may finish until the deadline; then they are aborted (and end as they are).
      const timer = setTimeout(() => {
        for (const c of s.running) c.abort();
      }, deadlineMs);
      // A connection whose request finishes after this would otherwise stay open (keep-alive) until its
      // timeout, 72 s, holding up the close: close each as soon as it is idle.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
      try {
        await app.close();
      } finally {
        clearInterval(sweep);
        clearTimeout(timer);
        metrics.close();
      }
      await models.close();
    },
  };
}
