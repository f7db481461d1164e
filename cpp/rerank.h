// Dense-mode scoring in the reconstructed space without reconstructing anything.
//
// With p = W_dec q (one h-vector per query) and forward codes whose values are already divided by |x_hat|,
// cos(q, x_hat) = sum_j value_j * p[index_j]: O(k) per candidate.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <algorithm>
#include <string>
#include <vector>

#include "half.h"
#include "parallel.h"
#include "topk.h"

namespace csae {

// sum_j val[j] * p[idx[j]]
template <class Index>
inline float sparse_dot(const Index* idx, const float* val, size_t k, const float* p) {
    float s = 0.0f;
    for (size_t j = 0; j < k; ++j) s += val[j] * p[idx[j]];
    return s;
}

template <class Index>
inline float sparse_dot(const Index* idx, const uint16_t* val, size_t k, const float* p) {
    size_t j = 0;
    float s = 0.0f;
#if defined(__F16C__) && defined(__AVX__)
    alignas(32) float buf[8];
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= k; j += 8) {
        for (int t = 0; t < 8; ++t) buf[t] = p[idx[j + t]];
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(val + j)));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(v, _mm256_load_ps(buf)));
    }
    _mm256_store_ps(buf, acc);
    for (int t = 0; t < 8; ++t) s += buf[t];
#endif
    for (; j < k; ++j) s += half_to_float(val[j]) * p[idx[j]];
    return s;
}

template <class Index, class Value>
struct ForwardCodes {
    size_t n = 0, k = 0;
    const Index* indices = nullptr;  // (n, k)
    const Value* values = nullptr;   // (n, k), divided by |x_hat|

    float dot(const float* p, int64_t item) const { return sparse_dot(indices + item * k, values + item * k, k, p); }
};

// candidates (nq, c): item ids, -1 for none. Writes (nq, top_k) best first.
template <class Index, class Value>
void rerank(const ForwardCodes<Index, Value>& fc, const float* P, size_t h, size_t nq, const int64_t* candidates,
            size_t c, size_t top_k, int64_t* out_ids, float* out_scores, int num_threads) {
    for (size_t i = 0; i < nq * c; ++i)
        if (candidates[i] >= static_cast<int64_t>(fc.n))
            throw std::invalid_argument("candidate " + std::to_string(candidates[i]) + " out of range for n=" + std::to_string(fc.n));
    parallel_for(nq, num_threads, [&](size_t q, int) {
        thread_local TopK top;
        thread_local std::vector<int64_t> order;
        top.reset(top_k);
        order.assign(candidates + q * c, candidates + (q + 1) * c);
        std::sort(order.begin(), order.end());  // ascending ids: forward codes are read in address order
        const float* p = P + q * h;
        for (int64_t item : order)
            if (item >= 0) top.push(fc.dot(p, item), item);
        top.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
    });
}

// Every item against every query: the accuracy ceiling of the codes, O(n k) per query.
// Items are cut into blocks; each block is scored for all queries while its codes are in cache.
template <class Index, class Value>
void scan_all(const ForwardCodes<Index, Value>& fc, const float* P, size_t h, size_t nq, size_t top_k,
              int64_t* out_ids, float* out_scores, int num_threads) {
    const int threads = resolve_threads(num_threads);
    const size_t parts = std::max<size_t>(1, std::min<size_t>(threads * 4, fc.n / 4096 + 1));
    std::vector<TopK> tops(nq * parts, TopK(top_k));
    parallel_for(parts, threads, [&](size_t part, int) {
        const size_t begin = fc.n * part / parts, end = fc.n * (part + 1) / parts;
        constexpr size_t block = 2048;
        for (size_t b = begin; b < end; b += block)
            for (size_t q = 0; q < nq; ++q) {
                TopK& top = tops[q * parts + part];
                const float* p = P + q * h;
                for (size_t item = b, stop = std::min(end, b + block); item < stop; ++item)
                    top.push(fc.dot(p, static_cast<int64_t>(item)), static_cast<int64_t>(item));
            }
    });
    parallel_for(nq, threads, [&](size_t q, int) {
        TopK merged(top_k);
        std::vector<float> ps(top_k);
        std::vector<int64_t> pi(top_k);
        for (size_t part = 0; part < parts; ++part) {
            tops[q * parts + part].write_sorted(ps.data(), pi.data());
            for (size_t i = 0; i < top_k; ++i)
                if (pi[i] >= 0) merged.push(ps[i], pi[i]);
        }
        merged.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
    });
}

}  // namespace csae
