// The query encoder's forward pass: z = W q + b for a few queries, its top k, unit-norm values. One pass over W
// (h, d) for every block of up to 4 queries; the top k is taken as z is written, one latent block at a time.
// With an int8 copy of W (Int8Encoder), each query first reads the copy (a quarter of the bytes), then multiplies
// again in float32 only the rows that could still reach its top k: the same codes, bit for bit.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
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
// when every value is 0). With `rows` (n_rows latents, increasing), only those are candidates.
inline void top_entries(float* z, const float* b, size_t h, size_t k, bool nonneg, TopK& top,
                        std::vector<float>& keys, std::vector<int64_t>& ids, int64_t* idx, float* val,
                        const uint32_t* rows = nullptr, size_t n_rows = 0) {
    top.reset(k);
    for (size_t at = 0, end = rows ? n_rows : h; at < end; ++at) {
        const size_t j = rows ? rows[at] : at;
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

// An int8 copy of the encoder: row j of W is about scale[j] * W8[j]. Rows are padded with zeros to `width`, a
// multiple of 32. For a unit query q quantised as t * q8 (|q8| <= 127), |W[j] . q - scale[j] t (W8[j] . q8)| <=
// q_slack[j] |q| + w_norm[j] |q - t q8|: q_slack[j] bounds the rounding of row j (and of the float32 product),
// w_norm[j] is |scale[j] W8[j]|; both rounded up (index/query.py, int8_encoder).
struct Int8Encoder {
    const int8_t* W8 = nullptr;  // (h, width)
    size_t width = 0;
    const float* scale = nullptr;    // (h,)
    const float* q_slack = nullptr;  // (h,)
    const float* w_norm = nullptr;   // (h,)
};

constexpr size_t INT8_STEP = 32;

// out[j] = W8[j] . q8 (exact int32) for rows j0..j0+R-1; q8 padded to width.
template <int R>
inline void dot_block_int8(const int8_t* W8, const int8_t* q8, size_t width, size_t j0, int32_t* out) {
    size_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (; t + INT8_STEP <= width; t += INT8_STEP) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + t));
        const __m256i qa = _mm256_abs_epi8(qv);
        for (int r = 0; r < R; ++r) {
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W8 + (j0 + r) * width + t));
            // |q| times w with q's sign: pairs of products of at most 127 * 127 fit int16
            const __m256i pairs = _mm256_maddubs_epi16(qa, _mm256_sign_epi8(w, qv));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
        }
    }
    for (int r = 0; r < R; ++r) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        out[j0 + r] = _mm_cvtsi128_si32(s);
    }
#else
    for (int r = 0; r < R; ++r) out[j0 + r] = 0;
#endif
    for (int r = 0; r < R; ++r)
        for (size_t u = t; u < width; ++u) out[j0 + r] += int32_t{W8[(j0 + r) * width + u]} * int32_t{q8[u]};
}

// Scratch of one thread for the int8 pass, kept between calls (thread_local): fresh buffers each call would cost
// more in page faults than the pass itself.
struct Int8Scratch {
    std::vector<int8_t> q8;
    std::vector<int32_t> dots;
    std::vector<double> low, high;
    std::vector<uint32_t> rows;
    std::vector<float> z;
    TopK top;
    std::vector<float> keys;
    std::vector<int64_t> ids;
};

// The latents of one unit query q (d,) whose float32 key may reach its top k, increasing: every j whose upper
// bound reaches the k-th best lower bound. Keys as top_entries ranks them, bias b (may be null) included.
inline void int8_candidates(const Int8Encoder& enc, const float* q, size_t d, const float* b, size_t h, size_t k,
                            bool nonneg, Int8Scratch& s) {
    s.q8.assign(enc.width, 0);
    s.dots.resize(h);
    s.low.resize(h);
    s.high.resize(h);
    float q_max = 0.0f;
    for (size_t t = 0; t < d; ++t) q_max = std::max(q_max, std::fabs(q[t]));
    const double step = q_max > 0 ? q_max / 127.0 : 1.0;
    double q_sq = 0.0, err_sq = 0.0;
    for (size_t t = 0; t < d; ++t) {
        const double level = std::min(127.0, std::max(-127.0, std::nearbyint(q[t] / step)));
        s.q8[t] = static_cast<int8_t>(level);
        q_sq += static_cast<double>(q[t]) * q[t];
        err_sq += (q[t] - level * step) * (q[t] - level * step);
    }
    const double q_norm = std::sqrt(q_sq) * (1 + 0x1p-40), q_err = std::sqrt(err_sq) * (1 + 0x1p-40);
    size_t j = 0;
    for (; j + 4 <= h; j += 4) dot_block_int8<4>(enc.W8, s.q8.data(), enc.width, j, s.dots.data());
    for (; j < h; ++j) dot_block_int8<1>(enc.W8, s.q8.data(), enc.width, j, s.dots.data());
    for (j = 0; j < h; ++j) {
        const double bj = b ? b[j] : 0.0, zj = enc.scale[j] * step * s.dots[j] + bj;
        // the product's bound, then float32's rounding of z + b (relative 2^-24; 2^-22 spares the products' own)
        double margin = enc.q_slack[j] * q_norm + enc.w_norm[j] * q_err;
        margin = margin * (1 + 0x1p-20) + 0x1p-22 * (std::fabs(zj - bj) + std::fabs(bj) + margin) + 0x1p-126;
        const double key = nonneg ? zj : std::fabs(zj);
        s.low[j] = key - margin;
        s.high[j] = key + margin;
    }
    // the k-th best lower bound: a min-heap of the k best, which most latents fail to enter
    std::vector<double>& best = s.low;  // its first k slots; the rest is no longer needed
    std::make_heap(best.begin(), best.begin() + k, std::greater<double>());
    for (j = k; j < h; ++j)
        if (best[j] > best[0]) {
            std::pop_heap(best.begin(), best.begin() + k, std::greater<double>());
            best[k - 1] = best[j];
            std::push_heap(best.begin(), best.begin() + k, std::greater<double>());
        }
    const double threshold = best[0];
    s.rows.clear();
    for (j = 0; j < h; ++j)
        if (s.high[j] >= threshold) s.rows.push_back(static_cast<uint32_t>(j));
}

// Codes of nq unit queries Q (nq, d) under W (h, d) and b (h,) (may be null): idx, val (nq, k). Blocks of
// ENCODE_BLOCK queries run in parallel. With an Int8Encoder (int8.W8 non-null), queries run in parallel one by
// one: each reads the int8 copy and multiplies again in float32 only its candidate rows (int8_candidates), as
// the float32 pass multiplies them.
inline void encode_queries(const float* Q, size_t nq, size_t d, const float* W, const float* b, size_t h, size_t k,
                           bool nonneg, int64_t* idx, float* val, int num_threads, const Int8Encoder& int8 = {}) {
    if (int8.W8) {
        parallel_for(nq, num_threads, [&](size_t i, int) {
            thread_local Int8Scratch s;
            s.z.resize(h);
            s.keys.resize(k);
            s.ids.resize(k);
            const float* q = Q + i * d;
            int8_candidates(int8, q, d, b, h, k, nonneg, s);
            for (uint32_t j : s.rows) dot_block<1, 1>(W, q, d, h, j, s.z.data());  // as the float32 pass does
            top_entries(s.z.data(), b, h, k, nonneg, s.top, s.keys, s.ids, idx + i * k, val + i * k, s.rows.data(),
                        s.rows.size());
        });
        return;
    }
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
