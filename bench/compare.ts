// Each figure of a bench report against an earlier one: `npm run bench -- --compare bench/results/<earlier>.json`
// prints it after the run; `npx tsx bench/compare.ts <earlier>.json <later>.json` compares two saved reports.
// Ratios are later / earlier (for speeds, above 1 is faster; for times and memory, above 1 is more).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface Stat {
  median: number;
}
interface SystemResult {
  system: string;
  loadMs?: Stat | null;
  promptTokensPerSecond?: Stat | null;
  generateTokensPerSecond?: Stat | null;
  jsonSchemaTokensPerSecond?: Stat | null;
  timeToFirstTokenMs?: Stat | null;
  eventLoopP99Ms?: Stat | null;
  peakRssMb?: number | null;
}
interface ModelReport {
  id: string;
  results: SystemResult[];
  ratios?: Record<string, number | null>;
}
export interface Report {
  date: string;
  machine?: { cpu?: string; host?: string };
  models?: ModelReport[];
}

const FIGURES: Array<[keyof SystemResult, string]> = [
  ['promptTokensPerSecond', 'pp tok/s'],
  ['generateTokensPerSecond', 'tg tok/s'],
  ['jsonSchemaTokensPerSecond', 'tg tok/s, JSON schema'],
  ['timeToFirstTokenMs', 'TTFT ms'],
  ['loadMs', 'load ms'],
  ['eventLoopP99Ms', 'event loop p99 ms'],
  ['peakRssMb', 'peak RSS MB'],
];

const value = (v: unknown): number | null =>
  typeof v === 'number' ? v : v !== null && typeof v === 'object' && typeof (v as Stat).median === 'number' ? (v as Stat).median : null;
const fmt = (x: number) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2));

/** A Markdown table: every figure and ratio present in both reports, with later / earlier. */
export function compareReports(earlier: Report, later: Report, earlierName = earlier.date): string {
  const lines = [
    `Compared with ${earlierName} (${earlier.machine?.cpu ?? '?'}): later / earlier`,
    '',
    '| model | system | figure | earlier | now | ratio |',
    '|---|---|---|---|---|---|',
  ];
  let rows = 0;
  for (const m of later.models ?? []) {
    const before = earlier.models?.find((x) => x.id === m.id);
    if (!before) continue;
    for (const r of m.results) {
      const b = before.results.find((x) => x.system === r.system);
      if (!b) continue;
      for (const [key, label] of FIGURES) {
        const now = value(r[key]);
        const then = value(b[key]);
        if (now === null || then === null || then === 0) continue;
        lines.push(`| ${m.id} | ${r.system} | ${label} | ${fmt(then)} | ${fmt(now)} | ${(now / then).toFixed(3)} |`);
        rows++;
      }
    }
    for (const [name, now] of Object.entries(m.ratios ?? {})) {
      const then = before.ratios?.[name];
      if (typeof now !== 'number' || typeof then !== 'number' || then === 0) continue;
      lines.push(`| ${m.id} | (ratio) | ${name} | ${then.toFixed(3)} | ${now.toFixed(3)} | ${(now / then).toFixed(3)} |`);
      rows++;
    }
  }
  if (rows === 0) lines.push('| (no model and system in both reports) | | | | | |');
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [a, b] = process.argv.slice(2);
  if (!a || !b) {
    console.error('usage: npx tsx bench/compare.ts <earlier>.json <later>.json');
    process.exit(2);
  }
  const read = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as Report;
  console.log(compareReports(read(a), read(b), a));
}
