// Fixed pool: workers spin briefly on a generation counter (decode runs hundreds of small ops per step, so
// a futex wake per op would cost more than the op), then sleep on a condition variable. Tasks are handed out
// through one atomic counter, so uneven tasks balance themselves.
#include "core/threadpool.h"

#include <sched.h>

#include <cstdio>
#include <set>
#include <utility>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace minicpm {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// About 50-200 us of spinning: long enough to bridge the gap between two ops of one step, short enough not to
// steal much from other processes when the pool is idle.
constexpr int k_spin = 4000;

}  // namespace

struct thread_pool::impl {
    int                      n_threads = 1;
    std::vector<std::thread> workers;

    std::mutex              mu;
    std::condition_variable cv_start;
    std::condition_variable cv_done;
    std::atomic<bool>       stop{false};

    std::atomic<uint64_t> generation{0};
    std::atomic<int64_t>  next_task{0};
    std::atomic<int>      n_busy{0};  // workers not yet finished with the current generation
    int64_t               n_tasks = 0;
    const std::function<void(int64_t, int)> * fn = nullptr;

    std::mutex         err_mu;
    std::exception_ptr err;

    void work(int thread) {
        for (;;) {
            const int64_t i = next_task.fetch_add(1, std::memory_order_relaxed);
            if (i >= n_tasks) return;
            try {
                (*fn)(i, thread);
            } catch (...) {
                std::lock_guard<std::mutex> lk(err_mu);
                if (!err) err = std::current_exception();
                next_task.store(n_tasks, std::memory_order_relaxed);  // skip the remaining tasks
            }
        }
    }

    void worker_main(int thread) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t g = generation.load(std::memory_order_acquire);
            for (int s = 0; g == seen && s < k_spin; ++s) {
                cpu_relax();
                g = generation.load(std::memory_order_acquire);
            }
            if (g == seen) {
                std::unique_lock<std::mutex> lk(mu);
                cv_start.wait(lk, [&] { return stop || generation.load(std::memory_order_acquire) != seen; });
                g = generation.load(std::memory_order_acquire);
            }
            if (stop) return;
            seen = g;
            work(thread);
            if (n_busy.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(mu);
                cv_done.notify_one();
            }
        }
    }
};

thread_pool::thread_pool(int n_threads) : impl_(new impl) {
    impl_->n_threads = n_threads > 0 ? n_threads : default_thread_count();
    for (int i = 1; i < impl_->n_threads; ++i) {
        impl_->workers.emplace_back([this, i] { impl_->worker_main(i); });
    }
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lk(impl_->mu);
        impl_->stop.store(true);
        impl_->generation.fetch_add(1, std::memory_order_release);
    }
    impl_->cv_start.notify_all();
    for (auto & t : impl_->workers) t.join();
}

int thread_pool::size() const { return impl_->n_threads; }

void thread_pool::run(int64_t n_tasks, const std::function<void(int64_t task, int thread)> & fn) {
    if (n_tasks <= 0) return;
    impl & p = *impl_;
    if (p.n_threads == 1 || n_tasks == 1) {
        for (int64_t i = 0; i < n_tasks; ++i) fn(i, 0);
        return;
    }
    p.fn = &fn;
    p.n_tasks = n_tasks;
    p.err = nullptr;
    p.next_task.store(0, std::memory_order_relaxed);
    p.n_busy.store(p.n_threads - 1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lk(p.mu);
        p.generation.fetch_add(1, std::memory_order_release);
    }
    p.cv_start.notify_all();
    p.work(0);
    for (int s = 0; p.n_busy.load(std::memory_order_acquire) != 0 && s < k_spin; ++s) cpu_relax();
    if (p.n_busy.load(std::memory_order_acquire) != 0) {
        std::unique_lock<std::mutex> lk(p.mu);
        p.cv_done.wait(lk, [&] { return p.n_busy.load(std::memory_order_acquire) == 0; });
    }
    p.fn = nullptr;
    if (p.err) std::rethrow_exception(p.err);
}

// Physical cores among the CPUs this process may run on: SMT siblings share one core's vector units, so a
// second compute thread on a sibling only adds contention. Read from sysfs topology (distinct package and
// core ids); the affinity CPU count where that is not readable.
int default_thread_count() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        std::set<std::pair<long, long>> cores;
        bool topology = n > 0;
        for (int cpu = 0; cpu < CPU_SETSIZE && topology; ++cpu) {
            if (!CPU_ISSET(cpu, &set)) continue;
            long ids[2] = {-1, -1};
            const char * files[2] = {"physical_package_id", "core_id"};
            for (int f = 0; f < 2; ++f) {
                char path[128];
                std::snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, files[f]);
                if (FILE * fp = std::fopen(path, "r")) {
                    if (std::fscanf(fp, "%ld", &ids[f]) != 1) ids[f] = -1;
                    std::fclose(fp);
                }
            }
            if (ids[0] < 0 || ids[1] < 0) topology = false;
            cores.insert({ids[0], ids[1]});
        }
        if (topology && !cores.empty()) return int(cores.size());
        if (n > 0) return n;
    }
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? int(n) : 1;
}

}  // namespace minicpm
