// node-addon-api bindings: argument checks, typed-array views, AsyncWorkers, and the
// conversion of specula::Error into the JavaScript SpeculaError class (handed to us by
// src/native.ts through setErrorClass). No math and no policy here: see native/core.
//
// Every kernel binding takes its inputs and preallocated outputs as typed arrays plus a
// final `async` flag: false runs on the calling thread, true returns a Promise and runs
// on the libuv pool (the arrays are kept alive until it settles, and read in place).
#include <napi.h>

#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "amx.h"
#include "backend.h"
#include "engine.h"
#include "error.h"
#include "kd.h"
#include "model.h"
#include "params.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"
#include "train.h"

namespace {

using specula::Code;
using specula::Error;

struct AddonData {
  Napi::FunctionReference error_class;
  Napi::FunctionReference model_ctor, cache_ctor, engine_ctor;
};

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  auto* data = env.GetInstanceData<AddonData>();
  if (data != nullptr && !data->error_class.IsEmpty()) {
    Napi::Object err = data->error_class.New({Napi::String::New(env, code), Napi::String::New(env, message)});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// Runs fn, turning C++ exceptions into JavaScript exceptions of the right class.
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, F fn) {
  Napi::Env env = info.Env();
  try {
    return fn();
  } catch (const Error& e) {
    make_error(env, specula::code_name(e.code()), e.what()).ThrowAsJavaScriptException();
  } catch (const std::bad_alloc&) {
    make_error(env, "E_STATE", "out of memory").ThrowAsJavaScriptException();
  } catch (const Napi::Error& e) {
    throw;
  } catch (const std::exception& e) {
    make_error(env, "E_STATE", std::string("internal error: ") + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return "the number " + specula::js_number(v.As<Napi::Number>().DoubleValue());
  if (v.IsBigInt()) return "a bigint";
  if (v.IsString()) return "a string";
  if (v.IsBoolean()) return "a boolean";
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_float32_array: return "a Float32Array";
      case napi_float64_array: return "a Float64Array";
      case napi_int32_array: return "an Int32Array";
      case napi_biguint64_array: return "a BigUint64Array";
      case napi_uint8_array: return "a Uint8Array";
      default: return "another TypedArray";
    }
  }
  if (v.IsArray()) return "an Array";
  if (v.IsFunction()) return "a function";
  return "an object";
}

const char* type_name(napi_typedarray_type t) {
  switch (t) {
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_int32_array: return "Int32Array";
    case napi_biguint64_array: return "BigUint64Array";
    case napi_uint8_array: return "Uint8Array";
    default: return "TypedArray";
  }
}

template <class T>
struct View {
  T* data = nullptr;
  size_t length = 0;
};

// A typed array argument of the given type; expected length checked unless SIZE_MAX.
// Null or undefined gives an empty view when `optional`.
template <class T>
View<T> typed(const Napi::CallbackInfo& info, size_t i, const char* name, napi_typedarray_type type,
              size_t expected, bool optional = false) {
  const Napi::Value v = info[i];
  if (optional && (v.IsNull() || v.IsUndefined())) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Error(Code::Arg, std::string(name) + ": expected a " + type_name(type) + ", received " + describe(v));
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  const size_t len = ta.ElementLength();
  if (expected != SIZE_MAX && len != expected)
    throw Error(Code::Shape, std::string(name) + ": expected length " + std::to_string(expected) + ", received " +
                                 std::to_string(len));
  auto* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data());
  return View<T>{reinterpret_cast<T*>(base + ta.ByteOffset()), len};
}

size_t dim(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 0 && d <= 9007199254740991.0 && d == std::floor(d)))
    throw Error(Code::Arg, std::string(name) + ": expected a non-negative integer, received " + describe(v));
  return size_t(d);
}

size_t checked_product(std::initializer_list<size_t> dims, const char* what) {
  size_t p = 1;
  for (size_t d : dims) {
    if (d != 0 && p > SIZE_MAX / d) throw Error(Code::Shape, std::string(what) + ": size overflows");
    p *= d;
  }
  return p;
}

// Params travel as a Float64Array of [temperature, topK, topP, minP] per entry.
std::vector<specula::SamplingParams> params_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const View<double> v = typed<double>(info, i, name, napi_float64_array, SIZE_MAX);
  if (v.length == 0 || v.length % 4 != 0)
    throw Error(Code::Shape, std::string(name) + ": expected 4 numbers per SamplingParams, received " +
                                 std::to_string(v.length));
  std::vector<specula::SamplingParams> out(v.length / 4);
  for (size_t r = 0; r < out.size(); ++r) {
    const double k = v.data[4 * r + 1];
    out[r].temperature = v.data[4 * r];
    out[r].top_k = (k >= 0 && k <= 2147483647.0 && k == std::floor(k)) ? int64_t(k) : -1;
    out[r].top_p = v.data[4 * r + 2];
    out[r].min_p = v.data[4 * r + 3];
  }
  return out;
}

std::vector<uint64_t> seeds_arg(const Napi::CallbackInfo& info, size_t i, size_t rows) {
  const View<uint64_t> v = typed<uint64_t>(info, i, "seeds", napi_biguint64_array, rows);
  return std::vector<uint64_t>(v.data, v.data + v.length);
}

// Offsets travel as a Float64Array of non-negative safe integers (or null = all 0).
std::vector<uint64_t> offsets_arg(const Napi::CallbackInfo& info, size_t i, size_t rows) {
  const View<double> v = typed<double>(info, i, "offsets", napi_float64_array, rows, true);
  std::vector<uint64_t> out(rows, 0);
  for (size_t r = 0; r < v.length; ++r) {
    const double d = v.data[r];
    if (!(d >= 0 && d <= 9007199254740991.0 && d == std::floor(d)))
      throw Error(Code::Value, "offsets[" + std::to_string(r) + "]: expected a non-negative safe integer, received " +
                                   specula::js_number(d));
    out[r] = uint64_t(d);
  }
  return out;
}

