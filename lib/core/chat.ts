// LlamaChat: a conversation over a session, rendered with the chat template (llama.cpp's common), with tool
// calls, JSON-schema replies, and long conversations rendered and tokenized off the JS thread.
import { randomBytes } from 'node:crypto';
import {
  chatTemplateKey, checkMessage, checkMessages, parseArguments, publicMessage, type ChatMessage, type ToolCall,
} from './chat-template.js';
import type { LlamaContext } from './context.js';
import { LlamaError, callNative, callSite, llamaError, toLlamaError } from '../base/errors.js';
import type { GenerateOptions } from '../options/generate.js';
import type { Generation, GenerationResult } from './generation.js';
import { prepareJsonSchema, prepareJsonSchemaSoon, preparedGrammarAsync, type JsonSchema, type PreparedSchema } from '../schema/json-schema.js';
import type { LlamaModel } from './model.js';
import { ASYNC_TOKENIZE_CHARS } from '../base/limits.js';
import type { NativeChatApplied, NativeChatApplyOptions, NativeChatMessage, NativeChatTemplate, NativeGenerateOptions } from '../native/native.js';
import { commonPrefix } from './prompt.js';
import type { LateInput, LlamaSession } from './session.js';

/** Most tokens of a chat reply when `maxTokens` is not given: a reply always ends (context shift is on). */
export const DEFAULT_CHAT_MAX_TOKENS = 1024;
import { checkOptions, invalid, jsonArgument, optBoolean } from '../base/validate.js';
import { schemaText } from '../schema/prepare.js';

/** A tool (function) the model may call. */
export interface ChatTool {
  /** The name the model calls it by. */
  name: string;
  /** What it does, for the model. */
  description?: string;
  /** A JSON schema of its arguments (an object schema); the model's arguments are constrained to it. */
  parameters?: JsonSchema;
}

/** Whether and which tools the model may call: `'auto'` (it decides), `'none'`, `'required'`, or one by name. */
export type ToolChoice = 'auto' | 'none' | 'required' | { name: string };

/** Options of {@link LlamaChat.send}: generation options, plus tool choice for this turn. */
export interface ChatSendOptions extends GenerateOptions {
  /** Overrides the chat's `toolChoice` for this reply. */
  toolChoice?: ToolChoice;
  /** Overrides the chat's `parallelToolCalls` for this reply. */
  parallelToolCalls?: boolean;
}

/** The template's grammar with the checked schema's value rules put in. */
function spliceGrammar(schema: PreparedSchema, grammar: string, caller: Function): string {
  try {
    return schema.splice(grammar);
  } catch (e) {
    Error.captureStackTrace(e as Error, caller);
    throw e;
  }
}

/** The result of {@link LlamaChat.send}. `text` is the raw output; `content` is the reply without tool-call markup. */
export interface ChatResult extends GenerationResult {
  /** The reply's text, without tool calls or reasoning. */
  content: string;
  /** The reply's reasoning (thinking), for templates that mark it. */
  reasoning?: string;
  /** Tool calls the model made: answer each with {@link LlamaChat.addToolResult}, then `send()` again. */
  toolCalls: ToolCall[];
}

/** Options of {@link LlamaContext.createChat}. */
export interface ChatOptions {
  /** The system message the conversation starts with. */
  systemPrompt?: string;
  /**
   * Jinja source, or the name of one of llama.cpp's built-in templates (`'chatml'`, `'llama3'`, ...).
   * Default: the model's own `tokenizer.chat_template`, or ChatML when it has none.
   */
  template?: string;
  /**
   * When the conversation outgrows the context: `'auto'` (the default) drops the oldest tokens after the
   * system prompt and goes on; `false` stops with `stopReason: 'contextFull'` (see
   * {@link SessionOptions.contextShift}).
   */
  contextShift?: 'auto' | false;
  /** Earlier messages to continue from (after the system prompt, if one is given). */
  messages?: readonly ChatMessage[];
  /**
   * Tools the model may call. Their calls are formatted and parsed by llama.cpp's chat support for the
   * template (as llama-server does), with arguments constrained to each tool's `parameters` schema.
   */
  tools?: readonly ChatTool[];
  /** Default `'auto'`. */
  toolChoice?: ToolChoice;
  /** Let the model call several tools in one reply, where the template supports it (default false). */
  parallelToolCalls?: boolean;
  /**
   * Hold the conversation in this session (of the same context) instead of a new one; disposing the chat
   * then leaves the session alone. A server keeps a pool of sessions this way, so that a conversation's
   * next request reuses what its session already decoded.
   */
  session?: LlamaSession;
}

