// The sampling options of a generation, declared once. Everything else is derived from this table: the
// public type (SamplingOptions, part of GenerateOptions), the validation, the complete values sent to the
// native sampler chain (native/sampling.cpp, which holds no defaults), the CLI's flags, the server's
// OpenAI-style request fields, and the README's table (samplingTable(), checked by test/options.test.ts).
//
// Adding a sampler option: an entry here, its line in native/sampling.cpp, and the README table
// (`npx tsx scripts/options-table.ts --write`).
import { invalid, optInteger, optNumber } from '../base/validate.js';

/** One sampling option. */
export interface SamplingOptionSpec {
  readonly type: 'number' | 'integer';
  readonly min: number;
  /** The value must be greater than `min` (llama.cpp refuses `min` itself). */
  readonly minExclusive?: boolean;
  readonly max: number;
  /** The value used when the option is not given (sent to the native side as it is). */
  readonly default: number;
  /** How the default reads in documentation, when the number alone does not say it. */
  readonly defaultText?: string;
  /** One line for tables and `--help`. */
  readonly doc: string;
  /** The field of the server's OpenAI-style requests (llama-server's name for extensions), with its own bounds. */
  readonly request?: { readonly name: string; readonly min?: number; readonly max?: number };
  /** The CLI flag (`--name`). */
  readonly flag: string;
}

export const SAMPLING_OPTIONS = {
  /** Sampling temperature; 0 is greedy (always the most likely token). Default 0.8. */
  temperature: {
    type: 'number', min: 0, max: 100, default: 0.8, flag: 'temperature',
    doc: 'randomness; 0 always takes the most likely token',
    request: { name: 'temperature', max: 2 },
  },
  /** Keep only the K most likely tokens (default 40; 0 disables). */
  topK: {
    type: 'integer', min: 0, max: 2 ** 31 - 1, default: 40, flag: 'top-k',
    doc: 'keep the K most likely tokens (0: all)',
    request: { name: 'top_k' },
  },
  /** Nucleus sampling: keep the most likely tokens up to this total probability (default 0.95; 1 disables). */
  topP: {
    type: 'number', min: 0, max: 1, default: 0.95, flag: 'top-p',
    doc: 'keep the most likely tokens up to this total probability (1: all)',
    request: { name: 'top_p' },
  },
  /**
   * Top-n-sigma: keep the tokens whose logit is within this many standard deviations of the highest
   * (llama.cpp's `top_n_sigma`; 0 or less, as the default -1, turns it off).
   */
  topNSigma: {
    type: 'number', min: -1, max: 100, default: -1, flag: 'top-n-sigma',
    doc: 'keep tokens within this many standard deviations of the top logit (0 or less: off)',
    request: { name: 'top_n_sigma' },
  },
  /** Drop tokens less likely than this fraction of the most likely one (default 0.05; 0 disables). */
  minP: {
    type: 'number', min: 0, max: 1, default: 0.05, flag: 'min-p',
    doc: 'drop tokens less likely than this fraction of the most likely (0: off)',
    request: { name: 'min_p' },
  },
  /** Locally typical sampling (default 1, disabled). */
  typicalP: {
    type: 'number', min: 0, max: 1, default: 1, flag: 'typical-p',
    doc: 'locally typical sampling (1: off)',
    request: { name: 'typical_p' },
  },
  /** Random seed; the same seed, prompt and options give the same text (default: random). */
  seed: {
    type: 'integer', min: 0, max: 2 ** 32 - 1, default: 0xffffffff, defaultText: 'random', flag: 'seed',
    doc: 'the same seed, prompt and options give the same text (4294967295: random)',
    request: { name: 'seed' },
  },
  /** Penalty for repeating recent tokens (default 1, disabled). */
  repeatPenalty: {
    type: 'number', min: 0, minExclusive: true, max: 100, default: 1, flag: 'repeat-penalty',
    doc: 'penalty for repeating recent tokens (1: off)',
    request: { name: 'repeat_penalty' },
  },
  /** Penalty for tokens that appeared at all (default 0). */
  presencePenalty: {
    type: 'number', min: -100, max: 100, default: 0, flag: 'presence-penalty',
    doc: 'penalty for tokens that appeared at all',
    request: { name: 'presence_penalty', min: -2, max: 2 },
  },
  /** Penalty growing with how often a token appeared (default 0). */
  frequencyPenalty: {
    type: 'number', min: -100, max: 100, default: 0, flag: 'frequency-penalty',
    doc: 'penalty growing with how often a token appeared',
    request: { name: 'frequency_penalty', min: -2, max: 2 },
  },
  /** How many recent tokens the penalties look at (default 64; -1: the whole context). */
  penaltyLastN: {
    type: 'integer', min: -1, max: 2 ** 31 - 1, default: 64, flag: 'penalty-last-n',
    doc: 'recent tokens the penalties look at (-1: the whole context)',
    request: { name: 'repeat_last_n' },
  },
} as const satisfies Record<string, SamplingOptionSpec>;
// The table is the same for everyone in the process: nobody may widen a range at run time.
for (const spec of Object.values(SAMPLING_OPTIONS)) {
  if ('request' in spec) Object.freeze(spec.request);
  Object.freeze(spec);
}
Object.freeze(SAMPLING_OPTIONS);

