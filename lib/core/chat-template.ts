// Chat messages as users give them: their checks, and the shapes the native chat template takes and gives back.
import { LlamaError } from '../base/errors.js';
import type { NativeChatMessage } from '../native/native.js';
import { invalid, jsonArgument } from '../base/validate.js';

/** Who wrote a chat message. */
export type ChatRole = 'system' | 'user' | 'assistant' | 'tool';

/** A call of a tool by the model. */
export interface ToolCall {
  /** Identifies the call; pass it to {@link LlamaChat.addToolResult}. */
  id: string;
  /** The tool's name. */
  name: string;
  /** The arguments, parsed (they follow the tool's `parameters` schema). */
  arguments: { [name: string]: unknown };
}

/** One message of a conversation. */
export interface ChatMessage {
  role: ChatRole;
  content: string;
  /** Tool calls made by an assistant message. */
  toolCalls?: ToolCall[];
  /** For a tool message: the id of the call it answers. */
  toolCallId?: string;
  /** For a tool message: the tool's name. */
  name?: string;
  /** An assistant message's reasoning (thinking), when the template separates it. */
  reasoning?: string;
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

/** Checks one message; returns a plain copy in the native shape. */
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
  const out: NativeChatMessage = { role, content };
  const { toolCalls, toolCallId, name, reasoning } = m as ChatMessage;
  for (const [key, value] of [['toolCallId', toolCallId], ['name', name], ['reasoning', reasoning]] as const) {
    if (value !== undefined && typeof value !== 'string') {
      throw badMessage(`Invalid message ${index}: expected ${key} to be a string, received ${describe(value)}`, caller);
    }
  }
  if (toolCallId !== undefined) out.toolCallId = toolCallId;
  if (name !== undefined) out.toolName = name;
  if (reasoning !== undefined) out.reasoning = reasoning;
  if (toolCalls !== undefined) {
    if (!Array.isArray(toolCalls)) throw badMessage(`Invalid message ${index}: expected toolCalls to be an array, received ${describe(toolCalls)}`, caller);
    out.toolCalls = toolCalls.map((c: unknown, j) => {
      const call = c as Partial<ToolCall> | null;
      if (call === null || typeof call !== 'object' || typeof call.name !== 'string' || typeof call.id !== 'string') {
        throw badMessage(`Invalid message ${index}: tool call ${j} needs a string id and name`, caller);
      }
      return { id: call.id, name: call.name, arguments: jsonArgument(call.arguments ?? {}, `messages[${index}].toolCalls[${j}].arguments`, caller) };
    });
  }
  return out;
}

/** The public shape of a native message. */
export function publicMessage(m: NativeChatMessage): ChatMessage {
  const out: ChatMessage = { role: m.role as ChatRole, content: m.content };
  if (m.toolCalls?.length) out.toolCalls = m.toolCalls.map((c) => ({ id: c.id, name: c.name, arguments: parseArguments(c.arguments) }));
  if (m.toolCallId !== undefined) out.toolCallId = m.toolCallId;
  if (m.toolName !== undefined) out.name = m.toolName;
  if (m.reasoning) out.reasoning = m.reasoning;
  return out;
}

/** Tool-call arguments as an object (a model's arguments that are not a JSON object are kept under `_raw`). */
export function parseArguments(text: string): { [name: string]: unknown } {
  try {
    const v = JSON.parse(text) as unknown;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as { [name: string]: unknown };
  } catch {
    // fall through
  }
  return { _raw: text };
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
