// POST /v1/chat/completions: OpenAI's chat completions over the model's chat template (tools, JSON
// schemas through response_format, log-probabilities, streaming); each conversation keeps its session and
// KV cache between requests (lib/server/registry.ts).
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { ChatResult, ChatTool, ToolChoice } from '../../core/chat.js';
import type { ChatMessage } from '../../core/chat-template.js';
import type { Generation } from '../../core/generation.js';
import { prepareJsonSchemaSoon, type JsonSchema } from '../../schema/json-schema.js';
import { jsonDepth, prototypeKeyPath } from '../limits.js';
import { ApiError, chatCompletionSchema } from '../openai.js';
import { eventStream } from '../sse.js';
import { finishReason, newId, openaiLogprobs, requestOptions, responseSchema, state, usage, withRequest } from '../state.js';

const conversationKey = (messages: ReadonlyArray<{ role: string; content: string }>) =>
  createHash('sha256').update(JSON.stringify(messages.map((m) => [m.role, m.content]))).digest('hex');

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p: { text?: string }) => p.text ?? '').join('');
  return '';
}

export async function chatRoutes(app: FastifyInstance): Promise<void> {
  const s = state(app);
  app.post('/v1/chat/completions', { schema: { body: chatCompletionSchema } }, async function chatCompletions(req, reply) {
    const { maxBodyDepth } = s.options;
    const body = req.body as Record<string, unknown> & { messages: Array<Record<string, unknown>> };
    const jsonSchema = responseSchema(body);
    // A large schema's checking pass runs on the validator's worker thread (the chat then finds it cached),
    // before the request takes its model: a reload meanwhile must not free the model it would use.
    if (jsonSchema !== undefined) await prepareJsonSchemaSoon(jsonSchema, 'strict', chatCompletions);
    const e = s.models.entryFor(body.model as string | undefined);
    const id = newId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const messages: ChatMessage[] = body.messages.map((m) => {
      const role = m.role === 'developer' ? 'system' : (m.role as ChatMessage['role']);
      const out: ChatMessage = { role, content: textOf(m.content) };
      if (Array.isArray(m.tool_calls)) {
        out.toolCalls = (m.tool_calls as Array<{ id: string; function: { name: string; arguments: string } }>).map((c) => {
          let args: Record<string, unknown>;
          if (jsonDepth(c.function.arguments, maxBodyDepth) > maxBodyDepth) {
            throw new ApiError(400, `messages: the arguments of tool call ${c.id} nest more than ${maxBodyDepth} levels deep`, 'invalid_request_error', 'messages', 'body_too_deep');
          }
          try {
            args = JSON.parse(c.function.arguments) as Record<string, unknown>;
            if (args === null || typeof args !== 'object' || Array.isArray(args)) throw new Error('not an object');
          } catch {
            throw new ApiError(400, `messages: the arguments of tool call ${c.id} are not a JSON object`, 'invalid_request_error', 'messages');
          }
          // The arguments are JSON inside the body's JSON: the same keys are refused there as anywhere.
          const poison = prototypeKeyPath(args);
          if (poison !== null) {
            throw new ApiError(400, `messages: the arguments of tool call ${c.id} have the key "${poison}", which this server refuses (it could change an object's prototype)`, 'invalid_request_error', 'messages', 'forbidden_key');
          }
          return { id: c.id, name: c.function.name, arguments: args };
        });
      }
      if (typeof m.tool_call_id === 'string') out.toolCallId = m.tool_call_id;
      if (role === 'tool' && typeof m.name === 'string') out.name = m.name;
      return out;
    });
    const last = messages[messages.length - 1];
    const history = last.role === 'user' ? messages.slice(0, -1) : messages;
    const tools: ChatTool[] | undefined = (body.tools as Array<{ function: { name: string; description?: string; parameters?: JsonSchema } }> | undefined)?.map((t) => ({
      name: t.function.name,
      ...(t.function.description !== undefined ? { description: t.function.description } : {}),
      ...(t.function.parameters !== undefined ? { parameters: t.function.parameters } : {}),
    }));
    const tc = body.tool_choice as string | { function: { name: string } } | undefined;
    const toolChoice: ToolChoice | undefined = tc === undefined ? undefined : typeof tc === 'string' ? (tc as ToolChoice) : { name: tc.function.name };
    if (toolChoice !== undefined && toolChoice !== 'auto' && toolChoice !== 'none' && !tools?.length) {
      throw new ApiError(400, `tool_choice ${JSON.stringify(body.tool_choice)} needs tools, but the request has none`, 'invalid_request_error', 'tool_choice');
    }
    const wantLogprobs = body.logprobs === true;
    // OpenAI's rule: top_logprobs asks for alternatives of the log-probabilities that logprobs turns on.
    if (body.top_logprobs !== undefined && body.top_logprobs !== null && !wantLogprobs) {
      throw new ApiError(400, 'top_logprobs needs logprobs: true', 'invalid_request_error', 'top_logprobs');
    }
    const streaming = body.stream === true;
    // The conversation this request continues: its messages before the new one.
    const key = history.length > 0 ? conversationKey(history) : null;
    const rkey = s.responses.key(e, 'chat', body);
    const hit = s.responses.get(e, rkey, reply);
    if (hit !== undefined) return hit;
    return withRequest(s, req, reply, e, key, async (session, signal, started) => {
      const chat = e.ctx!.createChat({
        session,
        messages: history,
        ...(tools?.length ? { tools, toolChoice: toolChoice ?? 'auto', parallelToolCalls: body.parallel_tool_calls === true } : {}),
      });
      const opts = {
        ...requestOptions(s, body, signal, e.model!.vocab.size),
        ...(wantLogprobs ? { logprobs: (body.top_logprobs as number | undefined) ?? 0 } : {}),
        ...(jsonSchema !== undefined ? { jsonSchema } : {}),
      };
      // (An answer that is not streamed is read whole: the engine wakes the JS thread only at its end.)
      const message = last.role === 'user' ? last : undefined;
      const gen: Generation<ChatResult> = streaming ? chat.send(message, opts) : chat.sendWhole(message, opts);
      started();
      const finish = (r: ChatResult) => {
        s.metrics.account(e.alias, r);
        const reply = { role: 'assistant' as const, content: r.content };
        e.keys.set(session, conversationKey([...history, ...(last.role === 'user' ? [last] : []), reply]));
      };
      if (!streaming) {
        const r = await gen.result;
        finish(r);
        const toolCalls = r.toolCalls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) } }));
        const response = {
          id,
          object: 'chat.completion',
          created,
          model: e.alias,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: toolCalls.length && !r.content ? null : r.content, ...(toolCalls.length ? { tool_calls: toolCalls } : {}), ...(r.reasoning ? { reasoning_content: r.reasoning } : {}) },
              logprobs: wantLogprobs ? { content: openaiLogprobs(r.logprobs) ?? [] } : null,
              finish_reason: finishReason(r, toolCalls.length),
            },
          ],
          usage: usage(r),
        };
        if (r.stopReason !== 'abort') s.responses.set(rkey, response);
        return response;
      }
      const opening = () => ({ id, object: 'chat.completion.chunk', created, model: e.alias, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
      const stream = eventStream(req, reply, s.metrics, opening);
      const send = stream.send;
      const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) =>
        send({ id, object: 'chat.completion.chunk', created, model: e.alias, choices: [{ index: 0, delta, logprobs: extra.logprobs ?? null, finish_reason: finish }] });
      // With tools, the raw text holds the call markup: the template's parser reads what has come so far,
      // and the differences go out as content and tool-call deltas, as OpenAI streams them.
      const live = !tools?.length;
      let raw = '';
      let sentContent = '';
      const sentCalls: Array<{ id: string; name: string; args: string }> = [];
      const emitParsed = (partial: boolean) => {
        const p = chat.parseReply(raw, partial);
        if (p.content.startsWith(sentContent) && p.content.length > sentContent.length) {
          chunk({ content: p.content.slice(sentContent.length) }, null);
          sentContent = p.content;
        }
        p.toolCalls.forEach((c, index) => {
          if (!c.name) return;
          let sent = sentCalls[index];
          if (!sent) {
            sent = { id: `call${createHash('sha1').update(`${id}${index}`).digest('hex').slice(0, 5)}`, name: c.name, args: '' };
            sentCalls[index] = sent;
            chunk({ tool_calls: [{ index, id: sent.id, type: 'function', function: { name: c.name, arguments: '' } }] }, null);
          }
          if (c.arguments.startsWith(sent.args) && c.arguments.length > sent.args.length) {
            chunk({ tool_calls: [{ index, function: { arguments: c.arguments.slice(sent.args.length) } }] }, null);
            sent.args = c.arguments;
          }
        });
      };
      try {
        for await (const c of gen) {
          if (live && c.text) chunk({ content: c.text }, null, wantLogprobs ? { logprobs: { content: openaiLogprobs(c.logprobs) } } : {});
          if (!live && c.text) {
            raw += c.text;
            emitParsed(true);
          }
        }
        const r = await gen.result;
        finish(r);
        if (!live) {
          emitParsed(false);
          chunk({}, finishReason(r, sentCalls.length));
        } else {
          chunk({}, finishReason(r));
        }
        if ((body.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
          send({ id, object: 'chat.completion.chunk', created, model: e.alias, choices: [], usage: usage(r) });
        }
      } catch (err) {
        stream.fail(err);
      }
      stream.end();
      return reply;
    });
  });
}
