// The layer-fitting rule behind gpuLayers: 'auto', on made-up sizes (no GPU is needed to check it).
import { expect, it } from 'vitest';
import { fitLayers } from '../lib/core/memory.js';

const MiB = 2 ** 20;

it('offloads the last layers first, as many as fit after the compute buffer, and the output layer last', () => {
  const layers = [100, 100, 100, 100].map((n) => n * MiB);
  const kv = [10, 10, 10, 10].map((n) => n * MiB);
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 0)).toBe(0);
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 20 * MiB + 109 * MiB)).toBe(0);
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 20 * MiB + 110 * MiB)).toBe(1);
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 20 * MiB + 3 * 110 * MiB + 5 * MiB)).toBe(3);
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 20 * MiB + 4 * 110 * MiB)).toBe(4);
  // blocks + 1: the output layer too
  expect(fitLayers(layers, kv, 50 * MiB, 20 * MiB, 20 * MiB + 4 * 110 * MiB + 50 * MiB)).toBe(5);
});
