// What the command line shows: human units, progress bars on a terminal, and the checks and messages the
// commands share.
import { stat } from 'node:fs/promises';
import { LlamaError } from '../base/errors.js';
import type { GgufFile } from '../gguf/types.js';

/** Bytes in binary units: 812 B, 1.1 MiB, 4.7 GiB. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** A count in K/M/B/T: 292800 → 293K, 1234567 → 1.2M, 415000000 → 415M, 1.1e9 → 1.1B. */
export function count(n: number): string {
  const units: Array<[number, string]> = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [size, unit] of units) {
    if (n >= size * 0.9995) {
      const v = n / size;
      return `${v < 9.95 ? v.toFixed(1) : Math.round(v)}${unit}`;
    }
  }
  return String(n);
}

/** Thousands separators: 1,185,376. */
export const grouped = (n: number) => n.toLocaleString('en-US');

/**
 * A progress line on stderr, drawn only when stderr is a terminal: `update(done)` redraws it (at most ten
 * times a second), `end()` clears it, leaving the line empty for what comes next.
 */
export interface ProgressLine {
  update(done: number, total: number | null): void;
  end(): void;
}

/** `format(done, total, secondsElapsed)` is the text after the label and the bar. */
export function progressLine(label: string, format: (done: number, total: number | null, seconds: number) => string): ProgressLine {
  const stream = process.stderr;
  if (!stream.isTTY) return { update() {}, end() {} };
  const start = Date.now();
  let last = 0;
  let drawn = false;
  return {
    update(done, total) {
      const now = Date.now();
      if (now - last < 100 && done !== total) return;
      last = now;
      const width = 24;
      const filled = total ? Math.min(width, Math.round((done / total) * width)) : 0;
      const bar = total ? ` [${'#'.repeat(filled).padEnd(width, '.')}]` : '';
      const line = `${label}${bar} ${format(done, total, (now - start) / 1000)}`;
      const columns = stream.columns || 80;
      stream.write(`\r\x1b[2K${line.length >= columns ? line.slice(0, columns - 1) : line}`);
      drawn = true;
    },
    end() {
      if (drawn) stream.write('\r\x1b[2K');
      drawn = false;
    },
  };
}

/** A transfer: `1.1/4.7 GiB, 12.5 MiB/s`. */
export function transferLine(label: string): ProgressLine {
  return progressLine(label, (done, total, seconds) => {
    const speed = `${bytes(done / Math.max(0.001, seconds))}/s`;
    return total ? `${bytes(done)} of ${bytes(total)}, ${speed}` : `${bytes(done)}, ${speed}`;
  });
}

/**
 * The bar shown while a model loads: llama.cpp reports a fraction, so it shows the percentage of the
 * file's size (`42% of 1.1 MiB`).
 */
export async function loadingLine(path: string): Promise<{ onProgress: (p: number) => void; end: () => void }> {
  const size = await stat(path).then((s) => s.size, () => 0);
  const name = path.split(/[\\/]/).pop() ?? path;
  const line = progressLine(`loading ${name}`, (done) => `${Math.floor(done / 10)}%${size ? ` of ${bytes(size)}` : ''}`);
  return { onProgress: (p) => line.update(Math.round(Math.min(1, Math.max(0, p)) * 1000), 1000), end: () => line.end() };
}

/**
 * Reads a model file's GGUF header with the errors loadModel gives (`ERR_MODEL_NOT_FOUND`,
 * `ERR_INVALID_MODEL`, naming the file), so that every command says the same about a bad path.
 */
export async function readModelHeader(path: string): Promise<GgufFile> {
  const { GgufFormatError, readGguf } = await import('../gguf/reader.js');
  const s = await stat(path).catch((e: unknown) => {
    throw new LlamaError('ERR_MODEL_NOT_FOUND', `Model file not found: ${path}`, { cause: e });
  });
  if (!s.isFile()) throw new LlamaError('ERR_MODEL_NOT_FOUND', `Expected a GGUF model file at ${path}, but it is not a file`);
  try {
    return await readGguf(path);
  } catch (e) {
    if (e instanceof GgufFormatError) throw new LlamaError('ERR_INVALID_MODEL', `${path} is not a valid GGUF model: ${e.message}`, { cause: e });
    throw new LlamaError('ERR_INVALID_MODEL', `${path} could not be read: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Calls `handler` on each of `signals`, once per keypress: npm forwards the signals it gets to the command
 * it started, so under `npx` (with a shell that execs the command, bash's `sh -c`) one Ctrl-C arrives twice,
 * a few milliseconds apart. A repeat of the same signal within 250 ms is that echo and is ignored.
 */
export function onSignals(signals: NodeJS.Signals[], handler: (signal: NodeJS.Signals) => void): void {
  const last = new Map<string, number>();
  for (const signal of signals) {
    process.on(signal, () => {
      const now = Date.now();
      if (now - (last.get(signal) ?? -Infinity) < 250) return;
      last.set(signal, now);
      handler(signal);
    });
  }
}

/** Started by npm (`npx`, `npm exec`, a package script): its environment says so. */
export const startedByNpm = () => process.env.npm_lifecycle_event !== undefined || process.env.npm_command !== undefined;
