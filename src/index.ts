/**
 * specula: exact speculative decoding for Node.js.
 * The kernels so far: sample, probabilities, verify, kdLoss, acceptanceRate (each with an
 * Async twin), and the runtime settings.
 */
export { SpeculaError, type ErrorCode } from './errors.js';
export {
  sample, sampleAsync, probabilities, probabilitiesAsync, verify, verifyAsync,
  type SampleOptions, type ProbabilitiesOptions, type VerifyOptions, type VerifyResult,
  type SamplingParams, type PerRow,
} from './sampling.js';
export {
  kdLoss, kdLossAsync, acceptanceRate, acceptanceRateAsync,
  type Divergence, type KdLossOptions, type KdLossResult, type AcceptanceRateOptions,
} from './kd.js';
export { setThreads, getThreads, runtimeInfo, version, type RuntimeInfo } from './runtime.js';
