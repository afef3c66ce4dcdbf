#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "error.h"
#include "sampling.h"

namespace specula {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

Engine::Engine(std::shared_ptr<const Model> target, std::shared_ptr<const Model> draft, size_t slots, size_t capacity)
    : target_(std::move(target)), draft_(std::move(draft)), capacity_(capacity) {
  if (!target_) throw Error(Code::Arg, "target: expected a model");
  vocab_ = target_->config().vocab;
  if (draft_ && draft_->config().vocab != vocab_)
    throw Error(Code::Unsupported, "draft: vocabulary size " + std::to_string(draft_->config().vocab) +
                                       " differs from the target's " + std::to_string(vocab_));
  if (slots < 1 || slots > 4096)
    throw Error(Code::Value, "slots: expected an integer in [1, 4096], received " + std::to_string(slots));
  size_t ctx = target_->config().context;
  if (draft_) ctx = std::min(ctx, draft_->config().context);
  if (capacity < 2 || capacity > ctx)
    throw Error(Code::Value, "capacity: expected an integer in [2, " + std::to_string(ctx) +
                                 "] (the models' context), received " + std::to_string(capacity));
  tcache_ = std::make_unique<KvCache>(target_, slots, capacity);
  if (draft_) dcache_ = std::make_unique<KvCache>(draft_, slots, capacity);
  seqs_.resize(slots);
}

size_t Engine::free_slots() const {
  size_t n = 0;
  for (const Seq& s : seqs_) n += s.used ? 0 : 1;
  return n;
}

Engine::Seq& Engine::at(size_t slot, const char* what) {
  if (slot >= seqs_.size() || !seqs_[slot].used)
    throw Error(Code::Value, std::string(what) + ": slot " + std::to_string(slot) + " holds no sequence");
  return seqs_[slot];
}

const Engine::Seq& Engine::at(size_t slot, const char* what) const {
  return const_cast<Engine*>(this)->at(slot, what);
}

size_t Engine::add(const int32_t* prompt, size_t n, const SequenceOptions& o) {
  validate_params(o.target, "target");
  validate_params(o.draft, "draft");
  if (o.gamma > kMaxGamma)
    throw Error(Code::Value, "gamma: expected an integer in [0, " + std::to_string(kMaxGamma) + "], received " +
                                 std::to_string(o.gamma));
  if (o.gamma > 0 && !draft_)
    throw Error(Code::Value, "gamma: expected 0 (this engine has no draft model), received " + std::to_string(o.gamma));
  if (o.max_new_tokens < 1) throw Error(Code::Value, "maxNewTokens: expected an integer >= 1, received 0");
  for (size_t i = 0; i < o.eos.size(); ++i)
    if (o.eos[i] < 0 || size_t(o.eos[i]) >= vocab_)
      throw Error(Code::Value, "eos[" + std::to_string(i) + "]: expected a token id in [0, " + std::to_string(vocab_ - 1) +
                                   "], received " + std::to_string(o.eos[i]));
  if (n < 1) throw Error(Code::Shape, "prompt: expected at least one token, received none");
  if (n >= capacity_)
    throw Error(Code::Shape, "prompt: " + std::to_string(n) + " tokens leave no room to generate in a context of " +
                                 std::to_string(capacity_) + " tokens (at most " + std::to_string(capacity_ - 1) + ")");
  for (size_t i = 0; i < n; ++i)
    if (prompt[i] < 0 || size_t(prompt[i]) >= vocab_)
      throw Error(Code::Value, "prompt[" + std::to_string(i) + "]: expected a token id in [0, " +
                                   std::to_string(vocab_ - 1) + "], received " + std::to_string(prompt[i]));
  size_t slot = 0;
  while (slot < seqs_.size() && seqs_[slot].used) ++slot;
  if (slot == seqs_.size())
    throw Error(Code::State, "add: all " + std::to_string(seqs_.size()) + " slots are in use");
  Seq s;
  s.used = s.fresh = true;
  s.opt = o;
  s.tokens.assign(prompt, prompt + n);
  s.prompt = n;
  tcache_->truncate(slot, 0);
  if (dcache_) dcache_->truncate(slot, 0);
  seqs_[slot] = std::move(s);
  return slot;
}

void Engine::remove(size_t slot) {
  at(slot, "remove");
  seqs_[slot] = Seq();
}

bool Engine::in_use(size_t slot) const { return slot < seqs_.size() && seqs_[slot].used; }
Finish Engine::finish(size_t slot) const { return at(slot, "finish").finish; }
const std::vector<int32_t>& Engine::tokens(size_t slot) const { return at(slot, "tokens").tokens; }
size_t Engine::prompt_length(size_t slot) const { return at(slot, "promptLength").prompt; }
const StepRecord& Engine::record(size_t slot) const { return at(slot, "record").rec; }
bool Engine::stepped(size_t slot) const { return at(slot, "stepped").stepped; }

size_t Engine::step() {
  const Clock::time_point t_step = Clock::now();
  times_ = StepTimes();
  std::vector<size_t> act;
  for (size_t slot = 0; slot < seqs_.size(); ++slot) {
    Seq& s = seqs_[slot];
    s.stepped = false;
    if (!s.used) continue;
    if (s.broken)
      throw Error(Code::State, "step: sequence in slot " + std::to_string(slot) +
                                   " was in a step that failed; remove it first");
    if (s.finish == Finish::Running) act.push_back(slot);
  }
  if (act.empty()) return 0;
  const size_t B = act.size(), V = vocab_;
  try {
    // 1. Prefill: every prompt token but the last (which the first step feeds).
    {
      const Clock::time_point t0 = Clock::now();
      std::vector<ForwardItem> ti, di;
      for (size_t slot : act) {
        Seq& s = seqs_[slot];
        if (!s.fresh || s.tokens.size() < 2) continue;
        ti.push_back(ForwardItem{slot, s.tokens.data(), s.tokens.size() - 1, 0});
        if (s.opt.gamma > 0) di.push_back(ForwardItem{slot, s.tokens.data(), s.tokens.size() - 1, 0});
      }
      if (!ti.empty()) tcache_->forward(ti.data(), ti.size(), nullptr);
      if (!di.empty()) dcache_->forward(di.data(), di.size(), nullptr);
      for (size_t slot : act) {
        Seq& s = seqs_[slot];
        if (!s.fresh) continue;
        s.fresh = false;
        s.dlen = (s.opt.gamma > 0 && s.tokens.size() >= 2) ? s.tokens.size() - 1 : 0;
      }
      if (!ti.empty()) times_.prefill = ms_since(t0);
    }

    // 2. Draft lengths: never past max_new_tokens or the context.
    std::vector<int32_t> L(B);
    std::vector<size_t> n0(B);
    size_t G = 0;
    for (size_t b = 0; b < B; ++b) {
      const Seq& s = seqs_[act[b]];
      const size_t n = s.tokens.size(), left = s.opt.max_new_tokens - (n - s.prompt);
      n0[b] = n;
      L[b] = int32_t(std::min({s.opt.gamma, left - 1, capacity_ - n - 1}));
      G = std::max(G, size_t(L[b]));
    }
    std::vector<SamplingParams> tparams(B), dparams(B);
    std::vector<uint64_t> seeds(B), offsets(B);
    for (size_t b = 0; b < B; ++b) {
      tparams[b] = seqs_[act[b]].opt.target;
      dparams[b] = seqs_[act[b]].opt.draft;
      seeds[b] = seqs_[act[b]].opt.seed;
      offsets[b] = n0[b];
    }
    std::vector<int32_t> x(B * G, 0);
    if (G > 0) dlog_.resize(B * G * V);
    tlog_.resize(B * (G + 1) * V);

    // 3. Draft: G batched forwards, each over the sequences still drafting.
    for (size_t i = 0; i < G; ++i) {
      std::vector<ForwardItem> items;
      std::vector<size_t> rows;  // batch index of each item
      std::vector<SamplingParams> p;
      std::vector<uint64_t> sd, off;
      for (size_t b = 0; b < B; ++b) {
        if (size_t(L[b]) <= i) continue;
        Seq& s = seqs_[act[b]];
        if (i == 0)
          items.push_back(ForwardItem{act[b], s.tokens.data() + s.dlen, s.tokens.size() - s.dlen, 1});
        else
          items.push_back(ForwardItem{act[b], &x[b * G + i - 1], 1, 1});
        rows.push_back(b);
        p.push_back(dparams[b]);
        sd.push_back(seeds[b]);
        off.push_back(n0[b] + i);
      }
      const size_t R = items.size();
      fwd_.resize(R * V);
      Clock::time_point t0 = Clock::now();
      dcache_->forward(items.data(), R, fwd_.data());
      times_.draft += ms_since(t0);
      ++times_.draft_calls;
      for (size_t r = 0; r < R; ++r) seqs_[items[r].seq].dlen += items[r].n;
      t0 = Clock::now();
      std::vector<int32_t> drawn(R);
      SampleArgs sa;
      sa.logits = fwd_.data();
      sa.rows = R;
      sa.vocab = V;
      sa.params = ParamsView{p.data(), p.size()};
      sa.seeds = sd.data();
      sa.offsets = off.data();
      sample(sa, drawn.data());
      for (size_t r = 0; r < R; ++r) {
        const size_t b = rows[r];
        x[b * G + i] = drawn[r];
        std::memcpy(dlog_.data() + (b * G + i) * V, fwd_.data() + r * V, V * sizeof(float));
      }
      times_.sampling += ms_since(t0);
    }

    // 4. Verify: one target forward over [last, x_0 .. x_{L-1}] per sequence.
    {
      std::vector<int32_t> feed;
      feed.reserve(B * (G + 1));
      std::vector<size_t> start(B);
      bool uniform = true;
      for (size_t b = 0; b < B; ++b) {
        start[b] = feed.size();
        feed.push_back(seqs_[act[b]].tokens.back());
        for (int32_t i = 0; i < L[b]; ++i) feed.push_back(x[b * G + size_t(i)]);
        uniform = uniform && size_t(L[b]) == G;
      }
      std::vector<ForwardItem> items(B);
      for (size_t b = 0; b < B; ++b)
        items[b] = ForwardItem{act[b], feed.data() + start[b], size_t(L[b]) + 1, size_t(L[b]) + 1};
      const Clock::time_point t0 = Clock::now();
      if (uniform) {
        tcache_->forward(items.data(), B, tlog_.data());
      } else {
        fwd_.resize(feed.size() * V);
        tcache_->forward(items.data(), B, fwd_.data());
      }
      times_.target = ms_since(t0);
      if (!uniform) {  // pad the ragged rows to (B, G+1, V)
        for (size_t b = 0; b < B; ++b)
          std::memcpy(tlog_.data() + b * (G + 1) * V, fwd_.data() + start[b] * V, (size_t(L[b]) + 1) * V * sizeof(float));
      }
    }
    const Clock::time_point t_verify = Clock::now();
    std::vector<int32_t> out_tokens(B * (G + 1)), accepted(B), emitted(B);
    std::vector<float> accept_prob(B * G), expected(B * G);
    VerifyArgs va;
    va.target_logits = tlog_.data();
    va.draft_logits = G > 0 ? dlog_.data() : nullptr;
    va.draft_tokens = x.data();
    va.draft_lengths = L.data();
    va.batch = B;
    va.gamma = G;
    va.vocab = V;
    va.target = ParamsView{tparams.data(), B};
    va.draft = ParamsView{dparams.data(), B};
    va.seeds = seeds.data();
    va.offsets = offsets.data();
    VerifyOut vo;
    vo.tokens = out_tokens.data();
    vo.accepted = accepted.data();
    vo.emitted = emitted.data();
    vo.accept_prob = accept_prob.data();
    vo.expected = expected.data();
    verify(va, vo);

    // 5. Keep the emitted tokens (up to an EOS), roll back both caches, finish.
    for (size_t b = 0; b < B; ++b) {
      Seq& s = seqs_[act[b]];
      StepRecord& rec = s.rec;
      const size_t k = size_t(accepted[b]), n = n0[b];
      rec.drafted = L[b];
      rec.accepted = int32_t(k);
      rec.emitted.assign(out_tokens.begin() + b * (G + 1), out_tokens.begin() + b * (G + 1) + k + 1);
      rec.expected.assign(expected.begin() + b * G, expected.begin() + b * G + std::min(k + 1, size_t(L[b])));
      rec.finish = Finish::Running;
      size_t m = 0;
      for (; m <= k; ++m) {
        const int32_t tok = rec.emitted[m];
        s.tokens.push_back(tok);
        if (std::find(s.opt.eos.begin(), s.opt.eos.end(), tok) != s.opt.eos.end()) {
          rec.finish = Finish::Eos;
          ++m;
          break;
        }
      }
      rec.kept = int32_t(m);
      // The target holds n + L positions; keep all but the newest token.
      tcache_->truncate(act[b], n + m - 1);
      if (s.opt.gamma > 0) {
        s.dlen = std::min(s.dlen, n + m - 1);
        dcache_->truncate(act[b], s.dlen);
      }
      if (rec.finish == Finish::Running &&
          (s.tokens.size() - s.prompt >= s.opt.max_new_tokens || s.tokens.size() >= capacity_))
        rec.finish = Finish::Length;
      s.finish = rec.finish;
      s.stepped = true;
    }
    times_.sampling += ms_since(t_verify);
  } catch (const Error& e) {
    for (size_t slot : act) seqs_[slot].broken = true;
    throw Error(e.code(), std::string("step: ") + e.what());
  } catch (...) {
    for (size_t slot : act) seqs_[slot].broken = true;
    throw;
  }
  times_.batch = int32_t(B);
  times_.total = ms_since(t_step);
  return B;
}

}  // namespace specula
