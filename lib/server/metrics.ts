// Prometheus metrics of the server (prom-client): requests counted by an onResponse hook for every route
// (streamed answers, which leave fastify's reply cycle, count themselves when they end), tokens and timings
// of generations, and gauges read from the model registry when scraped.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { GenerationResult } from '../core/generation.js';
import type { ModelRegistry } from './registry.js';

/** The route a request matched (its path pattern, without the query), for metrics. @internal */
export const endpointOf = (req: FastifyRequest) => req.routeOptions?.url ?? 'unmatched';

/** How often the event loop's delay is sampled (ms). */
const LOOP_RESOLUTION_MS = 20;

/** @internal */
export class Metrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly promptTokens: Counter<'model'>;
  readonly cachedTokens: Counter<'model'>;
  readonly completionTokens: Counter<'model'>;
  readonly ttft: Histogram<'model'>;
  readonly cacheHits: Counter<'model'>;
  readonly cacheMisses: Counter<'model'>;
  readonly tps: Gauge<'model'>;
  /**
   * The event loop's delays since the last scrape (perf_hooks, sampled every 20 ms: each sample wakes the
   * JS thread, which then takes a core from ggml's threads; at 5 ms, 200 wake-ups a second).
   */
  readonly #loop: IntervalHistogram = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });

  constructor(models: ModelRegistry) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'llama_requests_total', help: 'Requests, by endpoint and status', labelNames: ['endpoint', 'status'], registers });
    this.promptTokens = new Counter({ name: 'llama_prompt_tokens_total', help: 'Prompt tokens of completed requests', labelNames: ['model'], registers });
    this.cachedTokens = new Counter({ name: 'llama_prompt_tokens_cached_total', help: 'Prompt tokens reused from a KV cache', labelNames: ['model'], registers });
    this.completionTokens = new Counter({ name: 'llama_completion_tokens_total', help: 'Generated tokens', labelNames: ['model'], registers });
    this.ttft = new Histogram({
      name: 'llama_time_to_first_token_seconds', help: 'Time from request to first generated token', labelNames: ['model'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
    });
    this.cacheHits = new Counter({ name: 'llama_response_cache_hits_total', help: 'Requests answered from the response cache', labelNames: ['model'], registers });
    this.cacheMisses = new Counter({ name: 'llama_response_cache_misses_total', help: 'Cacheable requests that had to be generated', labelNames: ['model'], registers });
    this.tps = new Gauge({ name: 'llama_tokens_per_second', help: 'Generation speed of the last completed request', labelNames: ['model'], registers });
    new Gauge({
      name: 'llama_queue_length', help: 'Requests waiting for a free session', labelNames: ['model'], registers,
      collect() {
        for (const e of models.entries.values()) this.set({ model: e.alias }, e.waiters.length);
      },
    });
    new Gauge({
      name: 'llama_kv_cache_usage_ratio', help: 'Share of the KV cache the sessions hold', labelNames: ['model'], registers,
      collect() {
        for (const e of models.entries.values()) {
          if (!e.ctx) continue;
          // Sessions that hold a sequence now (the others' caches wait in host memory).
          const held = e.sessions.reduce((n, s) => n + (s.disposed || s.sequence === null ? 0 : s.tokens.length), 0);
          this.set({ model: e.alias }, held / (e.ctx.contextSize * e.ctx.sequences));
        }
      },
    });
    const loop = this.#loop;
    loop.enable();
    new Gauge({
      name: 'llama_event_loop_delay_seconds', help: 'Delay of the event loop since the last scrape: p50, p99 and max', labelNames: ['quantile'], registers,
      collect() {
        // (no sample yet: 0, not the histogram's empty value). perf_hooks records each sample's interval,
        // the resolution included: the delay is what it took beyond that.
        const q = (v: number) => (loop.count > 0 && Number.isFinite(v) ? Math.max(0, v / 1e9 - LOOP_RESOLUTION_MS / 1e3) : 0);
        this.set({ quantile: '0.5' }, q(loop.percentile(50)));
        this.set({ quantile: '0.99' }, q(loop.percentile(99)));
        this.set({ quantile: '1' }, q(loop.max));
        loop.reset();
      },
    });
    new Gauge({
      name: 'llama_models_loaded', help: 'Models in memory: the one served, and replaced ones finishing their requests', labelNames: ['model'], registers,
      collect() {
        this.reset();
        for (const e of models.entries.values()) this.set({ model: e.alias }, 0);
        for (const e of models.live) this.inc({ model: e.alias });
      },
    });
    new Gauge({
      name: 'llama_requests_running', help: 'Requests generating now', labelNames: ['model'], registers,
      collect() {
        for (const e of models.entries.values()) this.set({ model: e.alias }, e.active);
      },
    });
  }

  /** Stops sampling the event loop (the server has closed). */
  close(): void {
    this.#loop.disable();
  }

  /** Counts a completed generation's tokens and timings. */
  account(alias: string, r: GenerationResult): void {
    this.promptTokens.inc({ model: alias }, r.usage.promptTokens);
    this.cachedTokens.inc({ model: alias }, r.usage.cachedTokens);
    this.completionTokens.inc({ model: alias }, r.usage.completionTokens);
    if (r.usage.completionTokens > 0) this.ttft.observe({ model: alias }, r.timings.timeToFirstTokenMs / 1000);
    if (r.timings.tokensPerSecond > 0) this.tps.set({ model: alias }, r.timings.tokensPerSecond);
  }

  readonly #counted = new WeakSet<FastifyRequest>();
  readonly #streams = new WeakSet<FastifyRequest>();

  /** Counts a request once, by route and status (the first count wins: a client that left is 499). */
  count(req: FastifyRequest, status: number): void {
    if (this.#counted.has(req)) return;
    this.#counted.add(req);
    this.requests.inc({ endpoint: endpointOf(req), status: String(status) });
  }

  /** A streamed answer counts itself when it ends (sse.ts). */
  streaming(req: FastifyRequest): void {
    this.#streams.add(req);
  }

  /** Counts every answer fastify sends, by route and status. */
  hook(app: FastifyInstance): void {
    app.addHook('onResponse', async (req, reply) => {
      if (!this.#streams.has(req)) this.count(req, reply.statusCode);
    });
  }
}
