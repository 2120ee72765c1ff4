// Types of scripts/readme-examples.mjs, for test/readme.test.ts.

export const repoRoot: string;
export const readmePath: string;
export const defaultSharedModels: string;
export const MODEL_FILES: Record<string, string>;
export const SERVER_PORT: string;
export const DENO_FLAGS: string[];

export interface ReadmeBlock {
  line: number;
  info: string;
  lang: 'ts' | 'js' | 'sh' | 'json' | 'other' | '';
  code: string;
  marker: string | null;
  markerLine: number | null;
  heading: string;
}

export interface ProgramPart {
  lang: 'ts' | 'js' | 'sh';
  code: string;
  line: number;
  server?: boolean;
  prelude?: boolean;
}

export interface Program {
  name: string;
  line: number;
  heading: string;
  parts: ProgramPart[];
  kind?: 'ts' | 'esm' | 'cjs' | null;
  file?: string | null;
  tsFile?: string;
  lineMap?: number[];
}

export interface ReadmePrograms {
  programs: Program[];
  skipped: Array<{ line: number; lang: string; heading: string; reason: string }>;
  tsconfig: { line: number; text: string; json: unknown } | null;
  problems: string[];
}

export interface Runtime {
  kind: 'node' | 'bun' | 'deno';
  exe: string;
  /** Run TypeScript programs as their .ts file (the runtime strips the types). */
  typescript?: boolean;
}

export interface RunResult {
  ok: boolean;
  why: string;
  ms: number;
  stdout: string;
  stderr: string;
  status: number | null;
}

export function parseBlocks(markdown: string): ReadmeBlock[];
export function readmePrograms(markdown?: string): ReadmePrograms;
export function programKind(p: Program): 'ts' | 'esm' | 'cjs' | null;
export function programSource(p: Program): { text: string; map: number[] };
export function shCommands(p: Program): Array<{ command: string; server: boolean; part: ProgramPart }>;
export function prepareRunDir(root: string, options?: { sharedModels?: string; programs?: Program[]; tsconfig?: ReadmePrograms['tsconfig'] }): string;
export function writePrograms(app: string, programs: Program[]): Promise<void>;
export function typecheck(app: string, programs: Program[]): { ok: boolean; output: string; errors: Array<{ program: string; readmeLine: number | null; message: string }> };
export function freePort(): Promise<number>;
export function runProgram(app: string, p: Program, options?: { runtime?: Runtime; timeout?: number; env?: NodeJS.ProcessEnv }): Promise<RunResult>;
export function describeProgram(p: Program): string;
