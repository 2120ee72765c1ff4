// Models and vocabularies the fuzz targets use. Synthetic files are written once into test/.fixtures/fuzz
// (ignored by git), atomically, so that a fuzz run and the regression test can share them.
import { existsSync, mkdirSync, readdirSync, renameSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readGguf } from '../lib/gguf/reader.js';
import { GgufType } from '../lib/gguf/types.js';
import { writeGguf, writeSyntheticLlama, writeSyntheticLora, type GgufKv, type GgufTensorSpec, type SyntheticLlamaOptions, type SyntheticLoraOptions } from '../lib/gguf/index.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const sharedModels = resolve(repoRoot, '..', 'shared', 'models');
export const vocabDir = join(process.env.LLAMA_CPP_DIR ? resolve(process.env.LLAMA_CPP_DIR) : join(repoRoot, 'deps', 'llama.cpp'), 'models');
export const fixtureDir = join(repoRoot, 'test', '.fixtures', 'fuzz');
export const corpusDir = join(repoRoot, 'test', 'fuzz-corpus');
export const hasShared = existsSync(join(sharedModels, 'stories260k.gguf'));

/**
 * Model references in fuzz inputs are symbolic, so that saved inputs work on any machine:
 * `shared:<file>` (../shared/models), `vocab:<name>` (llama.cpp's models/ggml-vocab-<name>.gguf),
 * `fixture:<name>` (a synthetic file made by this module).
 */
export function modelPath(ref: string): string {
  const i = ref.indexOf(':');
  const kind = ref.slice(0, i);
  const name = ref.slice(i + 1);
  if (kind === 'shared') return join(sharedModels, name);
  if (kind === 'vocab') return join(vocabDir, `ggml-vocab-${name}.gguf`);
  throw new Error(`unknown model reference ${ref}`);
}

/** Every vocabulary the tokenize target tries: the shared models and llama.cpp's vocab files. */
export function vocabularies(): string[] {
  const out: string[] = [];
  if (hasShared) for (const f of readdirSync(sharedModels).sort()) if (f.endsWith('.gguf')) out.push(`shared:${f}`);
  if (existsSync(vocabDir)) {
    for (const f of readdirSync(vocabDir).sort()) {
      const m = /^ggml-vocab-(.+)\.gguf$/.exec(f);
      if (m) out.push(`vocab:${m[1]}`);
    }
  }
  return out;
}

/** Writes `path` with `write(tmp)` unless it exists; the temporary file is renamed over it. */
async function once(path: string, write: (tmp: string) => Promise<void>): Promise<string> {
  if (existsSync(path)) return path;
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  await write(tmp);
  renameSync(tmp, path);
  return path;
}

/**
 * A tiny SentencePiece vocabulary (~330 tokens: <unk>, <s>, </s>, the 256 byte tokens, letters and a few
 * words), so that mutated models are small and quick to write and load.
 */
function miniVocabTokens(): { tokens: string[]; types: number[] } {
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6);
  }
  const pieces = ['▁', ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?\'"{}[]:'.split(''),
    '▁t', 'he', '▁the', '▁a', 'in', 'er', 'an', 'on', '▁H', 'ello', '▁Hello', '▁w', 'orld', '▁world', '▁O', 'nce', '▁Once', '▁upon', '▁time'];
  for (const p of pieces) {
    tokens.push(p);
    types.push(1);
  }
  return { tokens, types };
}

/** Number of tokens of {@link miniVocab}. */
export const miniVocabSize = miniVocabTokens().tokens.length;

export function miniVocab(): Promise<string> {
  return once(join(fixtureDir, 'mini-vocab.gguf'), async (tmp) => {
    const { tokens, types } = miniVocabTokens();
    const scores = tokens.map((_, i) => (types[i] === 1 ? -i : 0));
    const metadata: GgufKv[] = [
      { key: 'general.architecture', type: GgufType.STRING, value: 'llama' },
      { key: 'general.name', type: GgufType.STRING, value: 'fuzz-mini-vocab' },
      { key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'llama' },
      { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, itemType: GgufType.STRING, value: tokens },
      { key: 'tokenizer.ggml.scores', type: GgufType.ARRAY, itemType: GgufType.FLOAT32, value: scores },
      { key: 'tokenizer.ggml.token_type', type: GgufType.ARRAY, itemType: GgufType.INT32, value: types },
      { key: 'tokenizer.ggml.bos_token_id', type: GgufType.UINT32, value: 1 },
      { key: 'tokenizer.ggml.eos_token_id', type: GgufType.UINT32, value: 2 },
      { key: 'tokenizer.ggml.unknown_token_id', type: GgufType.UINT32, value: 0 },
      { key: 'tokenizer.ggml.add_bos_token', type: GgufType.BOOL, value: true },
    ];
    await writeGguf(tmp, { metadata, tensors: [] });
  });
}

/** Shape of the small models the gguf target mutates (and of their LoRA adapters). */
export const smallShape = { embeddingLength: 32, layers: 1, heads: 4, headsKv: 2, feedForwardLength: 64 } as const;

export type SmallType = 'f32' | 'f16' | 'q8_0';

/** The small llama model (mini vocabulary, random weights) that mutated models start from. */
export async function smallModel(type: SmallType = 'f32'): Promise<string> {
  const vocabFrom = await miniVocab();
  return once(join(fixtureDir, `small-${type}.gguf`), (tmp) => writeSyntheticLlama(tmp, { vocabFrom, ...smallShape, type, seed: 3, contextLength: 512 } as SyntheticLlamaOptions));
}

/** A LoRA adapter for {@link smallModel}. */
export function smallLora(): Promise<string> {
  return once(join(fixtureDir, 'small-lora.gguf'), (tmp) => writeSyntheticLora(tmp, { ...smallShape, rank: 4, seed: 5 } as SyntheticLoraOptions));
}

/**
 * The model that generation targets (grammar, schema, template, session, http) run: llama-shaped, random
 * weights, llama.cpp's 32000-token Llama SPM vocabulary (byte fallback: every character can be generated).
 */
export function genModel(): Promise<string> {
  return once(join(fixtureDir, 'gen-q8.gguf'), (tmp) =>
    writeSyntheticLlama(tmp, { vocabFrom: join(vocabDir, 'ggml-vocab-llama-spm.gguf'), embeddingLength: 64, layers: 2, heads: 4, headsKv: 2, feedForwardLength: 128, type: 'q8_0', seed: 7, contextLength: 4096 }),
  );
}

/** A GGUF file as editable parts: metadata entries and tensors with their bytes. */
export interface GgufParts {
  metadata: GgufKv[];
  tensors: Array<GgufTensorSpec & { data: Uint8Array }>;
}

export async function readParts(path: string): Promise<GgufParts> {
  const g = await readGguf(path, { maxArrayLength: Infinity });
  const bytes = await readFile(path);
  const metadata: GgufKv[] = Object.entries(g.metadata).map(([key, value]) => {
    const type = g.metadataTypes[key];
    return type === GgufType.ARRAY ? { key, type, itemType: g.arrayTypes[key], value } : { key, type, value };
  });
  const tensors = g.tensors.map((t) => ({
    name: t.name,
    dims: [...t.dims],
    type: t.type,
    data: new Uint8Array(bytes.buffer, bytes.byteOffset + g.dataOffset + t.offset, t.size!),
  }));
  return { metadata, tensors };
}
