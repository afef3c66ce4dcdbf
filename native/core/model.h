// The CPU model runtime: Llama-family decoders (Llama, Mistral, Qwen2) with weights
// memory-mapped from safetensors files and kept in their stored dtype (f32, f16, bf16;
// widened to f32 in registers), a per-sequence KV cache with O(1) rollback, and one
// forward call per ragged batch.
//
// Headers are parsed by the TypeScript layer (src/model/safetensors.ts); this file gets
// a list of tensors (name, file, byte range, dtype, shape) and checks everything again
// that could make it read out of bounds: a bad list is an Error, never a crash.
//
// Forward pass (Hugging Face's modeling_llama / modeling_qwen2), per token row t:
//   h = embed[token]
//   per layer: a = rmsnorm(h) * w_in; q, k, v = a Wq^T (+bq), a Wk^T (+bk), a Wv^T (+bv)
//              rope(q, k) at the token's position (rotate_half form); k, v -> cache
//              o = softmax(q k^T / sqrt(hd)) v over the positions <= t, per head
//                  (GQA: head i reads kv head i / (heads / kv_heads))
//              h = h + (o Wo^T (+bo))
//              a = rmsnorm(h) * w_post; h = h + (silu(a Wg^T) * (a Wu^T)) Wd^T
//   logits = (rmsnorm(h) * w_final) Wlm^T     (Wlm = embed when embeddings are tied)
// Every reduction has a fixed order that depends on neither the batch nor the threads
// (simd.h), so a sequence's logits are bitwise the same alone or in any batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "simd.h"

namespace specula {

struct ModelConfig {
  size_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  double rms_eps = 1e-6, rope_theta = 10000;
  // rope_scaling {"rope_type": "llama3"}.
  bool rope_llama3 = false;
  double rope_factor = 1, rope_low_freq = 1, rope_high_freq = 4, rope_original_max = 8192;
  bool tie_embeddings = false, qkv_bias = false, o_bias = false;
  size_t context = 0;  // the longest sequence: positions 0 .. context - 1
};

// One tensor of the safetensors files: absolute byte range [offset, offset + bytes) of
// files[file]; dtype as safetensors names it ("F32", "BF16", ...).
struct TensorSpec {
  std::string name;
  size_t file = 0;
  uint64_t offset = 0, bytes = 0;
  std::string dtype;
  std::vector<uint64_t> shape;
};

// A weight matrix as stored: (rows, cols) row-major, cols contiguous.
struct WeightView {
  const void* data = nullptr;
  simd::WType type = simd::WType::F32;
  size_t rows = 0, cols = 0;
};

class MappedFile;

// A float array aligned to 64 bytes (whole cache lines, aligned vector loads).
class FloatBuffer {
 public:
  FloatBuffer() = default;
  ~FloatBuffer();
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  float* data() const { return p_; }
  size_t size() const { return n_; }
  // At least n floats; contents are lost when it grows. Throws std::bad_alloc.
  void reserve(size_t n);
  // Exactly n zeros (large ones lazily: pages become resident when written).
  void assign_zero(size_t n);

 private:
  void release();
  float* p_ = nullptr;
  size_t n_ = 0;
  size_t mapped_ = 0;  // bytes of an mmap'd buffer, 0 for aligned_alloc
};

class Model {
 public:
  // Maps the files and binds the tensors that the config needs (others are ignored).
  // Throws Error: E_ARG (bad config), E_IO (a file cannot be opened or mapped),
  // E_FORMAT (missing tensor, byte range outside its file, size disagreeing with its
  // shape), E_SHAPE (shape disagreeing with the config), E_UNSUPPORTED (dtype).
  Model(const ModelConfig& config, const std::vector<std::string>& files, const std::vector<TensorSpec>& tensors);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  // Bytes of stored weights one decode step reads: every layer matrix and the output
  // projection (the embedding row and the norms are negligible).
  uint64_t weight_bytes_per_token() const { return bytes_per_token_; }
  // Bytes of all mapped files.
  uint64_t mapped_bytes() const;

  struct Layer {
    WeightView wq, wk, wv, wo, wg, wu, wd;
    std::vector<float> attn_norm, mlp_norm, bq, bk, bv, bo;  // widened copies (small)
  };
  const WeightView& embed() const { return embed_; }
  const WeightView& lm_head() const { return lm_head_; }
  const std::vector<float>& final_norm() const { return final_norm_; }
  const std::vector<Layer>& layers() const { return layers_; }
  // RoPE inverse frequencies (head_dim / 2), float as Hugging Face keeps them.
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  ModelConfig config_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  WeightView embed_, lm_head_;
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  uint64_t bytes_per_token_ = 0;
};

// One sequence's part of a forward call: n >= 1 new tokens appended at the sequence's
// current length; logits are returned for its last n_logits tokens (0 .. n).
struct ForwardItem {
  size_t seq = 0;
  const int32_t* tokens = nullptr;
  size_t n = 0;
  size_t n_logits = 0;
};

// KV cache for up to `sequences` sequences of up to `capacity` positions each
// (capacity <= config.context), f32: keys laid out [layer][seq][kv_head][position / 16][head_dim]
// [position % 16] (panels of 16 positions: attention scores 16 positions per vector and
// reads the keys as one stream), values [layer][seq][kv_head][position][head_dim]; the
// capacity is rounded up to whole panels. Not thread-safe: one forward at a time per
// cache (the TypeScript layer enforces it); the model may be shared by many caches.
class KvCache {
 public:
  KvCache(std::shared_ptr<const Model> model, size_t sequences, size_t capacity);

  const Model& model() const { return *model_; }
  size_t sequences() const { return lengths_.size(); }
  size_t capacity() const { return capacity_; }
  size_t length(size_t seq) const;
  // Forgets the positions >= length (O(1)); length <= length(seq).
  void truncate(size_t seq, size_t length);
  void reset();
  uint64_t bytes() const { return uint64_t(k_.size() + v_.size()) * 4; }

  // Forwards a ragged batch. logits: (sum of n_logits, vocab), items in order, each
  // item's rows in position order. Everything is checked before anything changes: on an
  // Error the cache is as before. Items must name distinct sequences.
  void forward(const ForwardItem* items, size_t count, float* logits);

 private:
  float* k_at(size_t layer, size_t seq, size_t kv_head) { return k_.data() + slot(layer, seq, kv_head); }
  float* v_at(size_t layer, size_t seq, size_t kv_head) { return v_.data() + slot(layer, seq, kv_head); }
  // Keys in panels of 16 positions (simd.h, AttendArgs), values one row per position;
  // each slot holds the capacity rounded up to whole panels.
  size_t slot(size_t layer, size_t seq, size_t kv_head) const {
    const ModelConfig& c = model_->config();
    return ((layer * lengths_.size() + seq) * c.kv_heads + kv_head) * panel_capacity() * c.head_dim;
  }
  size_t panel_capacity() const { return (capacity_ + 15) / 16 * 16; }

  std::shared_ptr<const Model> model_;
  size_t capacity_;
  std::vector<size_t> lengths_;
  FloatBuffer k_, v_;
  // Scratch reused across calls; activation rows padded to multiples of 16 floats.
  FloatBuffer x_, a_, q_, kk_, vv_, att_, g_, u_, xf_;
  std::vector<float> cos_, sin_;
};

}  // namespace specula
