// JSON schemas for constrained generation, and the TypeScript type of the values they describe.
import { LlamaError } from './errors.js';
import { native } from './native.js';

/** A JSON schema (the subset llama.cpp's converter supports; unknown keywords are ignored). */
export type JsonSchema = boolean | JsonSchemaObject;

/** A JSON schema object. */
export interface JsonSchemaObject {
  type?: JsonTypeName | readonly JsonTypeName[];
  properties?: { readonly [name: string]: JsonSchema };
  required?: readonly string[];
  additionalProperties?: JsonSchema;
  items?: JsonSchema;
  prefixItems?: readonly JsonSchema[];
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  pattern?: string;
  format?: string;
  enum?: readonly unknown[];
  const?: unknown;
  anyOf?: readonly JsonSchema[];
  oneOf?: readonly JsonSchema[];
  allOf?: readonly JsonSchema[];
  $ref?: string;
  $defs?: { readonly [name: string]: JsonSchema };
  definitions?: { readonly [name: string]: JsonSchema };
  description?: string;
  title?: string;
  [keyword: string]: unknown;
}

type JsonTypeName = 'string' | 'number' | 'integer' | 'boolean' | 'null' | 'array' | 'object';

type TypeOfName<T> = T extends 'string'
  ? string
  : T extends 'number' | 'integer'
    ? number
    : T extends 'boolean'
      ? boolean
      : T extends 'null'
        ? null
        : T extends 'array'
          ? unknown[]
          : T extends 'object'
            ? { [key: string]: unknown }
            : unknown;

type RequiredKeys<S> = S extends { required: readonly (infer R)[] } ? R : never;

type Simplify<T> = { [K in keyof T]: T[K] } & {};

type ObjectOf<S> = S extends { properties: infer P }
  ? Simplify<
      { -readonly [K in keyof P as K extends RequiredKeys<S> ? K : never]: FromSchema<P[K]> } & {
        -readonly [K in keyof P as K extends RequiredKeys<S> ? never : K]?: FromSchema<P[K]>;
      }
    >
  : { [key: string]: unknown };

/**
 * The TypeScript type of the values a JSON schema describes, for schemas written as literals (use
 * {@link defineSchema} or pass the schema inline): `type`, `properties`/`required`, `items`, `enum`, `const`,
 * `anyOf`/`oneOf`. What it cannot express (`$ref`, ...) becomes `unknown`.
 */
export type FromSchema<S> = S extends true
  ? unknown
  : S extends { const: infer C }
    ? C
    : S extends { enum: readonly (infer E)[] }
      ? E
      : S extends { anyOf: readonly (infer A)[] }
        ? FromSchema<A>
        : S extends { oneOf: readonly (infer A)[] }
          ? FromSchema<A>
          : S extends { type: 'array'; items: infer I }
            ? FromSchema<I>[]
            : S extends { type: 'object' }
              ? ObjectOf<S>
              : S extends { properties: object }
                ? ObjectOf<S>
                : S extends { type: infer T }
                  ? T extends readonly (infer U)[]
                    ? TypeOfName<U>
                    : TypeOfName<T>
                  : unknown;

/**
 * Returns the schema unchanged, keeping its literal type, so that {@link FromSchema} (and the `json` of a
 * `complete()` result) can see it: `const Person = defineSchema({ type: 'object', properties: { ... } })`.
 */
export function defineSchema<const S extends JsonSchema>(schema: S): S {
  return schema;
}

const grammars = new Map<string, string>();

/**
 * Converts a JSON schema to a GBNF grammar with llama.cpp's own converter (the one llama-server uses).
 * @throws LlamaError `ERR_INVALID_GRAMMAR` when the schema cannot be converted.
 */
export function jsonSchemaToGrammar(schema: JsonSchema): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(schema);
  } catch {
    text = undefined;
  }
  if (typeof text !== 'string' || (typeof schema !== 'boolean' && (typeof schema !== 'object' || schema === null || Array.isArray(schema)))) {
    const err = new LlamaError('ERR_INVALID_ARGUMENT', `Invalid option "jsonSchema": expected a JSON schema object, received ${Array.isArray(schema) ? 'an array' : typeof schema}`);
    Error.captureStackTrace(err, jsonSchemaToGrammar);
    throw err;
  }
  let grammar = grammars.get(text);
  if (grammar === undefined) {
    try {
      grammar = native().jsonSchemaToGrammar(text);
    } catch (e) {
      const err = new LlamaError('ERR_INVALID_GRAMMAR', (e as Error).message);
      Error.captureStackTrace(err, jsonSchemaToGrammar);
      throw err;
    }
    if (grammars.size >= 64) grammars.delete(grammars.keys().next().value!);
    grammars.set(text, grammar);
  }
  return grammar;
}
