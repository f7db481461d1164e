// The exact sparse scorer over the windowed index (index.h): every window of every query term's list is added
// into a per-window accumulator, and the accumulator goes through a TopK. Any number of threads may search one
// index at once; each thread has its own Scratch.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "accumulate.h"
#include "index.h"
#include "parallel.h"
#include "topk.h"

namespace csae {

// Per-thread scratch: one window's accumulator (kept all zeros between windows) and a heap. Thread-local, so a
// thread allocates it once and reuses it for every query it scores, across calls too.
struct Scratch {
    std::vector<float> acc;
    std::vector<const int64_t*> term_offsets;  // per query term: its latent's offsets over windows
    TopK top;
};

inline Scratch& thread_scratch() {
    static thread_local Scratch scratch;
    return scratch;
}

// Exact top-k of sum_t q_val[t] * value(item, q_lat[t]) over windows [w_begin, w_end); items that share no
// latent with the query score 0 and compete like any other (scores are signed), so a query gets top_k results
// whenever at least top_k items are allowed.
template <class Value>
void score_windows(const IndexView<Value>& ix, const int64_t* q_lat, const float* q_val, size_t q_len, size_t w_begin,
                   size_t w_end, Scratch& s) {
    const size_t win = ix.window_size(), W = ix.n_windows();
    if (s.acc.size() != win) s.acc.assign(win, 0.0f);
    float* acc = s.acc.data();
    s.term_offsets.resize(q_len);
    for (size_t t = 0; t < q_len; ++t) s.term_offsets[t] = ix.offsets + q_lat[t] * W;
    for (size_t w = w_begin; w < w_end; ++w) {
        const size_t first = w * win, len = std::min(win, ix.n - first);
        for (size_t t = 0; t < q_len; ++t) {
            const int64_t begin = s.term_offsets[t][w], end = s.term_offsets[t][w + 1];
            accumulate(acc, ix.local_ids + begin, ix.values + begin, end - begin, q_val[t]);
        }
        s.top.push_dense_and_clear(acc, len, static_cast<int64_t>(first), ix.allowed ? ix.allowed + first : nullptr);
    }
}

// Each query's best top_k over its parts' results (nq * parts lists of top_k, -1 ids unused), best first.
inline void merge_parts(const float* part_scores, const int64_t* part_ids, size_t nq, size_t parts, size_t top_k,
                        int64_t* out_ids, float* out_scores) {
    TopK merged(top_k);
    for (size_t q = 0; q < nq; ++q) {
        merged.reset(top_k);
        for (size_t i = q * parts * top_k; i < (q + 1) * parts * top_k; ++i)
            if (part_ids[i] >= 0) merged.push(part_scores[i], part_ids[i]);
        merged.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
    }
}

// Queries (nq, q_len) of latent ids and values; writes (nq, top_k) ids and scores, best first.
// Batches spread queries over threads; a batch smaller than the thread count also splits each query's windows.
template <class Value>
void search(const IndexView<Value>& ix, const int64_t* q_lat, const float* q_val, size_t nq, size_t q_len, size_t top_k,
            int64_t* out_ids, float* out_scores, int num_threads) {
    for (size_t i = 0; i < nq * q_len; ++i)
        if (q_lat[i] < 0 || static_cast<size_t>(q_lat[i]) >= ix.h)
            throw std::invalid_argument("query latent " + std::to_string(q_lat[i]) + " out of range for h=" + std::to_string(ix.h));
    const int threads = resolve_threads(num_threads);
    const size_t W = ix.n_windows();
    size_t parts = (nq >= static_cast<size_t>(threads)) ? 1 : std::min(W, (threads + nq - 1) / nq);
    parts = std::max<size_t>(parts, 1);
    if (parts == 1) {
        parallel_for(nq, threads, [&](size_t q, int) {
            Scratch& s = thread_scratch();
            s.top.reset(top_k);
            score_windows(ix, q_lat + q * q_len, q_val + q * q_len, q_len, 0, W, s);
            s.top.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
        });
        return;
    }
    std::vector<float> part_scores(nq * parts * top_k);
    std::vector<int64_t> part_ids(nq * parts * top_k);
    parallel_for(nq * parts, threads, [&](size_t task, int) {
        const size_t q = task / parts, p = task % parts;
        Scratch& s = thread_scratch();
        s.top.reset(top_k);
        score_windows(ix, q_lat + q * q_len, q_val + q * q_len, q_len, W * p / parts, W * (p + 1) / parts, s);
        s.top.write_sorted(&part_scores[task * top_k], &part_ids[task * top_k]);
    });
    merge_parts(part_scores.data(), part_ids.data(), nq, parts, top_k, out_ids, out_scores);
}

}  // namespace csae
