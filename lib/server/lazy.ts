// The package's entry point for the server: fastify and prom-client (about half a second to import) load on
// the first call, not when `llama-addon` is imported.
import type { LlamaServer, ServerOptions } from './server.js';

/**
 * Starts the OpenAI-compatible server (README, *OpenAI-compatible server*): resolves once it listens.
 * Its dependencies load on the first call.
 * @throws LlamaError `ERR_INVALID_ARGUMENT` for a bad option; the errors of `loadModel` for its models.
 */
export async function startServer(options: ServerOptions): Promise<LlamaServer> {
  const server = await import('./server.js');
  return server.startServer(options);
}