// An AsyncWorker whose Run() executes on the libuv pool; a C++ exception becomes the
// error it settles with, its code kept for make_error (one place for the three jobs).
class CoreWorker : public Napi::AsyncWorker {
 public:
  using Napi::AsyncWorker::AsyncWorker;

 protected:
  virtual void Run() = 0;
  void Execute() final {
    try {
      Run();
    } catch (const Error& e) {
      code_ = specula::code_name(e.code());
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      SetError("out of memory");
    } catch (const std::exception& e) {
      SetError(std::string("internal error: ") + e.what());
    }
  }
  // The JavaScript error for a failure of Run().
  Napi::Value js_error(const Napi::Error& e) { return make_error(Env(), code_, e.Message()).Value(); }

 private:
  std::string code_ = "E_STATE";
};

// Runs `work` on the libuv pool and settles a Promise with its number result (or
// undefined); keeps `keep` alive meanwhile.
class Job : public CoreWorker {
 public:
  Job(Napi::Env env, std::function<double()> work, bool has_result, const std::vector<Napi::Value>& keep)
      : CoreWorker(env, "specula"),
        work_(std::move(work)),
        has_result_(has_result),
        deferred_(Napi::Promise::Deferred::New(env)) {
    for (const Napi::Value& v : keep)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() const { return deferred_.Promise(); }
  // Runs on the JS thread just before the promise settles.
  void on_settle(std::function<void()> fn) { settle_ = std::move(fn); }

 protected:
  void Run() override { result_ = work_(); }
  void OnOK() override {
    if (settle_) settle_();
    deferred_.Resolve(has_result_ ? Napi::Number::New(Env(), result_).As<Napi::Value>() : Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    if (settle_) settle_();
    deferred_.Reject(js_error(e));
  }

 private:
  std::function<double()> work_;
  std::function<void()> settle_;
  bool has_result_;
  double result_ = 0;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> refs_;
};

// Runs work now (sync) or queues it (async), depending on the argument at async_index;
// the result is work's number, or undefined.
Napi::Value dispatch_result(const Napi::CallbackInfo& info, size_t async_index, std::function<double()> work,
                            bool has_result) {
  const bool async = info[async_index].ToBoolean().Value();
  if (!async) {
    const double r = work();
    return has_result ? Napi::Number::New(info.Env(), r).As<Napi::Value>() : info.Env().Undefined();
  }
  std::vector<Napi::Value> keep;
  for (size_t i = 0; i < async_index; ++i) keep.push_back(info[i]);
  Job* job = new Job(info.Env(), std::move(work), has_result, keep);
  Napi::Promise promise = job->promise();
  job->Queue();
  return promise;
}

Napi::Value dispatch(const Napi::CallbackInfo& info, size_t async_index, std::function<void()> work) {
  return dispatch_result(info, async_index, [w = std::move(work)] { return w(), 0.0; }, false);
}

// The `device` argument of the kernels: 0 cpu, 1 cuda, 2 auto (undefined: auto).
specula::Device device_arg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return specula::Device::Auto;
  const size_t d = dim(info, i, "device");
  if (d > 2) throw Error(Code::Value, "device: expected 0..2, received " + std::to_string(d));
  return d == 0 ? specula::Device::Cpu : d == 1 ? specula::Device::Cuda : specula::Device::Auto;
}

// sample(logits, rows, vocab, params, seeds, offsets|null, out, async, device)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 1, "rows"), vocab = dim(info, 2, "vocab");
    const View<float> logits = typed<float>(info, 0, "logits", napi_float32_array, checked_product({rows, vocab}, "logits"));
    auto params = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 3, "params"));
    auto seeds = std::make_shared<std::vector<uint64_t>>(seeds_arg(info, 4, rows));
    auto offsets = std::make_shared<std::vector<uint64_t>>(offsets_arg(info, 5, rows));
    const View<int32_t> out = typed<int32_t>(info, 6, "out", napi_int32_array, rows);
    const specula::Device device = device_arg(info, 8);
    return dispatch(info, 7, [=] {
      specula::SampleArgs a;
      a.device = device;
      a.logits = logits.data;
      a.rows = rows;
      a.vocab = vocab;
      a.params = specula::ParamsView{params->data(), params->size()};
      a.seeds = seeds->data();
      a.offsets = offsets->data();
      specula::sample(a, out.data);
    });
  });
}

// probabilities(logits, rows, vocab, params, out, async, device)
Napi::Value Probabilities(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 1, "rows"), vocab = dim(info, 2, "vocab");
    const size_t n = checked_product({rows, vocab}, "logits");
    const View<float> logits = typed<float>(info, 0, "logits", napi_float32_array, n);
    auto params = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 3, "params"));
    const View<float> out = typed<float>(info, 4, "out", napi_float32_array, n);
    const specula::Device device = device_arg(info, 6);
    return dispatch(info, 5, [=] {
      specula::probabilities(logits.data, rows, vocab, specula::ParamsView{params->data(), params->size()}, out.data,
                             device);
    });
  });
}

