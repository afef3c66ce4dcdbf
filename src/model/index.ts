/** The CPU model runtime: loading Hugging Face Llama-family directories, caches, initModel. */
export { loadModel, Model, KvCache, type LoadModelOptions, type CacheOptions, type ForwardItem } from './model.js';
export { initModel, PRESETS, type InitModelOptions, type PresetName, type ModelShape, type WeightDType } from './init.js';
export { parseConfig, ARCHITECTURES, type LlamaConfig, type Architecture } from './config.js';
export { Tokenizer, byteTokenizerJson, type EncodeOptions, type DecodeOptions, type SpecialTokenIds } from './tokenizer.js';
export { readSafetensors, parseSafetensorsHeader, type SafetensorsFile, type TensorInfo } from './safetensors.js';
