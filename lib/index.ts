/**
 * llama-addon: run GGUF language models in-process through llama.cpp.
 * @packageDocumentation
 */
export { loadModel, LlamaModel } from './core/model.js';
export type { LoadModelOptions, ModelPlacement, ModelInfo, Vocabulary, TokenizeOptions, DetokenizeOptions } from './core/model.js';
export { LlamaContext } from './core/context.js';
export type { ContextOptions } from './core/context.js';
export { LlamaSession } from './core/session.js';
export type { GenerateOptions, SessionOptions, BeamOptions } from './core/session.js';
export { LlamaChat, DEFAULT_CHAT_MAX_TOKENS } from './core/chat.js';
export { LlamaLora } from './core/lora.js';
export type { LoraSpec } from './core/lora.js';
export type { ChatOptions, ChatSendOptions, ChatResult, ChatTool, ToolChoice } from './core/chat.js';
export type { ChatMessage, ChatRole, ApplyChatTemplateOptions, ToolCall } from './core/chat-template.js';
export { defineSchema, jsonSchemaToGrammar, jsonSchemaToGrammarAsync, checkJsonSchema, SCHEMA_LIMITS } from './schema/json-schema.js';
export type { JsonSchema, JsonSchemaObject, FromSchema, JsonSchemaOptions, SchemaMode, SchemaNote, SchemaErrorDetails } from './schema/json-schema.js';
export type { GrammarTriggers } from './options/generate.js';
export { SAMPLING_OPTIONS } from './options/sampling.js';
export type { SamplingOptions, SamplingOptionSpec } from './options/sampling.js';
export { Generation } from './core/generation.js';
export type { GenerationChunk, GenerationResult, StopReason, TokenLogprob, BeamResult } from './core/generation.js';
export { LlamaError, LLAMA_ERROR_CODES } from './base/errors.js';
export type { LlamaErrorCode } from './base/errors.js';
export { limits } from './base/limits.js';
export type { LimitName } from './base/limits.js';
export { setLogLevel, setLogger } from './base/log.js';
export type { LogLevel, Logger } from './base/log.js';
export { getSystemInfo, getBackendInfo } from './native/system.js';
export type { SystemInfo, BackendInfo, BackendDevice, GpuModuleInfo, GpuBackendName } from './native/system.js';
export type { GpuOption } from './native/backends.js';
export { estimateMemory } from './core/memory.js';
export type { EstimateMemoryOptions, MemoryEstimate } from './core/memory.js';
export { startServer } from './server/lazy.js';
export type { LlamaServer, ServerOptions, ServerModel } from './server/server.js';
export { pullModel, modelCacheDir } from './models/pull.js';
export type { PullOptions, PulledModel } from './models/pull.js';
export { quantize, quantizationTypes } from './models/quantize.js';
export type { QuantizationType } from './models/quantize.js';