// verify(targetLogits, draftLogits, draftTokens, draftLengths|null, batch, gamma, vocab,
//        target, draft, seeds, offsets|null, tokens, accepted, emitted, acceptProbability,
//        expectedAcceptance, async, device)
Napi::Value Verify(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t B = dim(info, 4, "batch"), G = dim(info, 5, "gamma"), V = dim(info, 6, "vocab");
    const View<float> target = typed<float>(info, 0, "targetLogits", napi_float32_array,
                                            checked_product({B, G + 1, V}, "targetLogits"));
    const View<float> draft = typed<float>(info, 1, "draftLogits", napi_float32_array,
                                           checked_product({B, G, V}, "draftLogits"));
    const View<int32_t> tokens = typed<int32_t>(info, 2, "draftTokens", napi_int32_array, B * G);
    const View<int32_t> lengths = typed<int32_t>(info, 3, "draftLengths", napi_int32_array, B, true);
    auto tp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 7, "target"));
    auto dp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 8, "draft"));
    auto seeds = std::make_shared<std::vector<uint64_t>>(seeds_arg(info, 9, B));
    auto offsets = std::make_shared<std::vector<uint64_t>>(offsets_arg(info, 10, B));
    specula::VerifyOut o;
    o.tokens = typed<int32_t>(info, 11, "out.tokens", napi_int32_array, B * (G + 1)).data;
    o.accepted = typed<int32_t>(info, 12, "out.accepted", napi_int32_array, B).data;
    o.emitted = typed<int32_t>(info, 13, "out.emitted", napi_int32_array, B).data;
    o.accept_prob = typed<float>(info, 14, "out.acceptProbability", napi_float32_array, B * G).data;
    o.expected = typed<float>(info, 15, "out.expectedAcceptance", napi_float32_array, B * G).data;
    const specula::Device device = device_arg(info, 17);
    return dispatch(info, 16, [=] {
      specula::VerifyArgs a;
      a.device = device;
      a.target_logits = target.data;
      a.draft_logits = draft.data;
      a.draft_tokens = tokens.data;
      a.draft_lengths = lengths.data;
      a.batch = B;
      a.gamma = G;
      a.vocab = V;
      a.target = specula::ParamsView{tp->data(), tp->size()};
      a.draft = specula::ParamsView{dp->data(), dp->size()};
      a.seeds = seeds->data();
      a.offsets = offsets->data();
      specula::verify(a, o);
    });
  });
}

double finite_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber()) throw Error(Code::Arg, std::string(name) + ": expected a number, received " + describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

// kdLoss(teacher, student, rows, vocab, divergence (0 fkl, 1 rkl, 2 jsd, 3 tvd), temperature,
//        beta, mask|null, scaleT2, perRow, grad|null, async, device) -> loss
Napi::Value KdLoss(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 2, "rows"), vocab = dim(info, 3, "vocab");
    const size_t n = checked_product({rows, vocab}, "teacherLogits");
    specula::KdArgs a;
    a.teacher = typed<float>(info, 0, "teacherLogits", napi_float32_array, n).data;
    a.student = typed<float>(info, 1, "studentLogits", napi_float32_array, n).data;
    a.rows = rows;
    a.vocab = vocab;
    const size_t d = dim(info, 4, "divergence");
    if (d > 3) throw Error(Code::Value, "divergence: expected 0..3, received " + std::to_string(d));
    a.divergence = specula::Divergence(d == 0 ? 0 : d == 1 ? 1 : d == 2 ? 2 : 3);
    a.temperature = finite_arg(info, 5, "temperature");
    a.beta = finite_arg(info, 6, "beta");
    a.mask = typed<uint8_t>(info, 7, "mask", napi_uint8_array, rows, true).data;
    a.scale_t2 = info[8].ToBoolean().Value();
    float* per_row = typed<float>(info, 9, "out.perRow", napi_float32_array, rows).data;
    float* grad = typed<float>(info, 10, "out.grad", napi_float32_array, n, true).data;
    a.device = device_arg(info, 12);
    return dispatch_result(info, 11, [=] { return specula::kd_loss(a, per_row, grad); }, true);
  });
}

// acceptanceRate(target, draft, rows, vocab, targetParams, draftParams, out, async, device)
Napi::Value AcceptanceRate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 2, "rows"), vocab = dim(info, 3, "vocab");
    const size_t n = checked_product({rows, vocab}, "targetLogits");
    const View<float> target = typed<float>(info, 0, "targetLogits", napi_float32_array, n);
    const View<float> draft = typed<float>(info, 1, "draftLogits", napi_float32_array, n);
    auto tp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 4, "target"));
    auto dp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 5, "draft"));
    float* out = typed<float>(info, 6, "out", napi_float32_array, rows).data;
    const specula::Device device = device_arg(info, 8);
    return dispatch(info, 7, [=] {
      specula::acceptance_rate(target.data, draft.data, rows, vocab, specula::ParamsView{tp->data(), tp->size()},
                               specula::ParamsView{dp->data(), dp->size()}, out, device);
    });
  });
}

// backends() -> { cuda: { built, available, reason, device } }
Napi::Value Backends(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const specula::BackendStatus s = specula::cuda_status();
    Napi::Object cuda = Napi::Object::New(info.Env());
    cuda.Set("built", Napi::Boolean::New(info.Env(), s.built));
    cuda.Set("available", Napi::Boolean::New(info.Env(), s.available));
    cuda.Set("reason", Napi::String::New(info.Env(), s.reason));
    cuda.Set("device", Napi::String::New(info.Env(), s.device));
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("cuda", cuda);
    return out;
  });
}

// readPass(arrays: Float32Array[]) -> number: the bandwidth baseline of the benchmarks.
Napi::Value ReadPass(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsArray()) throw Error(Code::Arg, "arrays: expected an Array of Float32Array, received " + describe(info[0]));
    Napi::Array arr = info[0].As<Napi::Array>();
    std::vector<const float*> ptrs;
    std::vector<size_t> lens;
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value v = arr.Get(i);
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        throw Error(Code::Arg, "arrays[" + std::to_string(i) + "]: expected a Float32Array, received " + describe(v));
      Napi::Float32Array f = v.As<Napi::Float32Array>();
      ptrs.push_back(f.Data());
      lens.push_back(f.ElementLength());
    }
    return Napi::Number::New(info.Env(), specula::read_pass(ptrs.data(), lens.data(), ptrs.size()));
  });
}


// ---------------------------------------------------------------------------------------
// Models and KV caches. A NativeModel holds a shared_ptr to the core Model, a NativeCache
// one to its KvCache (which holds the model); async jobs hold them too, so dispose() and
// garbage collection only drop a reference and never free memory a job is using.

