import { chatTemplateKey, checkMessage, checkMessages, type ChatMessage } from './chat-template.js';
import type { LlamaContext } from './context.js';
import { LlamaError, callNative } from './errors.js';
import type { GenerateOptions } from './generate-options.js';
import type { Generation, GenerationResult } from './generation.js';
import type { LlamaModel } from './model.js';
import type { NativeChatMessage, NativeChatTemplate } from './native.js';
import type { LlamaSession } from './session.js';
import { checkOptions, invalid } from './validate.js';

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
}

const chatKeys = ['systemPrompt', 'template', 'contextShift', 'messages'] as const;

function commonPrefix(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
  return a.length === b.length && commonPrefix(a, b) === a.length;
}

/**
 * Tokenizes a rendered conversation. The template's own text may hold special tokens (`<|im_start|>`);
 * message text written by users or tools never becomes one: when such a message contains the text of a
 * special token, the messages are tokenized as plain text, apart from the template around them.
 */
export function tokenizeConversation(model: LlamaModel, rendered: string, messages: readonly NativeChatMessage[]): number[] {
  const untrusted = messages.filter((m) => (m.role === 'user' || m.role === 'tool') && m.content.length > 0);
  const injected = untrusted.some(
    (m) => !sameTokens(model.tokenize(m.content, { special: true, addBos: false }), model.tokenize(m.content, { addBos: false })),
  );
  if (!injected) return Array.from(model.tokenize(rendered, { special: true }));
  const out: number[] = [];
  let first = true;
  const push = (text: string, special: boolean) => {
    if (text.length === 0 && !first) return;
    out.push(...model.tokenize(text, { special, addBos: first }));
    first = false;
  };
  let pos = 0;
  for (const m of messages) {
    if (m.content.length === 0) continue;
    const at = rendered.indexOf(m.content, pos);
    if (at < 0) continue;
    const plain = m.role === 'user' || m.role === 'tool';
    push(rendered.slice(pos, at), true);
    push(m.content, !plain);
    pos = at + m.content.length;
  }
  push(rendered.slice(pos), true);
  return out;
}

/**
 * A conversation with the model, kept in one session: each {@link send} renders the conversation with the
 * chat template and decodes only what the session's KV cache does not hold yet (the new message, plus
 * whatever the template rendered differently).
 */
export class LlamaChat {
  #session: LlamaSession;
  #template: NativeChatTemplate;
  #templateKey: string | null;
  #system: NativeChatMessage | null;
  #messages: NativeChatMessage[];
  #keep: { system: string; tokens: number[] } | null = null;

  private constructor(session: LlamaSession, template: NativeChatTemplate, key: string | null, system: NativeChatMessage | null, messages: NativeChatMessage[]) {
    this.#session = session;
    this.#template = template;
    this.#templateKey = key;
    this.#system = system;
    this.#messages = messages;
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
    const template = ctx.model.chatTemplate(key, caller);
    const system = o.systemPrompt !== undefined ? { role: 'system', content: o.systemPrompt } : null;
    const session = ctx.createSession({ contextShift: (o.contextShift as 'auto' | false | undefined) ?? 'auto' });
    return new LlamaChat(session, template, key, system, [...(system ? [system] : []), ...earlier]);
  }

  /** The conversation so far (copies). */
  get messages(): ChatMessage[] {
    return this.#messages.map((m) => ({ ...m }) as ChatMessage);
  }

  /** The session that holds the conversation's KV cache. */
  get session(): LlamaSession {
    return this.#session;
  }

  /** The chat template's source (Jinja, or a built-in template's name or text). */
  get template(): string {
    return this.#template.info().source;
  }

  /** True once the chat (or its context) has been disposed. */
  get disposed(): boolean {
    return this.#session.disposed;
  }

