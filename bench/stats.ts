/** Median, min and max of a series of measurements. */
export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function stat(values: number[]): Stat | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  return { median, min: v[0], max: v[v.length - 1], n: v.length };
}

/** What each bench worker prints as its last line of output (JSON). */
export interface WorkerResult {
  system: string;
  threads: number | null;
  gpuLayers?: number;
  loadMs: Stat | null;
  promptTokensPerSecond: Stat | null;
  generateTokensPerSecond: Stat | null;
  timeToFirstTokenMs: Stat | null;
  eventLoopP99Ms: Stat | null;
  /** Generation speed under a JSON-schema grammar (llama-addon only). */
  jsonSchemaTokensPerSecond?: Stat | null;
  peakRssMb: number | null;
  notes: string[];
}

export interface WorkerArgs {
  model: string;
  threads?: number;
  prompt: number;
  gen: number;
  reps: number;
  /** Stop a generation early after this many seconds (for pathological configurations). */
  budgetSeconds: number;
  vocabSize: number;
  bos: number | null;
  /** Layers offloaded to the GPU (absent: CPU only). */
  gpuLayers?: number;
}

/** Deterministic pseudo-random prompt tokens, as llama-bench uses random tokens. */
export function promptTokens(n: number, vocabSize: number, bos: number | null): number[] {
  let s = 12345;
  const out: number[] = [];
  if (bos !== null) out.push(bos);
  while (out.length < n) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    out.push(3 + (s % (vocabSize - 3)));
  }
  return out;
}

/** The samples a Node worker collected. */
export interface WorkerSamples {
  loadMs: number[];
  pp: number[];
  tg: number[];
  ttft: number[];
  p99: number[];
  json?: number[];
}

/** Prints a Node worker's result, with its own peak RSS, as the last line of its output. */
export function report(system: string, threads: number | null, s: WorkerSamples, notes: string[], gpuLayers?: number): void {
  const out: WorkerResult = {
    system,
    threads,
    ...(gpuLayers !== undefined ? { gpuLayers } : {}),
    loadMs: stat(s.loadMs),
    promptTokensPerSecond: stat(s.pp),
    generateTokensPerSecond: stat(s.tg),
    timeToFirstTokenMs: stat(s.ttft),
    eventLoopP99Ms: stat(s.p99),
    ...(s.json ? { jsonSchemaTokensPerSecond: stat(s.json) } : {}),
    peakRssMb: process.resourceUsage().maxRSS / 1024,
    notes,
  };
  console.log(JSON.stringify(out));
}
