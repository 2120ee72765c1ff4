// POST /v1/completions: OpenAI's (legacy) text completions, with log-probabilities and streaming.
import type { FastifyInstance } from 'fastify';
import type { TokenLogprob } from '../../core/generation.js';
import { completionSchema } from '../openai.js';
import { eventStream } from '../sse.js';
import { finishReason, newId, requestOptions, state, usage, withRequest } from '../state.js';

export async function completionRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);
  app.post('/v1/completions', { schema: { body: completionSchema } }, async (req, reply) => {
    const body = req.body as Record<string, unknown>;
    const e = s.models.entryFor(body.model as string | undefined);
    const prompt = typeof body.prompt === 'string' ? body.prompt : (body.prompt as string[])[0];
    const id = newId('cmpl');
    const created = Math.floor(Date.now() / 1000);
    const logprobs = typeof body.logprobs === 'number' ? body.logprobs : undefined;
    const rkey = s.responses.key(e, 'completions', body);
    const hit = s.responses.get(e, rkey, reply);
    if (hit !== undefined) return hit;
    return withRequest(s, req, reply, e, null, async (session, signal) => {
      const gen = session.generate(prompt, { ...requestOptions(s, body, signal, e.model!.vocab.size), ...(logprobs !== undefined ? { logprobs } : {}) });
      const legacy = (lp: TokenLogprob[] | undefined) =>
        lp && {
          tokens: lp.map((p) => p.text),
          token_logprobs: lp.map((p) => p.logprob),
          top_logprobs: lp.map((p) => Object.fromEntries(p.top.map((a) => [a.text, a.logprob]))),
        };
      if (body.stream !== true) {
        const r = await gen.result;
        s.metrics.account(e.alias, r);
        const response = {
          id, object: 'text_completion', created, model: e.alias,
          choices: [{ text: r.text, index: 0, logprobs: legacy(r.logprobs) ?? null, finish_reason: finishReason(r) }],
          usage: usage(r),
        };
        if (r.stopReason !== 'abort') s.responses.set(rkey, response);
        return response;
      }
      const stream = eventStream(req, reply, s.metrics);
      const send = stream.send;
      try {
        for await (const c of gen) {
          if (c.text) send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: c.text, index: 0, logprobs: legacy(c.logprobs) ?? null, finish_reason: null }] });
        }
        const r = await gen.result;
        s.metrics.account(e.alias, r);
        send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: '', index: 0, logprobs: null, finish_reason: finishReason(r) }] });
        // OpenAI's last chunk with the usage, when asked for (as chat completions do).
        if ((body.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
          send({ id, object: 'text_completion', created, model: e.alias, choices: [], usage: usage(r) });
        }
      } catch (err) {
        stream.fail(err);
      }
      stream.end();
      return reply;
    });
  });
}
