// Training of the runtime's Llama-family decoders: f32 master weights, a forward pass
// over whole sequences that keeps its activations, the backward pass of every parameter
// (embedding, RMSNorm, RoPE attention with causal mask and GQA, SwiGLU MLP, LM head,
// tied embeddings), cross-entropy, and AdamW with global-norm gradient clipping.
//
// The forward pass is the runtime's (model.h), for `batch` sequences of `seq` tokens at
// positions 0 .. seq - 1. The backward pass takes d loss / d logits from the caller (the
// cross-entropy below, or the KD losses of kd.h computed by the TypeScript layer), so
// that one backward serves pretraining and distillation.
//
// Every matrix product runs through the runtime's matmul kernel (simd.h): weight
// gradients as dW = dY^T X on transposed copies, input gradients as dX = dY W with W^T
// kept beside the weights. Every reduction has a fixed order that depends on neither the
// thread count nor the task order, so a step gives the same bits on 1 or 2 threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace specula {

// One parameter tensor in the trainer's flat arrays (params, grads, Adam moments):
// rows x cols floats (cols = 1 for vectors) at `offset`, row-major, as Hugging Face
// stores it under `name`. Offsets are multiples of 16 floats; the gaps hold zeros.
struct ParamTensor {
  std::string name;
  size_t offset = 0, rows = 0, cols = 0;
  bool matrix = false;  // 2-D: weight decay applies (not to the RMSNorm weights)
};

// Where the time of the last forward + backward went (seconds; flops of the matmuls).
struct TrainTiming {
  double forward_s = 0, backward_s = 0, matmul_s = 0, matmul_flops = 0;
};

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double max_grad_norm = 0.0;  // 0 = no clipping
};

class Trainer {
 public:
  // Copies the model's weights (widened to f32). Throws Error E_UNSUPPORTED for models
  // with attention biases (Qwen2), which this backward pass does not cover.
  explicit Trainer(const Model& model);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t size() const { return size_; }  // floats of each flat array, gaps included
  size_t parameters() const;              // parameters, gaps excluded
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  float* adam_m() { return m_.data(); }
  float* adam_v() { return v_.data(); }
  uint64_t step() const { return step_; }
  void set_step(uint64_t s) { step_ = s; }
  // Call after writing params() from outside (refreshes the transposed copies).
  void params_changed() { wt_dirty_ = true; }

  // tokens: batch x seq ids; logits: (batch * seq, vocab). Keeps the activations for
  // backward(). Throws E_VALUE for ids outside the vocabulary, E_SHAPE for seq past the
  // context, E_STATE when memory runs out.
  void forward(const int32_t* tokens, size_t batch, size_t seq, float* logits);
  // grads() = the gradient of sum_{t, v} dlogits[t, v] * logits[t, v] over every
  // parameter, for the last forward() (overwritten, not accumulated). E_STATE without one.
  void backward(const float* dlogits);
  // One AdamW step on grads() (decoupled weight decay on matrices only; bias-corrected
  // moments), after scaling the gradient to norm max_grad_norm when it is larger.
  // Returns the gradient's global norm before clipping. A non-finite norm changes
  // nothing and is returned as is (the caller stops).
  double adamw(const AdamWOptions& o);

  // Floating-point operations of one forward + backward of batch x seq tokens: the
  // matmuls, and attention over the causal positions only (j <= i): the benchmark's count.
  double flops(size_t batch, size_t seq) const;
  // The last forward + backward's timing (reset by forward()).
  const TrainTiming& timing() const { return timing_; }

 private:
  struct Acts;
  void refresh_transposes();

  ModelConfig config_;
  std::vector<ParamTensor> tensors_;
  size_t size_ = 0;
  FloatBuffer params_, grads_, m_, v_, wt_;
  std::vector<float> inv_freq_;
  uint64_t step_ = 0;
  bool wt_dirty_ = true;
  TrainTiming timing_;
  std::unique_ptr<Acts> acts_;
};

// Mean next-token cross-entropy over the rows with targets[r] >= 0 (others ignored):
// -log softmax(logits[r])[targets[r]]. When dlogits is not null, adds weight * d mean /
// d logits to it. Returns the mean (0 when no row counts) and the count in *counted.
// Throws E_VALUE for a target past the vocabulary; returns NaN when a counted row has a
// non-finite logit (the caller stops training; dlogits is then partly written).
double cross_entropy(const float* logits, const int32_t* targets, size_t rows, size_t vocab, float* dlogits,
                     float weight, size_t* counted);

}  // namespace specula
