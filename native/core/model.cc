#include "model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <utility>

#include "amx.h"
#include "error.h"
#include "matmul.h"
#include "thread_pool.h"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define SPECULA_HAVE_MMAP 1
#endif

namespace specula {

// A read-only memory map of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
#if SPECULA_HAVE_MMAP
    // O_NONBLOCK: a FIFO put in place of a weights file must not hang the load.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw Error(Code::IO, path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      throw Error(Code::IO, path + ": cannot stat (" + std::strerror(e) + ")");
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(Code::IO, path + ": not a regular file");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      int flags = MAP_PRIVATE;
#if defined(MAP_POPULATE)
      flags |= MAP_POPULATE;  // read the file now: load is load, not the first token
#endif
      void* p = ::mmap(nullptr, size_, PROT_READ, flags, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw Error(Code::IO, path + ": cannot map (" + std::strerror(e) + ")");
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
#else
    throw Error(Code::Unsupported, path + ": memory-mapped models need a POSIX system");
#endif
  }
  ~MappedFile() {
#if SPECULA_HAVE_MMAP
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
#endif
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void check_config(const ModelConfig& c) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(Code::Arg, "config: " + what);
  };
  const size_t kMax = size_t(1) << 24;
  need(c.vocab >= 1 && c.vocab <= (size_t(1) << 31) - 1, "vocab size must be in [1, 2^31)");
  need(c.hidden >= 1 && c.hidden <= kMax, "hidden size must be in [1, 2^24]");
  need(c.intermediate >= 1 && c.intermediate <= kMax, "intermediate size must be in [1, 2^24]");
  need(c.layers >= 1 && c.layers <= 4096, "layer count must be in [1, 4096]");
  need(c.heads >= 1 && c.heads <= 4096 && c.kv_heads >= 1 && c.heads % c.kv_heads == 0,
       "num_attention_heads must be a positive multiple of num_key_value_heads");
  need(c.head_dim >= 2 && c.head_dim <= 4096 && c.head_dim % 2 == 0, "head_dim must be even, in [2, 4096]");
  need(c.context >= 1 && c.context <= (size_t(1) << 24), "context length must be in [1, 2^24]");
  need(std::isfinite(c.rms_eps) && c.rms_eps > 0, "rms_norm_eps must be positive");
  need(std::isfinite(c.rope_theta) && c.rope_theta > 0, "rope_theta must be positive");
  if (c.rope_llama3)
    need(c.rope_factor > 0 && c.rope_low_freq > 0 && c.rope_high_freq > c.rope_low_freq && c.rope_original_max > 0,
         "rope_scaling (llama3) needs factor > 0 and high_freq_factor > low_freq_factor > 0");
}

// Hugging Face's inverse frequencies, rounded to float as transformers keeps them; with
// llama3 scaling (_compute_llama3_parameters) applied first, in double.
std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const size_t half = c.head_dim / 2;
  std::vector<float> out(half);
  const double pi = 3.14159265358979323846;
  for (size_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
    if (c.rope_llama3) {
      const double low_wavelen = c.rope_original_max / c.rope_low_freq;
      const double high_wavelen = c.rope_original_max / c.rope_high_freq;
      const double wavelen = 2 * pi / f;
      if (wavelen > low_wavelen) {
        f = f / c.rope_factor;
      } else if (!(wavelen < high_wavelen)) {
        const double smooth = (c.rope_original_max / wavelen - c.rope_low_freq) / (c.rope_high_freq - c.rope_low_freq);
        f = (1 - smooth) * f / c.rope_factor + smooth * f;
      }
    }
    out[i] = float(f);
  }
  return out;
}

}  // namespace

Model::~Model() = default;

uint64_t Model::mapped_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