// Reads a number field of a plain object.
double num_field(const Napi::Object& o, const char* key, double fallback, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) throw Error(Code::Arg, std::string("config.") + key + ": expected a number, received " + describe(v));
    return fallback;
  }
  if (!v.IsNumber()) throw Error(Code::Arg, std::string("config.") + key + ": expected a number, received " + describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

size_t size_field(const Napi::Object& o, const char* key) {
  const double d = num_field(o, key, 0, true);
  if (!(d >= 0 && d <= 9007199254740991.0 && d == std::floor(d)))
    throw Error(Code::Arg, std::string("config.") + key + ": expected a non-negative integer, received " + specula::js_number(d));
  return size_t(d);
}

specula::ModelConfig config_arg(const Napi::Value& v) {
  if (!v.IsObject()) throw Error(Code::Arg, "config: expected an object, received " + describe(v));
  const Napi::Object o = v.As<Napi::Object>();
  specula::ModelConfig c;
  c.vocab = size_field(o, "vocab");
  c.hidden = size_field(o, "hidden");
  c.intermediate = size_field(o, "intermediate");
  c.layers = size_field(o, "layers");
  c.heads = size_field(o, "heads");
  c.kv_heads = size_field(o, "kvHeads");
  c.head_dim = size_field(o, "headDim");
  c.context = size_field(o, "context");
  c.rms_eps = num_field(o, "rmsEps", 1e-6, true);
  c.rope_theta = num_field(o, "ropeTheta", 10000, true);
  c.rope_llama3 = o.Get("ropeLlama3").ToBoolean().Value();
  c.rope_factor = num_field(o, "ropeFactor", 1, false);
  c.rope_low_freq = num_field(o, "ropeLowFreq", 1, false);
  c.rope_high_freq = num_field(o, "ropeHighFreq", 4, false);
  c.rope_original_max = num_field(o, "ropeOriginalMax", 8192, false);
  c.tie_embeddings = o.Get("tieEmbeddings").ToBoolean().Value();
  c.qkv_bias = o.Get("qkvBias").ToBoolean().Value();
  c.o_bias = o.Get("oBias").ToBoolean().Value();
  return c;
}

// tensors: Array of [name, fileIndex, offset, bytes, dtype, shape[]].
std::vector<specula::TensorSpec> tensors_arg(const Napi::Value& v) {
  if (!v.IsArray()) throw Error(Code::Arg, "tensors: expected an Array, received " + describe(v));
  const Napi::Array arr = v.As<Napi::Array>();
  std::vector<specula::TensorSpec> out(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string where = "tensors[" + std::to_string(i) + "]";
    const Napi::Value e = arr.Get(i);
    if (!e.IsArray() || e.As<Napi::Array>().Length() != 6)
      throw Error(Code::Arg, where + ": expected [name, file, offset, bytes, dtype, shape], received " + describe(e));
    const Napi::Array t = e.As<Napi::Array>();
    if (!t.Get(0u).IsString() || !t.Get(4u).IsString() || !t.Get(5u).IsArray())
      throw Error(Code::Arg, where + ": expected [name, file, offset, bytes, dtype, shape]");
    auto integer = [&](uint32_t k, const char* what) {
      const Napi::Value n = t.Get(k);
      const double d = n.IsNumber() ? n.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d >= 0 && d <= 9007199254740991.0 && d == std::floor(d)))
        throw Error(Code::Arg, where + "." + what + ": expected a non-negative integer, received " + describe(n));
      return uint64_t(d);
    };
    specula::TensorSpec& s = out[i];
    s.name = t.Get(0u).As<Napi::String>().Utf8Value();
    s.file = size_t(integer(1, "file"));
    s.offset = integer(2, "offset");
    s.bytes = integer(3, "bytes");
    s.dtype = t.Get(4u).As<Napi::String>().Utf8Value();
    const Napi::Array shape = t.Get(5u).As<Napi::Array>();
    for (uint32_t k = 0; k < shape.Length(); ++k) {
      const Napi::Value n = shape.Get(k);
      const double d = n.IsNumber() ? n.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d >= 0 && d <= 9007199254740991.0 && d == std::floor(d)))
        throw Error(Code::Arg, where + ".shape: expected non-negative integers");
      s.shape.push_back(uint64_t(d));
    }
  }
  return out;
}

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("info", &NativeModel::Info), InstanceMethod("dispose", &NativeModel::Dispose)});
  }
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}

  std::shared_ptr<const specula::Model> model;

  // The model, or E_STATE once disposed.
  std::shared_ptr<const specula::Model> get(const char* what) const {
    if (!model) throw Error(Code::State, std::string(what) + ": the model has been disposed");
    return model;
  }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      auto m = get("info");
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("weightBytesPerToken", Napi::Number::New(info.Env(), double(m->weight_bytes_per_token())));
      o.Set("mappedBytes", Napi::Number::New(info.Env(), double(m->mapped_bytes())));
      return o;
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model.reset();
    return info.Env().Undefined();
  }
};

// Settles a Promise with a NativeModel built off the JS thread.
class LoadJob : public CoreWorker {
 public:
  LoadJob(Napi::Env env, specula::ModelConfig config, std::vector<std::string> files,
          std::vector<specula::TensorSpec> tensors, Napi::FunctionReference* ctor)
      : CoreWorker(env, "specula.loadModel"),
        config_(std::move(config)),
        files_(std::move(files)),
        tensors_(std::move(tensors)),
        ctor_(ctor),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Run() override { model_ = std::make_shared<const specula::Model>(config_, files_, tensors_); }
  void OnOK() override {
    Napi::Object obj = ctor_->New({});
    NativeModel::Unwrap(obj)->model = std::move(model_);
    deferred_.Resolve(obj);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(js_error(e)); }

 private:
  specula::ModelConfig config_;
  std::vector<std::string> files_;
  std::vector<specula::TensorSpec> tensors_;
  Napi::FunctionReference* ctor_;
  std::shared_ptr<const specula::Model> model_;
  Napi::Promise::Deferred deferred_;
};

struct CacheState {
  std::unique_ptr<specula::KvCache> cache;
  bool busy = false;  // an async forward is running (touched on the JS thread only)
};

