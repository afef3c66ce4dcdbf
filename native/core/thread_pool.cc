#include "thread_pool.h"

#include <atomic>
#include <cstdlib>
#include <exception>
#include <string>

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

ThreadPool::ThreadPool(int threads) { start(threads < 1 ? 1 : threads); }

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
  unsigned long long seen = 0;
  for (;;) {
    Job* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || (job_ != nullptr && generation_ != seen); });
      if (stopping_) return;
      seen = generation_;
      job = job_;
      ++busy_;
    }
    run_tasks(*job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --busy_;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  Job job;
  job.n = n;
  job.fn = &fn;
  if (t_inside_task || n == 1 || threads_ == 1) {
    run_tasks(job);
  } else {
    std::lock_guard<std::mutex> run(run_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      ++generation_;
    }
    wake_.notify_all();
    run_tasks(job);
    std::unique_lock<std::mutex> lock(mu_);
    // Workers that woke up hold busy_; workers that did not yet wake will see job_ == nullptr.
    job_ = nullptr;
    done_.wait(lock, [&] { return busy_ == 0; });
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace specula
