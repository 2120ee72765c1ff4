import { LlamaError } from './errors.js';
import type { NativeChatMessage } from './native.js';
import { invalid } from './validate.js';

/** Who wrote a chat message. */
export type ChatRole = 'system' | 'user' | 'assistant' | 'tool';

/** One message of a conversation. */
export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** Options of {@link LlamaModel.applyChatTemplate}. */
export interface ApplyChatTemplateOptions {
  /** End with the text that starts the assistant's reply (default true). */
  addGenerationPrompt?: boolean;
  /**
   * Jinja source, or the name of one of llama.cpp's built-in templates (`'chatml'`, `'llama3'`, ...).
   * Default: the model's own `tokenizer.chat_template`, or ChatML when it has none.
   */
  template?: string;
}

const roles: ReadonlySet<string> = new Set<ChatRole>(['system', 'user', 'assistant', 'tool']);

function badMessage(message: string, caller: Function): LlamaError {
  const err = new LlamaError('ERR_INVALID_MESSAGE', message);
  Error.captureStackTrace(err, caller);
  return err;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  return typeof v;
}

/** Checks one message; returns a plain copy. */
export function checkMessage(m: unknown, index: number, caller: Function): NativeChatMessage {
  if (m === null || typeof m !== 'object' || Array.isArray(m)) {
    throw badMessage(`Invalid message ${index}: expected an object with role and content, received ${describe(m)}`, caller);
  }
  const { role, content } = m as { role?: unknown; content?: unknown };
  if (typeof role !== 'string' || !roles.has(role)) {
    throw badMessage(`Invalid message ${index}: expected role "system", "user", "assistant" or "tool", received ${describe(role)}`, caller);
  }
  if (typeof content !== 'string') {
    throw badMessage(`Invalid message ${index}: expected content to be a string, received ${describe(content)}`, caller);
  }
  return { role, content };
}

/** Checks a conversation; returns plain copies of its messages. */
export function checkMessages(messages: unknown, caller: Function): NativeChatMessage[] {
  if (!Array.isArray(messages)) throw badMessage(`Invalid messages: expected an array, received ${describe(messages)}`, caller);
  return messages.map((m, i) => checkMessage(m, i, caller));
}

/** The `template` option: null for the model's own. */
export function chatTemplateKey(template: unknown, caller: Function): string | null {
  if (template === undefined) return null;
  if (typeof template !== 'string' || template.length === 0) {
    throw invalid('template', 'Jinja source or the name of a built-in template', template, caller);
  }
  return template;
}
