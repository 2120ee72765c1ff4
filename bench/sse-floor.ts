// What a bare Node.js HTTP server pays in CPU for each streamed chunk, with no model and no llama-addon: the
// floor under our server's JS-thread cost per streamed token (see the README's server results). A child
// process wakes every --interval ms (a timer, as a token's notification wakes our event loop) and does one
// of: nothing ('wake'), a write of a chat-completion chunk straight to the socket in HTTP's chunked framing
// ('socket'), or the same chunk through ServerResponse.write ('response', what lib/server/sse.ts does).
// One client reads the stream; the child's CPU time comes from /proc/<pid>/schedstat (nanoseconds, not
// the clock ticks of /proc/<pid>/stat). Linux only.
//   npx tsx bench/sse-floor.ts [--chunks 550] [--interval 18]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { get } from 'node:http';
import { parseArgs } from 'node:util';
import { own } from './children.js';

const { values } = parseArgs({ options: { chunks: { type: 'string', default: '550' }, interval: { type: 'string', default: '18' }, child: { type: 'string' } } });
const chunks = Number(values.chunks);
const interval = Number(values.interval);

if (values.child) {
  const { createServer } = await import('node:http');
  const mode = values.child;
  const body = (n: number) =>
    `data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1764570000,"model":"m","choices":[{"index":0,"delta":{"content":" word${n}"},"logprobs":null,"finish_reason":null}]}\n\n`;
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.flushHeaders();
    let n = 0;
    const t = setInterval(() => {
      if (mode === 'socket') {
        const b = body(n);
        res.socket!.write(`${Buffer.byteLength(b).toString(16)}\r\n${b}\r\n`);
      } else if (mode === 'response') {
        res.write(body(n));
      }
      if (++n === chunks) {
        clearInterval(t);
        res.end('data: [DONE]\n\n');
      }
    }, interval);
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
} else {
  console.log(`A bare node:http server, one client, a chunk every ${interval} ms, ${chunks} chunks; CPU of the server process per chunk:`);
  for (const mode of ['wake', 'socket', 'response']) {
    const child = own(spawn(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname, '--child', mode, '--chunks', String(chunks), '--interval', String(interval)], { stdio: ['ignore', 'pipe', 'inherit'] }));
    const port = await new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
    const cpu = () => Number(readFileSync(`/proc/${child.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
    const before = cpu();
    await new Promise<void>((resolve, reject) => get(`http://127.0.0.1:${port}/`, (res) => res.on('data', () => {}).on('end', resolve).on('error', reject)).on('error', reject));
    const ms = (cpu() - before) / chunks;
    child.kill();
    console.log(`  ${mode.padEnd(8)} ${ms.toFixed(3)} ms`);
  }
}
