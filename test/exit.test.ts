import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, repoRoot, shared } from './helpers/models.js';

function run(mode: string) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'exit-child.ts'), shared('stories260k.gguf'), mode], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

describeShared('the process exits cleanly', () => {
  it('when a generation nobody reads is waiting for its reader', () => {
    const r = run('unconsumed');
    expect(r.signal).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('end of script unconsumed');
  });

  it('not before acquireSession() has its session: the wait keeps the process alive', () => {
    const r = run('acquire-wait');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('acquired a session');
    expect(r.stdout).toContain('end of script acquire-wait');
  });

  it('after aborting a waiting generation whose result is awaited', () => {
    const r = run('abort-paused');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('settled abort');
  });

  it('on process.exit() in the middle of a generation', () => {
    const r = run('process-exit');
    expect(r.signal).toBeNull();
    expect(r.status, r.stderr).toBe(7);
  });

  it('with contexts never disposed and a generation running to its end', () => {
    const r = run('undisposed-running');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('done 300');
  });
});
