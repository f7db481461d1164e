// The query encoder's forward pass: z = W q + b for a few queries, its top k, unit-norm values. One pass over W
// (h, d) for every block of up to 4 queries; the top k is taken as z is written, one latent block at a time.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "parallel.h"
#include "topk.h"

namespace csae {

constexpr size_t ENCODE_BLOCK = 4;  // queries sharing one pass over W: 4 rows of q stay in L1 at any d we meet

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// z[b * h + j] = W[j] . q[b] for rows j0..j0+R-1 and B queries; eight independent sums keep the FMA units busy.
template <int R, int B>
inline void dot_block(const float* W, const float* q, size_t d, size_t h, size_t j0, float* z) {
    size_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc[R][B];
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < B; ++b) acc[r][b] = _mm256_setzero_ps();
    for (; t + 8 <= d; t += 8) {
        __m256 qv[B];
        for (int b = 0; b < B; ++b) qv[b] = _mm256_loadu_ps(q + b * d + t);
        for (int r = 0; r < R; ++r) {
            const __m256 w = _mm256_loadu_ps(W + (j0 + r) * d + t);
            for (int b = 0; b < B; ++b) acc[r][b] = _mm256_fmadd_ps(w, qv[b], acc[r][b]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < B; ++b) z[b * h + j0 + r] = hsum(acc[r][b]);
#else
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < B; ++b) z[b * h + j0 + r] = 0.0f;
#endif
    for (int r = 0; r < R; ++r)  // the tail (all of d without AVX2)
        for (int b = 0; b < B; ++b) {
            float s = 0.0f;
            for (size_t u = t; u < d; ++u) s += W[(j0 + r) * d + u] * q[b * d + u];
            z[b * h + j0 + r] += s;
        }
}

// z (B, h) = q (B, d) W^T for B <= ENCODE_BLOCK queries.
template <int B>
void dense_codes(const float* W, const float* q, size_t d, size_t h, float* z) {
    constexpr int R = B == 1 ? 8 : B == 2 ? 4 : 2;
    size_t j = 0;
    for (; j + R <= h; j += R) dot_block<R, B>(W, q, d, h, j, z);
    for (; j < h; ++j) dot_block<1, B>(W, q, d, h, j, z);
}

// z (nq, h) = Q (nq, d) W^T for any nq: blocks of ENCODE_BLOCK queries in parallel (dense mode's projections).
inline void project_queries(const float* Q, size_t nq, size_t d, const float* W, size_t h, float* z, int num_threads) {
    const size_t blocks = (nq + ENCODE_BLOCK - 1) / ENCODE_BLOCK;
    parallel_for(blocks, num_threads, [&](size_t blk, int) {
        const size_t first = blk * ENCODE_BLOCK, B = std::min(ENCODE_BLOCK, nq - first);
        const float* q = Q + first * d;
        float* out = z + first * h;
        switch (B) {
            case 1: dense_codes<1>(W, q, d, h, out); break;
            case 2: dense_codes<2>(W, q, d, h, out); break;
            case 3: dense_codes<3>(W, q, d, h, out); break;
            default: dense_codes<4>(W, q, d, h, out); break;
        }
    });
}

// The k strongest entries of z (h,) plus bias b (may be null): signed, the k largest |z| with their signs; nonneg,
// the k largest z with ReLU. Strongest first, ties to the smaller latent; values scaled to unit norm (all zero
// when every value is 0).
inline void top_entries(float* z, const float* b, size_t h, size_t k, bool nonneg, TopK& top,
                        std::vector<float>& keys, std::vector<int64_t>& ids, int64_t* idx, float* val) {
    top.reset(k);
    for (size_t j = 0; j < h; ++j) {
        if (b) z[j] += b[j];
        const float key = nonneg ? z[j] : std::fabs(z[j]);
        if (key >= top.threshold()) top.push(key, static_cast<int64_t>(j));
    }
    top.write_sorted(keys.data(), ids.data());
    double norm = 0.0;
    for (size_t i = 0; i < k; ++i) {
        idx[i] = ids[i];
        val[i] = nonneg ? std::max(z[ids[i]], 0.0f) : z[ids[i]];
        norm += static_cast<double>(val[i]) * val[i];
    }
    if (norm > 0) {
        const float inv = static_cast<float>(1.0 / std::sqrt(norm));
        for (size_t i = 0; i < k; ++i) val[i] *= inv;
    }
}

// Codes of nq unit queries Q (nq, d) under W (h, d) and b (h,) (may be null): idx, val (nq, k). Blocks of
// ENCODE_BLOCK queries run in parallel.
inline void encode_queries(const float* Q, size_t nq, size_t d, const float* W, const float* b, size_t h, size_t k,
                           bool nonneg, int64_t* idx, float* val, int num_threads) {
    const size_t blocks = (nq + ENCODE_BLOCK - 1) / ENCODE_BLOCK;
    const int threads = static_cast<int>(std::min<size_t>(resolve_threads(num_threads), blocks));
    std::vector<std::vector<float>> z(threads, std::vector<float>(ENCODE_BLOCK * h));
    std::vector<TopK> tops(threads);
    std::vector<std::vector<float>> keys(threads, std::vector<float>(k));
    std::vector<std::vector<int64_t>> ids(threads, std::vector<int64_t>(k));
    parallel_for(blocks, threads, [&](size_t blk, int tid) {
        const size_t first = blk * ENCODE_BLOCK, B = std::min(ENCODE_BLOCK, nq - first);
        const float* q = Q + first * d;
        float* zt = z[tid].data();
        switch (B) {
            case 1: dense_codes<1>(W, q, d, h, zt); break;
            case 2: dense_codes<2>(W, q, d, h, zt); break;
            case 3: dense_codes<3>(W, q, d, h, zt); break;
            default: dense_codes<4>(W, q, d, h, zt); break;
        }
        for (size_t i = 0; i < B; ++i)
            top_entries(zt + i * h, b, h, k, nonneg, tops[tid], keys[tid], ids[tid], idx + (first + i) * k,
                        val + (first + i) * k);
    });
}

}  // namespace csae
