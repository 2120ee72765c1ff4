// The one Server-Sent Events writer: a streamed answer leaves fastify's reply cycle (hijack), writes
// `data:` events, and ends with `data: [DONE]`; it counts itself in the metrics when it ends, with the
// status of an error sent in the stream, or 200.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { endpointOf, type Metrics } from './metrics.js';
import { toApiError } from './openai.js';

/** @internal */
export interface EventStream {
  /** Sends one event (an object as JSON, or a string as it is). */
  send(data: unknown): void;
  /** Sends the error as OpenAI's error body, to end the stream with. */
  fail(err: unknown): void;
  /** Sends [DONE] and ends the answer. */
  end(): void;
}

/** @internal */
export function eventStream(req: FastifyRequest, reply: FastifyReply, metrics: Metrics): EventStream {
  reply.hijack();
  reply.raw.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  let status = 200;
  const send = (data: unknown) => {
    if (!reply.raw.writableEnded) reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  return {
    send,
    fail(err) {
      const api = toApiError(err);
      status = api.status;
      send(api.body());
    },
    end() {
      send('[DONE]');
      reply.raw.end();
      metrics.requests.inc({ endpoint: endpointOf(req), status: String(status) });
    },
  };
}
