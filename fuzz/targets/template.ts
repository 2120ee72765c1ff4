// template: random Jinja chat templates (recursive macros, huge ranges, string multiplication, deep nesting,
// broken syntax) through model.applyChatTemplate({ template }) and, sometimes, a chat with that template.
// Expected: text, or ERR_INVALID_TEMPLATE / ERR_LIMIT_EXCEEDED (ERR_INVALID_MESSAGE for bad messages).
import type { Rng } from '../prng.js';
import { randomText } from '../prng.js';
import { text, runSteps, shrinkCompact, step, type Compact, type Env, type Target } from './common.js';
import { freshSession, loadGen } from './gen-model.js';

interface Message {
  role: string;
  content: unknown;
}

interface Input {
  template: Compact;
  messages: Message[];
  addGenerationPrompt: boolean;
  /** Also create a chat with the template and generate 4 tokens. */
  chat: boolean;
}

const ALLOWED = ['ERR_INVALID_TEMPLATE', 'ERR_LIMIT_EXCEEDED', 'ERR_INVALID_MESSAGE'];

const big = (r: Rng) => r.pick([0, 1, 3, 10, 1000, 100_000, 10_000_000, 100_000_000, 2 ** 31, 2 ** 53, 1e20]).toLocaleString('en-US', { useGrouping: false });