class NativeCache : public Napi::ObjectWrap<NativeCache> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeCache",
                       {InstanceMethod("length", &NativeCache::Length), InstanceMethod("truncate", &NativeCache::Truncate),
                        InstanceMethod("reset", &NativeCache::Reset), InstanceMethod("forward", &NativeCache::Forward),
                        InstanceMethod("bytes", &NativeCache::Bytes), InstanceMethod("dispose", &NativeCache::Dispose)});
  }
  // new NativeCache(model, sequences, capacity)
  explicit NativeCache(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeCache>(info) {
    try {
      if (!info[0].IsObject()) throw Error(Code::Arg, "model: expected a NativeModel, received " + describe(info[0]));
      auto m = NativeModel::Unwrap(info[0].As<Napi::Object>())->get("createCache");
      const size_t seqs = dim(info, 1, "sequences"), cap = dim(info, 2, "capacity");
      state_ = std::make_shared<CacheState>();
      state_->cache = std::make_unique<specula::KvCache>(m, seqs, cap);
    } catch (const Error& e) {
      make_error(info.Env(), specula::code_name(e.code()), e.what()).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      make_error(info.Env(), "E_STATE", "out of memory").ThrowAsJavaScriptException();
    }
  }

 private:
  specula::KvCache& ready(const char* what) {
    if (!state_ || !state_->cache) throw Error(Code::State, std::string(what) + ": the cache has been disposed");
    if (state_->busy)
      throw Error(Code::State, std::string(what) + ": a forward call on this cache is still running; await it first");
    return *state_->cache;
  }
  Napi::Value Length(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      auto& c = ready("length");
      return Napi::Number::New(info.Env(), double(c.length(dim(info, 0, "seq"))));
    });
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      ready("truncate").truncate(dim(info, 0, "seq"), dim(info, 1, "length"));
      return info.Env().Undefined();
    });
  }
  Napi::Value Reset(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      ready("reset").reset();
      return info.Env().Undefined();
    });
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(ready("bytes").bytes())); });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    // A running job holds its own reference: the memory goes when it settles.
    state_.reset();
    return info.Env().Undefined();
  }
  // forward(seqs Int32Array(B), counts Int32Array(B), nLogits Int32Array(B), tokens Int32Array(sum counts),
  //         out Float32Array(sum nLogits * vocab), async)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::KvCache& c = ready("forward");
      const View<int32_t> seqs = typed<int32_t>(info, 0, "seqs", napi_int32_array, SIZE_MAX);
      const size_t B = seqs.length;
      const View<int32_t> counts = typed<int32_t>(info, 1, "counts", napi_int32_array, B);
      const View<int32_t> nlog = typed<int32_t>(info, 2, "nLogits", napi_int32_array, B);
      auto items = std::make_shared<std::vector<specula::ForwardItem>>(B);
      size_t total = 0, rows = 0;
      for (size_t i = 0; i < B; ++i) {
        if (seqs.data[i] < 0 || counts.data[i] < 0 || nlog.data[i] < 0)
          throw Error(Code::Value, "items[" + std::to_string(i) + "]: negative seq, token count or logits count");
        total += size_t(counts.data[i]);
        rows += size_t(nlog.data[i]);
      }
      const View<int32_t> tokens = typed<int32_t>(info, 3, "tokens", napi_int32_array, total);
      const View<float> out = typed<float>(info, 4, "out", napi_float32_array,
                                           checked_product({rows, c.model().config().vocab}, "out"));
      size_t off = 0;
      for (size_t i = 0; i < B; ++i) {
        (*items)[i] = specula::ForwardItem{size_t(seqs.data[i]), tokens.data + off, size_t(counts.data[i]),
                                           size_t(nlog.data[i])};
        off += size_t(counts.data[i]);
      }
      auto state = state_;
      float* o = out.data;
      if (!info[5].ToBoolean().Value()) {
        c.forward(items->data(), items->size(), o);
        return info.Env().Undefined();
      }
      state->busy = true;
      std::vector<Napi::Value> keep = {info[3], info[4]};
      Job* job = new Job(info.Env(), [state, items, o] {
        state->cache->forward(items->data(), items->size(), o);
        return 0.0;
      }, false, keep);
      job->on_settle([state] { state->busy = false; });
      Napi::Promise p = job->promise();
      job->Queue();
      return p;
    });
  }

  std::shared_ptr<CacheState> state_;
};

// ---------------------------------------------------------------------------------------
// The speculative engine (native/core/engine.h). The TypeScript scheduler makes one call
// at a time; a step runs on the libuv pool and its results are copied into typed arrays
// when it settles.

struct EngineState {
  std::unique_ptr<specula::Engine> engine;
  bool busy = false;  // a step is running (touched on the JS thread only)
};