Model::Model(const ModelConfig& config, const std::vector<std::string>& files, const std::vector<TensorSpec>& tensors)
    : config_(config) {
  check_config(config);
  for (const std::string& f : files) files_.push_back(std::make_unique<MappedFile>(f));

  std::map<std::string, const TensorSpec*> by_name;
  for (const TensorSpec& t : tensors) {
    if (t.file >= files_.size())
      throw Error(Code::Arg, "tensor \"" + t.name + "\": file index " + std::to_string(t.file) + " out of range");
    auto [it, fresh] = by_name.emplace(t.name, &t);
    if (!fresh)
      throw Error(Code::Format, "tensor \"" + t.name + "\" appears twice (in " + files_[it->second->file]->path() +
                                    " and " + files_[t.file]->path() + ")");
  }
  std::string all_files;
  for (size_t i = 0; i < files_.size(); ++i) all_files += (i ? ", " : "") + files_[i]->path();

  // Looks a tensor up and checks its dtype, shape and byte range.
  auto find = [&](const std::string& name, std::vector<uint64_t> shape) -> std::pair<const TensorSpec*, const void*> {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw Error(Code::Format, "tensor \"" + name + "\" is missing (looked in " + all_files + ")");
    const TensorSpec& t = *it->second;
    const MappedFile& f = *files_[t.file];
    const std::string where = f.path() + ": tensor \"" + name + "\"";
    size_t elem;
    if (t.dtype == "F32") {
      elem = 4;
    } else if (t.dtype == "F16" || t.dtype == "BF16") {
      elem = 2;
    } else {
      throw Error(Code::Unsupported, where + ": dtype " + t.dtype + " is not supported (expected F32, F16 or BF16)");
    }
    if (t.shape != shape)
      throw Error(Code::Shape, where + ": expected shape " + shape_str(shape) + " (from config.json), found " +
                                   shape_str(t.shape));
    uint64_t numel = 1;
    for (uint64_t d : shape) numel *= d;  // bounded by check_config
    if (t.bytes != numel * elem)
      throw Error(Code::Format, where + ": " + t.dtype + " " + shape_str(shape) + " needs " + std::to_string(numel * elem) +
                                    " bytes, its data range has " + std::to_string(t.bytes));
    if (t.offset > f.size() || t.bytes > f.size() - t.offset)
      throw Error(Code::Format, where + ": data range [" + std::to_string(t.offset) + ", " +
                                    std::to_string(t.offset + t.bytes) + ") lies outside the file (" +
                                    std::to_string(f.size()) + " bytes)");
    return {&t, f.data() + t.offset};
  };
  auto wtype = [](const std::string& dtype) {
    return dtype == "F32" ? simd::WType::F32 : dtype == "F16" ? simd::WType::F16 : simd::WType::BF16;
  };
  auto matrix = [&](const std::string& name, size_t rows, size_t cols) {
    auto [t, p] = find(name, {rows, cols});
    WeightView w;
    w.data = p;
    w.type = wtype(t->dtype);
    w.rows = rows;
    w.cols = cols;
    return w;
  };
  auto vec = [&](const std::string& name, size_t n) {
    auto [t, p] = find(name, {n});
    std::vector<float> out(n);
    simd::kernels().widen(p, wtype(t->dtype), n, out.data());
    return out;
  };
  auto bytes = [](const WeightView& w) { return uint64_t(w.rows) * w.cols * (w.type == simd::WType::F32 ? 4 : 2); };

  const ModelConfig& c = config_;
  const size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  embed_ = matrix("model.embed_tokens.weight", c.vocab, c.hidden);
  lm_head_ = c.tie_embeddings ? embed_ : matrix("lm_head.weight", c.vocab, c.hidden);
  final_norm_ = vec("model.norm.weight", c.hidden);
  bytes_per_token_ = bytes(lm_head_);
  layers_.resize(c.layers);
  for (size_t i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& l = layers_[i];
    l.attn_norm = vec(p + "input_layernorm.weight", c.hidden);
    l.mlp_norm = vec(p + "post_attention_layernorm.weight", c.hidden);
    l.wq = matrix(p + "self_attn.q_proj.weight", qd, c.hidden);
    l.wk = matrix(p + "self_attn.k_proj.weight", kvd, c.hidden);
    l.wv = matrix(p + "self_attn.v_proj.weight", kvd, c.hidden);
    l.wo = matrix(p + "self_attn.o_proj.weight", c.hidden, qd);
    if (c.qkv_bias) {
      l.bq = vec(p + "self_attn.q_proj.bias", qd);
      l.bk = vec(p + "self_attn.k_proj.bias", kvd);
      l.bv = vec(p + "self_attn.v_proj.bias", kvd);
    }
    if (c.o_bias) l.bo = vec(p + "self_attn.o_proj.bias", c.hidden);
    l.wg = matrix(p + "mlp.gate_proj.weight", c.intermediate, c.hidden);
    l.wu = matrix(p + "mlp.up_proj.weight", c.intermediate, c.hidden);
    l.wd = matrix(p + "mlp.down_proj.weight", c.hidden, c.intermediate);
    for (const WeightView* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.wg, &l.wu, &l.wd}) bytes_per_token_ += bytes(*w);
  }
  inv_freq_ = rope_inv_freq(c);
}

