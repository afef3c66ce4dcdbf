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
#include <new>
#include <string>
#include <vector>

#include "error.h"
#include "kd.h"
#include "params.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"

namespace {

using specula::Code;
using specula::Error;

struct AddonData {
  Napi::FunctionReference error_class;
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

// Runs `work` on the libuv pool and settles a Promise with its number result (or
// undefined); keeps `keep` alive meanwhile.
class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, std::function<double()> work, bool has_result, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env, "specula"),
        work_(std::move(work)),
        has_result_(has_result),
        deferred_(Napi::Promise::Deferred::New(env)) {
    for (const Napi::Value& v : keep)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      result_ = work_();
    } catch (const Error& e) {
      code_ = specula::code_name(e.code());
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "E_STATE";
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "E_STATE";
      SetError(std::string("internal error: ") + e.what());
    }
  }
  void OnOK() override {
    deferred_.Resolve(has_result_ ? Napi::Number::New(Env(), result_).As<Napi::Value>() : Env().Undefined());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(make_error(Env(), code_, e.Message()).Value()); }

 private:
  std::function<double()> work_;
  bool has_result_;
  double result_ = 0;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> refs_;
  std::string code_ = "E_STATE";
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

// sample(logits, rows, vocab, params, seeds, offsets|null, out, async)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 1, "rows"), vocab = dim(info, 2, "vocab");
    const View<float> logits = typed<float>(info, 0, "logits", napi_float32_array, checked_product({rows, vocab}, "logits"));
    auto params = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 3, "params"));
    auto seeds = std::make_shared<std::vector<uint64_t>>(seeds_arg(info, 4, rows));
    auto offsets = std::make_shared<std::vector<uint64_t>>(offsets_arg(info, 5, rows));
    const View<int32_t> out = typed<int32_t>(info, 6, "out", napi_int32_array, rows);
    return dispatch(info, 7, [=] {
      specula::SampleArgs a;
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

// probabilities(logits, rows, vocab, params, out, async)
Napi::Value Probabilities(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 1, "rows"), vocab = dim(info, 2, "vocab");
    const size_t n = checked_product({rows, vocab}, "logits");
    const View<float> logits = typed<float>(info, 0, "logits", napi_float32_array, n);
    auto params = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 3, "params"));
    const View<float> out = typed<float>(info, 4, "out", napi_float32_array, n);
    return dispatch(info, 5, [=] {
      specula::probabilities(logits.data, rows, vocab, specula::ParamsView{params->data(), params->size()}, out.data);
    });
  });
}

// verify(targetLogits, draftLogits, draftTokens, draftLengths|null, batch, gamma, vocab,
//        target, draft, seeds, offsets|null, tokens, accepted, emitted, acceptProbability,
//        expectedAcceptance, async)
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
    return dispatch(info, 16, [=] {
      specula::VerifyArgs a;
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
//        beta, mask|null, scaleT2, perRow, grad|null, async) -> loss
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
    return dispatch_result(info, 11, [=] { return specula::kd_loss(a, per_row, grad); }, true);
  });
}

// acceptanceRate(target, draft, rows, vocab, targetParams, draftParams, out, async)
Napi::Value AcceptanceRate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t rows = dim(info, 2, "rows"), vocab = dim(info, 3, "vocab");
    const size_t n = checked_product({rows, vocab}, "targetLogits");
    const View<float> target = typed<float>(info, 0, "targetLogits", napi_float32_array, n);
    const View<float> draft = typed<float>(info, 1, "draftLogits", napi_float32_array, n);
    auto tp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 4, "target"));
    auto dp = std::make_shared<std::vector<specula::SamplingParams>>(params_arg(info, 5, "draft"));
    float* out = typed<float>(info, 6, "out", napi_float32_array, rows).data;
    return dispatch(info, 7, [=] {
      specula::acceptance_rate(target.data, draft.data, rows, vocab, specula::ParamsView{tp->data(), tp->size()},
                               specula::ParamsView{dp->data(), dp->size()}, out);
    });
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
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("threads", Napi::Function::New(env, Threads, "threads"));
  exports.Set("availableCores", Napi::Function::New(env, AvailableCores, "availableCores"));
  exports.Set("simd", Napi::Function::New(env, Simd, "simd"));
  exports.Set("setSimd", Napi::Function::New(env, SetSimd, "setSimd"));
  return exports;
}

}  // namespace

NODE_API_MODULE(specula, Init)
