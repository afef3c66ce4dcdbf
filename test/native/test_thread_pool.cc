// The compute pool: every task runs once, the lowest failing task's exception wins,
// nested and concurrent calls neither deadlock nor interleave, resizing works; WorkRuns
// hands every item out once.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "thread_pool.h"

using specula::ThreadPool;

TEST_CASE(every_task_runs_once) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(1000)}) {
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, [&](size_t i) { hits[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) CHECK_EQ(hits[i].load(), 1);
    }
  }
}

TEST_CASE(lowest_failing_task_wins) {
  ThreadPool pool(4);
  for (int rep = 0; rep < 50; ++rep) {
    try {
      pool.parallel_for(200, [&](size_t i) {
        if (i == 37 || i == 38 || i == 150) throw std::runtime_error(std::to_string(i));
      });
      CHECK_MSG(false, "no exception");
    } catch (const std::runtime_error& e) {
      CHECK_EQ(std::string(e.what()), std::string("37"));
    }
  }
  // The pool still works after a failure.
  std::atomic<int> sum{0};
  pool.parallel_for(10, [&](size_t i) { sum += int(i); });
  CHECK_EQ(sum.load(), 45);
}

TEST_CASE(nested_and_concurrent_calls) {
  ThreadPool pool(3);
  std::atomic<int> count{0};
  pool.parallel_for(8, [&](size_t) { pool.parallel_for(8, [&](size_t) { ++count; }); });
  CHECK_EQ(count.load(), 64);
  count = 0;
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 20; ++r) pool.parallel_for(50, [&](size_t) { ++count; });
    });
  for (auto& t : callers) t.join();
  CHECK_EQ(count.load(), 4 * 20 * 50);
}

TEST_CASE(resize) {
  ThreadPool pool(1);
  for (int n : {2, 4, 1, 3}) {
    pool.set_threads(n);
    CHECK_EQ(pool.threads(), n);
    std::atomic<int> count{0};
    pool.parallel_for(100, [&](size_t) { ++count; });
    CHECK_EQ(count.load(), 100);
  }
  CHECK(ThreadPool::available_cores() >= 1);
}

CHECK_MAIN()

TEST_CASE(work_runs_claim_every_item_once_own_run_first) {
  // Contiguous runs (the matrix blocks) and strided runs (the attention tasks): every item
  // goes to exactly one worker; one worker alone takes its own run in order, then the
  // others' in turn.
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (size_t stride : {size_t(1), size_t(3)}) {
      const size_t P = 3, n = 1000;
      std::vector<size_t> first(P), end(P), expected;
      for (size_t r = 0; r < P; ++r) {
        first[r] = stride == 1 ? n * r / P : r;
        end[r] = stride == 1 ? n * (r + 1) / P : n;
        for (size_t i = first[r]; i < end[r]; i += stride) expected.push_back(i);
      }
      specula::WorkRuns runs(std::move(first), std::move(end), stride);
      std::vector<std::atomic<int>> hits(n);
      std::vector<std::vector<size_t>> order(P);
      pool.parallel_for(P, [&](size_t w) {
        size_t visit = 0;
        for (size_t i; (i = runs.claim(w, visit)) != SIZE_MAX;) {
          hits[i].fetch_add(1);
          order[w].push_back(i);
        }
      });
      for (size_t i = 0; i < n; ++i) CHECK_EQ(hits[i].load(), 1);
      if (threads == 1) {  // task 0 runs first and alone: it takes everything, in run order
        CHECK(order[0] == expected);
        CHECK(order[1].empty() && order[2].empty());
      }
    }
  }
}