  /** The prompt tokens for `messages`, and what context shift keeps (the system prompt). */
  #render(messages: NativeChatMessage[], caller: Function): { tokens: number[]; stops: string[] } {
    const model = this.#session.context.model;
    const { prompt, stops } = callNative(caller, () => this.#template.apply(messages, true));
    const tokens = tokenizeConversation(model, prompt, messages);
    let keep = model.vocab.bos !== null && tokens[0] === model.vocab.bos ? 1 : 0;
    const first = messages[0];
    if (first?.role === 'system') {
      if (this.#keep?.system !== first.content) {
        let sys: number[] = [];
        try {
          sys = tokenizeConversation(model, this.#template.apply([first], false).prompt, [first]);
        } catch {
          // a template that cannot render a lone system message keeps only the BOS token
        }
        this.#keep = { system: first.content, tokens: sys };
      }
      keep = Math.max(keep, commonPrefix(tokens, this.#keep.tokens));
    }
    this.#session.setAutoKeep(keep);
    return { tokens, stops };
  }

  /**
   * Adds `message` (text is a user message) to the conversation and generates the assistant's reply,
   * which is added when it ends. Without a message, the model replies to the conversation as it is (for
   * example after a tool result). Returns at once, like {@link LlamaSession.generate}.
   *
   * A reply that ends with an error is not added, nor is the message that asked for it; an aborted reply
   * is added with the text generated so far (nothing, and the message is withdrawn, when there is none).
   *
   * @throws LlamaError `ERR_INVALID_MESSAGE` for a bad message, `ERR_INVALID_TEMPLATE` when the template
   * fails to render, `ERR_BUSY` while a reply is being generated; the chat is unchanged by a failed call.
   */
  send(message?: string | ChatMessage, options?: GenerateOptions): Generation {
    if (this.#session.disposed) {
      const err = new LlamaError('ERR_DISPOSED', 'The chat has been disposed');
      Error.captureStackTrace(err, this.send);
      throw err;
    }
    const added: NativeChatMessage[] =
      message === undefined ? [] : [typeof message === 'string' ? { role: 'user', content: message } : checkMessage(message, this.#messages.length, this.send)];
    if (message === undefined && this.#messages.every((m) => m.role === 'system')) {
      throw invalid('message', 'a message (the conversation has none to reply to)', message, this.send);
    }
    const messages = [...this.#messages, ...added];
    const { tokens, stops } = this.#render(messages, this.send);
    let opts = options;
    if (stops.length > 0) {
      const own = options?.stop === undefined ? [] : typeof options.stop === 'string' ? [options.stop] : [...options.stop];
      opts = { ...options, stop: [...own, ...stops] };
    }
    const gen = this.#session.start(tokens, opts, true, this.send, (r) => this.#replied(added, r));
    this.#messages = messages;
    return gen;
  }

  #replied(added: NativeChatMessage[], r: GenerationResult | LlamaError): void {
    const withdraw = r instanceof LlamaError || (r.stopReason === 'abort' && r.text.length === 0);
    if (withdraw) {
      for (const m of added.reverse()) {
        const i = this.#messages.lastIndexOf(m);
        if (i >= 0) this.#messages.splice(i, 1);
      }
      return;
    }
    this.#messages.push({ role: 'assistant', content: r.text });
  }

  /** Starts the conversation over from the system prompt (the cached system prompt is reused). */
  reset(): void {
    if (this.#session.busy) {
      const err = new LlamaError('ERR_BUSY', 'Cannot reset a chat while it generates: abort the reply first');
      Error.captureStackTrace(err, this.reset);
      throw err;
    }
    this.#messages = this.#system ? [this.#system] : [];
  }

  /**
   * A new chat with a copy of this conversation and of its KV cache; the two share nothing afterwards.
   * @throws LlamaError `ERR_NO_SEQUENCE` when the context has no free sequence.
   */
  fork(): LlamaChat {
    const session = this.#session.fork();
    const chat = new LlamaChat(session, this.#template, this.#templateKey, this.#system, this.#messages.map((m) => ({ ...m })));
    chat.#keep = this.#keep;
    return chat;
  }

  /** Frees the chat's session (a reply being generated ends with `stopReason: 'abort'`). */
  dispose(): void {
    this.#session.dispose();
  }

  /** Same as {@link dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
