#include "train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include "error.h"
#include "matmul.h"
#include "thread_pool.h"

namespace specula {

namespace {

size_t round16(size_t n) { return (n + 15) / 16 * 16; }

// Attention skips the products above the diagonal in blocks of this many rows.
constexpr size_t kCausalBlock = 64;

// y (rows, n) [+]= x (rows, k) w^T with w (n, k), all f32.
simd::MatmulArgs mmf(const float* x, size_t ldx, size_t rows, size_t k, const float* w, size_t ldw, float* y,
                     size_t ldy, bool accumulate) {
  simd::MatmulArgs a;
  a.x = x;
  a.ldx = ldx;
  a.rows = rows;
  a.k = k;
  a.w = w;
  a.wtype = simd::WType::F32;
  a.ldw = ldw;
  a.bias = nullptr;
  a.y = y;
  a.ldy = ldy;
  a.accumulate = accumulate;
  return a;
}

// dst (cols, rows) = src (rows, cols)^T, src row stride lds, dst row stride ldd.
void transpose_block(const float* src, size_t lds, size_t r0, size_t r1, size_t c0, size_t c1, float* dst, size_t ldd) {
  constexpr size_t B = 16;
  for (size_t i0 = r0; i0 < r1; i0 += B)
    for (size_t j0 = c0; j0 < c1; j0 += B) {
      const size_t i1 = std::min(i0 + B, r1), j1 = std::min(j0 + B, c1);
      for (size_t i = i0; i < i1; ++i)
        for (size_t j = j0; j < j1; ++j) dst[j * ldd + i] = src[i * lds + j];
    }
}

void transpose(const float* src, size_t rows, size_t cols, size_t lds, float* dst, size_t ldd, bool parallel = true) {
  const size_t chunk = 256;  // rows of src per task
  const size_t tasks = (rows + chunk - 1) / chunk;
  if (!parallel || tasks <= 1 || rows * cols < (size_t(1) << 15)) {
    transpose_block(src, lds, 0, rows, 0, cols, dst, ldd);
    return;
  }
  ThreadPool::global().parallel_for(tasks, [&](size_t i) {
    transpose_block(src, lds, i * chunk, std::min(rows, (i + 1) * chunk), 0, cols, dst, ldd);
  });
}

template <class F>
void rows_parallel(size_t rows, size_t work_per_row, F fn) {
  if (rows * work_per_row < (size_t(1) << 16)) {
    for (size_t t = 0; t < rows; ++t) fn(t);
    return;
  }
  const size_t per = std::max<size_t>(1, (size_t(1) << 14) / std::max<size_t>(1, work_per_row));
  const size_t tasks = (rows + per - 1) / per;
  ThreadPool::global().parallel_for(tasks, [&](size_t i) {
    for (size_t t = i * per, e = std::min(rows, (i + 1) * per); t < e; ++t) fn(t);
  });
}

// RMSNorm of one row: out = x r w with r = 1 / sqrt(mean(x^2) + eps), mean in double.
float rmsnorm_row(const float* x, const float* w, size_t n, double eps, float* out) {
  double ss = 0;
  for (size_t j = 0; j < n; ++j) ss += double(x[j]) * x[j];
  const float r = float(1.0 / std::sqrt(ss / double(n) + eps));
  for (size_t j = 0; j < n; ++j) out[j] = x[j] * r * w[j];
  return r;
}

// Backward of rmsnorm_row for one row: dx (+)= r (w da) - x r^3 mean(w da x).
void rmsnorm_back_row(const float* x, float r, const float* w, const float* da, size_t n, float* dx, bool add) {
  double s = 0;
  for (size_t j = 0; j < n; ++j) s += double(w[j]) * da[j] * x[j];
  const float c = float(s / double(n) * double(r) * double(r) * double(r));
  if (add) {
    for (size_t j = 0; j < n; ++j) dx[j] += r * (w[j] * da[j]) - x[j] * c;
  } else {
    for (size_t j = 0; j < n; ++j) dx[j] = r * (w[j] * da[j]) - x[j] * c;
  }
}

// d w = sum_t da[t] x[t] r[t], in increasing t.
void rmsnorm_back_weight(const float* x, const float* r, const float* da, size_t T, size_t n, float* dw) {
  std::fill(dw, dw + n, 0.0f);
  for (size_t t = 0; t < T; ++t) {
    const float* xt = x + t * n;
    const float* dt = da + t * n;
    const float rt = r[t];
    for (size_t j = 0; j < n; ++j) dw[j] += dt[j] * (xt[j] * rt);
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// run_matmuls, with its wall time and flops added to `tm`.
void timed_mm(TrainTiming& tm, std::initializer_list<simd::MatmulArgs> list, std::initializer_list<size_t> ns) {
  const auto t0 = std::chrono::steady_clock::now();
  run_matmuls(list, ns);
  tm.matmul_s += seconds_since(t0);
  auto n = ns.begin();
  for (const simd::MatmulArgs& a : list) tm.matmul_flops += 2.0 * double(a.rows) * double(a.k) * double(*n++);
}

// RoPE on one head (rotate-half pairing): (v1, v2) <- (v1 cos - s v2 sin, v2 cos + s v1 sin),
// s = 1 forward, s = -1 for the transposed rotation of the backward pass (exact sign flips).
void rotate_halves(float* v, const float* cp, const float* sp, size_t half, float s) {
  for (size_t i = 0; i < half; ++i) {
    const float v1 = v[i], v2 = v[i + half];
    v[i] = v1 * cp[i] - (s * v2) * sp[i];
    v[i + half] = v2 * cp[i] + (s * v1) * sp[i];
  }
}

}  // namespace

// Activations of the last forward (what backward needs) and the backward scratch.
struct Trainer::Acts {
  size_t B = 0, S = 0, T = 0;
  std::vector<int32_t> tokens;
  FloatBuffer mem;
  // Offsets into mem.
  size_t xs = 0;  // (layers + 1) x (T, H): the input of every layer, then the last output
  struct Layer {
    size_t a1, r1, q, k, v, p, att, xm, a2, r2, g, sg, u, m;
  };
  std::vector<Layer> layers;
  size_t af = 0, rf = 0;
  // Backward scratch.
  size_t dx = 0, dxm = 0, da = 0, dm = 0, dg = 0, du = 0, datt = 0, dq = 0, dk = 0, dv = 0, ty = 0, tx = 0;
  std::vector<float> cos, sin;
  float* at(size_t off) { return mem.data() + off; }
};

Trainer::Trainer(const Model& model) : config_(model.config()), inv_freq_(model.inv_freq()) {
  const ModelConfig& c = config_;
  for (const Model::Layer& L : model.layers())
    if (!L.bq.empty() || !L.bk.empty() || !L.bv.empty() || !L.bo.empty())
      throw Error(Code::Unsupported, "model: training covers models without attention biases (Llama, Mistral); this one has them");
  const size_t H = c.hidden, I = c.intermediate, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  auto add = [&](const std::string& name, size_t rows, size_t cols, bool matrix) {
    ParamTensor t;
    t.name = name;
    t.offset = size_;
    t.rows = rows;
    t.cols = cols;
    t.matrix = matrix;
    size_ += round16(rows * cols);
    tensors_.push_back(t);
  };
  add("model.embed_tokens.weight", c.vocab, H, true);
  for (size_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", H, 1, false);
    add(p + "self_attn.q_proj.weight", qd, H, true);
    add(p + "self_attn.k_proj.weight", kvd, H, true);
    add(p + "self_attn.v_proj.weight", kvd, H, true);
    add(p + "self_attn.o_proj.weight", H, qd, true);
    add(p + "post_attention_layernorm.weight", H, 1, false);
    add(p + "mlp.gate_proj.weight", I, H, true);
    add(p + "mlp.up_proj.weight", I, H, true);
    add(p + "mlp.down_proj.weight", H, I, true);
  }
  add("model.norm.weight", H, 1, false);
  if (!c.tie_embeddings) add("lm_head.weight", c.vocab, H, true);
  try {
    params_.assign_zero(size_);
    grads_.assign_zero(size_);
    m_.assign_zero(size_);
    v_.assign_zero(size_);
    wt_.assign_zero(size_);
  } catch (const std::bad_alloc&) {
    throw Error(Code::State, "Trainer: out of memory for " + std::to_string(size_) + " parameters");
  }
  const simd::Kernels& K = simd::kernels();
  auto widen = [&](size_t ti, const WeightView& w) { K.widen(w.data, w.type, w.rows * w.cols, params_.data() + tensors_[ti].offset); };
  auto copy = [&](size_t ti, const std::vector<float>& v) { std::copy(v.begin(), v.end(), params_.data() + tensors_[ti].offset); };
  size_t ti = 0;
  widen(ti++, model.embed());
  for (const Model::Layer& L : model.layers()) {
    copy(ti++, L.attn_norm);
    widen(ti++, L.wq);
    widen(ti++, L.wk);
    widen(ti++, L.wv);
    widen(ti++, L.wo);
    copy(ti++, L.mlp_norm);
    widen(ti++, L.wg);
    widen(ti++, L.wu);
    widen(ti++, L.wd);
  }
  copy(ti++, model.final_norm());
  if (!c.tie_embeddings) widen(ti++, model.lm_head());
}

Trainer::~Trainer() = default;

size_t Trainer::parameters() const {
  size_t n = 0;
  for (const ParamTensor& t : tensors_) n += t.rows * t.cols;
  return n;
}

void Trainer::refresh_transposes() {
  if (!wt_dirty_) return;
  for (const ParamTensor& t : tensors_)
    if (t.matrix) transpose(params_.data() + t.offset, t.rows, t.cols, t.cols, wt_.data() + t.offset, t.rows);
  wt_dirty_ = false;
}

double Trainer::flops(size_t batch, size_t seq) const {
  const ModelConfig& c = config_;
  const double T = double(batch) * double(seq);
  const double H = double(c.hidden), I = double(c.intermediate), qd = double(c.heads * c.head_dim),
               kvd = double(c.kv_heads * c.head_dim);
  const double per_token = 2.0 * (double(c.layers) * (H * qd * 2 + H * kvd * 2 + 3 * H * I) + H * double(c.vocab));
  // Attention: the causal products only (positions j <= i), not what the blocks compute.
  const double attn = double(c.layers) * double(batch) * double(c.heads) * 2.0 * double(seq) * double(seq + 1) / 2.0 * double(c.head_dim);
  return 3.0 * per_token * T + 6.0 * attn;  // forward + two products per matmul backward; 2 + 4 attention products
}

void Trainer::forward(const int32_t* tokens, size_t B, size_t S, float* logits) {
  const ModelConfig& c = config_;
  if (B == 0) throw Error(Code::Value, "batch: expected at least 1 sequence, received 0");
  if (S == 0) throw Error(Code::Value, "seqLen: expected at least 1 token, received 0");
  if (S > c.context)
    throw Error(Code::Shape, "seqLen: expected at most the context length " + std::to_string(c.context) + ", received " +
                                 std::to_string(S));
  const size_t T = B * S;
  for (size_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || size_t(tokens[t]) >= c.vocab)
      throw Error(Code::Value, "tokens[" + std::to_string(t) + "]: expected a token id in [0, " + std::to_string(c.vocab - 1) +
                                   "], received " + std::to_string(tokens[t]));
  const size_t H = c.hidden, I = c.intermediate, hd = c.head_dim, half = hd / 2, V = c.vocab;
  const size_t qd = c.heads * hd, kvd = c.kv_heads * hd, group = c.heads / c.kv_heads, L = c.layers;

  if (!acts_ || acts_->B != B || acts_->S != S) {
    acts_.reset();
    auto a = std::make_unique<Acts>();
    a->B = B;
    a->S = S;
    a->T = T;
    size_t n = 0;
    auto take = [&](size_t count) {
      const size_t off = n;
      n += round16(count);
      return off;
    };
    a->xs = take((L + 1) * T * H);
    for (size_t l = 0; l < L; ++l) {
      Acts::Layer y;
      y.a1 = take(T * H);
      y.r1 = take(T);
      y.q = take(T * qd);
      y.k = take(T * kvd);
      y.v = take(T * kvd);
      y.p = take(B * c.heads * S * S);
      y.att = take(T * qd);
      y.xm = take(T * H);
      y.a2 = take(T * H);
      y.r2 = take(T);
      y.g = take(T * I);
      y.sg = take(T * I);
      y.u = take(T * I);
      y.m = take(T * I);
      a->layers.push_back(y);
    }
    a->af = take(T * H);
    a->rf = take(T);
    a->dx = take(T * H);
    a->dxm = take(T * H);
    a->da = take(T * H);
    a->dm = take(T * I);
    a->dg = take(T * I);
    a->du = take(T * I);
    a->datt = take(T * qd);
    a->dq = take(T * qd);
    a->dk = take(T * kvd);
    a->dv = take(T * kvd);
    const size_t widest = std::max({H, I, qd, V});
    a->ty = take((T + 16) * widest);
    a->tx = take((T + 16) * widest);
    try {
      a->mem.assign_zero(n);
    } catch (const std::bad_alloc&) {
      throw Error(Code::State, "Trainer.forward: out of memory for the activations of " + std::to_string(B) + " x " +
                                   std::to_string(S) + " tokens (" + std::to_string(n / 262144) + " MiB)");
    }
    a->cos.resize(S * half);
    a->sin.resize(S * half);
    for (size_t t = 0; t < S; ++t)
      for (size_t i = 0; i < half; ++i) {
        const double angle = double(inv_freq_[i]) * double(t);
        a->cos[t * half + i] = float(std::cos(angle));
        a->sin[t * half + i] = float(std::sin(angle));
      }
    acts_ = std::move(a);
  }
  timing_ = TrainTiming{};
  const auto t_start = std::chrono::steady_clock::now();
  refresh_transposes();
  Acts& A = *acts_;
  A.tokens.assign(tokens, tokens + T);
  const simd::Kernels& K = simd::kernels();
  const float* P = params_.data();
  auto W = [&](size_t ti) { return P + tensors_[ti].offset; };
  const double eps = c.rms_eps;
  const float scale = float(1.0 / std::sqrt(double(hd)));

  float* x0 = A.at(A.xs);
  for (size_t t = 0; t < T; ++t) std::memcpy(x0 + t * H, W(0) + size_t(tokens[t]) * H, H * 4);
  auto rope = [&](float* v, size_t pos) { rotate_halves(v, A.cos.data() + pos * half, A.sin.data() + pos * half, half, 1.0f); };

  for (size_t l = 0; l < L; ++l) {
    const Acts::Layer& Y = A.layers[l];
    const size_t base = 1 + l * 9;
    const float* X = A.at(A.xs + l * T * H);
    float* Xn = A.at(A.xs + (l + 1) * T * H);
    float* a1 = A.at(Y.a1);
    float* r1 = A.at(Y.r1);
    rows_parallel(T, H, [&](size_t t) { r1[t] = rmsnorm_row(X + t * H, W(base), H, eps, a1 + t * H); });
    float* q = A.at(Y.q);
    float* k = A.at(Y.k);
    float* v = A.at(Y.v);
    timed_mm(timing_, {mmf(a1, H, T, H, W(base + 1), H, q, qd, false), mmf(a1, H, T, H, W(base + 2), H, k, kvd, false),
                 mmf(a1, H, T, H, W(base + 3), H, v, kvd, false)},
                {qd, kvd, kvd});
    rows_parallel(T, qd + kvd, [&](size_t t) {
      for (size_t h = 0; h < c.heads; ++h) rope(q + t * qd + h * hd, t % S);
      for (size_t g = 0; g < c.kv_heads; ++g) rope(k + t * kvd + g * hd, t % S);
    });
    float* pr = A.at(Y.p);
    float* att = A.at(Y.att);
    ThreadPool::global().parallel_for(B * c.kv_heads, [&](size_t task) {
      const size_t b = task / c.kv_heads, g = task % c.kv_heads;
      thread_local std::vector<float> vt;
      vt.resize(hd * S);
      const float* kg = k + b * S * kvd + g * hd;
      const float* vg = v + b * S * kvd + g * hd;
      transpose(vg, S, hd, kvd, vt.data(), S, false);
      for (size_t h = g * group; h < (g + 1) * group; ++h) {
        float* pb = pr + (b * c.heads + h) * S * S;
        const float* qh = q + b * S * qd + h * hd;
        // Causal: row block [r0, r1) needs the columns below r1 only.
        for (size_t r0 = 0; r0 < S; r0 += kCausalBlock) {
          const size_t r1 = std::min(S, r0 + kCausalBlock);
          K.matmul(mmf(qh + r0 * qd, qd, r1 - r0, hd, kg, kvd, pb + r0 * S, S, false), 0, r1, nullptr);
        }
        for (size_t i = 0; i < S; ++i) {
          float* row = pb + i * S;
          bool bad = false;
          const float mx = K.max(row, i + 1, &bad);
          const float sum = K.exp_sum(row, i + 1, mx, scale, row);
          K.scale(row, i + 1, 1.0f / sum);
          std::fill(row + i + 1, row + S, 0.0f);
        }
        for (size_t r0 = 0; r0 < S; r0 += kCausalBlock) {
          const size_t r1 = std::min(S, r0 + kCausalBlock);
          K.matmul(mmf(pb + r0 * S, S, r1 - r0, r1, vt.data(), S, att + (b * S + r0) * qd + h * hd, qd, false), 0, hd, nullptr);
        }
      }
    });
    float* xm = A.at(Y.xm);
    std::memcpy(xm, X, T * H * 4);
    timed_mm(timing_, {mmf(att, qd, T, qd, W(base + 4), qd, xm, H, true)}, {H});
    float* a2 = A.at(Y.a2);
    float* r2 = A.at(Y.r2);
    rows_parallel(T, H, [&](size_t t) { r2[t] = rmsnorm_row(xm + t * H, W(base + 5), H, eps, a2 + t * H); });
    float* gg = A.at(Y.g);
    float* uu = A.at(Y.u);
    timed_mm(timing_, {mmf(a2, H, T, H, W(base + 6), H, gg, I, false), mmf(a2, H, T, H, W(base + 7), H, uu, I, false)}, {I, I});
    float* sg = A.at(Y.sg);
    float* mm = A.at(Y.m);
    rows_parallel(T, I * 4, [&](size_t t) {
      thread_local std::vector<float> ones;
      if (ones.size() < I) ones.assign(I, 1.0f);
      K.silu_mul(gg + t * I, ones.data(), I, sg + t * I);
      for (size_t j = 0; j < I; ++j) mm[t * I + j] = sg[t * I + j] * uu[t * I + j];
    });
    std::memcpy(Xn, xm, T * H * 4);
    timed_mm(timing_, {mmf(mm, I, T, I, W(base + 8), I, Xn, H, true)}, {H});
  }
  const float* XL = A.at(A.xs + L * T * H);
  float* af = A.at(A.af);
  float* rf = A.at(A.rf);
  const size_t norm_t = 1 + L * 9;
  const size_t lm_t = c.tie_embeddings ? 0 : norm_t + 1;
  rows_parallel(T, H, [&](size_t t) { rf[t] = rmsnorm_row(XL + t * H, W(norm_t), H, eps, af + t * H); });
  timed_mm(timing_, {mmf(af, H, T, H, W(lm_t), H, logits, V, false)}, {V});
  timing_.forward_s = seconds_since(t_start);
}

void Trainer::backward(const float* dlogits) {
  if (!acts_ || acts_->tokens.empty()) throw Error(Code::State, "Trainer.backward: call forward first");
  const ModelConfig& c = config_;
  Acts& A = *acts_;
  const size_t B = A.B, S = A.S, T = A.T;
  const size_t H = c.hidden, I = c.intermediate, hd = c.head_dim, half = hd / 2, V = c.vocab;
  const size_t qd = c.heads * hd, kvd = c.kv_heads * hd, group = c.heads / c.kv_heads, L = c.layers;
  const auto t_start = std::chrono::steady_clock::now();
  refresh_transposes();
  const simd::Kernels& K = simd::kernels();
  const float* P = params_.data();
  const float* WT = wt_.data();
  float* G = grads_.data();
  auto W = [&](size_t ti) { return P + tensors_[ti].offset; };
  auto Wt = [&](size_t ti) { return WT + tensors_[ti].offset; };
  auto Gr = [&](size_t ti) { return G + tensors_[ti].offset; };
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const size_t norm_t = 1 + L * 9;
  const size_t lm_t = c.tie_embeddings ? 0 : norm_t + 1;
  // Transposed operands, rows of T + 16 floats: a power-of-two T would put the 16 rows
  // that a transpose block writes into one L1 set.
  const size_t LT = T + 16;
  float* ty = A.at(A.ty);
  float* tx = A.at(A.tx);
  float* dx = A.at(A.dx);
  float* dxm = A.at(A.dxm);
  float* da = A.at(A.da);

  // LM head: logits = af Wlm^T.
  const float* af = A.at(A.af);
  transpose(dlogits, T, V, V, ty, LT);
  transpose(af, T, H, H, tx, LT);
  timed_mm(timing_, {mmf(ty, LT, V, T, tx, LT, Gr(lm_t), H, false), mmf(dlogits, V, T, V, Wt(lm_t), V, da, H, false)}, {H, H});
  // Final norm.
  const float* XL = A.at(A.xs + L * T * H);
  const float* rf = A.at(A.rf);
  rows_parallel(T, H, [&](size_t t) { rmsnorm_back_row(XL + t * H, rf[t], W(norm_t), da + t * H, H, dx + t * H, false); });
  rmsnorm_back_weight(XL, rf, da, T, H, Gr(norm_t));

  for (size_t l = L; l-- > 0;) {
    const Acts::Layer& Y = A.layers[l];
    const size_t base = 1 + l * 9;
    const float* X = A.at(A.xs + l * T * H);
    // MLP: Xn = xm + m Wd^T, m = silu(g) u.
    const float* mm = A.at(Y.m);
    const float* gg = A.at(Y.g);
    const float* sg = A.at(Y.sg);
    const float* uu = A.at(Y.u);
    const float* a2 = A.at(Y.a2);
    float* dm = A.at(A.dm);
    float* dg = A.at(A.dg);
    float* du = A.at(A.du);
    transpose(dx, T, H, H, ty, LT);
    transpose(mm, T, I, I, tx, LT);
    timed_mm(timing_, {mmf(ty, LT, H, T, tx, LT, Gr(base + 8), I, false), mmf(dx, H, T, H, Wt(base + 8), H, dm, I, false)}, {I, I});
    rows_parallel(T, I, [&](size_t t) {
      for (size_t j = t * I, e = j + I; j < e; ++j) {
        const float gv = gg[j], s = sg[j];
        const float sig = gv != 0.0f ? s / gv : 0.5f;  // silu(g) / g = sigmoid(g)
        du[j] = dm[j] * s;
        dg[j] = dm[j] * uu[j] * (sig + s * (1.0f - sig));
      }
    });
    transpose(dg, T, I, I, ty, LT);
    transpose(a2, T, H, H, tx, LT);
    timed_mm(timing_, {mmf(ty, LT, I, T, tx, LT, Gr(base + 6), H, false)}, {H});
    transpose(du, T, I, I, ty, LT);
    timed_mm(timing_, {mmf(ty, LT, I, T, tx, LT, Gr(base + 7), H, false), mmf(dg, I, T, I, Wt(base + 6), I, da, H, false)}, {H, H});
    timed_mm(timing_, {mmf(du, I, T, I, Wt(base + 7), I, da, H, true)}, {H});
    const float* xm = A.at(Y.xm);
    const float* r2 = A.at(Y.r2);
    std::memcpy(dxm, dx, T * H * 4);
    rows_parallel(T, H, [&](size_t t) { rmsnorm_back_row(xm + t * H, r2[t], W(base + 5), da + t * H, H, dxm + t * H, true); });
    rmsnorm_back_weight(xm, r2, da, T, H, Gr(base + 5));

    // Attention: xm = X + att Wo^T.
    const float* att = A.at(Y.att);
    float* datt = A.at(A.datt);
    transpose(dxm, T, H, H, ty, LT);
    transpose(att, T, qd, qd, tx, LT);
    timed_mm(timing_, {mmf(ty, LT, H, T, tx, LT, Gr(base + 4), qd, false), mmf(dxm, H, T, H, Wt(base + 4), H, datt, qd, false)},
                {qd, qd});
    const float* q = A.at(Y.q);
    const float* k = A.at(Y.k);
    const float* v = A.at(Y.v);
    const float* pr = A.at(Y.p);
    float* dq = A.at(A.dq);
    float* dk = A.at(A.dk);
    float* dv = A.at(A.dv);
    ThreadPool::global().parallel_for(B * c.kv_heads, [&](size_t task) {
      const size_t b = task / c.kv_heads, g = task % c.kv_heads;
      thread_local std::vector<float> dp, tt, kt, qt, dot;
      dp.resize(S * S);
      tt.resize(S * S);
      kt.resize(hd * S);
      qt.resize(hd * S);
      dot.resize(hd * S);
      const float* kg = k + b * S * kvd + g * hd;
      const float* vg = v + b * S * kvd + g * hd;
      transpose(kg, S, hd, kvd, kt.data(), S, false);
      for (size_t h = g * group; h < (g + 1) * group; ++h) {
        const bool first = h == g * group;
        const float* pb = pr + (b * c.heads + h) * S * S;
        const float* doh = datt + b * S * qd + h * hd;
        // dP = dO V^T; dV += P^T dO.
        // Causal: dP row i needs j <= i; dV row j sums over i >= j.
        transpose(pb, S, S, S, tt.data(), S, false);
        transpose(doh, S, hd, qd, dot.data(), S, false);
        for (size_t r0 = 0; r0 < S; r0 += kCausalBlock) {
          const size_t r1 = std::min(S, r0 + kCausalBlock);
          K.matmul(mmf(doh + r0 * qd, qd, r1 - r0, hd, vg, kvd, dp.data() + r0 * S, S, false), 0, r1, nullptr);
          K.matmul(mmf(tt.data() + r0 * S + r0, S, r1 - r0, S - r0, dot.data() + r0, S, dv + (b * S + r0) * kvd + g * hd, kvd, !first),
                   0, hd, nullptr);
        }
        // dS = P (dP - rowsum(P dP)) scale (0 above the diagonal, where P is 0).
        for (size_t i = 0; i < S; ++i) {
          const float* pi = pb + i * S;
          float* di = dp.data() + i * S;
          double s = 0;
          for (size_t j = 0; j <= i; ++j) s += double(pi[j]) * di[j];
          const float sf = float(s);
          for (size_t j = 0; j <= i; ++j) di[j] = pi[j] * (di[j] - sf) * scale;
          std::fill(di + i + 1, di + S, 0.0f);
        }
        // dQ = dS K; dK += dS^T Q.
        // Causal: dQ row i sums over j <= i; dK row j over i >= j.
        transpose(dp.data(), S, S, S, tt.data(), S, false);
        transpose(q + b * S * qd + h * hd, S, hd, qd, qt.data(), S, false);
        for (size_t r0 = 0; r0 < S; r0 += kCausalBlock) {
          const size_t r1 = std::min(S, r0 + kCausalBlock);
          K.matmul(mmf(dp.data() + r0 * S, S, r1 - r0, r1, kt.data(), S, dq + (b * S + r0) * qd + h * hd, qd, false), 0, hd, nullptr);
          K.matmul(mmf(tt.data() + r0 * S + r0, S, r1 - r0, S - r0, qt.data() + r0, S, dk + (b * S + r0) * kvd + g * hd, kvd, !first),
                   0, hd, nullptr);
        }
      }
    });
    // RoPE backward (the transposed rotation) on dq, dk.
    auto unrope = [&](float* d, size_t pos) {
      rotate_halves(d, A.cos.data() + pos * half, A.sin.data() + pos * half, half, -1.0f);
    };
    rows_parallel(T, qd + kvd, [&](size_t t) {
      for (size_t h = 0; h < c.heads; ++h) unrope(dq + t * qd + h * hd, t % S);
      for (size_t g = 0; g < c.kv_heads; ++g) unrope(dk + t * kvd + g * hd, t % S);
    });
    const float* a1 = A.at(Y.a1);
    transpose(a1, T, H, H, tx, LT);
    transpose(dq, T, qd, qd, ty, LT);
    timed_mm(timing_, {mmf(ty, LT, qd, T, tx, LT, Gr(base + 1), H, false), mmf(dq, qd, T, qd, Wt(base + 1), qd, da, H, false)}, {H, H});
    transpose(dk, T, kvd, kvd, ty, LT);
    timed_mm(timing_, {mmf(ty, LT, kvd, T, tx, LT, Gr(base + 2), H, false)}, {H});
    timed_mm(timing_, {mmf(dk, kvd, T, kvd, Wt(base + 2), kvd, da, H, true)}, {H});
    transpose(dv, T, kvd, kvd, ty, LT);
    timed_mm(timing_, {mmf(ty, LT, kvd, T, tx, LT, Gr(base + 3), H, false)}, {H});
    timed_mm(timing_, {mmf(dv, kvd, T, kvd, Wt(base + 3), kvd, da, H, true)}, {H});
    const float* r1 = A.at(Y.r1);
    std::memcpy(dx, dxm, T * H * 4);
    rows_parallel(T, H, [&](size_t t) { rmsnorm_back_row(X + t * H, r1[t], W(base), da + t * H, H, dx + t * H, true); });
    rmsnorm_back_weight(X, r1, da, T, H, Gr(base));
  }
  // Embedding: scatter-add of the input gradient, in row order (added to the LM head's
  // gradient when tied).
  float* de = Gr(0);
  if (!c.tie_embeddings) std::fill(de, de + V * H, 0.0f);
  for (size_t t = 0; t < T; ++t) {
    float* row = de + size_t(A.tokens[t]) * H;
    const float* d = dx + t * H;
    for (size_t j = 0; j < H; ++j) row[j] += d[j];
  }
  timing_.backward_s = seconds_since(t_start);
}

double Trainer::adamw(const AdamWOptions& o) {
  double ss = 0;
  const float* g = grads_.data();
  for (const ParamTensor& t : tensors_) {
    const float* gt = g + t.offset;
    double s = 0;
    for (size_t i = 0, n = t.rows * t.cols; i < n; ++i) s += double(gt[i]) * gt[i];
    ss += s;
  }
  const double norm = std::sqrt(ss);
  if (!std::isfinite(norm)) return norm;
  const float clip = o.max_grad_norm > 0 && norm > o.max_grad_norm ? float(o.max_grad_norm / norm) : 1.0f;
  ++step_;
  const double bc1 = 1.0 - std::pow(o.beta1, double(step_)), bc2 = 1.0 - std::pow(o.beta2, double(step_));
  const float b1 = float(o.beta1), b2 = float(o.beta2), eps = float(o.eps);
  const float step_size = float(o.lr / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  const float decay = float(1.0 - o.lr * o.weight_decay);
  struct Chunk {
    size_t off, n;
    bool matrix;
  };
  std::vector<Chunk> chunks;
  constexpr size_t kChunk = 1 << 15;
  for (const ParamTensor& t : tensors_)
    for (size_t i = 0, n = t.rows * t.cols; i < n; i += kChunk) chunks.push_back({t.offset + i, std::min(kChunk, n - i), t.matrix});
  float* p = params_.data();
  float* m = m_.data();
  float* v = v_.data();
  ThreadPool::global().parallel_for(chunks.size(), [&](size_t ci) {
    const Chunk& ch = chunks[ci];
    const float d = ch.matrix ? decay : 1.0f;
    for (size_t i = ch.off, e = ch.off + ch.n; i < e; ++i) {
      const float gi = g[i] * clip;
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * (gi * gi);
      p[i] = p[i] * d - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  });
  wt_dirty_ = true;
  return norm;
}

double cross_entropy(const float* logits, const int32_t* targets, size_t rows, size_t vocab, float* dlogits, float weight,
                     size_t* counted) {
  size_t n = 0;
  for (size_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    if (size_t(targets[r]) >= vocab)
      throw Error(Code::Value, "targets[" + std::to_string(r) + "]: expected a token id in [0, " + std::to_string(vocab - 1) +
                                   "] or -1, received " + std::to_string(targets[r]));
    ++n;
  }
  if (counted != nullptr) *counted = n;
  if (n == 0) return 0;
  const simd::Kernels& K = simd::kernels();
  std::vector<double> losses(rows, 0.0);
  std::vector<char> bad(rows, 0);
  const float w = weight / float(n);
  rows_parallel(rows, vocab * 2, [&](size_t r) {
    if (targets[r] < 0) return;
    const float* z = logits + r * vocab;
    bool nonfinite = false;
    const float mx = K.max(z, vocab, &nonfinite);
    if (nonfinite) {
      for (size_t j = 0; j < vocab; ++j)
        if (!std::isfinite(z[j])) {
          bad[r] = 1;
          return;
        }
    }
    thread_local std::vector<float> e;
    e.resize(vocab);
    const float sum = K.exp_sum(z, vocab, mx, 1.0f, e.data());
    losses[r] = std::log(double(sum)) - double(z[targets[r]] - mx);
    if (dlogits != nullptr) {
      float* d = dlogits + r * vocab;
      const float inv = w / sum;
      for (size_t j = 0; j < vocab; ++j) d[j] += e[j] * inv;
      d[targets[r]] -= w;
    }
  });
  for (size_t r = 0; r < rows; ++r)
    if (bad[r]) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (size_t r = 0; r < rows; ++r) s += losses[r];
  return s / double(n);
}

}  // namespace specula
