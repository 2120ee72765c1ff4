// The command line's flags: each command declares its flags once, in one table (name, type, default, range,
// one-line description); parsing (node:util parseArgs), validation, the help text and the suggestions for
// a misspelt flag all come from that table.
import { parseArgs } from 'node:util';

/** A mistake in the command line: printed with a pointer to the help, exit code 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The command whose help explains it, if any. */
    readonly command?: string,
  ) {
    super(message);
  }
}

/** One flag. `T` is the type of its value once converted. */
export interface Flag<T = unknown> {
  /** How parseArgs reads it: a flag that takes a value, or a switch. */
  readonly type: 'string' | 'boolean';
  /** It may be given several times; the value is then the list. */
  readonly multiple?: boolean;
  readonly short?: string;
  /** The value's name in the help (`N`, `FILE`). */
  readonly placeholder?: string;
  /** One line for the help. */
  readonly description: string;
  readonly default?: T;
  /** The default as the help says it, when it is not a plain value ("random", "the model's, at most 4096"). */
  readonly defaultText?: string;
  readonly required?: boolean;
  /** What a valid value is, for errors: "a number from 0 to 100". */
  readonly expected?: string;
  /** Heading it is listed under in the help (default "Options"). */
  readonly group?: string;
  /** The value of one occurrence, or undefined when `raw` is not valid. */
  readonly convert: (raw: string) => unknown;
  /** Phantom: the converted type. */
  readonly __type?: T;
}

export type Flags = Record<string, Flag>;

type FlagValue<F> = F extends Flag<infer T> ? (F extends { default: unknown } | { required: true } ? T : T | undefined) : never;
/** The converted values of a table of flags: a flag with a default (or a required one) is always there. */
export type Values<F extends Flags> = { -readonly [K in keyof F]: FlagValue<F[K]> };

interface Common {
  description: string;
  placeholder?: string;
  group?: string;
  short?: string;
  defaultText?: string;
}

const decimal = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;
const integer = /^[+-]?\d+$/;

function range(kind: string, min?: number, max?: number): string {
  if (min !== undefined && max !== undefined) return `${kind} from ${min} to ${max}`;
  if (min !== undefined) return `${kind} of at least ${min}`;
  if (max !== undefined) return `${kind} of at most ${max}`;
  return kind;
}

/** A number (decimals allowed) within [min, max]. */
export function num(o: Common & { min?: number; minExclusive?: boolean; max?: number; default: number }): Flag<number> & { default: number };
export function num(o: Common & { min?: number; minExclusive?: boolean; max?: number }): Flag<number>;
export function num(o: Common & { min?: number; minExclusive?: boolean; max?: number; default?: number }): Flag<number> {
  const { minExclusive, ...rest } = o;
  return {
    type: 'string',
    placeholder: 'X',
    ...rest,
    expected: minExclusive ? `a number over ${o.min}${o.max !== undefined ? ` and at most ${o.max}` : ''}` : range('a number', o.min, o.max),
    convert: (raw) => {
      if (!decimal.test(raw.trim())) return undefined;
      const v = Number(raw);
      const low = o.min !== undefined && (minExclusive ? v <= o.min : v < o.min);
      return low || (o.max !== undefined && v > o.max) ? undefined : v;
    },
  };
}

/** An integer within [min, max]. */
export function int(o: Common & { min?: number; max?: number; default: number }): Flag<number> & { default: number };
export function int(o: Common & { min?: number; max?: number; required: true }): Flag<number> & { required: true };
export function int(o: Common & { min?: number; max?: number }): Flag<number>;
export function int(o: Common & { min?: number; max?: number; default?: number; required?: boolean }): Flag<number> {
  return {
    type: 'string',
    placeholder: 'N',
    ...o,
    expected: range('an integer', o.min, o.max),
    convert: (raw) => {
      if (!integer.test(raw.trim())) return undefined;
      const v = Number(raw);
      return (o.min !== undefined && v < o.min) || (o.max !== undefined && v > o.max) ? undefined : v;
    },
  };
}

/** An integer within [min, max], or the word `auto` (the library's `threads: 'auto'`). */
export function intOrAuto(o: Common & { min?: number; max?: number }): Flag<number | 'auto'> {
  const n = int(o);
  return {
    ...n,
    placeholder: o.placeholder ?? 'N|auto',
    expected: `${n.expected}, or auto`,
    convert: (raw) => (raw.trim() === 'auto' ? 'auto' : n.convert(raw)),
  };
}

/** Text (non-empty unless `allowEmpty`). */
export function str(o: Common & { default: string; allowEmpty?: boolean }): Flag<string> & { default: string };
export function str(o: Common & { required: true; allowEmpty?: boolean }): Flag<string> & { required: true };
export function str(o: Common & { allowEmpty?: boolean }): Flag<string>;
export function str(o: Common & { default?: string; required?: boolean; allowEmpty?: boolean }): Flag<string> {
  return {
    type: 'string',
    placeholder: 'TEXT',
    ...o,
    convert: (raw) => (raw === '' && !o.allowEmpty ? undefined : raw),
  };
}

