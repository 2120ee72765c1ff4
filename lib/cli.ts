#!/usr/bin/env node
// The `llama-addon` command line (the package's bin): commands and flags are in cli/.
// npx llama-addon <command>: serve, chat, complete, embed, tokenize, inspect, pull, quantize, rpc-server,
// backends, bench. Each command declares its flags in one table (lib/cli/*.ts); its parsing, checks, help
// and suggestions come from there. Exit codes: 0 success, 1 a failure while running, 2 a usage error.
import { readFileSync } from 'node:fs';
import { commandHelp, didYouMean, parseCommand, suggest, UsageError, type Command } from './cli/args.js';
import { chat } from './cli/chat.js';
import { backends, bench, complete, embed, pull, quantize, rpcServer, tokenize } from './cli/commands.js';
import { inspect } from './cli/inspect.js';
import { serve } from './cli/serve.js';

const commands = [serve, chat, complete, embed, tokenize, inspect, pull, quantize, rpcServer, backends, bench] as unknown as Command[];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function programHelp(): string {
  const width = Math.max('-v, --version'.length, ...commands.map((c) => c.name.length)) + 3;
  return `Usage: llama-addon <command> [options]

Runs GGUF models through llama.cpp.

Commands:
${commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`).join('\n')}

Options:
  ${'-h, --help'.padEnd(width)}show this help; llama-addon <command> --help shows a command's flags
  ${'-v, --version'.padEnd(width)}print the version

--model takes a path, hf:owner/repo/file.gguf or a URL (downloaded on first use).
Exit codes: 0 success, 1 a failure while running, 2 a usage error.
`;
}

function usageError(message: string, command?: string): never {
  const hint = command ? `llama-addon ${command} --help` : 'llama-addon --help';
  process.stderr.write(`llama-addon: ${message}\n(${hint} lists the options)\n`);
  process.exit(2);
}

function findCommand(name: string): Command {
  const c = commands.find((x) => x.name === name);
  if (c) return c;
  usageError(`unknown command '${name}'${didYouMean(suggest(name, commands.map((x) => x.name)).map((n) => `'${n}'`))}`);
}

async function main(argv: string[]): Promise<void> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    process.stderr.write(programHelp());
    process.exit(2);
  }
  if (first === '--help' || first === '-h') return void process.stdout.write(programHelp());
  if (first === '--version' || first === '-v') return void process.stdout.write(`${version()}\n`);
  if (first === 'help') {
    if (rest.length === 0) return void process.stdout.write(programHelp());
    if (rest.length > 1) usageError(`help takes one command (received ${rest.join(' ')})`);
    return void process.stdout.write(commandHelp(findCommand(rest[0])));
  }
  if (first.startsWith('-')) {
    const flags = ['--help', '--version', '-h', '-v'];
    const hint = didYouMean(suggest(first, flags));
    usageError(`unknown option ${first}${hint || ': give a command first (llama-addon <command> [options])'}`);
  }
  const c = findCommand(first);
  let parsed: ReturnType<typeof parseCommand>;
  try {
    parsed = parseCommand(c, rest, commands);
  } catch (e) {
    if (e instanceof UsageError) usageError(e.message, e.command);
    throw e;
  }
  if (parsed.help) return void process.stdout.write(commandHelp(c));
  await c.run(parsed.values, parsed.positionals, rest);
}

// Output piped into a reader that stops early (`| head`): end quietly, as other command-line tools do,
// instead of an unhandled EPIPE error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) usageError(err.message, err.command);
  const e = err as Error & { code?: string };
  process.stderr.write(`llama-addon: ${e.code && !e.message.startsWith(e.code) ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(1);
});
