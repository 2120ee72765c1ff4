// POST /admin/reload: serve another file (or the same one again) under an alias, without a restart. Off
// unless the server has an API key (then behind it) or admin: true.
import type { FastifyInstance } from 'fastify';
import { ApiError } from '../openai.js';
import { state } from '../state.js';

export async function adminRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);
  app.post(
    '/admin/reload',
    {
      preHandler: async () => {
        if (!s.options.apiKey && !s.options.admin) {
          throw new ApiError(403, 'The admin endpoint is off: start the server with an API key, or with admin: true (--admin)', 'invalid_request_error', null, 'admin_disabled');
        }
      },
      schema: { body: { type: 'object', required: ['model'], properties: { model: { type: 'string' }, path: { type: 'string', minLength: 1 } } } },
    },
    async (req) => {
      const body = req.body as { model: string; path?: string };
      try {
        return await s.models.reload(body.model, body.path);
      } catch (err) {
        if (err instanceof ApiError) throw err;
        throw new ApiError(400, `The model could not be loaded (the old one stays): ${(err as Error).message}`, 'invalid_request_error', 'path', 'model_load_failed');
      }
    },
  );
}