/** Text that may be given several times (a list, empty by default). */
export function strs(o: Common & { required?: boolean }): Flag<string[]> & { default: string[] } {
  return {
    type: 'string',
    placeholder: 'TEXT',
    multiple: true,
    default: [],
    ...o,
    convert: (raw) => (raw === '' ? undefined : raw),
  };
}

/** A switch (false unless given). */
export function bool(o: Common): Flag<boolean> & { default: boolean } {
  return { type: 'boolean', default: false, ...o, convert: () => true };
}

/** One of a few words; `aliases` maps other accepted spellings to them. */
export function choice<C extends string>(o: Common & { choices: readonly C[]; default: C; aliases?: Record<string, C> }): Flag<C> & { default: C };
export function choice<C extends string>(o: Common & { choices: readonly C[]; aliases?: Record<string, C> }): Flag<C>;
export function choice<C extends string>(o: Common & { choices: readonly C[]; default?: C; aliases?: Record<string, C> }): Flag<C> {
  const { choices, aliases = {}, ...rest } = o;
  return {
    type: 'string',
    placeholder: choices.join('|'),
    ...rest,
    expected: `one of ${choices.join(', ')}`,
    convert: (raw) => ((choices as readonly string[]).includes(raw) ? raw : Object.hasOwn(aliases, raw) ? aliases[raw] : undefined),
  };
}

/** Anything else: `convert` returns undefined for an invalid value, described by `expected`. */
export function custom<T>(o: Common & { expected: string; convert: (raw: string) => T | undefined; default: T }): Flag<T> & { default: T };
export function custom<T>(o: Common & { expected: string; convert: (raw: string) => T | undefined }): Flag<T>;
export function custom<T>(o: Common & { expected: string; convert: (raw: string) => T | undefined; default?: T }): Flag<T> {
  return { type: 'string', ...o };
}

// ------------------------------------------------------------------------------------------ commands

/** A command: its flags and what it does with them. */
export interface Command<F extends Flags = Flags> {
  name: string;
  /** One line for the program's help. */
  summary: string;
  /** What follows `llama-addon NAME` in its usage line. */
  synopsis: string;
  /** Paragraphs for the command's help, after the usage line. */
  details?: string;
  flags: F;
  /** How many positional arguments it takes, and what to say when the count is wrong. */
  positionals?: { min: number; max: number; message: string };
  run(values: Values<F>, positionals: string[], argv: string[]): Promise<void>;
}

/** Declares a command (infers the types of its flag values). */
export function command<F extends Flags>(c: Command<F>): Command<F> {
  return c;
}

const helpFlag: Flag<boolean> = { type: 'boolean', short: 'h', description: 'show this help', convert: () => true };

/** What a flag looks like in the help and in errors: `--top-p X`. */
export function flagLabel(name: string, f: Flag): string {
  return `--${name}${f.type === 'string' ? ` ${f.placeholder ?? 'VALUE'}` : ''}`;
}

function defaultOf(f: Flag): string | undefined {
  if (f.defaultText !== undefined) return f.defaultText;
  if (f.default === undefined || f.type === 'boolean' || (Array.isArray(f.default) && f.default.length === 0)) return undefined;
  return String(f.default);
}