export type SamplingOptionName = keyof typeof SAMPLING_OPTIONS;

/** The sampling options of {@link GenerateOptions}: see {@link SAMPLING_OPTIONS} for each one's range and default. */
export type SamplingOptions = { -readonly [K in keyof typeof SAMPLING_OPTIONS]?: number };

/** Every sampling option's value, as the native sampler chain reads them. */
export type NativeSampling = { [K in SamplingOptionName]: number };

const NAMES = Object.keys(SAMPLING_OPTIONS) as SamplingOptionName[];

/** The names of the sampling options (for option-key checks). @internal */
export const SAMPLING_OPTION_NAMES: readonly SamplingOptionName[] = NAMES;

function spec(name: SamplingOptionName): SamplingOptionSpec {
  return SAMPLING_OPTIONS[name];
}

/**
 * Every sampling value from `o` (checked against the table) or its default. @internal
 * @throws LlamaError ERR_INVALID_ARGUMENT naming the option, its range and what was received.
 */
export function parseSampling(o: Record<string, unknown>, caller: Function): NativeSampling {
  const out = {} as NativeSampling;
  for (const name of NAMES) {
    const s = spec(name);
    const v = (s.type === 'integer' ? optInteger : optNumber)(o, name, s.min, s.max, caller) ?? s.default;
    if (s.minExclusive && v === s.min) throw invalid(name, `a number greater than ${s.min} and at most ${s.max}`, v, caller);
    out[name] = v;
  }
  return out;
}

/** The table of the README's "Sampling options" section, in Markdown. @internal */
export function samplingTable(): string {
  const rows = NAMES.map((name) => {
    const s = spec(name);
    const range = `${s.type === 'integer' ? 'integer' : 'number'}, ${s.minExclusive ? 'over ' : ''}${s.min} to ${s.max}`;
    const r = s.request;
    const narrower = r && (r.min !== undefined || r.max !== undefined) ? ` (${r.min ?? s.min} to ${r.max ?? s.max})` : '';
    const field = r ? `\`${r.name}\`${narrower}` : '';
    return `| \`${name}\` | ${s.defaultText ?? String(s.default)} | ${range} | ${s.doc} | \`--${s.flag}\` | ${field} |`;
  });
  return ['| option | default | range | what it does | CLI | server field |', '|---|---|---|---|---|---|', ...rows].join('\n');
}

/** The JSON-schema properties of the server's request fields for sampling. @internal */
export function samplingRequestSchema(): Record<string, { type: Array<'number' | 'integer' | 'null'>; minimum?: number; exclusiveMinimum?: number; maximum: number }> {
  // null, as OpenAI takes it, means the default.
  const out: Record<string, { type: Array<'number' | 'integer' | 'null'>; minimum?: number; exclusiveMinimum?: number; maximum: number }> = {};
  for (const name of NAMES) {
    const s = spec(name);
    if (!s.request) continue;
    const min = s.request.min ?? s.min;
    out[s.request.name] = { type: [s.type, 'null'], ...(s.minExclusive && min === s.min ? { exclusiveMinimum: min } : { minimum: min }), maximum: s.request.max ?? s.max };
  }
  return out;
}

/** The sampling options of a server request body (fields absent from it are left out). @internal */
export function samplingFromRequest(body: Record<string, unknown>): SamplingOptions {
  const out: SamplingOptions = {};
  for (const name of NAMES) {
    const field = spec(name).request?.name;
    if (field !== undefined && body[field] !== undefined && body[field] !== null) out[name] = body[field] as number;
  }
  return out;
}

/** The CLI's sampling flags, in table order: flag, option name and spec. @internal */
export function samplingFlagSpecs(): Array<{ flag: string; name: SamplingOptionName; spec: SamplingOptionSpec }> {
  return NAMES.map((name) => ({ flag: spec(name).flag, name, spec: spec(name) }));
}
