#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sched.h>
#endif

namespace specula {

namespace {
thread_local bool t_inside_task = false;

int initial_threads() {
  if (const char* env = std::getenv("SPECULA_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1 && n <= 1024) return n;
  }
  return ThreadPool::available_cores();
}
}  // namespace

struct ThreadPool::Job {
  size_t n = 0;
  const std::function<void(size_t)>* fn = nullptr;
  std::atomic<size_t> next{0};
  std::mutex err_mu;
  size_t err_index = SIZE_MAX;
  std::exception_ptr error;
};

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
constexpr auto kSpin = std::chrono::microseconds(1000);  // a worker's busy wait before it sleeps
}  // namespace

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(initial_threads());
  return pool;
}

int ThreadPool::available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? int(n) : 1;
}

ThreadPool::ThreadPool(int threads) : job_(new Job) { start(threads < 1 ? 1 : threads); }

ThreadPool::~ThreadPool() { stop(); }

int ThreadPool::threads() const { return threads_; }

void ThreadPool::start(int threads) {
  threads_ = threads;
  stopping_ = false;
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> run(run_mu_);
  if (n == threads_) return;
  stop();
  start(n);
}

void ThreadPool::run_tasks(Job& job) {
  const bool was_inside = t_inside_task;
  t_inside_task = true;
  for (;;) {
    const size_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.n) break;
    {
      // Tasks after the lowest failing one cannot change which error is reported.
      std::lock_guard<std::mutex> lock(job.err_mu);
      if (i > job.err_index) continue;
    }
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.err_mu);
      if (i < job.err_index) {
        job.err_index = i;
        job.error = std::current_exception();
      }
    }
  }
  t_inside_task = was_inside;
}

void ThreadPool::worker_loop() {
  unsigned long long seen = generation_.load();
  for (;;) {
    unsigned long long g = generation_.load();
    if (g == seen && !stopping_.load()) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      for (int spins = 1;; ++spins) {
        cpu_relax();
        g = generation_.load();
        if (g != seen || stopping_.load()) break;
        if (spins % 64 == 0 && std::chrono::steady_clock::now() > until) break;
      }
      if (g == seen && !stopping_.load()) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return stopping_.load() || generation_.load() != seen; });
        sleepers_.fetch_sub(1);
        g = generation_.load();
      }
    }
    if (stopping_.load()) return;
    seen = g;
    active_.fetch_add(1);
    if (generation_.load() == g && closed_.load() != g) run_tasks(*job_);
    active_.fetch_sub(1);
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (t_inside_task || n == 1 || threads_ == 1) {
    Job job;
    job.n = n;
    job.fn = &fn;
    run_tasks(job);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  std::lock_guard<std::mutex> run(run_mu_);
  Job& job = *job_;  // no worker is inside: the last call waited for active_ == 0
  job.n = n;
  job.fn = &fn;
  job.next.store(0);
  job.err_index = SIZE_MAX;
  job.error = nullptr;
  const unsigned long long g = generation_.fetch_add(1) + 1;
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mu_); }
    wake_.notify_all();
  }
  run_tasks(job);
  // Every task is claimed; close the generation and wait for the workers still in it.
  closed_.store(g);
  for (int spins = 1; active_.load() != 0; ++spins) {
    cpu_relax();
    if (spins % 256 == 0) std::this_thread::yield();
  }
  std::exception_ptr error = std::move(job.error);
  job.error = nullptr;
  job.fn = nullptr;
  if (error) std::rethrow_exception(error);
}

WorkRuns::WorkRuns(std::vector<size_t> first, std::vector<size_t> end, size_t stride)
    : first_(std::move(first)), end_(std::move(end)), stride_(stride), taken_(new std::atomic<size_t>[first_.size()]) {
  for (size_t r = 0; r < first_.size(); ++r) taken_[r].store(0, std::memory_order_relaxed);
}

size_t WorkRuns::claim(size_t w, size_t& visit) {
  const size_t P = first_.size();
  for (; visit < P; ++visit) {
    const size_t r = (w + visit) % P;
    const size_t item = first_[r] + stride_ * taken_[r].fetch_add(1, std::memory_order_relaxed);
    if (item < end_[r]) return item;
  }
  return SIZE_MAX;
}

}  // namespace specula
