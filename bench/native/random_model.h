// A random Llama for the native benchmarks: weights written to a file the Model maps.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "model.h"
#include "simd.h"

namespace bench {

using specula::simd::WType;

// initModel's presets (src/model/init.ts, PRESETS): the engine benchmark's target and draft.
inline specula::ModelConfig llama_100m() {
  specula::ModelConfig c;
  c.vocab = 32000;
  c.hidden = 768;
  c.intermediate = 2048;
  c.layers = 12;
  c.heads = 12;
  c.kv_heads = 4;
  c.head_dim = 64;
  c.rms_eps = 1e-5;
  c.tie_embeddings = true;
  c.context = 1024;
  return c;
}

inline specula::ModelConfig llama_5m() {
  specula::ModelConfig c = llama_100m();
  c.hidden = 128;
  c.intermediate = 384;
  c.layers = 4;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 32;
  return c;
}

struct TempFile {
  std::string path;
  ~TempFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

// Writes random weights (normal, std 0.02; norms 1) for the config; returns the specs.
// Models written with different seeds draw their weights from different places.
inline std::vector<specula::TensorSpec> write_model(const specula::ModelConfig& c, WType wt, const std::string& path,
                                                   uint64_t seed = 0) {
  std::vector<specula::TensorSpec> specs;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::perror(path.c_str());
    std::exit(1);
  }
  const size_t es = wt == WType::F32 ? 4 : 2;
  const char* dt = wt == WType::F32 ? "F32" : wt == WType::F16 ? "F16" : "BF16";
  uint64_t off = 0;
  std::vector<float> buf;
  std::vector<uint8_t> bytes;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, bool norm) {
    size_t n = 1;
    for (auto d : shape) n *= d;
    buf.resize(n);
    if (norm) {
      for (float& v : buf) v = 1.0f;
    } else {
      fill_normal(buf.data(), n, 0.02f, seed * 1000003 + specs.size() + 1);
    }
    bytes.resize(n * es);
    for (size_t i = 0; i < n; ++i) {
      if (wt == WType::F32) {
        std::memcpy(bytes.data() + 4 * i, &buf[i], 4);
      } else {
        uint32_t b;
        std::memcpy(&b, &buf[i], 4);
        uint16_t h;
        if (wt == WType::BF16) {
          h = uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
        } else {  // f16 by truncation is fine for a benchmark
          const int e = int((b >> 23) & 255) - 127 + 15;
          h = uint16_t(((b >> 16) & 0x8000) | (e <= 0 ? 0 : e >= 31 ? 0x7bff : (e << 10) | ((b >> 13) & 1023)));
        }
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    }
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    specula::TensorSpec t;
    t.name = name;
    t.offset = off;
    t.bytes = bytes.size();
    t.dtype = dt;
    t.shape = shape;
    specs.push_back(t);
    off += bytes.size();
  };
  const size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  add("model.embed_tokens.weight", {c.vocab, c.hidden}, false);
  add("model.norm.weight", {c.hidden}, true);
  for (size_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {c.hidden}, true);
    add(p + "post_attention_layernorm.weight", {c.hidden}, true);
    add(p + "self_attn.q_proj.weight", {qd, c.hidden}, false);
    add(p + "self_attn.k_proj.weight", {kvd, c.hidden}, false);
    add(p + "self_attn.v_proj.weight", {kvd, c.hidden}, false);
    add(p + "self_attn.o_proj.weight", {c.hidden, qd}, false);
    add(p + "mlp.gate_proj.weight", {c.intermediate, c.hidden}, false);
    add(p + "mlp.up_proj.weight", {c.intermediate, c.hidden}, false);
    add(p + "mlp.down_proj.weight", {c.hidden, c.intermediate}, false);
  }
  std::fclose(f);
  return specs;
}

}  // namespace bench
