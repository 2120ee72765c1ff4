// The nesting depth of a JSON text, found without parsing it (request bodies, schemas written by toJSON).

/**
 * How deeply `text` (JSON) nests arrays and objects, counting until it passes `limit` (then `limit + 1`).
 * One pass over the characters, no recursion and no allocation: a body nested a million levels deep costs
 * what its bytes cost, and nothing that recurses (ajv, JSON.stringify, llama.cpp's JSON) ever sees it.
 * Brackets inside strings do not count; the text need not be valid JSON (JSON.parse judges that).
 */
export function jsonDepth(text: string, limit: number): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) {
      depth--;
    }
  }
  return max;
}

/**
 * The path of the first key that could poison a prototype when the value is merged into an object:
 * `__proto__` anywhere, or `constructor` holding an object with a `prototype` key (what fastify's
 * default parser refuses). Null when there is none. Iterative: the value's depth was bounded before.
 */
export function prototypeKeyPath(value: unknown): string | null {
  const stack: Array<[unknown, string]> = [[value, '']];
  while (stack.length > 0) {
    const [v, path] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push([v[i], `${path}[${i}]`]);
      continue;
    }
    for (const key of Object.keys(v)) {
      const child = (v as Record<string, unknown>)[key];
      const at = path === '' ? key : `${path}.${key}`;
      if (key === '__proto__') return at;
      if (key === 'constructor' && child !== null && typeof child === 'object' && Object.hasOwn(child, 'prototype')) return `${at}.prototype`;
      stack.push([child, at]);
    }
  }
  return null;
}
