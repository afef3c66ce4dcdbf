// The speculative decoding engine: DESIGN.md, "Engine loop". One Engine holds a target
// model, an optional draft model, a KV cache of `slots` sequences for each, and the state
// of the sequences in those slots. step() advances every running sequence by one
// speculative step:
//
//   1. prefill   new sequences: both caches take the prompt but its last token
//   2. draft     L_b = min(gamma_b, tokens left - 1, room left) draft forwards, batched over
//                the sequences still drafting; x_i ~ q_i with the draft's parameters and
//                uniform(seed, n_b + i, 0, sample)
//   3. verify    one target forward over [last, x_0 .. x_{L_b - 1}] per sequence
//                -> (B, G+1, V); verify() (sampling.h) accepts k_b and emits k_b + 1 tokens
//                with the accept / emit streams at positions n_b + i
//   4. roll back the target cache to the emitted prefix (the last emitted token is fed by
//                the next step) and the draft cache to at most that; tokens the draft has
//                not seen are fed by its first forward of the next step (1 or 2 of them)
//   5. finish    on an EOS token (the rest of the block is dropped), after max_new_tokens,
//                or when the sequence fills the context (capacity)
//
// gamma = 0 is autoregressive decoding of the target through the same path: no draft,
// verify() with L = 0 emits from p_0 with the emit stream. Every draw depends only on
// (seed, position, domain), and the models' logits are batch invariant, so a sequence's
// tokens do not depend on what else is in the batch or on the thread count.
//
// Not thread-safe: one call at a time (the addon enforces it). step() runs on the
// caller's thread and uses the global compute pool for the forwards and kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model.h"
#include "params.h"

namespace specula {

struct SequenceOptions {
  SamplingParams target, draft;
  size_t gamma = 4;             // drafted tokens per step, 0 .. kMaxGamma
  uint64_t seed = 0;
  size_t max_new_tokens = 1;    // >= 1
  std::vector<int32_t> eos;     // tokens that end the sequence (kept as its last token)
};

enum class Finish : int32_t { Running = 0, Length = 1, Eos = 2 };

// What the last step did for one sequence.
struct StepRecord {
  int32_t drafted = 0;            // L
  int32_t accepted = 0;           // k: drafted tokens accepted by verification
  std::vector<int32_t> emitted;   // the k + 1 tokens verification emitted
  int32_t kept = 0;               // how many of them joined the sequence (fewer after an EOS)
  std::vector<float> expected;    // sum_x min(p, q) at each tested position: min(k + 1, L) values
  Finish finish = Finish::Running;
};

// Times of the last step, in milliseconds (steady clock).
struct StepTimes {
  double prefill = 0, draft = 0, target = 0, sampling = 0, total = 0;
  int32_t draft_calls = 0;   // draft forwards (0 .. max L)
  int32_t batch = 0;         // sequences stepped
};

class Engine {
 public:
  static constexpr size_t kMaxGamma = 64;

  // draft may be null (then every sequence must have gamma 0). Both models must have the
  // same vocabulary size; capacity <= both models' contexts. Throws Error (E_VALUE,
  // E_UNSUPPORTED, E_STATE when the caches cannot be allocated).
  Engine(std::shared_ptr<const Model> target, std::shared_ptr<const Model> draft, size_t slots, size_t capacity);

  size_t slots() const { return seqs_.size(); }
  size_t capacity() const { return capacity_; }
  size_t free_slots() const;

  // Puts a sequence in a free slot and returns the slot. E_STATE when no slot is free,
  // E_SHAPE when the prompt is empty or leaves no room (n >= capacity), E_VALUE for a
  // token out of range or invalid options.
  size_t add(const int32_t* prompt, size_t n, const SequenceOptions& options);
  // Frees a slot (running or finished). E_VALUE if it is not in use.
  void remove(size_t slot);

  // One step for every running sequence; returns how many were stepped (0: none running).
  // On an Error the sequences stepped are marked broken (E_STATE on their next use).
  size_t step();

  bool in_use(size_t slot) const;
  Finish finish(size_t slot) const;
  const std::vector<int32_t>& tokens(size_t slot) const;   // prompt + kept tokens
  size_t prompt_length(size_t slot) const;
  const StepRecord& record(size_t slot) const;             // of the last step it took part in
  bool stepped(size_t slot) const;                         // took part in the last step
  const StepTimes& times() const { return times_; }

 private:
  struct Seq {
    bool used = false, fresh = false, broken = false, stepped = false;
    SequenceOptions opt;
    std::vector<int32_t> tokens;
    size_t prompt = 0;
    size_t dlen = 0;   // positions in the draft cache
    Finish finish = Finish::Running;
    StepRecord rec;
  };
  Seq& at(size_t slot, const char* what);
  const Seq& at(size_t slot, const char* what) const;

  std::shared_ptr<const Model> target_, draft_;
  size_t capacity_, vocab_;
  std::unique_ptr<KvCache> tcache_, dcache_;
  std::vector<Seq> seqs_;
  StepTimes times_;
  // Scratch reused across steps.
  std::vector<float> tlog_, dlog_, fwd_;
};

}  // namespace specula