function str(r: Rng): string {
  const s = r.chance(0.7) ? r.pick(['x', 'ab', '', 'é', '\\n', '{{', '%}', "'", '🙂']) : randomText(r, 6).replace(/['\\]/g, '');
  return `'${s}'`;
}

function expr(r: Rng, depth: number): string {
  const leaf = () =>
    r.weighted<() => string>([
      [3, () => r.pick(['messages[0].content', 'messages[-1].role', 'message.content', 'messages|length', 'bos_token', 'eos_token', 'add_generation_prompt', 'loop.index', 'x', 'ns.n', 'undefined_var', 'messages[99]', 'none', 'true', 'tools'])],
      [2, () => str(r)],
      [2, () => big(r)],
      [1, () => r.pick(['1.5', '-1', '0', '1e308', '-0', '[1, 2, 3]', "{'a': 1}", '()', "('a', 'b')"])],
    ])();
  if (depth > 3 || r.chance(0.3)) return leaf();
  return r.weighted<() => string>([
    [3, () => `${expr(r, depth + 1)} ${r.pick(['+', '-', '*', '/', '//', '%', '**', '~', '==', '!=', '<', 'and', 'or', 'in', 'not in'])} ${expr(r, depth + 1)}`],
    [2, () => `${str(r)} * ${big(r)}`],
    [2, () => `range(${big(r)})${r.pick(['', '|list', '|length', '|join', '|list|length', '|sum'])}`],
    [3, () => `${expr(r, depth + 1)}|${r.pick(['upper', 'lower', 'trim', 'tojson', 'length', 'first', 'last', 'list', 'string', 'int', 'float', 'abs', 'round', 'reverse', 'sort', 'unique', 'items', 'join', 'safe', 'capitalize', 'title', 'indent(4)', "replace('a', 'b')", 'default(1)', "selectattr('role', 'equalto', 'user')", "map(attribute='content')", 'batch(2)', 'dictsort', 'wordcount', 'center(1000000)', 'bogus_filter'])}`],
    [1, () => `${expr(r, depth + 1)}.${r.pick(['split()', 'strip()', 'upper()', "startswith('a')", 'items()', 'keys()', "replace('', 'xx')", 'title()', 'nope()', "join('x')"])}`],
    [1, () => `${expr(r, depth + 1)}[${r.pick(['0', '-1', '1:', '::-1', "'content'", '1e9', 'none', '0:100000000'])}]`],
    [1, () => `${expr(r, depth + 1)} if ${expr(r, depth + 1)} else ${expr(r, depth + 1)}`],
    [1, () => `${expr(r, depth + 1)} is ${r.pick(['defined', 'none', 'string', 'number', 'iterable', 'mapping', 'bogus'])}`],
    [1, () => `(${expr(r, depth + 1)})`],
    [0.5, () => `raise_exception(${str(r)})`],
    [0.5, () => `namespace(n=${big(r)})`],
  ])();
}

function block(r: Rng, depth: number): string {
  const parts: string[] = [];
  for (let i = r.int(1, 3); i > 0; i--) {
    parts.push(
      r.weighted<() => string>([
        [3, () => randomText(r, 8).replace(/[{}%#]/g, '')],
        [4, () => `{{ ${expr(r, 0)} }}`],
        [depth < 4 ? 3 : 0, () => `{% for ${r.pick(['message in messages', `i in range(${big(r)})`, 'x in messages[0].content', 'k, v in messages[0].items()', 'i in none'])} %}${block(r, depth + 1)}{% endfor %}`],
        [depth < 4 ? 3 : 0, () => `{% if ${expr(r, 0)} %}${block(r, depth + 1)}${r.chance(0.3) ? `{% elif ${expr(r, 0)} %}${block(r, depth + 1)}` : ''}${r.chance(0.4) ? `{% else %}${block(r, depth + 1)}` : ''}{% endif %}`],
        [1, () => `{% set ${r.pick(['x', 'ns', 'ns.n', 'messages'])} = ${expr(r, 0)} %}`],
        [1, () => `{%- ${r.pick(['set ns = namespace(n=0)', 'set ns.n = ns.n + 1', 'break', 'continue'])} -%}`],
        [depth < 3 ? 1 : 0, () => `{% macro f(n) %}${block(r, depth + 1)}{{ f(${r.pick(['n+1', 'n', 'n-1', ''])}) }}{% endmacro %}{{ f(0) }}`],
        [0.5, () => `{% filter upper %}${block(r, depth + 1)}{% endfilter %}`],
        [0.5, () => `{% raw %}{{ x }}{% endraw %}`],
        [0.5, () => `{# ${randomText(r, 6).replace(/#}/g, '')} #}`],
        [0.5, () => r.pick(['{% generation %}x{% endgeneration %}', '{% call f() %}x{% endcall %}', '{% include "x" %}', '{% import "x" as y %}', '{% extends "x" %}', '{% block b %}x{% endblock %}'])],
      ])(),
    );
  }
  return parts.join('');
}

function corrupt(r: Rng, s: string): string {
  for (let i = r.int(1, 3); i > 0; i--) {
    const at = r.int(0, s.length);
    s = r.chance(0.5) ? s.slice(0, at) + r.pick(['{{', '}}', '{%', '%}', '{#', '(', ')', '[', ']', "'", '"', '|', '.', '\\', '\0', 'endfor', 'endif']) + s.slice(at) : s.slice(0, at) + s.slice(at + r.int(1, 5));
  }
  return s;
}

function nested(r: Rng): Compact {
  const n = r.pick([100, 1000, 10_000, 50_000]);
  return r.weighted<() => Compact>([
    [2, () => ({ $concat: ['{{ ', { $repeat: '(', times: n }, '1', { $repeat: ')', times: n }, ' }}'] })],
    [1, () => ({ $concat: ['{{ ', { $repeat: '[', times: n }, { $repeat: ']', times: n }, ' }}'] })],
    [1, () => ({ $concat: [{ $repeat: '{% if true %}', times: n }, 'x', { $repeat: '{% endif %}', times: n }] })],
    [1, () => ({ $concat: [{ $repeat: '{% for m in messages %}', times: Math.min(n, 2000) }, 'x', { $repeat: '{% endfor %}', times: Math.min(n, 2000) }] })],
    [1, () => ({ $concat: ['{{ 1', { $repeat: ' + 1', times: n }, ' }}'] })],
    [1, () => ({ $concat: ['{{ x', { $repeat: '|upper', times: n }, ' }}'] })],
    [1, () => ({ $concat: ["{{ 'a'", { $repeat: ' ~ messages[0].content', times: n }, ' }}'] })],
  ])();
}

export const template: Target<Input> = {
  name: 'template',
  description: 'random Jinja templates through model.applyChatTemplate({ template }) and chats',
  timeoutMs: 10_000,
  generate(r: Rng): Input {
    let t: Compact;
    if (r.chance(0.1)) t = nested(r);
    else {
      t = block(r, 0);
      if (r.chance(0.15)) t = corrupt(r, t);
    }
    if (typeof t === 'string' && t.length === 0) t = '{{ x }}';
    const messages: Message[] = Array.from({ length: r.int(0, 4) }, (_, i) => ({
      role: r.chance(0.95) ? r.pick(['system', 'user', 'assistant', 'user', 'tool']) : r.pick(['bogus', '', 'USER']),
      content: r.chance(0.97) ? (r.chance(0.8) ? randomText(r, 30) : r.pick(['café', '{{ 7*7 }}', '<|im_start|>', '', 'x'.repeat(5000)])) : r.pick<unknown>([null, 5, ['a']]),
    }));
    if (messages.length && messages[0].role === 'system' && r.chance(0.5)) messages[0].role = 'user';
    return { template: t, messages, addGenerationPrompt: r.chance(0.8), chat: r.chance(0.15) };
  },
  run(input: Input, env: Env) {
    return runSteps('applyChatTemplate', async () => {
      const gen = await step('setup', [], () => loadGen(env));
      const tpl = text(input.template);
      await step('applyChatTemplate', ALLOWED, () =>
        gen.model.applyChatTemplate(input.messages as never, { template: tpl, addGenerationPrompt: input.addGenerationPrompt }),
      );
      if (input.chat) {
        const s = freshSession(env, gen);
        const chat = await step('createChat', ALLOWED, () => gen.ctx.createChat({ template: tpl, session: s }));
        await step('chat.send', [...ALLOWED, 'ERR_CONTEXT_FULL'], () => chat.send('café', { maxTokens: 4, temperature: 0 }).result);
        chat.dispose();
      }
    });
  },
  shrink(input: Input): Input[] {
    const out: Input[] = shrinkCompact(input.template).map((template) => ({ ...input, template }));
    for (let i = 0; i < input.messages.length; i++) out.push({ ...input, messages: input.messages.filter((_, j) => j !== i) });
    if (input.chat) out.push({ ...input, chat: false });
    return out;
  },
};
