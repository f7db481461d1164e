// A tiny parallel-for over [0, n): an atomic counter hands out chunks; the first exception is rethrown on the caller.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace csae {

inline int resolve_threads(int num_threads) {
    if (num_threads > 0) return num_threads;
    return std::max(1u, std::thread::hardware_concurrency());
}

// Calls fn(i, thread_id) for every i in [0, n), each i exactly once.
template <class Fn>
void parallel_for(size_t n, int num_threads, Fn fn, size_t chunk = 1) {
    num_threads = static_cast<int>(std::min<size_t>(resolve_threads(num_threads), (n + chunk - 1) / std::max<size_t>(chunk, 1)));
    if (num_threads <= 1) {
        for (size_t i = 0; i < n; ++i) fn(i, 0);
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&](int tid) {
        for (;;) {
            size_t begin = next.fetch_add(chunk);
            if (begin >= n) return;
            size_t end = std::min(n, begin + chunk);
            try {
                for (size_t i = begin; i < end; ++i) fn(i, tid);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                next.store(n);
                return;
            }
        }
    };
    std::vector<std::thread> threads;
    for (int t = 1; t < num_threads; ++t) threads.emplace_back(worker, t);
    worker(0);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace csae
