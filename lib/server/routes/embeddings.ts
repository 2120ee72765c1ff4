// POST /v1/embeddings: vectors from a context of the model made for embeddings (created on first use).
import type { FastifyInstance } from 'fastify';
import type { LlamaContext } from '../../core/context.js';
import { ApiError, embeddingSchema } from '../openai.js';
import type { Entry } from '../registry.js';
import { state } from '../state.js';

export async function embeddingRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);
  app.post('/v1/embeddings', { schema: { body: embeddingSchema } }, async (req) => {
    const body = req.body as { model?: string; input: string | string[] | number[] | number[][]; encoding_format?: 'float' | 'base64'; dimensions?: number };
    const e = s.models.entryFor(body.model);
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
      s.models.disposeIfRetired(e);
    }
  });

  async function embedWith(e: Entry, ctx: LlamaContext, body: { input: string | string[] | number[] | number[][]; encoding_format?: 'float' | 'base64'; dimensions?: number }) {
    const raw: Array<string | number[]> =
      typeof body.input === 'string' ? [body.input] : typeof body.input[0] === 'number' ? [body.input as number[]] : (body.input as Array<string | number[]>);
    // Token ids are checked as numbers, before they become 32-bit integers (2^32 + 5 must not be token 5).
    const vocab = e.model!.vocab.size;
    raw.forEach((x, i) => {
      if (typeof x === 'string') return;
      const id = x.find((t) => !(Number.isInteger(t) && t >= 0 && t < vocab));
      if (id !== undefined) throw new ApiError(400, `input ${i} holds the token id ${id}, outside the vocabulary (0 to ${vocab - 1})`, 'invalid_request_error', 'input');
    });
    const tokens = raw.map((x) => (typeof x === 'string' ? e.model!.tokenize(x) : Int32Array.from(x)));
    const vectors = await ctx.embed(tokens);
    if (body.dimensions !== undefined && body.dimensions !== vectors[0]?.length) {
      throw new ApiError(400, `This model's embeddings have ${vectors[0]?.length} dimensions`, 'invalid_request_error', 'dimensions');
    }
    const n = tokens.reduce((s, t) => s + t.length, 0);
    s.metrics.promptTokens.inc({ model: e.alias }, n);
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
}