class StepJob : public CoreWorker {
 public:
  StepJob(Napi::Env env, std::shared_ptr<EngineState> state)
      : CoreWorker(env, "specula.step"), state_(std::move(state)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Run() override { state_->engine->step(); }
  void OnOK() override {
    state_->busy = false;
    Napi::Env env = Env();
    const specula::Engine& e = *state_->engine;
    std::vector<size_t> slots;
    for (size_t s = 0; s < e.slots(); ++s)
      if (e.in_use(s) && e.stepped(s)) slots.push_back(s);
    const size_t B = slots.size();
    size_t ne = 0, nx = 0;
    for (size_t s : slots) {
      ne += e.record(s).emitted.size();
      nx += e.record(s).expected.size();
    }
    auto i32 = [&](size_t n) { return Napi::Int32Array::New(env, n); };
    Napi::Int32Array slot = i32(B), drafted = i32(B), accepted = i32(B), kept = i32(B), finish = i32(B);
    Napi::Int32Array eoff = i32(B + 1), xoff = i32(B + 1), emitted = i32(ne);
    Napi::Float32Array expected = Napi::Float32Array::New(env, nx);
    size_t pe = 0, px = 0;
    for (size_t b = 0; b < B; ++b) {
      const specula::StepRecord& r = e.record(slots[b]);
      slot[b] = int32_t(slots[b]);
      drafted[b] = r.drafted;
      accepted[b] = r.accepted;
      kept[b] = r.kept;
      finish[b] = int32_t(r.finish);
      eoff[b] = int32_t(pe);
      xoff[b] = int32_t(px);
      for (int32_t t : r.emitted) emitted[pe++] = t;
      for (float v : r.expected) expected[px++] = v;
    }
    eoff[B] = int32_t(pe);
    xoff[B] = int32_t(px);
    const specula::StepTimes& t = e.times();
    Napi::Float64Array times = Napi::Float64Array::New(env, 6);
    times[0] = t.prefill;
    times[1] = t.draft;
    times[2] = t.target;
    times[3] = t.sampling;
    times[4] = t.total;
    times[5] = t.draft_calls;
    Napi::Object o = Napi::Object::New(env);
    o.Set("slots", slot);
    o.Set("drafted", drafted);
    o.Set("accepted", accepted);
    o.Set("kept", kept);
    o.Set("finish", finish);
    o.Set("emittedOffsets", eoff);
    o.Set("emitted", emitted);
    o.Set("expectedOffsets", xoff);
    o.Set("expected", expected);
    o.Set("times", times);
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& err) override {
    state_->busy = false;
    deferred_.Reject(js_error(err));
  }

 private:
  std::shared_ptr<EngineState> state_;
  Napi::Promise::Deferred deferred_;
};

class NativeEngine : public Napi::ObjectWrap<NativeEngine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {InstanceMethod("add", &NativeEngine::Add), InstanceMethod("remove", &NativeEngine::Remove),
                        InstanceMethod("step", &NativeEngine::Step), InstanceMethod("freeSlots", &NativeEngine::FreeSlots),
                        InstanceMethod("dispose", &NativeEngine::Dispose)});
  }
  // new NativeEngine(target: NativeModel, draft: NativeModel | null, slots, capacity)
  explicit NativeEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEngine>(info) {
    try {
      if (!info[0].IsObject()) throw Error(Code::Arg, "target: expected a NativeModel, received " + describe(info[0]));
      auto target = NativeModel::Unwrap(info[0].As<Napi::Object>())->get("target");
      std::shared_ptr<const specula::Model> draft;
      if (!info[1].IsNull() && !info[1].IsUndefined()) {
        if (!info[1].IsObject()) throw Error(Code::Arg, "draft: expected a NativeModel or null, received " + describe(info[1]));
        draft = NativeModel::Unwrap(info[1].As<Napi::Object>())->get("draft");
      }
      const size_t slots = dim(info, 2, "slots"), cap = dim(info, 3, "capacity");
      state_ = std::make_shared<EngineState>();
      state_->engine = std::make_unique<specula::Engine>(target, draft, slots, cap);
    } catch (const Error& e) {
      make_error(info.Env(), specula::code_name(e.code()), e.what()).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      make_error(info.Env(), "E_STATE", "out of memory").ThrowAsJavaScriptException();
    }
  }

 private:
  specula::Engine& ready(const char* what) {
    if (!state_ || !state_->engine) throw Error(Code::State, std::string(what) + ": the engine has been disposed");
    if (state_->busy) throw Error(Code::State, std::string(what) + ": a step is still running; await it first");
    return *state_->engine;
  }
  // add(prompt Int32Array, params Float64Array(8): target then draft [T, topK, topP, minP],
  //     gamma, seed BigInt, maxNewTokens, eos Int32Array) -> slot
  Napi::Value Add(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Engine& e = ready("add");
      const View<int32_t> prompt = typed<int32_t>(info, 0, "prompt", napi_int32_array, SIZE_MAX);
      std::vector<specula::SamplingParams> p = params_arg(info, 1, "params");
      if (p.size() != 2) throw Error(Code::Shape, "params: expected 8 numbers (target, draft)");
      specula::SequenceOptions o;
      o.target = p[0];
      o.draft = p[1];
      o.gamma = dim(info, 2, "gamma");
      if (!info[3].IsBigInt()) throw Error(Code::Arg, "seed: expected a bigint, received " + describe(info[3]));
      bool lossless = false;
      o.seed = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless) throw Error(Code::Value, "seed: expected an integer in [0, 2^64)");
      o.max_new_tokens = dim(info, 4, "maxNewTokens");
      const View<int32_t> eos = typed<int32_t>(info, 5, "eos", napi_int32_array, SIZE_MAX);
      o.eos.assign(eos.data, eos.data + eos.length);
      return Napi::Number::New(info.Env(), double(e.add(prompt.data, prompt.length, o)));
    });
  }
  Napi::Value Remove(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      ready("remove").remove(dim(info, 0, "slot"));
      return info.Env().Undefined();
    });
  }
  Napi::Value FreeSlots(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(ready("freeSlots").free_slots())); });
  }
  // step() -> Promise<StepResult>
  Napi::Value Step(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      ready("step");
      state_->busy = true;
      StepJob* job = new StepJob(info.Env(), state_);
      Napi::Promise p = job->promise();
      job->Queue();
      return p;
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    state_.reset();  // a running step holds its own reference
    return info.Env().Undefined();
  }

  std::shared_ptr<EngineState> state_;
};

struct TrainerState {
  std::unique_ptr<specula::Trainer> trainer;
  bool busy = false;  // an async call is running (touched on the JS thread only)
};

