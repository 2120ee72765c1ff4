import { totalmem } from 'node:os';
import { expect, it } from 'vitest';
import { getBackendInfo, getSystemInfo } from 'llama-addon';

it('reports the backends compiled in and their devices, the CPU among them', () => {
  const info = getBackendInfo();
  expect(info.backends).toContain('CPU');
  const cpu = info.devices.find((d) => d.type === 'cpu');
  expect(cpu).toMatchObject({ backend: 'CPU' });
  // The CPU device's memory is the machine's.
  expect(cpu!.memoryTotal).toBeGreaterThan(totalmem() * 0.5);
  expect(cpu!.memoryFree).toBeLessThanOrEqual(cpu!.memoryTotal);
  // A build without GPU backends has only CPU devices and no offload.
  if (info.devices.every((d) => d.type === 'cpu')) expect(getSystemInfo().gpuOffload).toBe(false);
});
