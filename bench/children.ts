// Every process the bench starts (its workers, llama-bench, the contention scenario's busy loops, the servers)
// is registered here, and ended when the bench ends, however it ends:
// - on exit, SIGINT (Ctrl-C), SIGTERM and SIGHUP, by the bench itself. A busy loop left running would keep a
//   core busy for good and spoil every later "idle" figure; a server paused with SIGSTOP (the server
//   scenario) does not even act on a Ctrl-C's SIGINT, and would stay stopped with its port and memory.
// - on SIGKILL, which the bench cannot catch, by a watchdog: a shell started with the first child, outside
//   the bench's process group, that checks every second whether the bench is still there and, once it is
//   not, continues and kills the processes listed in a file the bench keeps up to date.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const live = new Set<ChildProcess>();
const listFile = join(tmpdir(), `llama-addon-bench-${process.pid}.pids`);
let watchdog: ChildProcess | null = null;

function writeList(): void {
  try {
    writeFileSync(listFile, [...live].map((c) => c.pid).filter((p) => p !== undefined).join('\n'));
  } catch {
    // (the watchdog then ends nothing: the signal handlers below still do)
  }
}

function endAll(): void {
  for (const c of live) {
    try {
      c.kill('SIGCONT');
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  rmSync(listFile, { force: true });
  watchdog?.kill('SIGKILL');
  watchdog = null;
}

function install(): void {
  if (watchdog) return;
  writeList();
  const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; if [ -f '${listFile}' ]; then for p in $(cat '${listFile}'); do kill -CONT $p; kill -KILL $p; done; rm -f '${listFile}'; fi`;
  watchdog = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
  watchdog.unref();
  process.once('exit', endAll);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => {
      endAll();
      process.exit(code);
    });
  }
}

/** Registers a child the bench started: it is ended when the bench ends (see above). Returns it. */
export function own<T extends ChildProcess>(child: T): T {
  install();
  live.add(child);
  writeList();
  child.once('exit', () => {
    live.delete(child);
    writeList();
  });
  return child;
}