// The training state of one model (native/core/train.h). One call at a time: the async
// ones set `busy` until they settle, and every other call throws E_STATE meanwhile.
class NativeTrainer : public Napi::ObjectWrap<NativeTrainer> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeTrainer",
                       {InstanceMethod("tensors", &NativeTrainer::Tensors), InstanceMethod("size", &NativeTrainer::Size),
                        InstanceMethod("read", &NativeTrainer::Read), InstanceMethod("write", &NativeTrainer::Write),
                        InstanceMethod("step", &NativeTrainer::GetStep), InstanceMethod("setStep", &NativeTrainer::SetStep),
                        InstanceMethod("forward", &NativeTrainer::Forward),
                        InstanceMethod("backward", &NativeTrainer::Backward),
                        InstanceMethod("crossEntropy", &NativeTrainer::CrossEntropy),
                        InstanceMethod("adamw", &NativeTrainer::AdamW), InstanceMethod("flops", &NativeTrainer::Flops),
                        InstanceMethod("timing", &NativeTrainer::Timing),
                        InstanceMethod("dispose", &NativeTrainer::Dispose)});
  }
  // new NativeTrainer(model: NativeModel)
  explicit NativeTrainer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTrainer>(info) {
    try {
      if (!info[0].IsObject()) throw Error(Code::Arg, "model: expected a NativeModel, received " + describe(info[0]));
      auto model = NativeModel::Unwrap(info[0].As<Napi::Object>())->get("model");
      state_ = std::make_shared<TrainerState>();
      state_->trainer = std::make_unique<specula::Trainer>(*model);
    } catch (const Error& e) {
      make_error(info.Env(), specula::code_name(e.code()), e.what()).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      make_error(info.Env(), "E_STATE", "out of memory").ThrowAsJavaScriptException();
    }
  }

 private:
  specula::Trainer& ready(const char* what) {
    if (!state_ || !state_->trainer) throw Error(Code::State, std::string(what) + ": the trainer has been disposed");
    if (state_->busy) throw Error(Code::State, std::string(what) + ": a call is still running; await it first");
    return *state_->trainer;
  }
  float* array(specula::Trainer& t, const Napi::Value& v) {
    const std::string w = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
    if (w == "params") return t.params();
    if (w == "grads") return t.grads();
    if (w == "m") return t.adam_m();
    if (w == "v") return t.adam_v();
    throw Error(Code::Value, "which: expected 'params', 'grads', 'm' or 'v', received " + describe(v));
  }
  // Queues work as an async job that holds the state and the argument arrays.
  Napi::Value run(const Napi::CallbackInfo& info, std::function<double()> work, bool has_result) {
    std::vector<Napi::Value> keep;
    for (size_t i = 0; i < info.Length(); ++i) keep.push_back(info[i]);
    Job* job = new Job(info.Env(), std::move(work), has_result, keep);
    auto st = state_;
    st->busy = true;
    job->on_settle([st] { st->busy = false; });
    Napi::Promise p = job->promise();
    job->Queue();
    return p;
  }
  Napi::Value Tensors(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("tensors");
      Napi::Array out = Napi::Array::New(info.Env(), t.tensors().size());
      for (size_t i = 0; i < t.tensors().size(); ++i) {
        const specula::ParamTensor& p = t.tensors()[i];
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("name", p.name);
        o.Set("offset", double(p.offset));
        o.Set("rows", double(p.rows));
        o.Set("cols", double(p.cols));
        o.Set("matrix", p.matrix);
        out.Set(uint32_t(i), o);
      }
      return out;
    });
  }
  Napi::Value Size(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(ready("size").size())); });
  }
  // read(which, out Float32Array(size)): copies one flat array out.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("read");
      const float* src = array(t, info[0]);
      const View<float> out = typed<float>(info, 1, "out", napi_float32_array, t.size());
      std::copy(src, src + t.size(), out.data);
      return info.Env().Undefined();
    });
  }
  // write(which, src Float32Array(size)): copies one flat array in.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("write");
      float* dst = array(t, info[0]);
      const View<float> src = typed<float>(info, 1, "src", napi_float32_array, t.size());
      std::copy(src.data, src.data + t.size(), dst);
      if (dst == t.params()) t.params_changed();
      return info.Env().Undefined();
    });
  }
  Napi::Value GetStep(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(ready("step").step())); });
  }
  Napi::Value SetStep(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      ready("setStep").set_step(dim(info, 0, "step"));
      return info.Env().Undefined();
    });
  }
  // forward(tokens Int32Array(batch * seq), batch, seq, logits Float32Array) -> Promise<void>
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("forward");
      const size_t batch = dim(info, 1, "batch"), seq = dim(info, 2, "seq");
      const size_t T = checked_product({batch, seq}, "tokens");
      const View<int32_t> tokens = typed<int32_t>(info, 0, "tokens", napi_int32_array, T);
      const View<float> logits =
          typed<float>(info, 3, "logits", napi_float32_array, checked_product({T, t.config().vocab}, "logits"));
      specula::Trainer* tp = &t;
      return run(info, [=] { return tp->forward(tokens.data, batch, seq, logits.data), 0.0; }, false);
    });
  }
  // backward(dlogits Float32Array) -> Promise<void>
  Napi::Value Backward(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("backward");
      const View<float> d = typed<float>(info, 0, "dlogits", napi_float32_array, SIZE_MAX);
      if (d.length % t.config().vocab != 0)
        throw Error(Code::Shape, "dlogits: expected rows x " + std::to_string(t.config().vocab) + " floats, received " +
                                     std::to_string(d.length));
      specula::Trainer* tp = &t;
      return run(info, [=] { return tp->backward(d.data), 0.0; }, false);
    });
  }
  // crossEntropy(logits, targets Int32Array(rows), dlogits Float32Array | null, weight) -> Promise<number>
  Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("crossEntropy");
      const size_t V = t.config().vocab;
      const View<int32_t> targets = typed<int32_t>(info, 1, "targets", napi_int32_array, SIZE_MAX);
      const size_t rows = targets.length;
      const View<float> logits = typed<float>(info, 0, "logits", napi_float32_array, checked_product({rows, V}, "logits"));
      const View<float> d = typed<float>(info, 2, "dlogits", napi_float32_array, rows * V, true);
      const double weight = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : NAN;
      if (!std::isfinite(weight)) throw Error(Code::Value, "weight: expected a finite number, received " + describe(info[3]));
      return run(info, [=] { return specula::cross_entropy(logits.data, targets.data, rows, V, d.data, float(weight), nullptr); },
                 true);
    });
  }
  // adamw(Float64Array [lr, beta1, beta2, eps, weightDecay, maxGradNorm]) -> Promise<grad norm>
  Napi::Value AdamW(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      specula::Trainer& t = ready("adamw");
      const View<double> o = typed<double>(info, 0, "options", napi_float64_array, 6);
      specula::AdamWOptions a;
      a.lr = o.data[0];
      a.beta1 = o.data[1];
      a.beta2 = o.data[2];
      a.eps = o.data[3];
      a.weight_decay = o.data[4];
      a.max_grad_norm = o.data[5];
      specula::Trainer* tp = &t;
      return run(info, [=] { return tp->adamw(a); }, true);
    });
  }
  Napi::Value Flops(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), ready("flops").flops(dim(info, 0, "batch"), dim(info, 1, "seq")));
    });
  }
  // timing() -> [forwardMs, backwardMs, matmulMs, matmulFlops] of the last forward + backward
  Napi::Value Timing(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const specula::TrainTiming& t = ready("timing").timing();
      Napi::Float64Array a = Napi::Float64Array::New(info.Env(), 4);
      a[0] = t.forward_s * 1e3;
      a[1] = t.backward_s * 1e3;
      a[2] = t.matmul_s * 1e3;
      a[3] = t.matmul_flops;
      return a;
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (state_ && state_->busy) {
      make_error(info.Env(), "E_STATE", "dispose: a call is still running; await it first").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    state_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<TrainerState> state_;
};

// loadModel(config, files: string[], tensors) -> Promise<NativeModel>
Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    specula::ModelConfig c = config_arg(info[0]);
    if (!info[1].IsArray()) throw Error(Code::Arg, "files: expected an Array of strings, received " + describe(info[1]));
    std::vector<std::string> files;
    const Napi::Array fa = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < fa.Length(); ++i) {
      if (!fa.Get(i).IsString()) throw Error(Code::Arg, "files[" + std::to_string(i) + "]: expected a string");
      files.push_back(fa.Get(i).As<Napi::String>().Utf8Value());
    }
    std::vector<specula::TensorSpec> tensors = tensors_arg(info[2]);
    auto* data = info.Env().GetInstanceData<AddonData>();
    LoadJob* job = new LoadJob(info.Env(), std::move(c), std::move(files), std::move(tensors), &data->model_ctor);
    Napi::Promise p = job->promise();
    job->Queue();
    return p;
  });
}

