// Limits on JSON schemas (README, "Grammars and JSON schemas" and "Errors"): over them, ERR_LIMIT_EXCEEDED.
// They keep the checking pass, ajv, llama.cpp's converter and its grammar parser within bounded time,
// memory and stack, whatever the schema.

export const SCHEMA_LIMITS = {
  /** Bytes of the schema as JSON text. */
  maxBytes: 128 * 1024,
  /** Nesting of objects and arrays in the schema's JSON (`{"properties":{"a":{}}}` is 3 deep). */
  maxDepth: 64,
  /** Subschemas (objects and booleans where a schema goes), over the whole schema. */
  maxSubschemas: 10_000,
  /** `$ref`s followed while checking (each distinct target once, plus each copy made to merge `allOf`). */
  maxRefExpansions: 1_000,
  /** `$ref`s that lead straight to another `$ref`, in a row. */
  maxRefChain: 32,
  /** Characters of a `pattern`. */
  maxPatternLength: 1_000,
  /** `minLength`, `maxLength` and `{m,n}` counts of patterns. */
  maxStringRepetition: 100_000,
  /** `minItems` and `maxItems` (llama.cpp's grammar engine drops larger bounds). */
  maxItems: 2_000,
  /** Bytes of GBNF written for the values the checking pass generates itself (patterns, numbers). */
  maxGrammarBytes: 1024 * 1024,
} as const;
