/** specula/reference: the float64 TypeScript reference of the kernels (slow, exact by construction). */
export { Domain, philox4x32_10, uniform, type DomainTag } from './philox.js';
export {
  referenceDistribution, referenceProbabilities, referenceSample, referenceVerify, inverseCdf,
  type ReferenceDistribution, type ReferenceSampleOptions, type ReferenceVerifyOptions, type ReferenceVerifyResult,
} from './sampling.js';
export { referenceKdLoss, referenceAcceptanceRate, type ReferenceKdOptions, type ReferenceKdResult, type Divergence } from './kd.js';
export * from './model.js';
