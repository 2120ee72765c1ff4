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
