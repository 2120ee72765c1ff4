// chat: an interactive chat on the terminal, streamed, with a few /commands.
import type { ChatMessage } from '../core/chat-template.js';
import type { LlamaChat } from '../core/chat.js';
import { command, didYouMean, str, suggest } from './args.js';
import { onSignals } from './output.js';
import { generateModelFlags, generateOptions, loadWithBar, samplingFlags, runFlags } from './shared.js';

/** The chat's /commands, for /help and for suggestions. */
const chatCommands: Array<[string, string]> = [
  ['/help', 'show these commands'],
  ['/system TEXT', 'set the system prompt; the conversation goes on (/system alone shows it)'],
  ['/reset', 'start the conversation over (the system prompt stays)'],
  ['/save FILE', 'write the conversation to FILE as JSON'],
  ['/load FILE', 'go on with a conversation written by /save'],
  ['/exit', 'quit (Ctrl-D does too)'],
];

const chatHelp = `${chatCommands.map(([c, d]) => `  ${c.padEnd(14)}${d}`).join('\n')}
A line ending in \\ continues the message on the next line; //text sends a message that starts with /text.
Ctrl-C stops the answer being written (at the prompt it quits).`;

/** The messages of a file written by /save: `{ messages: [...] }` (or a bare array of messages). */
function savedMessages(text: string): ChatMessage[] {
  const data = JSON.parse(text) as unknown;
  const messages = Array.isArray(data) ? data : (data as { messages?: unknown } | null)?.messages;
  if (!Array.isArray(messages)) throw new Error('expected { "messages": [...] }, as /save writes');
  return messages as ChatMessage[];
}