const chatKeys = ['systemPrompt', 'template', 'contextShift', 'messages', 'tools', 'toolChoice', 'parallelToolCalls', 'session'] as const;

function checkToolChoice(v: unknown, tools: readonly NativeTool[], caller: Function): ToolChoice | undefined {
  if (v === undefined) return undefined;
  if (v === 'auto' || v === 'none' || v === 'required') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { name?: unknown }).name === 'string') {
    const name = (v as { name: string }).name;
    if (!tools.some((t) => t.name === name)) throw invalid('toolChoice', `the name of one of the chat's tools (${tools.map((t) => t.name).join(', ') || 'none'})`, name, caller);
    return { name };
  }
  throw invalid('toolChoice', '"auto", "none", "required" or { name }', v, caller);
}

type NativeTool = NonNullable<NativeChatApplyOptions['tools']>[number];

/** Each tool's parameters, checked and with their validator: every call's arguments are validated. */
const toolSchemas = new WeakMap<NativeTool, PreparedSchema>();

function checkTools(v: unknown, caller: Function): NativeTool[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw invalid('tools', 'an array of { name, description?, parameters? }', v, caller);
  const names = new Set<string>();
  return v.map((t: unknown) => {
    const tool = t as Partial<ChatTool> | null;
    if (tool === null || typeof tool !== 'object' || typeof tool.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(tool.name)) {
      throw invalid('tools', 'tools with a name of letters, digits, "_", "." or "-"', t, caller);
    }
    if (names.has(tool.name)) throw invalid('tools', 'tools with distinct names', tool.name, caller);
    names.add(tool.name);
    if (tool.description !== undefined && typeof tool.description !== 'string') throw invalid('tools', 'a string description', tool.description, caller);
    const parameters = tool.parameters ?? { type: 'object', properties: {} };
    if (parameters === null || typeof parameters !== 'object' || Array.isArray(parameters)) {
      throw invalid('tools', 'parameters as a JSON schema object', parameters, caller);
    }
    let text: string;
    let prepared: PreparedSchema;
    try {
      text = schemaText(parameters);
      // The checking pass finds what no value can satisfy (minLength above maxLength...) before the
      // template's converter sees it; keywords it cannot enforce are left to the template (best effort).
      prepared = prepareJsonSchema(parameters, 'best-effort', caller);
    } catch (e) {
      // ERR_INVALID_SCHEMA (a cycle, a BigInt) or ERR_LIMIT_EXCEEDED (size, nesting), with the caller's stack
      const err = toLlamaError(e);
      Error.captureStackTrace(err, caller);
      throw err;
    }
    const native: NativeTool = { name: tool.name, description: tool.description ?? '', parameters: text };
    toolSchemas.set(native, prepared);
    return native;
  });
}

// Nine letters and digits: the strictest format templates check (Mistral's), accepted by all others.
function callId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(randomBytes(9), (b) => alphabet[b % alphabet.length]).join('');
}


function sameTokens(a: Int32Array, b: Int32Array): boolean {
  return a.length === b.length && commonPrefix(a, b) === a.length;
}

