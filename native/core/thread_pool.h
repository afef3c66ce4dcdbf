// The process-wide compute pool. parallel_for(n, fn) runs fn(0..n-1) on up to
// threads() threads (the caller is one of them) and returns when all are done.
// Work is handed out in task order; results never depend on which thread ran a task.
// If tasks throw, the exception of the lowest task index is rethrown (deterministic).
// Calls from several threads are serialised; a call from inside a task runs inline.
// Idle workers spin for about a millisecond before they sleep, so that the many short
// parallel_for calls of a decode step (dozens per token) hand off in microseconds.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace specula {

class ThreadPool {
 public:
  static ThreadPool& global();

  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const;
  // Resizes the pool (waits for running work). n >= 1.
  void set_threads(int n);
  void parallel_for(size_t n, const std::function<void(size_t)>& fn);

  // Cores this process may run on (affinity mask), at least 1.
  static int available_cores();

 private:
  struct Job;
  void start(int threads);
  void stop();
  void worker_loop();
  static void run_tasks(Job& job);

  std::mutex run_mu_;  // one parallel_for at a time
  std::unique_ptr<Job> job_;  // the one job slot, reused; rewritten only while no worker is in it
  // Protocol: the caller fills job_, then publishes generation_; a worker that sees a new
  // generation registers in active_ and re-checks that the generation is current and not
  // closed before touching job_. The caller closes the generation once every task is
  // claimed and waits for active_ to reach 0 (seq_cst: a worker either is counted or sees
  // the close).
  std::atomic<unsigned long long> generation_{0}, closed_{0};
  std::atomic<int> active_{0}, sleepers_{0};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;  // sleeping workers
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::atomic<int> threads_{1};
};

// Items split into runs, one per worker of a parallel_for(runs, ...): run r holds the
// items first[r], first[r] + stride, ... below end[r]. Worker w claims its own run's items
// in order, then what is left of the others' runs in turn, so that a worker slowed by the
// machine (more threads than cores, other processes) holds up nothing, while each worker
// still knows its next item (for prefetching) almost always. Every item is claimed once.
class WorkRuns {
 public:
  WorkRuns(std::vector<size_t> first, std::vector<size_t> end, size_t stride);
  size_t runs() const { return first_.size(); }
  // Worker w's next item, or SIZE_MAX when none is left; `visit` (0 at the start, one per
  // worker) is the worker's place among the runs and is advanced by the calls.
  size_t claim(size_t w, size_t& visit);

 private:
  std::vector<size_t> first_, end_;
  size_t stride_;
  std::unique_ptr<std::atomic<size_t>[]> taken_;  // items claimed so far, per run
};

}  // namespace specula