/** The help of a command: usage, details, then every flag with its default and one line. */
export function commandHelp(c: Command): string {
  const rows: Array<[string, string, string]> = [];
  for (const [name, f] of [...Object.entries(c.flags), ['help', helpFlag] as const]) {
    const label = `${f.short ? `-${f.short}, ` : ''}${flagLabel(name, f)}`;
    const def = defaultOf(f);
    const notes = [f.required ? 'required' : '', def !== undefined ? `default: ${def}` : '', f.multiple ? 'repeatable' : ''].filter(Boolean);
    rows.push([f.group ?? 'Options', label, `${f.description}${notes.length ? ` (${notes.join('; ')})` : ''}`]);
  }
  const width = Math.min(28, Math.max(...rows.map((r) => r[1].length)) + 2);
  const groups = [...new Set(rows.map((r) => r[0]))];
  let out = `Usage: llama-addon ${c.name} ${c.synopsis}\n\n${c.summary[0].toUpperCase()}${c.summary.slice(1)}.\n`;
  if (c.details) out += `\n${c.details.trim()}\n`;
  for (const g of groups) {
    out += `\n${g}:\n`;
    for (const [, label, text] of rows.filter((r) => r[0] === g)) {
      out += label.length + 2 > width ? `  ${label}\n  ${' '.repeat(width)}${text}\n` : `  ${label.padEnd(width)}${text}\n`;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------ suggestions

/** Edit distance with transpositions (optimal string alignment): "temprature" is 1 from "temperature". */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/**
 * The candidates a misspelt word most likely meant: those it begins (`temp` → `temperature`), else the
 * nearest by edit distance, within a third of the word's length (at least 1).
 */
export function suggest(word: string, candidates: readonly string[]): string[] {
  const w = word.toLowerCase();
  if (w.length === 0) return [];
  const prefixed = candidates.filter((c) => c.startsWith(w));
  if (w.length >= 2 && prefixed.length > 0 && prefixed.length <= 3) return prefixed;
  const scored = candidates.map((c) => [c, editDistance(w, c.toLowerCase())] as const);
  const best = Math.min(...scored.map((s) => s[1]));
  if (best > Math.max(1, Math.floor(w.length / 3))) return [];
  return scored.filter((s) => s[1] === best).map((s) => s[0]).slice(0, 3);
}

/** "; did you mean --a or --b?" or nothing. */
export function didYouMean(options: string[]): string {
  if (options.length === 0) return '';
  return `; did you mean ${options.length === 1 ? options[0] : `${options.slice(0, -1).join(', ')} or ${options[options.length - 1]}`}?`;
}

// ------------------------------------------------------------------------------------------ parsing

/** The result of parsing a command's arguments: `help` when --help was asked for (nothing else is checked then). */
export type Parsed<F extends Flags> = { help: true } | { help: false; values: Values<F>; positionals: string[] };

/**
 * Parses and checks `argv` against a command's table: unknown flags (with a suggestion, or the commands a
 * flag belongs to), missing values, switches given a value, invalid values (echoed as typed), required
 * flags, the number of positional arguments.
 */
export function parseCommand<F extends Flags>(c: Command<F>, argv: string[], others: readonly Command[] = []): Parsed<F> {
  const flags: Record<string, Flag> = { ...c.flags, help: helpFlag };
  const options = Object.fromEntries(
    Object.entries(flags).map(([name, f]) => [name, { type: f.type, ...(f.multiple ? { multiple: true } : {}), ...(f.short ? { short: f.short } : {}) }]),
  );
  // Not strict: every check below is ours, so that each error names the flag and says what it expected.
  const { tokens } = parseArgs({ args: argv, options, strict: false, allowPositionals: true, tokens: true });
  if (tokens.some((t) => t.kind === 'option' && t.name === 'help')) return { help: true };
  const raw = new Map<string, string[]>();
  const positionals: string[] = [];
  for (const t of tokens) {
    if (t.kind === 'positional') positionals.push(t.value);
    if (t.kind !== 'option') continue;
    const f = flags[t.name];
    if (!f) {
      const names = Object.keys(flags);
      let hint = didYouMean(suggest(t.name, names).map((n) => `--${n}`));
      if (!hint) {
        const owners = others.filter((o) => o !== c && Object.hasOwn(o.flags, t.name)).map((o) => o.name);
        if (owners.length) hint = ` (it is a flag of ${owners.join(', ')})`;
      }
      throw new UsageError(`unknown flag ${t.rawName} for ${c.name}${hint}`, c.name);
    }
    if (f.type === 'boolean') {
      if (t.inlineValue) throw new UsageError(`--${t.name} takes no value (received ${JSON.stringify(t.value)})`, c.name);
      raw.set(t.name, ['']);
      continue;
    }
    // parseArgs takes whatever follows a flag as its value; a flag there most likely means the value is missing.
    if (t.value === undefined || (!t.inlineValue && (t.value === '-h' || (t.value.startsWith('--') && t.value.length > 2)))) {
      throw new UsageError(
        `--${t.name} needs a value: ${f.expected ?? f.placeholder ?? 'some text'}` +
          (t.value !== undefined ? ` (received the flag ${t.value}; for a value that starts with a dash, write --${t.name}=${t.value})` : ''),
        c.name,
      );
    }
    raw.set(t.name, f.multiple ? [...(raw.get(t.name) ?? []), t.value] : [t.value]);
  }
  const values: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(c.flags)) {
    const given = raw.get(name);
    if (!given) {
      if (f.required) throw new UsageError(`${c.name} needs ${flagLabel(name, f)}`, c.name);
      values[name] = Array.isArray(f.default) ? [...f.default] : f.default;
      continue;
    }
    const converted = given.map((r) => {
      const v = f.convert(r);
      if (v === undefined) throw new UsageError(`Invalid --${name}: expected ${f.expected ?? 'a non-empty value'}, received ${JSON.stringify(r)}`, c.name);
      return v;
    });
    values[name] = f.multiple ? converted : converted[0];
  }
  if (c.positionals && (positionals.length < c.positionals.min || positionals.length > c.positionals.max)) {
    const extra = positionals.length > c.positionals.max ? ` (received ${positionals.length}: ${positionals.map((p) => JSON.stringify(p)).join(' ')})` : '';
    throw new UsageError(`${c.positionals.message}${extra}`, c.name);
  }
  if (!c.positionals && positionals.length > 0) {
    throw new UsageError(`${c.name} takes no arguments besides its flags (received ${positionals.map((p) => JSON.stringify(p)).join(' ')})`, c.name);
  }
  return { help: false, values: values as Values<F>, positionals };
}