// ---------------------------------------------------------------------------------------
// KV cache and forward

FloatBuffer::~FloatBuffer() { release(); }

void FloatBuffer::release() {
  if (p_ != nullptr) {
#ifdef SPECULA_HAVE_MMAP
    if (mapped_ != 0)
      ::munmap(p_, mapped_);
    else
#endif
      std::free(p_);
  }
  p_ = nullptr;
  n_ = 0;
  mapped_ = 0;
}

void FloatBuffer::reserve(size_t n) {
  if (n <= n_ && p_ != nullptr) return;
  release();
  const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  p_ = static_cast<float*>(p);
  n_ = n;
}

void FloatBuffer::assign_zero(size_t n) {
  // Large buffers (KV caches) come zeroed from the kernel and become resident only where
  // they are written: a cache sized for many long sequences costs what is used.
  constexpr size_t kMapAbove = size_t(4) << 20;
  const size_t bytes = n * sizeof(float);
#ifdef SPECULA_HAVE_MMAP
  if (bytes < kMapAbove) {
    reserve(n);
    std::memset(p_, 0, bytes);
    return;
  }
  release();
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  p_ = static_cast<float*>(p);
  n_ = n;
  mapped_ = bytes;
#else
  (void)kMapAbove;
  reserve(n);
  std::memset(p_, 0, bytes);
#endif
}

KvCache::KvCache(std::shared_ptr<const Model> model, size_t sequences, size_t capacity)
    : model_(std::move(model)), capacity_(capacity) {
  const ModelConfig& c = model_->config();
  if (sequences < 1 || sequences > 65536)
    throw Error(Code::Value, "sequences: expected an integer in [1, 65536], received " + std::to_string(sequences));
  if (capacity < 1 || capacity > c.context)
    throw Error(Code::Value, "capacity: expected an integer in [1, " + std::to_string(c.context) +
                                 "] (the model's context length), received " + std::to_string(capacity));
  const double floats =
      double(c.layers) * double(sequences) * double(c.kv_heads) * double(panel_capacity()) * double(c.head_dim);
  if (floats * 8 > 1e12)
    throw Error(Code::Value, "a KV cache of " + js_number(floats * 8) + " bytes is too large");
  try {
    k_.assign_zero(size_t(floats));
    v_.assign_zero(size_t(floats));
  } catch (const std::bad_alloc&) {
    throw Error(Code::State, "cannot allocate a KV cache of " + js_number(floats * 8) + " bytes");
  }
  lengths_.assign(sequences, 0);
}

size_t KvCache::length(size_t seq) const {
  if (seq >= lengths_.size())
    throw Error(Code::Value, "seq: expected an integer in [0, " + std::to_string(lengths_.size() - 1) + "], received " +
                                 std::to_string(seq));
  return lengths_[seq];
}

void KvCache::truncate(size_t seq, size_t length) {
  const size_t cur = this->length(seq);
  if (length > cur)
    throw Error(Code::Value, "length: expected at most the sequence's length " + std::to_string(cur) + ", received " +
                                 std::to_string(length));
  lengths_[seq] = length;
}

void KvCache::reset() { lengths_.assign(lengths_.size(), 0); }

