// The windowed inverted index and its exact sparse scorer.
//
// Items are cut into windows of 2^window_bits consecutive ids, so a window's scores fit one cache-resident
// accumulator. Each latent's postings are one list in increasing item order, cut at window boundaries, and store
// the item's id relative to its window's start (uint16 for windows up to 65,536 items).
// postings of latent i in window w: [offsets[i * W + w], offsets[i * W + w + 1]), W windows.
// Latent-major order keeps a query term's postings one forward stream across windows (measured 20% faster on
// 1M items than window-major order, where each window's segment of a list lies in another page).
//
// Thread safety: the index is immutable once built; any number of threads may search it at once.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "half.h"
#include "parallel.h"
#include "topk.h"

namespace csae {

template <class Value>
struct IndexView {
    size_t n = 0, h = 0, window_bits = 16;
    const int64_t* offsets = nullptr;   // n_windows() * h + 1
    const uint16_t* local_ids = nullptr;
    const Value* values = nullptr;
    const uint8_t* allowed = nullptr;   // n bytes, 0 = skip the item (deleted or filtered out); null: all allowed

    size_t window_size() const { return size_t{1} << window_bits; }
    size_t n_windows() const { return (n + window_size() - 1) >> window_bits; }
};

inline size_t windows_for(size_t n, size_t window_bits) { return (n + (size_t{1} << window_bits) - 1) >> window_bits; }

// Fills offsets (n_windows * h + 1), local_ids and values (offsets[last] entries each) from (n, k) codes.
// keep, when given, is an (n, k) mask of the entries to index (posting-list pruning).
template <class Index, class Value>
void build_windowed(const Index* indices, const Value* values, const uint8_t* keep, size_t n, size_t k, size_t h,
                    size_t window_bits, int64_t* offsets, uint16_t* local_ids, Value* out_values, int num_threads) {
    if (window_bits > 16) throw std::invalid_argument("window_bits must be at most 16 (ids are stored as uint16)");
    const size_t W = windows_for(n, window_bits), win = size_t{1} << window_bits;
    std::vector<int64_t> cursor(W * h, 0);  // per window, per latent: a count, then a write position
    parallel_for(W, num_threads, [&](size_t w, int) {
        int64_t* c = &cursor[w * h];
        for (size_t i = w * win * k, end = std::min(n, (w + 1) * win) * k; i < end; ++i)
            if (!keep || keep[i]) ++c[indices[i]];
    });
    int64_t total = 0;
    for (size_t lat = 0; lat < h; ++lat)
        for (size_t w = 0; w < W; ++w) {
            int64_t& c = cursor[w * h + lat];
            offsets[lat * W + w] = total;
            total += c;
            c = offsets[lat * W + w];
        }
    offsets[W * h] = total;
    parallel_for(W, num_threads, [&](size_t w, int) {
        int64_t* c = &cursor[w * h];
        for (size_t item = w * win, end = std::min(n, (w + 1) * win); item < end; ++item)
            for (size_t j = 0; j < k; ++j) {
                size_t e = item * k + j;
                if (keep && !keep[e]) continue;
                int64_t at = c[indices[e]]++;
                local_ids[at] = static_cast<uint16_t>(item - w * win);
                out_values[at] = values[e];
            }
    });
}

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

// acc[ids[p]] += qv * values[p] for one posting list segment.
inline void accumulate(float* acc, const uint16_t* ids, const float* vals, int64_t cnt, float qv) {
    for (int64_t p = 0; p < cnt; ++p) acc[ids[p]] += qv * vals[p];
}

// Ids are read four at a time as one 64-bit word and values converted eight at a time (F16C): measured 5% faster
// than a plain loop on 1M items.
inline void accumulate(float* acc, const uint16_t* ids, const uint16_t* vals, int64_t cnt, float qv) {
    int64_t p = 0;
#if defined(__F16C__) && defined(__AVX__)
    const __m256 q = _mm256_set1_ps(qv);
    for (; p + 8 <= cnt; p += 8) {
        uint64_t a, b;
        std::memcpy(&a, ids + p, 8);
        std::memcpy(&b, ids + p + 4, 8);
        const __m256 x = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + p))), q);
        const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
        acc[a & 0xffff] += _mm_cvtss_f32(lo);
        acc[(a >> 16) & 0xffff] += _mm_cvtss_f32(_mm_movehdup_ps(lo));
        acc[(a >> 32) & 0xffff] += _mm_cvtss_f32(_mm_movehl_ps(lo, lo));
        acc[a >> 48] += _mm_cvtss_f32(_mm_shuffle_ps(lo, lo, 3));
        acc[b & 0xffff] += _mm_cvtss_f32(hi);
        acc[(b >> 16) & 0xffff] += _mm_cvtss_f32(_mm_movehdup_ps(hi));
        acc[(b >> 32) & 0xffff] += _mm_cvtss_f32(_mm_movehl_ps(hi, hi));
        acc[b >> 48] += _mm_cvtss_f32(_mm_shuffle_ps(hi, hi, 3));
    }
#endif
    for (; p < cnt; ++p) acc[ids[p]] += qv * half_to_float(vals[p]);
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
    TopK merged(top_k);
    for (size_t q = 0; q < nq; ++q) {
        merged.reset(top_k);
        for (size_t i = q * parts * top_k; i < (q + 1) * parts * top_k; ++i)
            if (part_ids[i] >= 0) merged.push(part_scores[i], part_ids[i]);
        merged.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
    }
}

}  // namespace csae
