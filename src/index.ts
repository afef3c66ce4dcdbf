/**
 * specula: exact speculative decoding for Node.js.
 * The kernels: sample, probabilities, verify, kdLoss, acceptanceRate (each with an Async
 * twin); the model runtime: loadModel, Model, KvCache, initModel; the speculative decoder;
 * the runtime settings.
 */
export { SpeculaError, type ErrorCode } from './errors.js';
export {
  sample, sampleAsync, probabilities, probabilitiesAsync, verify, verifyAsync,
  type SampleOptions, type ProbabilitiesOptions, type VerifyOptions, type VerifyResult,
  type SamplingParams, type PerRow, type Device,
} from './sampling.js';
export { backends, type Backends, type BackendInfo } from './backends.js';
export {
  kdLoss, kdLossAsync, acceptanceRate, acceptanceRateAsync,
  type Divergence, type KdLossOptions, type KdLossResult, type AcceptanceRateOptions,
} from './kd.js';
export { setThreads, getThreads, runtimeInfo, version, type RuntimeInfo } from './runtime.js';
export {
  loadModel, Model, KvCache, initModel, PRESETS, parseConfig, ARCHITECTURES, Tokenizer, readSafetensors,
  type LoadModelOptions, type CacheOptions, type ForwardItem, type InitModelOptions, type PresetName,
  type ModelShape, type WeightDType, type LlamaConfig, type Architecture, type EncodeOptions, type DecodeOptions,
  type SafetensorsFile, type TensorInfo,
} from './model/index.js';
export {
  SpeculativeDecoder, sequenceSeed, predictedSpeedup, expectedTokensPerStep,
  type DecoderLoadOptions, type GenerateOptions, type GenerateInput, type GenerateResult, type GenerationStats,
  type StepInfo, type StreamChunk, type FinishReason, type DraftSamplingOptions,
} from './engine/decoder.js';
export {
  loadDataset, documentText, promptText, DATASET_SHAPES,
  type Dataset, type DatasetRecord, type DatasetShape, type LoadDatasetOptions,
} from './data/dataset.js';
export { Trainer, cosineLr, type AdamWOptions } from './train/trainer.js';
export {
  train, distill, evalAlignment, DEFAULT_EVAL_TEMPERATURES,
  type TrainOptions, type DistillOptions, type EvalAlignmentOptions, type AlignmentTable, type AlignmentRow,
  type RunResult, type StepReport, type EvalReport, type RunInfo, type DataSource, type CommonOptions,
} from './train/run.js';
