// inspect: what a GGUF file is, from its header alone.
import type { GgufFile } from '../gguf/types.js';
import { GGML_TYPES } from '../gguf/types.js';
import { bool, command } from './args.js';
import { bytes, count, grouped, readModelHeader } from './output.js';

/** llama.cpp's llama_ftype (general.file_type), by number. */
const fileTypes: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 7: 'Q8_0', 8: 'Q5_0', 9: 'Q5_1', 10: 'Q2_K', 11: 'Q3_K_S', 12: 'Q3_K_M',
  13: 'Q3_K_L', 14: 'Q4_K_S', 15: 'Q4_K_M', 16: 'Q5_K_S', 17: 'Q5_K_M', 18: 'Q6_K', 19: 'IQ2_XXS', 20: 'IQ2_XS',
  21: 'Q2_K_S', 22: 'IQ3_XS', 23: 'IQ3_XXS', 24: 'IQ1_S', 25: 'IQ4_NL', 26: 'IQ3_S', 27: 'IQ3_M', 28: 'IQ2_S',
  29: 'IQ2_M', 30: 'IQ4_XS', 31: 'IQ1_M', 32: 'BF16', 36: 'TQ1_0', 37: 'TQ2_0', 38: 'MXFP4_MOE',
};

const typeName = (t: number) => GGML_TYPES[t]?.[0] ?? `type ${t}`;
const elements = (dims: number[]) => dims.reduce((a, b) => a * Number(b), 1);

/**
 * The quantization: general.file_type when the file has it; otherwise the type holding most of the
 * weights (of the tensors with two or more dimensions: norms and biases stay F32 in every file).
 */
export function quantizationOf(g: GgufFile): { name: string; from: 'general.file_type' | 'tensor types' | 'none' } {
  const ft = g.metadata['general.file_type'];
  if (typeof ft === 'number') return { name: fileTypes[ft] ?? `file type ${ft}`, from: 'general.file_type' };
  const matrices = g.tensors.filter((t) => t.dims.filter((d) => Number(d) > 1).length >= 2);
  const pool = matrices.length ? matrices : g.tensors;
  if (pool.length === 0) return { name: 'none', from: 'none' };
  const byType = new Map<number, number>();
  for (const t of pool) byType.set(t.type, (byType.get(t.type) ?? 0) + elements(t.dims));
  const [top] = [...byType.entries()].sort((a, b) => b[1] - a[1]);
  return { name: typeName(top[0]), from: 'tensor types' };
}

/** Tensors by type: `{ F32: 5, Q8_0: 15 }`. */
function tensorTypes(g: GgufFile): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of g.tensors) out[typeName(t.type)] = (out[typeName(t.type)] ?? 0) + 1;
  return out;
}

/** A chat template's family, recognized by its markup as llama.cpp's llm_chat_detect_template does (the common ones). */
export function templateName(t: string): string | null {
  const has = (s: string) => t.includes(s);
  if (has('<|im_start|>')) return has('<|im_sep|>') ? 'phi4' : 'chatml';
  if (t.startsWith('mistral') || has('[INST]')) {
    if (has('[SYSTEM_PROMPT]')) return 'mistral-v7';
    if (has('<<SYS>>')) return 'llama2-sys';
    return has('[AVAILABLE_TOOLS]') || has("' [INST] ' + system_message") ? 'mistral' : 'llama2';
  }
  if (has('<|assistant|>') && has('<|end|>')) return 'phi3';
  if (has('[gMASK]<sop>')) return 'chatglm4';
  if (has('<|assistant|>') && has('<|user|>')) return has('</s>') ? 'falcon3' : 'glmedge';
  if (has('<|user|>') && has('<|endoftext|>')) return 'zephyr';
  if (has('<start_of_turn>')) return 'gemma';
  if (has('USER: ') && has('ASSISTANT: ')) return has('SYSTEM: ') ? 'vicuna-orca' : 'vicuna';
  if (has('### Instruction:') && has('<|EOT|>')) return 'deepseek';
  if (has('<|START_OF_TURN_TOKEN|>') && has('<|USER_TOKEN|>')) return 'command-r';
  if (has('<|start_header_id|>') && has('<|end_header_id|>')) return 'llama3';
  if (has('<｜Assistant｜>') && has('<｜User｜>')) return 'deepseek3';
  if (has('<|start_of_role|>')) return 'granite';
  if (has('<|header_start|>') && has('<|header_end|>')) return 'llama4';
  if (has('<|start|>') && has('<|channel|>')) return 'gpt-oss';
  if (has('<|im_assistant|>assistant<|im_middle|>')) return 'kimi-k2';
  if (has('<seed:bos>')) return 'seed_oss';
  return null;
}

