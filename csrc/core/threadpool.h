// A fixed pool of compute threads. run() executes fn(i) for i in [0, n) across the pool and the calling
// thread, and returns when all are done. One run() at a time (the owner of the pool is one thread).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace minicpm {

class thread_pool {
  public:
    explicit thread_pool(int n_threads);  // n_threads includes the calling thread; 0 = number of cores
    ~thread_pool();
    thread_pool(const thread_pool &) = delete;
    thread_pool & operator=(const thread_pool &) = delete;

    int size() const;
    // fn(task, thread): task in [0, n_tasks), thread in [0, size()). Exceptions in fn are rethrown here.
    void run(int64_t n_tasks, const std::function<void(int64_t task, int thread)> & fn);

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

int default_thread_count();  // physical cores among the CPUs this process may run on (SMT siblings once)

}  // namespace minicpm