export const chat = command({
  name: 'chat',
  summary: 'an interactive chat with a model, streamed',
  synopsis: '--model FILE [--system TEXT] [options]',
  details: `Type a message and Enter; the answer streams in. The chat's commands:
${chatHelp}
Without a terminal, it reads messages from stdin, one a line, and prints the answers.`,
  flags: {
    model: generateModelFlags.model,
    system: str({ allowEmpty: true, description: 'the system prompt the conversation starts with' }),
    'max-tokens': generateModelFlags['max-tokens'],
    ...runFlags,
    ...samplingFlags,
  },
  async run(v) {
    const { setLogLevel } = await import('../base/log.js');
    const { createInterface } = await import('node:readline');
    const { readFile, writeFile } = await import('node:fs/promises');
    const { basename } = await import('node:path');
    setLogLevel('error');
    await using model = await loadWithBar(v);
    await using ctx = await model.createContext({
      ...(v['ctx-size'] !== undefined ? { contextSize: v['ctx-size'] } : {}),
      ...(v.threads !== undefined ? { threads: v.threads } : {}),
    });
    // One session for the whole run: a chat made again (/system, /load) reuses what it has decoded.
    using session = ctx.createSession({ contextShift: 'auto' });
    let system = v.system;
    const newChat = (messages: ChatMessage[] = []): LlamaChat =>
      ctx.createChat({ session, messages, ...(system !== undefined ? { systemPrompt: system } : {}) });
    let conversation = newChat();
    const options = generateOptions(v);

    const tty = process.stdin.isTTY === true;
    const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
    let answering: AbortController | null = null;
    // Ctrl-C stops the answer being written; at the prompt it quits. On a terminal readline reads the
    // keypress; otherwise it comes as a signal.
    const interrupt = () => (answering ? answering.abort() : rl.close());
    rl.on('SIGINT', interrupt);
    onSignals(['SIGINT'], interrupt);
    const lines = rl[Symbol.asyncIterator]();
    const prompt = (p: string) => {
      if (tty) process.stdout.write(p);
    };
    // Notes (commands' replies, errors) go to stdout in a terminal and to stderr when piped, so that piped
    // output is the answers only.
    const note = (text: string) => (tty ? process.stdout : process.stderr).write(`(${text})\n`);
    if (tty) {
      process.stdout.write(
        `Chatting with ${basename(model.path)}: /help, /system TEXT, /reset, /save FILE, /load FILE, /exit; Ctrl-C stops an answer, Ctrl-D quits\n`,
      );
    }
    try {
      for (;;) {
        prompt('> ');
        let text = '';
        for (;;) {
          const next = await lines.next();
          if (next.done) return void process.stdout.write(tty ? '\n' : '');
          if (next.value.endsWith('\\')) {
            text += next.value.slice(0, -1) + '\n';
            prompt('. ');
            continue;
          }
          text += next.value;
          break;
        }
        if (text.trim() === '') continue;
        const line = text.trim();
        if (line.startsWith('/') && !line.startsWith('//')) {
          const [name] = line.split(/\s+/);
          const arg = line.slice(name.length).trim();
          const known = chatCommands.map(([c]) => c.split(' ')[0]);
          if (name === '/exit' || name === '/quit') return;
          if (name === '/help') {
            process.stdout.write(chatHelp + '\n');
          } else if (name === '/reset') {
            conversation.reset();
            note('conversation reset');
          } else if (name === '/system') {
            if (!arg) {
              note(system === undefined ? 'no system prompt' : `system prompt: ${system}`);
              continue;
            }
            system = arg;
            const earlier = conversation.messages.filter((m) => m.role !== 'system');
            conversation.dispose();
            conversation = newChat(earlier);
            note(`system prompt set; the conversation of ${earlier.length} messages goes on`);
          } else if (name === '/save') {
            if (!arg) {
              note('/save needs a file name: /save FILE');
              continue;
            }
            try {
              const messages = conversation.messages;
              await writeFile(arg, JSON.stringify({ messages }, null, 2) + '\n');
              note(`saved ${messages.length} messages to ${arg}`);
            } catch (e) {
              note(`cannot save to ${arg}: ${(e as Error).message}`);
            }
          } else if (name === '/load') {
            if (!arg) {
              note('/load needs a file name: /load FILE');
              continue;
            }
            try {
              const messages = savedMessages(await readFile(arg, 'utf8'));
              const first = messages[0];
              const loadedSystem = first?.role === 'system' ? first.content : undefined;
              const before = system;
              system = loadedSystem;
              try {
                const next = newChat(loadedSystem === undefined ? messages : messages.slice(1));
                conversation.dispose();
                conversation = next;
              } catch (e) {
                system = before;
                throw e;
              }
              note(`loaded ${messages.length} messages from ${arg}`);
            } catch (e) {
              note(`cannot load ${arg}: ${(e as Error).message}`);
            }
          } else {
            const hint = didYouMean(suggest(name, known));
            note(`unknown command ${name}${hint}${hint ? ' ' : '; '}/help lists the commands, //text sends a message that starts with /text`);
          }
          continue;
        }
        answering = new AbortController();
        try {
          const gen = conversation.send(line.startsWith('//') ? text.replace(/^\s*\//, '') : text, { ...options, signal: answering.signal });
          for await (const c of gen) process.stdout.write(c.text);
          const r = await gen.result;
          const mark =
            r.stopReason === 'abort' ? ' [stopped]'
            : r.stopReason === 'maxTokens' ? ` [cut at ${v['max-tokens']} tokens]`
            : r.stopReason === 'contextFull' ? ' [context full]'
            : '';
          // On a terminal the marker follows the answer; piped, stdout carries only answers (the marker goes
          // to stderr, as complete's does).
          if (tty) process.stdout.write(mark + '\n');
          else {
            process.stdout.write('\n');
            if (mark) process.stderr.write(mark.trim() + '\n');
          }
        } catch (e) {
          const err = e as Error & { code?: string };
          process.stdout.write('\n');
          note(`error: ${err.code ? `${err.code}: ` : ''}${err.message}`);
        } finally {
          answering = null;
        }
      }
    } finally {
      rl.close();
      conversation.dispose();
    }
  },
});