void run_matmuls(std::initializer_list<simd::MatmulArgs> list, std::initializer_list<size_t> ns) {
  // Columns per block, a multiple of 16 (the widest tile): 128 for up to 12 rows, the
  // shapes that stream the weights (decoding and the one-tile sweeps of simd_model.inc),
  // 96 for more, where the 4 x 6 tiles then cover a block with no padded columns (64
  // computed 66 columns per block: 96 measured 3-5% faster in verification and prefill).
  const size_t kCols = list.begin()->rows <= 12 ? 128 : 96;
  // bf16 products that run on AMX take their activations packed once per call (amx.h);
  // products of the same activations (q, k, v; gate, up) share one packing, 64-byte
  // aligned (FloatBuffer) as amx.h asks.
  thread_local std::vector<std::unique_ptr<FloatBuffer>> packs;
  while (packs.size() < list.size()) packs.push_back(std::make_unique<FloatBuffer>());
  std::vector<const uint16_t*> packed(list.size(), nullptr);
  std::vector<std::pair<size_t, uint16_t*>> to_pack;  // products packed here, and where
  size_t pack_work = 0;                                // rows x k of those
  for (size_t i = 0; i < list.size(); ++i) {
    const simd::MatmulArgs& a = list.begin()[i];
    if (!amx::usable(a)) continue;
    for (size_t j = 0; j < i && packed[i] == nullptr; ++j) {
      const simd::MatmulArgs& b = list.begin()[j];
      if (packed[j] != nullptr && b.x == a.x && b.ldx == a.ldx && b.rows == a.rows && b.k == a.k) packed[i] = packed[j];
    }
    if (packed[i] == nullptr) {
      packs[i]->reserve((amx::packed_size(a.rows, a.k) + 1) / 2);
      uint16_t* out = reinterpret_cast<uint16_t*>(packs[i]->data());
      packed[i] = out;
      to_pack.emplace_back(i, out);
      pack_work += a.rows * a.k;
    }
  }
  // Packing many rows (at least 8 x 768 values in all; ~10 us for 40 x 768) is shared by
  // the threads, each taking a range of k blocks; a few rows (decoding) are packed here.
  auto pack = [&](size_t part, size_t parts) {
    for (const auto& [i, out] : to_pack) {
      const simd::MatmulArgs& a = list.begin()[i];
      const size_t kb = a.k / 32;
      amx::pack(a.x, a.ldx, a.rows, a.k, out, kb * part / parts, kb * (part + 1) / parts);
    }
  };
  const size_t pack_parts = pack_work >= 8 * 768 ? ThreadPool::global().threads() : 1;
  if (pack_parts > 1) ThreadPool::global().parallel_for(pack_parts, [&](size_t w) { pack(w, pack_parts); });
  else pack(0, 1);
  struct Block {
    const simd::MatmulArgs* a;
    const uint16_t* packed;  // AMX's packed activations, or null: the SIMD kernels
    size_t n0, n1, n;        // columns [n0, n1) of the product's n
  };
  std::vector<Block> blocks;
  std::vector<size_t> start;  // columns before each block, over all the matrices
  size_t total = 0;
  auto n = ns.begin();
  for (size_t i = 0; i < list.size(); ++i, ++n) {
    for (size_t n0 = 0; n0 < *n; n0 += kCols) {
      blocks.push_back({list.begin() + i, packed[i], n0, n0 + kCols < *n ? n0 + kCols : *n, *n});
      start.push_back(total);
      total += blocks.back().n1 - n0;
    }
  }
  start.push_back(total);
  // Each thread takes one run of consecutive blocks, about 1/P of the columns (a block
  // goes to the run whose share holds its first column): the kernels prefetch the
  // weights that follow the tile or panel they compute, which are then the next ones this
  // thread computes. (With blocks handed out one at a time, those were mostly another
  // thread's and each block started cold: 2% slower for 8 x 5 rows, 6% for 1 x 9.) A
  // thread done with its run takes what is left of the others', so that a thread slowed
  // by the machine (more threads than cores, other processes) holds up nothing.
  const size_t P = std::min(blocks.size(), size_t(ThreadPool::global().threads()));
  auto first_block = [&](size_t w) {
    return size_t(std::lower_bound(start.begin(), start.end() - 1, (total * w + P - 1) / P) - start.begin());
  };
  std::vector<size_t> first(P), end(P);
  for (size_t w = 0; w < P; ++w) {
    first[w] = first_block(w);
    end[w] = first_block(w + 1);
  }
  WorkRuns runs(std::move(first), std::move(end), 1);
  const simd::Kernels& k = simd::kernels();
  ThreadPool::global().parallel_for(P, [&](size_t w) {
    thread_local FloatBuffer scratch;  // f16/bf16 weights widened once per block
    thread_local FloatBuffer xpack;    // x packed for the sweeps (simd.h, packs_x)
    const simd::MatmulArgs* packed_for = nullptr;  // whose x xpack holds, in this call
    simd::MatmulArgs withx;
    size_t visit = 0;
    for (size_t i; (i = runs.claim(w, visit)) != SIZE_MAX;) {
      const Block& b = blocks[i];
      if (b.packed != nullptr) {
        amx::matmul(*b.a, b.packed, b.n0, b.n1, b.n);
        continue;
      }
      float* s = nullptr;
      if (b.a->wtype != simd::WType::F32) {
        scratch.reserve(kCols * b.a->k);
        s = scratch.data();
      }
      const simd::MatmulArgs* a = b.a;
      if (simd::packs_x(*a)) {
        // Once per product and thread: the products of one call share nothing else.
        if (packed_for != a) {
          xpack.reserve(a->rows * (a->k / 16) * 16);
          simd::pack_x(*a, xpack.data());
          packed_for = a;
          withx = *a;
          withx.xp = xpack.data();
        }
        a = &withx;
      }
      k.matmul(*a, b.n0, b.n1, s);
    }
  });
}

