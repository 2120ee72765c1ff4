/**
 * llama-addon: run GGUF language models in-process through llama.cpp.
 * @packageDocumentation
 */
export { loadModel, LlamaModel } from './model.js';
export type { LoadModelOptions, ModelPlacement, ModelInfo, Vocabulary, TokenizeOptions, DetokenizeOptions } from './model.js';
export { LlamaContext } from './context.js';
export type { ContextOptions } from './context.js';
export { LlamaSession } from './session.js';
export type { GenerateOptions, SessionOptions, BeamOptions } from './session.js';
export { LlamaChat, DEFAULT_CHAT_MAX_TOKENS } from './chat.js';
export { LlamaLora } from './lora.js';
export type { LoraSpec } from './lora.js';
export type { ChatOptions, ChatSendOptions, ChatResult, ChatTool, ToolChoice } from './chat.js';
export type { ChatMessage, ChatRole, ApplyChatTemplateOptions, ToolCall } from './chat-template.js';
export { defineSchema, jsonSchemaToGrammar, jsonSchemaToGrammarAsync, checkJsonSchema, SCHEMA_LIMITS } from './json-schema.js';
export type { JsonSchema, JsonSchemaObject, FromSchema, JsonSchemaOptions, SchemaMode, SchemaNote, SchemaErrorDetails } from './json-schema.js';
export type { GrammarTriggers } from './generate-options.js';
export { SAMPLING_OPTIONS } from './options/sampling.js';
export type { SamplingOptions, SamplingOptionSpec } from './options/sampling.js';
export { Generation } from './generation.js';
export type { GenerationChunk, GenerationResult, StopReason, TokenLogprob, BeamResult } from './generation.js';
export { LlamaError, LLAMA_ERROR_CODES } from './errors.js';
export type { LlamaErrorCode } from './errors.js';
export { limits } from './limits.js';
export type { LimitName } from './limits.js';
export { setLogLevel, setLogger } from './log.js';
export type { LogLevel, Logger } from './log.js';
export { getSystemInfo, getBackendInfo } from './system.js';
export type { SystemInfo, BackendInfo, BackendDevice, GpuModuleInfo, GpuBackendName } from './system.js';
export type { GpuOption } from './backends.js';
export { estimateMemory } from './memory.js';
export type { EstimateMemoryOptions, MemoryEstimate } from './memory.js';
export { startServer } from './server/lazy.js';
export type { LlamaServer, ServerOptions, ServerModel } from './server/server.js';
export { pullModel, modelCacheDir } from './pull.js';
export type { PullOptions, PulledModel } from './pull.js';
export { quantize, quantizationTypes } from './quantize.js';
export type { QuantizationType } from './quantize.js';
