// The command line as a new user meets it: --version, --help for the program and each command, suggestions
// for misspelt flags and commands, values echoed as typed, and the exit codes the README documents
// (0 success, 1 a failure while running, 2 a usage error). Every case runs the CLI as a user does.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

const cli = ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts')];
interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}
/** Runs the CLI (asynchronously, so that a test can run a few at once). */
function run(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...cli, ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const commands = ['serve', 'chat', 'complete', 'embed', 'tokenize', 'inspect', 'pull', 'quantize', 'rpc-server', 'backends', 'bench'];

describe('llama-addon: version, help, usage errors', () => {
  it('prints its version with --version and -v', async () => {
    const { version } = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    for (const r of await Promise.all([run('--version'), run('-v')])) {
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(`${version}\n`);
    }
  });

  it('prints the program help with --help, -h and help, listing every command and the exit codes', async () => {
    const [long, short, word] = await Promise.all([run('--help'), run('-h'), run('help')]);
    for (const r of [long, short, word]) {
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(long.stdout);
    }
    expect(long.stdout).toMatch(/^Usage: llama-addon <command> \[options\]/);
    for (const c of commands) expect(long.stdout).toMatch(new RegExp(`^  ${c} +\\S`, 'm'));
    expect(long.stdout).toContain('Exit codes: 0 success, 1 a failure while running, 2 a usage error.');
    // Without a command: the help, on stderr, as a usage error.
    const none = await run();
    expect(none.status).toBe(2);
    expect(none.stderr).toBe(long.stdout);
  });

  it('prints the help of every command with --help (and -h, and help <command>)', async () => {
    for (let i = 0; i < commands.length; i += 4) {
      const results = await Promise.all(commands.slice(i, i + 4).map((c) => run(c, '--help')));
      results.forEach((r, j) => {
        const c = commands[i + j];
        expect(r.status, `${c}: ${r.stderr}`).toBe(0);
        expect(r.stdout).toMatch(new RegExp(`^Usage: llama-addon ${c} `));
        expect(r.stdout).toMatch(/^ {2}-h, --help +show this help$/m);
      });
    }
    const [long, short, word, after] = await Promise.all([run('chat', '--help'), run('chat', '-h'), run('help', 'chat'), run('chat', '--model', 'm.gguf', '--temperature', 'hot', '-h')]);
    for (const r of [short, word, after]) expect(r.stdout).toBe(long.stdout);
  });

  it('serve --help lists every flag with its default and one line', async () => {
    const r = await run('serve', '--help');
    const flags: Array<[string, string | null]> = [
      ['--model [ALIAS=]FILE', null], ['--host HOST', '127.0.0.1'], ['--port N', '8080'], ['--parallel N', '4'],
      ['--ctx-size N', "the model's training context, at most 4096"], ['--api-key KEY', null], ['--max-queue N', '64'],
      ['--max-tokens N', '4096'], ['--body-limit BYTES', '1048576'], ['--max-body-depth N', '128'], ['--cache-responses N', '0'],
      ['--kv-unified', null], ['--batch-size N', '2048'], ['--admin', null], ['--log', null], ['--gpu auto|cuda|vulkan|metal|off', 'auto'], ['--gpu-layers N|auto|max', 'auto'], ['--rpc HOST:PORT,...', null],
    ];
    const lines = r.stdout.split('\n');
    for (const [flag, def] of flags) {
      const i = lines.findIndex((l) => l.startsWith(`  ${flag} `) || l === `  ${flag}`);
      expect(i, flag).toBeGreaterThan(0);
      // The description is on the flag's line, or on the next when the flag is long.
      const text = lines[i].length > flag.length + 4 ? lines[i] : lines[i + 1];
      expect(text.trim().length).toBeGreaterThan(flag.length + 10);
      if (def !== null) expect(text, flag).toContain(`(default: ${def})`);
    }
    expect(r.stdout).toContain('(required; repeatable)');
  });

  it("chat and complete list the sampling flags with the library's defaults, and a default token limit", async () => {
    for (const r of await Promise.all([run('chat', '--help'), run('complete', '--help')])) {
      for (const [flag, def] of [
        ['--max-tokens N', '512'], ['--temperature X', '0.8'], ['--top-k N', '40'], ['--top-p X', '0.95'], ['--min-p X', '0.05'],
        ['--typical-p X', '1'], ['--repeat-penalty X', '1'], ['--presence-penalty X', '0'], ['--frequency-penalty X', '0'],
        ['--penalty-last-n N', '64'], ['--seed N', 'random'], ['--threads N|auto', "auto: up to the physical cores, adapting to the machine's load"],
      ]) {
        expect(r.stdout, flag).toMatch(new RegExp(`^  ${flag.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} +\\S.*\\(default: ${def}\\)$`, 'm'));
      }
      expect(r.stdout).toMatch(/^ {2}--stop TEXT +.*\(repeatable\)$/m);
    }
    const chat = await run('chat', '--help');
    for (const c of ['/help', '/system TEXT', '/reset', '/save FILE', '/load FILE', '/exit']) expect(chat.stdout).toContain(`  ${c} `);
  });

  it('suggests the flag or command meant, and exits with 2', async () => {
    const [flag, prefix, ambiguous, elsewhere, cmd, helpCmd, option] = await Promise.all([
      run('complete', '--model', 'm.gguf', '--temprature', '0.5', 'Hi'),
      run('chat', '--model', 'm.gguf', '--temp', '0'),
      run('complete', '--model', 'm.gguf', '--top', '3', 'Hi'),
      run('chat', '--model', 'm.gguf', '--port', '80'),
      run('chta', '--model', 'm.gguf'),
      run('help', 'serv'),
      run('--verison'),
    ]);
    for (const r of [flag, prefix, ambiguous, elsewhere, cmd, helpCmd, option]) expect(r.status, r.stderr).toBe(2);
    expect(flag.stderr).toBe('llama-addon: unknown flag --temprature for complete; did you mean --temperature?\n(llama-addon complete --help lists the options)\n');
    expect(prefix.stderr).toContain('unknown flag --temp for chat; did you mean --temperature?');
    expect(ambiguous.stderr).toContain('unknown flag --top for complete; did you mean --top-k, --top-p or --top-n-sigma?');
    expect(elsewhere.stderr).toContain('unknown flag --port for chat (it is a flag of serve, rpc-server)');
    expect(cmd.stderr).toContain("unknown command 'chta'; did you mean 'chat'?");
    expect(helpCmd.stderr).toContain("unknown command 'serv'; did you mean 'serve'?");
    expect(option.stderr).toContain('unknown option --verison; did you mean --version?');
  });

  it('echoes invalid values as typed, never NaN, and exits with 2', async () => {
    const cases: Array<[string[], string]> = [
      [['complete', '--model', 'm.gguf', '--temperature', 'hot', 'Hi'], 'Invalid --temperature: expected a number from 0 to 100, received "hot"'],
      [['complete', '--model', 'm.gguf', '--top-p', '1.5', 'Hi'], 'Invalid --top-p: expected a number from 0 to 1, received "1.5"'],
      [['chat', '--model', 'm.gguf', '--max-tokens', 'lots'], 'Invalid --max-tokens: expected an integer from 1 to 2147483647, received "lots"'],
      [['chat', '--model', 'm.gguf', '--seed', '1.5'], 'Invalid --seed: expected an integer from 0 to 4294967295, received "1.5"'],
      [['serve', '--model', 'm.gguf', '--port', '99999'], 'Invalid --port: expected an integer from 0 to 65535, received "99999"'],
      [['serve', '--model', 'm.gguf', '--port', ''], 'Invalid --port: expected an integer from 0 to 65535, received ""'],
      [['serve', '--model', 'm.gguf', '--gpu-layers', 'many'], 'Invalid --gpu-layers: expected a non-negative integer, auto or max, received "many"'],
      [['serve', '--model', 'm.gguf', '--gpu', 'rocm'], 'Invalid --gpu: expected one of auto, cuda, vulkan, metal, off, received "rocm"'],
      [['serve', '--model', 'm.gguf', '--rpc', 'host'], 'Invalid --rpc: expected a comma-separated list of host:port (ports from 1 to 65535), received "host"'],
      [['embed', '--model', 'm.gguf', '--pooling', 'max', 'x'], 'Invalid --pooling: expected one of mean, cls, last, received "max"'],
      [['complete', '--temperature', '0.5', 'Hi'], 'complete needs --model FILE'],
      [['complete', '--model', 'm.gguf'], 'complete needs one prompt argument'],
      [['complete', '--model', 'm.gguf', 'a', 'b'], 'complete needs one prompt argument (in quotes: "Once upon a time") (received 2: "a" "b")'],
      [['complete', '--model', 'm.gguf', 'Hi', '--temperature'], '--temperature needs a value: a number from 0 to 100'],
      [['complete', '--model', '--temperature', '1', 'Hi'], '--model needs a value: FILE (received the flag --temperature; for a value that starts with a dash, write --model=--temperature)'],
      [['complete', '--model', 'm.gguf', '--json=yes', 'Hi'], '--json takes no value (received "yes")'],
      [['complete', '--model', 'm.gguf', '--json-schema', 's.json', '--grammar', 'g.gbnf', 'Hi'], 'give --json-schema or --grammar, not both'],
      [['serve'], 'serve needs --model [ALIAS=]FILE'],
      [['serve', '--model', 'a.gguf', '--model', 'other/a.gguf'], 'two models are called "a"'],
      [['backends', 'extra'], 'backends takes no arguments besides its flags (received "extra")'],
      [['quantize', 'in.gguf', 'out.gguf', 'Q4_K_m'], 'unknown type "Q4_K_m"; did you mean Q4_K_M?'],
    ];
    for (let i = 0; i < cases.length; i += 4) {
      const results = await Promise.all(cases.slice(i, i + 4).map(([args]) => run(...args)));
      results.forEach((r, j) => {
        const [args, message] = cases[i + j];
        expect(r.status, args.join(' ')).toBe(2);
        expect(r.stderr, args.join(' ')).toContain(`llama-addon: ${message}`);
        expect(r.stderr).not.toContain('NaN');
        expect(r.stdout).toBe('');
      });
    }
  });

  it('accepts negative numbers and values given with =', async () => {
    // Checked without loading anything: the file does not exist, so it fails (1) after the flags were accepted.
    const r = await run('complete', '--model=/nonexistent.gguf', '--presence-penalty', '-0.5', '--penalty-last-n=-1', '--temperature=0', 'Hi');
    expect(r.stderr).toBe('llama-addon: ERR_MODEL_NOT_FOUND: Model file not found: /nonexistent.gguf\n');
    expect(r.status).toBe(1);
  });
});

describeShared('llama-addon: the same errors for a bad model file, whichever command', () => {
  it('a missing file and a file that is not GGUF: the same message with the file name, exit 1', async () => {
    const notGguf = join(fixtures, 'cli-not-a-model.gguf');
    writeFileSync(notGguf, 'hello, world\n');
    const uses = (file: string): string[][] => [
      ['inspect', file],
      ['complete', '--model', file, 'Hi'],
      ['chat', '--model', file],
      ['tokenize', '--model', file, 'Hi'],
      ['embed', '--model', file, 'Hi'],
      ['serve', '--model', file, '--port', '0'],
    ];
    const expected: Array<[string, string]> = [
      ['/nonexistent/model.gguf', 'llama-addon: ERR_MODEL_NOT_FOUND: Model file not found: /nonexistent/model.gguf\n'],
      [notGguf, `llama-addon: ERR_INVALID_MODEL: ${notGguf} is not a valid GGUF model: it does not start with the GGUF magic bytes\n`],
    ];
    for (const [file, message] of expected) {
      const results = await Promise.all(uses(file).map((args) => run(...args)));
      results.forEach((r, i) => {
        expect(r.stderr, uses(file)[i].join(' ')).toBe(message);
        expect(r.status).toBe(1);
      });
    }
  });

  it('serve exits with 1 when its model does not load (after listening)', async () => {
    // A vocabulary-only file has a valid header but no weights: the load itself fails.
    const r = await run('serve', '--model', shared('vocab-phi-3.gguf'), '--port', '0');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/listening on http:\/\/127\.0\.0\.1:\d+/);
    expect(r.stderr).toContain(`llama-addon: ERR_INVALID_MODEL: ${shared('vocab-phi-3.gguf')} is not a valid GGUF model: it has no tensors`);
    expect(r.stderr).toMatch(/a model did not load: stopping\n$/);
  });
});
