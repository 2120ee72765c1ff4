// POST /v1/completions: OpenAI's (legacy) text completions, with log-probabilities and streaming.
import type { FastifyInstance } from 'fastify';
import type { GenerationResult, TokenLogprob } from '../../core/generation.js';
import { ApiError, completionSchema } from '../openai.js';
import { eventStream } from '../sse.js';
import { prepareJsonSchemaSoon } from '../../schema/json-schema.js';
import { finishReason, newId, requestOptions, responseSchema, state, usage, withRequest } from '../state.js';

/** OpenAI's usage of a response with a choice per prompt: the sums of theirs. */
function summed(results: readonly GenerationResult[]) {
  const all = results.map(usage);
  const sum = (f: (u: ReturnType<typeof usage>) => number) => all.reduce((n, u) => n + f(u), 0);
  return {
    prompt_tokens: sum((u) => u.prompt_tokens),
    completion_tokens: sum((u) => u.completion_tokens),
    total_tokens: sum((u) => u.total_tokens),
    prompt_tokens_details: { cached_tokens: sum((u) => u.prompt_tokens_details.cached_tokens) },
  };
}

export async function completionRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);
  app.post('/v1/completions', { schema: { body: completionSchema } }, async function completions(req, reply) {
    const body = req.body as Record<string, unknown>;
    // A large schema's checking pass runs on the validator's worker thread, before the request takes its model.
    const jsonSchema = responseSchema(body);
    if (jsonSchema !== undefined) await prepareJsonSchemaSoon(jsonSchema, 'strict', completions);
    const e = s.models.entryFor(body.model as string | undefined);
    // OpenAI's four forms of prompt: a string, token ids, or a list of either; one choice per prompt.
    const raw = body.prompt as string | number[] | Array<string | number[]>;
    const prompts: Array<string | number[]> = typeof raw === 'string' || typeof raw[0] === 'number' ? [raw as string | number[]] : (raw as Array<string | number[]>);
    const vocab = e.model!.vocab.size;
    prompts.forEach((p, i) => {
      if (typeof p === 'string') return;
      const j = p.findIndex((t) => !(Number.isInteger(t) && t >= 0 && t < vocab));
      if (j >= 0) {
        const which = prompts.length === 1 && raw === p ? 'prompt' : `prompt ${i}`;
        throw new ApiError(400, `${which}: expected a token id from 0 to ${vocab - 1} at index ${j}, received ${p[j]}`, 'invalid_request_error', 'prompt');
      }
    });
    const id = newId('cmpl');
    const created = Math.floor(Date.now() / 1000);
    const logprobs = typeof body.logprobs === 'number' ? body.logprobs : undefined;
    const rkey = s.responses.key(e, 'completions', body);
    const hit = s.responses.get(e, rkey, reply);
    if (hit !== undefined) return hit;
    return withRequest(s, req, reply, e, null, async (session, signal, started) => {
      const options = () => ({ ...requestOptions(s, body, signal, vocab), ...(logprobs !== undefined ? { logprobs } : {}), ...(jsonSchema !== undefined ? { jsonSchema } : {}) });
      // (started() once the first prompt's generation is queued; the next ones go one after another.)
      const launched = <T>(x: T): T => (started(), x);
      const run = (p: string | number[]) => launched(session.generate(p, options()));
      // An answer that is not streamed is read whole: the engine wakes the JS thread only at its end.
      const whole = (p: string | number[]) => launched(session.complete(p, options()));
      // OpenAI's legacy log-probabilities; text_offset is each token's offset in the choice's text (in
      // UTF-16 code units, as JavaScript and Python index strings), counted from `start` across chunks.
      const legacy = (lp: TokenLogprob[] | undefined, start = 0) => {
        if (!lp) return null;
        let at = start;
        return {
          tokens: lp.map((p) => p.text),
          token_logprobs: lp.map((p) => p.logprob),
          top_logprobs: lp.map((p) => Object.fromEntries(p.top.map((a) => [a.text, a.logprob]))),
          text_offset: lp.map((p) => ((at += p.text.length), at - p.text.length)),
        };
      };
      if (body.stream !== true) {
        const choices = [];
        const results: GenerationResult[] = [];
        let aborted = false;
        for (const [index, p] of prompts.entries()) {
          const r = await whole(p);
          s.metrics.account(e.alias, r);
          choices.push({ text: r.text, index, logprobs: legacy(r.logprobs), finish_reason: finishReason(r) });
          results.push(r);
          if (r.stopReason === 'abort') {
            aborted = true;
            break;
          }
        }
        const response = { id, object: 'text_completion', created, model: e.alias, choices, usage: summed(results) };
        if (!aborted) s.responses.set(rkey, response);
        return response;
      }
      const stream = eventStream(req, reply, s.metrics);
      const send = stream.send;
      try {
        const results: GenerationResult[] = [];
        for (const [index, p] of prompts.entries()) {
          const gen = run(p);
          let offset = 0;
          for await (const c of gen) {
            if (!c.text) continue;
            send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: c.text, index, logprobs: legacy(c.logprobs, offset), finish_reason: null }] });
            offset += c.text.length;
          }
          const r = await gen.result;
          s.metrics.account(e.alias, r);
          send({ id, object: 'text_completion', created, model: e.alias, choices: [{ text: '', index, logprobs: null, finish_reason: finishReason(r) }] });
          results.push(r);
          if (r.stopReason === 'abort') break;
        }
        // OpenAI's last chunk with the usage, when asked for (as chat completions do).
        if ((body.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
          send({ id, object: 'text_completion', created, model: e.alias, choices: [], usage: summed(results) });
        }
      } catch (err) {
        stream.fail(err);
      }
      stream.end();
      return reply;
    });
  });
}
