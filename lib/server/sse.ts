// The one Server-Sent Events writer. The stream opens on its first event: an error before it (a template
// or tokenizer error of a long prompt, found off the JS thread) is still an HTTP error status, as for a
// short prompt. Once open, the answer leaves fastify's reply cycle (hijack), writes `data:` events, and
// ends with `data: [DONE]`; it counts itself in the metrics when it ends, with the status of an error sent
// in the stream, or 200.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Metrics } from './metrics.js';
import { toApiError } from './openai.js';

/** @internal */
export interface EventStream {
  /** Sends one event (an object as JSON, or a string as it is), opening the stream first. */
  send(data: unknown): void;
  /** An error: sent as OpenAI's error body when the stream is open; thrown (an HTTP error) when it is not. */
  fail(err: unknown): void;
  /** Sends [DONE] and ends the answer. */
  end(): void;
}

/** `opening`: the first event, sent when the stream opens (the chat's role chunk). @internal */
export function eventStream(req: FastifyRequest, reply: FastifyReply, metrics: Metrics, opening?: () => unknown): EventStream {
  let open = false;
  let status = 200;
  const write = (data: unknown) => {
    if (!reply.raw.writableEnded) reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  const start = () => {
    if (open) return;
    open = true;
    metrics.streaming(req);
    reply.hijack();
    reply.raw.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
    if (opening) write(opening());
  };
  return {
    send(data) {
      start();
      write(data);
    },
    fail(err) {
      if (!open) throw err;
      const api = toApiError(err);
      status = api.status;
      write(api.body());
    },
    end() {
      start();
      write('[DONE]');
      reply.raw.end();
      metrics.count(req, status);
    },
  };
}
