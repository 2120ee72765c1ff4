// GET /, /health, /metrics and /v1/models: the chat page, readiness, Prometheus metrics and the models
// served (with their versions and fingerprints).
import type { FastifyInstance } from 'fastify';
import { chatPage } from '../page.js';
import { state } from '../state.js';

export async function modelRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);

  app.get('/', async (_req, reply) => {
    void reply.header('Content-Type', 'text/html; charset=utf-8');
    return chatPage;
  });

  app.get('/health', async (_req, reply) => {
    const entries = [...s.models.entries.values()];
    for (const e of entries) s.models.checkAlive(e);
    const states = entries.map((e) => e.state);
    if (states.includes('error')) return reply.status(500).send({ status: 'error', models: Object.fromEntries(entries.map((e) => [e.alias, e.state])) });
    if (states.includes('loading')) return reply.status(503).send({ status: 'loading' });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_req, reply) => {
    void reply.header('Content-Type', s.metrics.registry.contentType);
    return s.metrics.registry.metrics();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [...s.models.entries.values()].map((e) => ({
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
}