/** The tokenize calls a rendered conversation needs, in order, and the tokens they make (see below). */
function* conversationTokens(rendered: string, messages: readonly NativeChatMessage[]): Generator<TokenizeRequest, number[], Int32Array> {
  const untrusted = messages.filter((m) => (m.role === 'user' || m.role === 'tool') && m.content.length > 0);
  let injected = false;
  for (const m of untrusted) {
    const special = yield { text: m.content, special: true, addBos: false };
    const plain = yield { text: m.content, special: false, addBos: false };
    if (!sameTokens(special, plain)) {
      injected = true;
      break;
    }
  }
  if (!injected) return Array.from(yield { text: rendered, special: true, addBos: true });
  const out: number[] = [];
  let first = true;
  const pieces: Array<[string, boolean]> = [];
  const push = (text: string, special: boolean) => {
    if (text.length === 0 && !first) return;
    pieces.push([text, special]);
    first = false;
  };
  let pos = 0;
  for (const m of messages) {
    if (m.content.length === 0) continue;
    const plain = m.role === 'user' || m.role === 'tool';
    // Templates may trim a message; its text must still be found, or it could not be kept plain.
    let text = m.content;
    let at = rendered.indexOf(text, pos);
    if (at < 0 && text.trim().length > 0) {
      text = text.trim();
      at = rendered.indexOf(text, pos);
    }
    if (at < 0) {
      if (!plain) continue;
      throw new LlamaError(
        'ERR_INVALID_MESSAGE',
        `A ${m.role} message contains the text of a special token, and the chat template changes the message so that it cannot be kept as plain text`,
      );
    }
    push(rendered.slice(pos, at), true);
    push(text, !plain);
    pos = at + text.length;
  }
  push(rendered.slice(pos), true);
  for (const [i, [text, special]] of pieces.entries()) out.push(...(yield { text, special, addBos: i === 0 }));
  return out;
}

interface TokenizeRequest {
  text: string;
  special: boolean;
  addBos: boolean;
}

/**
 * Tokenizes a rendered conversation. The template's own text may hold special tokens (`<|im_start|>`);
 * message text written by users or tools never becomes one: when such a message contains the text of a
 * special token, the messages are tokenized as plain text, apart from the template around them.
 */
export function tokenizeConversation(model: LlamaModel, rendered: string, messages: readonly NativeChatMessage[]): number[] {
  const it = conversationTokens(rendered, messages);
  let step = it.next();
  while (!step.done) step = it.next(model.tokenize(step.value.text, { special: step.value.special, addBos: step.value.addBos }));
  return step.value;
}

/**
 * The native options a rendered template brings: its grammar (tools, or the chat's schema with the
 * checking pass's values put in), lazy triggers and generation prompt, and its preserved tokens.
 * @throws LlamaError ERR_INVALID_ARGUMENT when the caller gave a grammar of its own beside it.
 */
function templateOptions(
  applied: NativeChatApplied,
  applyOptions: NativeChatApplyOptions,
  schema: PreparedSchema | undefined,
  ownGrammar: string | undefined,
  caller: Function,
): Partial<NativeGenerateOptions> {
  const out: Partial<NativeGenerateOptions> = {};
  if (applied.grammar) {
    if (ownGrammar !== undefined) throw invalid('grammar', 'no grammar of your own when the chat has tools or a jsonSchema', ownGrammar, caller);
    Object.assign(out, {
      grammar: schema && applyOptions.jsonSchema !== undefined ? spliceGrammar(schema, applied.grammar, caller) : applied.grammar,
      grammarType: applyOptions.tools ? 'tools' : 'output',
      grammarLazy: applied.grammarLazy,
      grammarTriggers: applied.grammarTriggers,
      generationPrompt: applied.generationPrompt,
    });
  }
  if (applied.preservedTokens.length > 0) out.preservedTokens = applied.preservedTokens;
  return out;
}

/** {@link tokenizeConversation} off the JS thread (a long conversation). */
export async function tokenizeConversationAsync(model: LlamaModel, rendered: string, messages: readonly NativeChatMessage[]): Promise<number[]> {
  const it = conversationTokens(rendered, messages);
  let step = it.next();
  while (!step.done) step = it.next(await model.tokenizeAsync(step.value.text, { special: step.value.special, addBos: step.value.addBos }));
  return step.value;
}

/**
 * A conversation with the model, kept in one session: each {@link send} renders the conversation with the
 * chat template and decodes only what the session's KV cache does not hold yet (the new message, plus
 * whatever the template rendered differently).
 */