namespace {

simd::MatmulArgs mm(const float* x, size_t ldx, size_t rows, const WeightView& w, const std::vector<float>& bias,
                    float* y, size_t ldy, bool accumulate) {
  simd::MatmulArgs a;
  a.x = x;
  a.ldx = ldx;
  a.rows = rows;
  a.k = w.cols;
  a.w = w.data;
  a.wtype = w.type;
  a.ldw = w.cols;
  a.bias = bias.empty() ? nullptr : bias.data();
  a.y = y;
  a.ldy = ldy;
  a.accumulate = accumulate;
  return a;
}

template <class F>
void for_rows(size_t rows, size_t work_per_row, F fn) {
  // Parallel over rows only when there is enough work to pay for the hand-off.
  if (rows * work_per_row < (size_t(1) << 16)) {
    for (size_t t = 0; t < rows; ++t) fn(t);
  } else {
    ThreadPool::global().parallel_for(rows, fn);
  }
}

size_t pad16(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

void KvCache::forward(const ForwardItem* items, size_t count, float* logits) {
  const ModelConfig& c = model_->config();
  const size_t S = lengths_.size();
  if (count == 0) throw Error(Code::Arg, "items: expected at least one item");
  std::vector<char> seen(S, 0);
  size_t T = 0, R = 0;
  for (size_t i = 0; i < count; ++i) {
    const ForwardItem& it = items[i];
    const std::string where = "items[" + std::to_string(i) + "]";
    if (it.seq >= S)
      throw Error(Code::Value, where + ".seq: expected an integer in [0, " + std::to_string(S - 1) + "], received " +
                                   std::to_string(it.seq));
    if (seen[it.seq]) throw Error(Code::Arg, where + ".seq: sequence " + std::to_string(it.seq) + " appears twice in one call");
    seen[it.seq] = 1;
    if (it.n < 1) throw Error(Code::Shape, where + ".tokens: expected at least one token, received none");
    if (it.n_logits > it.n)
      throw Error(Code::Value, where + ": asks for the logits of " + std::to_string(it.n_logits) + " tokens, has " +
                                   std::to_string(it.n));
    if (lengths_[it.seq] + it.n > capacity_)
      throw Error(Code::Shape, where + ": sequence " + std::to_string(it.seq) + " would grow to " +
                                   std::to_string(lengths_[it.seq] + it.n) + " tokens, past the cache capacity " +
                                   std::to_string(capacity_));
    for (size_t j = 0; j < it.n; ++j) {
      const int32_t tok = it.tokens[j];
      if (tok < 0 || size_t(tok) >= c.vocab)
        throw Error(Code::Value, where + ".tokens[" + std::to_string(j) + "]: expected a token id in [0, " +
                                     std::to_string(c.vocab - 1) + "], received " + std::to_string(tok));
    }
    T += it.n;
    R += it.n_logits;
  }

  const size_t H = c.hidden, I = c.intermediate, hd = c.head_dim, half = hd / 2;
  const size_t qd = c.heads * hd, kvd = c.kv_heads * hd, group = c.heads / c.kv_heads;
  // Row strides, padded so that every activation row starts on a cache line.
  const size_t lh = pad16(H), lq = pad16(qd), lkv = pad16(kvd), li = pad16(I);
  const simd::Kernels& K = simd::kernels();
  // Row t: its sequence and position.
  std::vector<size_t> row_seq(T), row_pos(T);
  std::vector<size_t> out_rows;  // rows whose logits are returned, in output order
  out_rows.reserve(R);
  struct AttnTask {
    size_t row, rows;
  };
  std::vector<AttnTask> attn_tasks;
  {
    size_t t = 0;
    for (size_t i = 0; i < count; ++i) {
      for (size_t j = 0; j < items[i].n; j += 8) attn_tasks.push_back({t + j, items[i].n - j < 8 ? items[i].n - j : 8});
      for (size_t j = 0; j < items[i].n; ++j, ++t) {
        row_seq[t] = items[i].seq;
        row_pos[t] = lengths_[items[i].seq] + j;
        if (j + items[i].n_logits >= items[i].n) out_rows.push_back(t);
      }
    }
  }
  x_.reserve(T * lh);
  a_.reserve(T * lh);
  q_.reserve(T * lq);
  kk_.reserve(T * lkv);
  vv_.reserve(T * lkv);
  att_.reserve(T * lq);
  g_.reserve(T * li);
  u_.reserve(T * li);
  cos_.resize(T * half);
  sin_.resize(T * half);
  float* x = x_.data();
  float* a = a_.data();

  // Embeddings and the rotation of each row's position.
  const WeightView& E = model_->embed();
  const size_t esize = E.type == simd::WType::F32 ? 4 : 2;
  const std::vector<float>& inv_freq = model_->inv_freq();
  {
    size_t t = 0;
    for (size_t i = 0; i < count; ++i)
      for (size_t j = 0; j < items[i].n; ++j, ++t)
        K.widen(static_cast<const uint8_t*>(E.data) + size_t(items[i].tokens[j]) * H * esize, E.type, H, x + t * lh);
  }
  for (size_t t = 0; t < T; ++t)
    for (size_t i = 0; i < half; ++i) {
      const double angle = double(inv_freq[i]) * double(row_pos[t]);
      cos_[t * half + i] = float(std::cos(angle));
      sin_[t * half + i] = float(std::sin(angle));
    }
  auto rope = [&](float* v, size_t t) {  // rotate_half: (v1, v2) -> (v1 c - v2 s, v2 c + v1 s)
    const float* cs = cos_.data() + t * half;
    const float* sn = sin_.data() + t * half;
    for (size_t i = 0; i < half; ++i) {
      const float v1 = v[i], v2 = v[i + half];
      v[i] = v1 * cs[i] - v2 * sn[i];
      v[i + half] = v2 * cs[i] + v1 * sn[i];
    }
  };
  const float eps = float(c.rms_eps);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const std::vector<float> none;

  for (size_t l = 0; l < c.layers; ++l) {
    const Model::Layer& L = model_->layers()[l];
    for_rows(T, H, [&](size_t t) { K.rmsnorm(x + t * lh, L.attn_norm.data(), H, eps, a + t * lh); });
    {
      const simd::MatmulArgs mq = mm(a, lh, T, L.wq, L.bq, q_.data(), lq, false);
      const simd::MatmulArgs mk = mm(a, lh, T, L.wk, L.bk, kk_.data(), lkv, false);
      const simd::MatmulArgs mv = mm(a, lh, T, L.wv, L.bv, vv_.data(), lkv, false);
      run_matmuls({mq, mk, mv}, {qd, kvd, kvd});
    }
    for (size_t t = 0; t < T; ++t) {
      for (size_t h = 0; h < c.heads; ++h) rope(q_.data() + t * lq + h * hd, t);
      for (size_t g = 0; g < c.kv_heads; ++g) {
        float* kr = kk_.data() + t * lkv + g * hd;
        rope(kr, t);
        const size_t p = row_pos[t];
        float* kp = k_at(l, row_seq[t], g) + p / 16 * hd * 16 + p % 16;  // panels of 16 positions
        for (size_t d = 0; d < hd; ++d) kp[d * 16] = kr[d];
        std::memcpy(v_at(l, row_seq[t], g) + row_pos[t] * hd, vv_.data() + t * lkv + g * hd, hd * 4);
      }
    }
    // One task per (kv head, up to 8 consecutive rows of one sequence): the rows' query
    // heads share each key and value loaded. Each thread takes every P-th task, claiming
    // its next one before it runs this one, so that it prefetches that one's keys while
    // the values of this one compute.
    const size_t ntask = attn_tasks.size() * c.kv_heads;
    const size_t P = std::min<size_t>(size_t(ThreadPool::global().threads()), ntask);
    auto attend_args = [&](size_t task) {
      const AttnTask& at = attn_tasks[task / c.kv_heads];
      const size_t g = task % c.kv_heads;
      simd::AttendArgs aa;
      aa.q = q_.data() + at.row * lq + g * group * hd;
      aa.q_row = lq;
      aa.q_head = hd;
      aa.rows = at.rows;
      aa.heads = group;
      aa.n0 = row_pos[at.row] + 1;
      aa.kp = k_at(l, row_seq[at.row], g);
      aa.v = v_at(l, row_seq[at.row], g);
      aa.ldv = hd;
      aa.hd = hd;
      aa.scale = scale;
      aa.out = att_.data() + at.row * lq + g * group * hd;
      aa.out_row = lq;
      aa.out_head = hd;
      aa.next_kp = nullptr;
      aa.next_k_floats = 0;
      return aa;
    };
    // Run w: the tasks w, w + P, ...; a thread done with its run takes what is left of
    // the others' (WorkRuns).
    std::vector<size_t> first(P), end(P, ntask);
    for (size_t w = 0; w < P; ++w) first[w] = w;
    WorkRuns runs(std::move(first), std::move(end), P);
    ThreadPool::global().parallel_for(P, [&](size_t w) {
      thread_local std::vector<float> scores;
      size_t visit = 0;
      size_t task = runs.claim(w, visit);
      if (task == SIZE_MAX) return;
      simd::AttendArgs next = attend_args(task);
      while (task != SIZE_MAX) {
        simd::AttendArgs aa = next;
        const size_t need = aa.rows * group * (pad16(aa.n0 + aa.rows - 1) + hd);
        if (scores.size() < need) scores.resize(need);
        aa.scores = scores.data();
        task = runs.claim(w, visit);
        if (task != SIZE_MAX) {
          next = attend_args(task);
          aa.next_kp = next.kp;
          aa.next_k_floats = pad16(next.n0 + next.rows - 1) * hd;
        }
        K.attend(aa);
      }
    });
    {
      const simd::MatmulArgs mo = mm(att_.data(), lq, T, L.wo, L.bo, x, lh, true);
      run_matmuls({mo}, {H});
    }
    for_rows(T, H, [&](size_t t) { K.rmsnorm(x + t * lh, L.mlp_norm.data(), H, eps, a + t * lh); });
    {
      const simd::MatmulArgs mg = mm(a, lh, T, L.wg, none, g_.data(), li, false);
      const simd::MatmulArgs mu = mm(a, lh, T, L.wu, none, u_.data(), li, false);
      run_matmuls({mg, mu}, {I, I});
    }
    for_rows(T, I * 4, [&](size_t t) { K.silu_mul(g_.data() + t * li, u_.data() + t * li, I, g_.data() + t * li); });
    {
      const simd::MatmulArgs md = mm(g_.data(), li, T, L.wd, none, x, lh, true);
      run_matmuls({md}, {H});
    }
  }

  if (R > 0) {
    xf_.reserve(R * lh);
    for_rows(R, H, [&](size_t r) { K.rmsnorm(x + out_rows[r] * lh, model_->final_norm().data(), H, eps, xf_.data() + r * lh); });
    const simd::MatmulArgs ml = mm(xf_.data(), lh, R, model_->lm_head(), none, logits, c.vocab, false);
    run_matmuls({ml}, {c.vocab});
  }
  for (size_t i = 0; i < count; ++i) lengths_[items[i].seq] += items[i].n;
}

}  // namespace specula
