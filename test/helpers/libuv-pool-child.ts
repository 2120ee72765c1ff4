// Run by test/libuv-pool.test.ts with UV_THREADPOOL_SIZE=1: long native work (a quantize, a model load
// without mmap) runs while the process keeps reading a small file through libuv's pool, one read after
// another. Prints how many reads finished while each piece of work ran, as JSON.
import { readFile } from 'node:fs/promises';
import { loadModel, quantize, setLogLevel } from '../../lib/index.js';

setLogLevel('error');
const [input, output, other] = process.argv.slice(2);

/** Reads `other` over and over from when `start` is called until `work` settles; returns the count. */
async function readsDuring(work: (start: () => void) => Promise<unknown>): Promise<number> {
  let done = false;
  let reads = 0;
  let reading: Promise<void> | null = null;
  const start = () => {
    reading ??= (async () => {
      while (!done) {
        await readFile(other);
        if (!done) reads++;
      }
    })();
  };
  await work(start);
  done = true;
  await reading;
  return reads;
}

const quantizing = await readsDuring((start) => {
  const p = quantize(input, output, 'Q8_0');
  start();
  return p;
});
// The load's first progress report comes once the native load has begun (after the file checks in JS).
const loading = await readsDuring(async (start) => {
  const m = await loadModel(input, { useMmap: false, onProgress: start });
  await m.dispose();
});
process.stdout.write(JSON.stringify({ quantizing, loading }));