export class LlamaChat {
  #session: LlamaSession;
  // A caller's template is parsed off the JS thread: until then, the promise of it (createChat returns at
  // once; send() waits for it, and rejects with its error).
  #template: NativeChatTemplate | Promise<NativeChatTemplate>;
  #templateKey: string | null;
  #system: NativeChatMessage | null;
  #messages: NativeChatMessage[];
  #tools: NativeTool[];
  #toolChoice: ToolChoice;
  #parallel: boolean;
  #keep: { system: string; tokens: number[] } | null = null;
  #owned = true;
  #lastApplied: NativeChatApplied | null = null;

  /**
   * @internal Parses the raw text of the reply being generated (or of the finished one) as the template's
   * parser sees it: content, reasoning and tool calls with their arguments as raw text so far.
   */
  parseReply(text: string, partial: boolean): { content: string; reasoning: string; toolCalls: Array<{ name: string; arguments: string }> } {
    const a = this.#lastApplied;
    if (!a) return { content: text, reasoning: '', toolCalls: [] };
    try {
      const p = this.#parsed().parse(text, { parser: a.parser, format: a.format, generationPrompt: a.generationPrompt, partial });
      return { content: p.content, reasoning: p.reasoning, toolCalls: p.toolCalls.map((c) => ({ name: c.name, arguments: c.arguments })) };
    } catch {
      return { content: partial ? '' : text, reasoning: '', toolCalls: [] };
    }
  }

  private constructor(
    session: LlamaSession,
    template: NativeChatTemplate | Promise<NativeChatTemplate>,
    key: string | null,
    system: NativeChatMessage | null,
    messages: NativeChatMessage[],
    tools: NativeTool[],
    toolChoice: ToolChoice,
    parallel: boolean,
  ) {
    this.#session = session;
    this.#template = template;
    this.#templateKey = key;
    this.#system = system;
    this.#messages = messages;
    this.#tools = tools;
    this.#toolChoice = toolChoice;
    this.#parallel = parallel;
  }

  /** @internal use {@link LlamaContext.createChat} */
  static create(ctx: LlamaContext, options: ChatOptions | undefined, caller: Function): LlamaChat {
    const o = checkOptions('createChat', options, chatKeys, caller);
    if (o.systemPrompt !== undefined && typeof o.systemPrompt !== 'string') throw invalid('systemPrompt', 'a string', o.systemPrompt, caller);
    const key = chatTemplateKey(o.template, caller);
    if (o.contextShift !== undefined && o.contextShift !== 'auto' && o.contextShift !== false) {
      throw invalid('contextShift', '"auto" or false', o.contextShift, caller);
    }
    const earlier = o.messages === undefined ? [] : checkMessages(o.messages, caller);
    const tools = checkTools(o.tools, caller);
    const toolChoice = checkToolChoice(o.toolChoice, tools, caller) ?? 'auto';
    const parallel = optBoolean(o, 'parallelToolCalls', caller) ?? false;
    const template = ctx.model.chatTemplateSoon(key, caller);
    const system: NativeChatMessage | null = o.systemPrompt !== undefined ? { role: 'system', content: o.systemPrompt } : null;
    let session: LlamaSession;
    let owned = true;
    if (o.session !== undefined) {
      const given = o.session as LlamaSession;
      if (given === null || typeof given !== 'object' || given.context !== ctx || given.disposed) {
        throw invalid('session', 'a live session of this context', o.session, caller);
      }
      session = given;
      owned = false;
    } else {
      session = ctx.createSession({ contextShift: (o.contextShift as 'auto' | false | undefined) ?? 'auto' });
    }
    const chat = new LlamaChat(session, template, key, system, [...(system ? [system] : []), ...earlier], tools, toolChoice, parallel);
    chat.#owned = owned;
    return chat;
  }

  /** The conversation so far (copies). */
  get messages(): ChatMessage[] {
    return this.#messages.map(publicMessage);
  }

  /** The session that holds the conversation's KV cache. */
  get session(): LlamaSession {
    return this.#session;
  }

  /** The chat template's source (Jinja, or a built-in template's name or text). */
  get template(): string {
    return this.#template instanceof Promise ? (this.#templateKey ?? '') : this.#template.info().source;
  }

