import type { Target } from './common.js';
import { gguf } from './gguf.js';
import { grammar } from './grammar.js';
import { http } from './http.js';
import { schema } from './schema.js';
import { session } from './session.js';
import { template } from './template.js';
import { tokenize } from './tokenize.js';

/** Every fuzz target, in the order a run goes through them. */
export const targets: ReadonlyArray<Target> = [tokenize, gguf, grammar, schema, template, session, http];

export function getTarget(name: string): Target {
  const t = targets.find((x) => x.name === name);
  if (!t) throw new Error(`unknown fuzz target "${name}" (targets: ${targets.map((x) => x.name).join(', ')})`);
  return t;
}
