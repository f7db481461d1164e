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

inline float value_at(const float* val, size_t j) { return val[j]; }
inline float value_at(const uint16_t* val, size_t j) { return half_to_float(val[j]); }  // float16 bits

#if defined(__AVX2__) && defined(__F16C__)
// Eight indices widened to int32 lanes, and eight values as float32.
inline __m256i load_index8(const uint8_t* idx) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx)));
}
inline __m256i load_index8(const uint16_t* idx) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
}
inline __m256i load_index8(const uint32_t* idx) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)); }
inline __m256 load_value8(const float* val) { return _mm256_loadu_ps(val); }
inline __m256 load_value8(const uint16_t* val) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(val)));
}
#endif

// sum_j val[j] * p[idx[j]]; eight terms at a time with an AVX2 gather where available.
template <class Index, class Value>
inline float sparse_dot(const Index* idx, const Value* val, size_t k, const float* p) {
    size_t j = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__F16C__)
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= k; j += 8)
        acc = _mm256_fmadd_ps(load_value8(val + j), _mm256_i32gather_ps(p, load_index8(idx + j), 4), acc);
    __m128 half4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half4 = _mm_add_ps(half4, _mm_movehl_ps(half4, half4));
    s = _mm_cvtss_f32(_mm_add_ss(half4, _mm_movehdup_ps(half4)));
#endif
    for (; j < k; ++j) s += value_at(val, j) * p[idx[j]];
    return s;
}

template <class Index, class Value>
struct ForwardCodes {
    size_t n = 0, k = 0;
    const Index* indices = nullptr;  // (n, k)
    const Value* values = nullptr;   // (n, k), divided by |x_hat|

    float dot(const float* p, int64_t item) const { return sparse_dot(indices + item * k, values + item * k, k, p); }

    // Asks for an item's codes ahead of use: candidates are scattered over the whole index, each a cache miss.
    void prefetch(int64_t item) const {
        const char* ib = reinterpret_cast<const char*>(indices + item * k);
        const char* vb = reinterpret_cast<const char*>(values + item * k);
        __builtin_prefetch(ib);
        __builtin_prefetch(ib + k * sizeof(Index) - 1);
        __builtin_prefetch(vb);
        __builtin_prefetch(vb + k * sizeof(Value) - 1);
    }
};

// Candidates scored this many ahead of their prefetch.
constexpr size_t kPrefetchDistance = 24;

// candidates (nq, c): item ids, -1 for none. Writes (nq, top_k) best first.
// Codes: ForwardCodes, or PackedCodes (packed.h): n, dot(p, item) and prefetch(item).
template <class Codes>
void rerank(const Codes& fc, const float* P, size_t h, size_t nq, const int64_t* candidates,
            size_t c, size_t top_k, int64_t* out_ids, float* out_scores, int num_threads) {
    for (size_t i = 0; i < nq * c; ++i)
        if (candidates[i] >= static_cast<int64_t>(fc.n))
            throw std::invalid_argument("candidate " + std::to_string(candidates[i]) + " out of range for n=" + std::to_string(fc.n));
    parallel_for(nq, num_threads, [&](size_t q, int) {
        thread_local TopK top;
        top.reset(top_k);
        const float* p = P + q * h;
        const int64_t* cand = candidates + q * c;
        for (size_t i = 0; i < c; ++i) {  // any order: TopK breaks ties by id
            if (i + kPrefetchDistance < c && cand[i + kPrefetchDistance] >= 0) fc.prefetch(cand[i + kPrefetchDistance]);
            if (cand[i] >= 0) top.push(fc.dot(p, cand[i]), cand[i]);
        }
        top.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
    });
}

// Every item against every query: the accuracy ceiling of the codes, O(n k) per query.
// Items are cut into blocks; each block is scored for all queries while its codes are in cache.
// allowed: null, or n bytes, 0 = skip the item.
template <class Codes>
void scan_all(const Codes& fc, const float* P, size_t h, size_t nq, size_t top_k,
              int64_t* out_ids, float* out_scores, int num_threads, const uint8_t* allowed = nullptr) {
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
                    if (!allowed || allowed[item]) top.push(fc.dot(p, static_cast<int64_t>(item)), static_cast<int64_t>(item));
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