  /** The template, once parsed (send() waits for it; its error rejects the reply). */
  async #ready(): Promise<NativeChatTemplate> {
    if (this.#template instanceof Promise) this.#template = await this.#template;
    return this.#template;
  }

  /** The template where a reply has been rendered already, so it is parsed. */
  #parsed(): NativeChatTemplate {
    if (this.#template instanceof Promise) throw new LlamaError('ERR_NATIVE', 'The chat template is not parsed yet');
    return this.#template;
  }

  /** True once the chat (or its context) has been disposed. */
  get disposed(): boolean {
    return this.#session.disposed;
  }

  /** What context shift keeps of `tokens`: the system prompt (rendered alone, off the JS thread) or the BOS token. */
  async #keepForAsync(tokens: number[], messages: NativeChatMessage[], applyOptions: NativeChatApplyOptions): Promise<void> {
    const first = messages[0];
    if (first?.role === 'system' && this.#keep?.system !== first.content) {
      let sys: number[] = [];
      try {
        const applied = await (await this.#ready()).applyAsync([first], false, applyOptions);
        sys = await tokenizeConversationAsync(this.#session.context.model, applied.prompt, [first]);
      } catch {
        // a template that cannot render a lone system message keeps only the BOS token
      }
      this.#keep = { system: first.content, tokens: sys };
    }
    this.#keepTokens(tokens, messages);
  }

  #keepTokens(tokens: number[], messages: NativeChatMessage[]): void {
    const model = this.#session.context.model;
    let keep = model.vocab.bos !== null && tokens[0] === model.vocab.bos ? 1 : 0;
    if (messages[0]?.role === 'system' && this.#keep) keep = Math.max(keep, commonPrefix(tokens, this.#keep.tokens));
    this.#session.setAutoKeep(keep);
  }

  /**
   * Adds `message` (text is a user message) to the conversation and generates the assistant's reply
   * (at most `maxTokens`, default {@link DEFAULT_CHAT_MAX_TOKENS} = 1024; the result's `stopReason` is then
   * `'maxTokens'`),
   * which is added when it ends. Without a message, the model replies to the conversation as it is (after
   * tool results, say). Returns at once, like {@link LlamaSession.generate}; the result also has the reply's
   * `content` and `toolCalls`. With `jsonSchema`, the reply follows the schema and `json` holds it.
   *
   * A reply that ends with an error is not added, nor is the message that asked for it; an aborted reply
   * is added with the text generated so far (nothing, and the message is withdrawn, when there is none).
   *
   * The template renders off the JS thread: its errors (`ERR_INVALID_TEMPLATE`, `ERR_LIMIT_EXCEEDED`, and
   * `ERR_INVALID_MESSAGE` for text the template rewrites into special tokens) reject the result, with the
   * caller's stack, and withdraw the message.
   * @throws LlamaError `ERR_INVALID_MESSAGE` for a bad message, `ERR_INVALID_ARGUMENT` for a bad option,
   * `ERR_BUSY` while a reply is being generated; the chat is unchanged by a failed call.
   */
  send(message?: string | ChatMessage, options?: ChatSendOptions): Generation<ChatResult> {
    return this.#send(message, options, true, this.send);
  }

  /**
   * @internal send() for a caller that reads only the result (a server's answer that is not streamed): the
   * engine queues no chunks and wakes the JS thread only at the end, not at every step.
   */
  sendWhole(message?: string | ChatMessage, options?: ChatSendOptions): Generation<ChatResult> {
    return this.#send(message, options, false, this.sendWhole);
  }

  #send(message: string | ChatMessage | undefined, options: ChatSendOptions | undefined, stream: boolean, caller: Function): Generation<ChatResult> {
    if (this.#session.disposed) {
      throw llamaError('ERR_DISPOSED', 'The chat has been disposed', caller);
    }
    // (A session's generate() waits for an aborted generation to end; a chat cannot, since the reply that is
    // ending still joins the conversation before this message.)
    if (this.#session.busy) {
      throw llamaError('ERR_BUSY', 'Cannot send while the chat generates a reply: await its result first (a reply ended by break or abort() ends a moment later)', caller);
    }
    const added: NativeChatMessage[] =
      message === undefined ? [] : [typeof message === 'string' ? { role: 'user', content: message } : checkMessage(message, this.#messages.length, caller)];
    if (message === undefined && this.#messages.every((m) => m.role === 'system')) {
      throw invalid('message', 'a message (the conversation has none to reply to)', message, caller);
    }
    const { toolChoice: choiceOpt, parallelToolCalls, jsonSchema, schemaMode, ...generateOptions } = options ?? {};
    const choice = checkToolChoice(choiceOpt, this.#tools, caller) ?? this.#toolChoice;
    const parallel = parallelToolCalls === undefined ? this.#parallel : parallelToolCalls;
    if (typeof parallel !== 'boolean') throw invalid('parallelToolCalls', 'a boolean', parallel, caller);
    const applyOptions: NativeChatApplyOptions = {};
    if (this.#tools.length > 0) {
      applyOptions.tools = typeof choice === 'object' ? this.#tools.filter((t) => t.name === choice.name) : this.#tools;
      applyOptions.toolChoice = typeof choice === 'object' ? 'required' : choice;
      applyOptions.parallelToolCalls = parallel;
    }
    // The schema is checked before the template sees it; the template's converter gets it rewritten, and
    // the grammar it makes gets the values' rules (as in jsonSchemaToGrammar).
    let schemaSoon: PreparedSchema | Promise<PreparedSchema> | undefined;
    if (jsonSchema !== undefined) {
      if (generateOptions.grammar !== undefined) throw invalid('grammar', 'either grammar or jsonSchema, not both', generateOptions.grammar, caller);
      if (jsonSchema === null || (typeof jsonSchema !== 'object' && typeof jsonSchema !== 'boolean')) {
        throw invalid('jsonSchema', 'a JSON schema object', jsonSchema, caller);
      }
      if (schemaMode !== undefined && schemaMode !== 'strict' && schemaMode !== 'best-effort') {
        throw invalid('schemaMode', "'strict' or 'best-effort'", schemaMode, caller);
      }
      schemaSoon = prepareJsonSchemaSoon(jsonSchema, schemaMode ?? 'strict', caller);
      if (schemaSoon instanceof Promise) schemaSoon.catch(() => {}); // (read by #sendLater; a failure before it must not be an unhandled rejection)
    }
    // The template renders off the JS thread, whatever the conversation's size: a model's template is
    // untrusted code that may take up to its time limit, and llama.cpp's schema converter runs inside it.
    return this.#sendLater(added, applyOptions, schemaSoon, generateOptions, stream, caller);
  }

  /**
   * send() with the schema's checking pass, the template's render and the tokenizing off the JS thread:
   * the generation starts when they are done, and their errors come through its result (the message is
   * then withdrawn, as for any failed reply).
   */
  #sendLater(
    added: NativeChatMessage[],
    applyOptions: NativeChatApplyOptions,
    schemaSoon: PreparedSchema | Promise<PreparedSchema> | undefined,
    generateOptions: GenerateOptions,
    stream: boolean,
    caller: Function,
  ): Generation<ChatResult> {
    const atCaller = callSite(caller);
    const model = this.#session.context.model;
    const messages = [...this.#messages, ...added];
    const opts: GenerateOptions = { ...generateOptions, maxTokens: generateOptions.maxTokens ?? DEFAULT_CHAT_MAX_TOKENS };
    const own = opts.stop === undefined ? [] : typeof opts.stop === 'string' ? [opts.stop] : [...opts.stop];
    let applied: NativeChatApplied | undefined;
    let schema: PreparedSchema | undefined;
    // The render starts once start() has accepted the call: a call it refuses (busy, a bad option) leaves
    // nothing running behind it.
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const input = gate.then(async (): Promise<LateInput> => {
      try {
        schema = await schemaSoon;
        if (schema) {
          applyOptions.jsonSchema = schema.converterText;
          schema.warm();
        }
        const a = await (await this.#ready()).applyAsync(messages, true, applyOptions);
        const tokens = a.prompt.length >= ASYNC_TOKENIZE_CHARS ? await tokenizeConversationAsync(model, a.prompt, messages) : tokenizeConversation(model, a.prompt, messages);
        await this.#keepForAsync(tokens, messages, applyOptions);
        const late = templateOptions(a, applyOptions, schema, opts.grammar, caller);
        if (a.stops.length > 0) late.stop = [...own, ...a.stops];
        if (!a.grammar && schema) {
          // A template without a grammar of its own (a built-in one): the schema's grammar applies to the reply.
          Object.assign(late, { grammar: await preparedGrammarAsync(schema, caller), grammarType: 'output' });
        }
        applied = a;
        this.#lastApplied = a;
        return { tokens, options: late };
      } catch (e) {
        throw atCaller(e);
      }
    });
    const gen = this.#session.start<ChatResult>(input, opts, stream, caller, (r) => (applied ? this.#replied(added, applied, schema, r) : this.#withdraw(added, r)));
    this.#messages = messages;
    open();
    return gen;
  }

  /** Takes the messages of a reply that failed (or was aborted before its first token) back. */
  #withdraw(added: NativeChatMessage[], r: GenerationResult | LlamaError): ChatResult | LlamaError {
    for (const m of [...added].reverse()) {
      const i = this.#messages.lastIndexOf(m);
      if (i >= 0) this.#messages.splice(i, 1);
    }
    if (r instanceof LlamaError) return r;
    return { ...r, content: '', toolCalls: [] };
  }

  #replied(added: NativeChatMessage[], applied: NativeChatApplied, schema: PreparedSchema | undefined, r: GenerationResult | LlamaError): ChatResult | LlamaError | Promise<ChatResult | LlamaError> {
    if (r instanceof LlamaError || (r.stopReason === 'abort' && r.text.length === 0)) return this.#withdraw(added, r);
    let parsed: ReturnType<NativeChatTemplate['parse']>;
    try {
      parsed = this.#parsed().parse(r.text, {
        parser: applied.parser,
        format: applied.format,
        generationPrompt: applied.generationPrompt,
        partial: r.stopReason !== 'eog' && r.stopReason !== 'stop',
      });
    } catch {
      parsed = { content: r.text, reasoning: '', toolCalls: [] };
    }
    const all = parsed.toolCalls.map((c) => ({ id: c.id || callId(), name: c.name, arguments: c.arguments }));
    // Every call's arguments are validated against its tool's parameters, as every json value is: llama.cpp's
    // converter builds the grammar for tool calls from the schema as given, and enforces what it can.
    const partial = r.stopReason !== 'eog' && r.stopReason !== 'stop';
    const finish = (errors: Array<LlamaError | null>): ChatResult | LlamaError | Promise<ChatResult | LlamaError> => {
      // A reply cut short (maxTokens, an abort) keeps its last call only when that call is whole and valid.
      const calls = partial && errors.length > 0 && errors[errors.length - 1] !== null ? all.slice(0, -1) : all;
      const bad = errors.slice(0, calls.length).find((e) => e !== null);
      const message: NativeChatMessage = { role: 'assistant', content: parsed.content };
      if (calls.length > 0) message.toolCalls = calls;
      if (parsed.reasoning) message.reasoning = parsed.reasoning;
      this.#messages.push(message);
      if (bad) return bad;
      const result: ChatResult = {
        ...r,
        content: parsed.content,
        toolCalls: calls.map((c) => ({ id: c.id, name: c.name, arguments: parseArguments(c.arguments) })),
        ...(parsed.reasoning ? { reasoning: parsed.reasoning } : {}),
      };
      return schema ? this.#checkJson(result, parsed.content, schema, r) : result;
    };
    const checks = all.map((c) => this.#checkCall(c.name, c.arguments, r.stopReason));
    if (checks.some((x) => x instanceof Promise)) return Promise.all(checks).then(finish);
    return finish(checks as Array<LlamaError | null>);
  }

  /** Null when a call's arguments are a JSON object that its tool's parameters accept; else the error. */
  #checkCall(name: string, args: string, stopReason: string): LlamaError | null | Promise<LlamaError | null> {
    const tool = this.#tools.find((t) => t.name === name);
    if (!tool) {
      return new LlamaError('ERR_SCHEMA_MISMATCH', `The reply calls the tool "${name}", which the chat does not offer (it offers ${this.#tools.map((t) => `"${t.name}"`).join(', ') || 'none'})`);
    }
    let value: unknown;
    try {
      value = JSON.parse(args);
    } catch {
      if (stopReason !== 'eog' && stopReason !== 'stop') {
        return new LlamaError('ERR_INCOMPLETE_OUTPUT', `The reply ended (stopReason "${stopReason}") inside the arguments of its call to "${name}"`);
      }
      return new LlamaError('ERR_SCHEMA_MISMATCH', `The arguments of the call to "${name}" are not JSON: ${JSON.stringify(args.slice(0, 80))}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return new LlamaError('ERR_SCHEMA_MISMATCH', `The arguments of the call to "${name}" are not a JSON object: ${JSON.stringify(args.slice(0, 80))}`);
    }
    const prepared = toolSchemas.get(tool);
    if (!prepared) return null;
    const named = (e: LlamaError | null) => (e === null ? null : Object.assign(new LlamaError(e.code, `The arguments of the call to "${name}": ${e.message}`), { pointer: (e as { pointer?: string }).pointer, keyword: (e as { keyword?: string }).keyword }));
    const checked = prepared.check(value);
    return checked instanceof Promise ? checked.then(named) : named(checked);
  }

  #checkJson(result: ChatResult, content: string, schema: PreparedSchema, r: GenerationResult): ChatResult | LlamaError | Promise<ChatResult | LlamaError> {
    if (result.json === undefined) {
      try {
        result.json = JSON.parse(content) as unknown;
      } catch {
        return new LlamaError('ERR_INCOMPLETE_OUTPUT', `The reply is not complete JSON (stopReason "${r.stopReason}")`);
      }
      // Every json handed back has been validated against its schema.
      const mismatch = schema.check(result.json);
      if (mismatch instanceof Promise) return mismatch.then((e) => e ?? result);
      if (mismatch) return mismatch;
    }
    return result;
  }

  /**
   * Adds a tool's result to the conversation, answering the tool call `id` of the last reply; then
   * `send()` (without a message) lets the model go on. Objects are sent as JSON.
   * @throws LlamaError `ERR_INVALID_ARGUMENT` when no call of the conversation has this id.
   */
  addToolResult(id: string, result: unknown): void {
    const call = this.#messages.flatMap((m) => m.toolCalls ?? []).find((c) => c.id === id);
    if (!call) throw invalid('id', 'the id of a tool call in this conversation', id, this.addToolResult);
    if (this.#session.busy) {
      throw llamaError('ERR_BUSY', 'Cannot add a tool result while the chat generates', this.addToolResult);
    }
    const content = typeof result === 'string' ? result : jsonArgument(result ?? null, 'result', this.addToolResult);
    this.#messages.push({ role: 'tool', content, toolCallId: id, toolName: call.name });
  }

  /** Starts the conversation over from the system prompt (the cached system prompt is reused). */
  reset(): void {
    if (this.#session.busy) {
      throw llamaError('ERR_BUSY', 'Cannot reset a chat while it generates: abort the reply first', this.reset);
    }
    this.#messages = this.#system ? [this.#system] : [];
  }

  /**
   * A new chat with a copy of this conversation and of its KV cache; the two share nothing afterwards.
   * @throws LlamaError `ERR_NO_SEQUENCE` when the context has no free sequence.
   */
  fork(): LlamaChat {
    const session = this.#session.fork();
    const copy = (m: NativeChatMessage): NativeChatMessage => ({ ...m, ...(m.toolCalls ? { toolCalls: m.toolCalls.map((c) => ({ ...c })) } : {}) });
    const chat = new LlamaChat(session, this.#template, this.#templateKey, this.#system, this.#messages.map(copy), this.#tools, this.#toolChoice, this.#parallel);
    chat.#keep = this.#keep;
    return chat;
  }

  /**
   * Frees the chat's session (a reply being generated ends with `stopReason: 'abort'`); a session given
   * with the `session` option is left to its owner.
   */
  dispose(): void {
    if (this.#owned) this.#session.dispose();
  }

  /** Same as {@link dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