// fmaPeak(iters) -> flops done (per call on the calling thread; the benchmarks time it).
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t iters = dim(info, 0, "iters");
    const int threads = specula::ThreadPool::global().threads();
    std::vector<double> flops(static_cast<size_t>(threads)), sink(static_cast<size_t>(threads));
    specula::ThreadPool::global().parallel_for(size_t(threads), [&](size_t i) {
      flops[i] = specula::simd::kernels().fma_peak(iters, &sink[i]);
    });
    double f = 0;
    for (double v : flops) f += v;
    return Napi::Number::New(info.Env(), f);
  });
}

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(info.Env(), "setErrorClass: expected a class").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  info.Env().GetInstanceData<AddonData>()->error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = dim(info, 0, "threads");
    if (n < 1 || n > 1024) throw Error(Code::Value, "threads: expected an integer in [1, 1024], received " + std::to_string(n));
    specula::ThreadPool::global().set_threads(int(n));
    return info.Env().Undefined();
  });
}

Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), specula::ThreadPool::global().threads());
}

Napi::Value AvailableCores(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), specula::ThreadPool::available_cores());
}

Napi::Value Simd(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), specula::simd::kernels().name); }

Napi::Value Amx(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), specula::amx::enabled()); }
Napi::Value MatmulPrefetch(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), specula::simd::prefetch_name(specula::simd::matmul_prefetch()));
}
Napi::Value AmxPieces(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), specula::amx::enabled() ? specula::amx::pieces() : 0);
}

Napi::Value SetSimd(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsString()) throw Error(Code::Arg, "level: expected a string, received " + describe(info[0]));
    const std::string level = info[0].As<Napi::String>().Utf8Value();
    if (level != "avx512" && level != "avx2" && level != "portable")
      throw Error(Code::Value, "level: expected 'avx512', 'avx2' or 'portable', received '" + level + "'");
    return Napi::Boolean::New(info.Env(), specula::simd::set_level(level.c_str()));
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  exports.Set("sample", Napi::Function::New(env, Sample, "sample"));
  exports.Set("probabilities", Napi::Function::New(env, Probabilities, "probabilities"));
  exports.Set("verify", Napi::Function::New(env, Verify, "verify"));
  exports.Set("kdLoss", Napi::Function::New(env, KdLoss, "kdLoss"));
  exports.Set("acceptanceRate", Napi::Function::New(env, AcceptanceRate, "acceptanceRate"));
  exports.Set("readPass", Napi::Function::New(env, ReadPass, "readPass"));
  exports.Set("backends", Napi::Function::New(env, Backends, "backends"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("threads", Napi::Function::New(env, Threads, "threads"));
  exports.Set("availableCores", Napi::Function::New(env, AvailableCores, "availableCores"));
  exports.Set("simd", Napi::Function::New(env, Simd, "simd"));
  exports.Set("setSimd", Napi::Function::New(env, SetSimd, "setSimd"));
  exports.Set("amx", Napi::Function::New(env, Amx, "amx"));
  exports.Set("amxPieces", Napi::Function::New(env, AmxPieces, "amxPieces"));
  exports.Set("matmulPrefetch", Napi::Function::New(env, MatmulPrefetch, "matmulPrefetch"));
  auto* data = env.GetInstanceData<AddonData>();
  Napi::Function model_class = NativeModel::Define(env);
  data->model_ctor = Napi::Persistent(model_class);
  Napi::Function cache_class = NativeCache::Define(env);
  data->cache_ctor = Napi::Persistent(cache_class);
  exports.Set("NativeModel", model_class);
  exports.Set("NativeCache", cache_class);
  Napi::Function engine_class = NativeEngine::Define(env);
  data->engine_ctor = Napi::Persistent(engine_class);
  exports.Set("NativeEngine", engine_class);
  exports.Set("NativeTrainer", NativeTrainer::Define(env));
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeak, "fmaPeak"));
  return exports;
}

}  // namespace

NODE_API_MODULE(specula, Init)