/** What the text output says about a template: its family, or its first line. */
function describeTemplate(t: string | null): string {
  if (t === null) return "none (chats use ChatML)";
  const name = templateName(t);
  const lines = t.split('\n').length;
  if (name) return `${name} (recognized by its markup; ${grouped(t.length)} characters)`;
  const first = t.split('\n').find((l) => l.trim()) ?? '';
  const shown = first.length > 60 ? `${first.slice(0, 60)}…` : first;
  return `${JSON.stringify(shown)}${lines > 1 ? ` (1st of ${lines} lines)` : ''}`;
}

const json = (v: unknown, space?: number) => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x), space);

export const inspect = command({
  name: 'inspect',
  summary: 'what a GGUF file is: architecture, size, parameters, quantization, context length, chat template',
  synopsis: 'file.gguf [--all] [--json]',
  details: 'Reads only the header: nothing is loaded, so it is quick for any size of model.',
  flags: {
    all: bool({ description: 'also print every metadata key' }),
    json: bool({ description: 'print it as JSON (the whole chat template, sizes in bytes)' }),
  },
  positionals: { min: 1, max: 1, message: 'inspect needs one file.gguf' },
  async run(v, [file]) {
    const g = await readModelHeader(file);
    const m = g.metadata;
    const arch = String(m['general.architecture'] ?? 'unknown');
    const parameters = g.tensors.reduce((n, t) => n + elements(t.dims), 0);
    const q = quantizationOf(g);
    const template = typeof m['tokenizer.chat_template'] === 'string' ? m['tokenizer.chat_template'] : null;
    const summary = {
      file,
      name: m['general.name'] ?? null,
      architecture: arch,
      sizeBytes: g.fileSize,
      parameters,
      fileType: m['general.file_type'] ?? null,
      quantization: q.name,
      quantizationFrom: q.from,
      tensorTypes: tensorTypes(g),
      contextLength: m[`${arch}.context_length`] ?? null,
      embeddingLength: m[`${arch}.embedding_length`] ?? null,
      layers: m[`${arch}.block_count`] ?? null,
      tensors: g.tensors.length,
      chatTemplateName: template === null ? null : templateName(template),
      chatTemplate: template,
      ...(v.all ? { metadata: m } : {}),
    };
    if (v.json) {
      process.stdout.write(json(summary, 2) + '\n');
      return;
    }
    const types = Object.entries(summary.tensorTypes).map(([t, n]) => `${n} ${t}`).join(', ');
    const rows: Array<[string, string]> = [
      ['file', file],
      ['name', String(summary.name ?? '(none)')],
      ['architecture', arch],
      ['size', `${bytes(g.fileSize)} (${grouped(g.fileSize)} bytes)`],
      ['parameters', parameters ? `${count(parameters)} (${grouped(parameters)})` : '0 (a vocabulary-only file)'],
      ['quantization', q.from === 'none' ? 'none (no tensors)' : `${q.name}${q.from === 'tensor types' ? ' (from the tensor types: the file has no general.file_type)' : ''}`],
      ['tensors', g.tensors.length ? `${g.tensors.length}: ${types}` : '0'],
      ['context length', summary.contextLength === null ? 'unknown' : `${grouped(Number(summary.contextLength))} tokens`],
      ['embedding', summary.embeddingLength === null ? 'unknown' : String(summary.embeddingLength)],
      ['layers', summary.layers === null ? 'unknown' : String(summary.layers)],
      ['chat template', describeTemplate(template)],
    ];
    for (const [k, val] of rows) process.stdout.write(`${k.padEnd(15)} ${val}\n`);
    if (v.all) {
      process.stdout.write('metadata:\n');
      for (const [k, val] of Object.entries(m)) process.stdout.write(`  ${k} = ${typeof val === 'object' ? json(val) : String(val)}\n`);
    }
  },
});
