// Dense-mode scoring straight from bit-packed forward codes: k (latent, value) pairs per row in a fixed number of
// bytes, scored at O(k) per row with nothing decoded ahead of time.
//
// A row of row_bytes bytes: a header (RowLayout: float16 scale s, a float16 weight w with a decoder bias or a
// residual code, the residual code's bytes), then a bitstream read LSB-first (bit t is bit t & 7 of byte
// header + t / 8). Entry j takes bits [j * w, (j + 1) * w), w = index_bits + value_bits:
// the latent (unsigned), then q_j (two's complement). score = s * sum_j q_j * p[latent_j] + w * (p[h] + residual
// lookups); the builder folds 1 / |x_hat| into s and w, so this is cos(q, x_hat). Bytes past the stream are padding.
//
// No read passes the end of a row (the last row may end a memory map): fields are read as 64-bit little-endian
// windows (w + 7 <= 55 bits always fit), and the last entries of a row read the window that ends at the row's last
// byte instead. With AVX2, eight entries at a time: w = 16 is eight uint16 lanes (one 16-byte load while it fits the
// row); w <= 25 gathers 4 bytes per lane, clamped the same way.
//
// PackedCodes<IB, VB> has ForwardCodes' contract (n, dot, prefetch), so rerank and scan_all take it unchanged.
// IB and VB are compile-time bit widths for the common layouts (shifts and masks become constants); PackedCodes<>
// reads them at run time.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "half.h"

namespace csae {

inline uint64_t load_le64(const uint8_t* p) {
    uint64_t x;
    std::memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

inline uint16_t load_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

// The bits of row from bit `bit` on (at least 57 of them, or up to the row's end), never reading past row_bytes.
inline uint64_t bits_at(const uint8_t* row, size_t row_bytes, size_t bit) {
    const size_t b = bit >> 3;
    const unsigned sh = bit & 7;
    if (b + 8 <= row_bytes) return load_le64(row + b) >> sh;
    if (row_bytes >= 8) return load_le64(row + row_bytes - 8) >> (8 * (b + 8 - row_bytes) + sh);
    uint64_t x = 0;  // rows under 8 bytes
    for (size_t i = b; i < row_bytes; ++i) x |= uint64_t{row[i]} << (8 * (i - b));
    return x >> sh;
}

// An entry's latent and value from its bits (the latent in the low ib bits).
inline uint32_t entry_index(uint64_t bits, unsigned ib) { return static_cast<uint32_t>(bits & ((uint64_t{1} << ib) - 1)); }
inline int32_t entry_value(uint64_t bits, unsigned ib, unsigned vb) {
    return static_cast<int32_t>(static_cast<uint32_t>(bits >> ib) << (32 - vb)) >> (32 - vb);  // sign-extend vb bits
}

// The header of a packed forward row: the float16 scale s / |x_hat|; then, when the row has a decoder-bias term or
// a residual code, the float16 weight w = 1 / |x_hat|; then residual_m bytes, the row's residual code (one of
// kResidualCentroids centroids per subspace, csae_engine/residual.py). x_hat includes the residual's reconstruction.
constexpr size_t kResidualCentroids = 256;

struct RowLayout {
    size_t h = 0;            // p[h]: the bias column (q . b)
    bool has_bias = false;
    size_t residual_m = 0;   // residual bytes; their tables start at p[h + has_bias], kResidualCentroids per byte

    bool weighted() const { return has_bias || residual_m > 0; }
    size_t bytes() const { return 2 + (weighted() ? 2 : 0) + residual_m; }
    size_t tables_at() const { return h + (has_bias ? 1 : 0); }
    size_t index_bound() const { return tables_at() + residual_m * kResidualCentroids; }  // columns p needs
};

// sum_j T[j * 256 + codes[j]]: a residual's dot product with q from the query's tables T.
inline float residual_dot(const uint8_t* codes, size_t m, const float* T) {
    size_t j = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__F16C__)
    if (m >= 8) {
        const __m256i step = _mm256_set1_epi32(8 * static_cast<int>(kResidualCentroids));
        __m256i base = _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792);
        __m256 acc = _mm256_setzero_ps();
        for (; j + 8 <= m; j += 8, base = _mm256_add_epi32(base, step)) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + j)));
            acc = _mm256_add_ps(acc, _mm256_i32gather_ps(T, _mm256_add_epi32(base, c), 4));
        }
        __m128 half4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        half4 = _mm_add_ps(half4, _mm_movehl_ps(half4, half4));
        s = _mm_cvtss_f32(_mm_add_ss(half4, _mm_movehdup_ps(half4)));
    }
#endif
    for (; j < m; ++j) s += T[j * kResidualCentroids + codes[j]];
    return s;
}

// A compact row's score from its header: s / |x_hat| times sum_j q_j p[latent_j] (``entries``), plus, with a
// weight, w times the bias term p[h] and the residual's table lookups. Shared by every row coding.
inline float row_score(const uint8_t* r, float entries, const RowLayout& layout, const float* p) {
    float score = half_to_float(load_le16(r)) * entries;
    if (layout.weighted()) {
        float extra = layout.has_bias ? p[layout.h] : 0.0f;
        if (layout.residual_m) extra += residual_dot(r + 4, layout.residual_m, p + layout.tables_at());
        score += half_to_float(load_le16(r + 2)) * extra;
    }
    return score;
}

inline void prefetch_row(const uint8_t* r, size_t row_bytes) {
    const char* c = reinterpret_cast<const char*>(r);
    for (size_t at = 0; at < row_bytes; at += 64) __builtin_prefetch(c + at);
    __builtin_prefetch(c + row_bytes - 1);
}

template <unsigned IB = 0, unsigned VB = 0>
struct PackedCodes {
    static_assert((IB == 0) == (VB == 0), "both widths fixed, or both read at run time");
    static constexpr bool fixed = IB != 0;

    size_t n = 0, k = 0, row_bytes = 0;
    const uint8_t* rows = nullptr;  // (n, row_bytes)
    unsigned index_bits = IB, value_bits = VB;
    RowLayout layout;
    size_t header = 2;
    size_t fast = 0;  // leading entries whose 8-byte window lies inside the row: read without a bounds check

    PackedCodes(const uint8_t* rows_, size_t n_, size_t row_bytes_, size_t k_, unsigned ib, unsigned vb,
                const RowLayout& layout_)
        : n(n_), k(k_), row_bytes(row_bytes_), rows(rows_), index_bits(ib), value_bits(vb), layout(layout_),
          header(layout_.bytes()) {
        const size_t w = ib + vb;
        while (fast < k && header + (fast * w >> 3) + 8 <= row_bytes) ++fast;
    }

    unsigned ib() const { return fixed ? IB : index_bits; }
    unsigned vb() const { return fixed ? VB : value_bits; }
    const uint8_t* row(int64_t item) const { return rows + static_cast<size_t>(item) * row_bytes; }

    // Entry j of a row: its bits from the first (the latent in the low ib bits), bounds-checked.
    uint64_t entry_bits(const uint8_t* r, size_t j) const { return bits_at(r, row_bytes, header * 8 + j * (ib() + vb())); }
    uint32_t index(int64_t item, size_t j) const { return entry_index(entry_bits(row(item), j), ib()); }
    float scale(int64_t item) const { return half_to_float(load_le16(row(item))); }
    float weight(int64_t item) const { return layout.weighted() ? half_to_float(load_le16(row(item) + 2)) : 0.0f; }

    float dot(const float* p, int64_t item) const {
        const uint8_t* r = row(item);
        return row_score(r, entries_dot(r, p), layout, p);
    }

    void prefetch(int64_t item) const { prefetch_row(row(item), row_bytes); }

  private:
    // sum_j q_j * p[latent_j] over entries [j, k), each read with a bounds check.
    float checked_tail(const uint8_t* r, size_t j, const float* p) const {
        float s = 0.0f;
        for (; j < k; ++j) {
            const uint64_t x = entry_bits(r, j);
            s += static_cast<float>(entry_value(x, ib(), vb())) * p[entry_index(x, ib())];
        }
        return s;
    }

    // sum_j q_j * p[latent_j] over the row's entries. With AVX2 and w <= 25, eight entries per step: each lane
    // gathers the 4 bytes holding its entry (for w = 16 the lanes are plain uint16, one load while it fits the row).
    // A 4-byte read past the row's end reads its last 4 bytes and shifts further; lanes past k gather nothing from p.
    // Otherwise four entries per step from 64-bit windows while they fit the row, then the checked rest.
    float entries_dot(const uint8_t* r, const float* p) const {
        const uint8_t* s = r + header;
        const unsigned ib_ = ib(), vb_ = vb(), w = ib_ + vb_;
        size_t j = 0;
#if defined(__AVX2__) && defined(__F16C__)
        if (w <= 25 && row_bytes >= header + 4) {
            const __m256i imask = _mm256_set1_epi32(static_cast<int>((uint64_t{1} << ib_) - 1));
            const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            __m256 acc = _mm256_setzero_ps();
            if (w == 16)  // latent = the low ib bits of a uint16 lane, q = the lane shifted right (sign-extending)
                for (; j + 8 <= k && header + 2 * j + 16 <= row_bytes; j += 8) {
                    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * j));
                    const __m256i idx = _mm256_and_si256(_mm256_cvtepu16_epi32(x), imask);
                    const __m128i q16 = _mm_sra_epi16(x, _mm_cvtsi32_si128(static_cast<int>(ib_)));
                    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(q16));
                    acc = _mm256_fmadd_ps(q, _mm256_i32gather_ps(p, idx, 4), acc);
                }
            const __m256i lane_bits = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(static_cast<int>(w)));
            const size_t last_read = std::min(row_bytes - header - 4, size_t{1} << 30);  // streams are < 2^31 bits
            const __m256i last = _mm256_set1_epi32(static_cast<int>(last_read));
            const __m128i up = _mm_cvtsi32_si128(static_cast<int>(32 - w));
            const __m128i down = _mm_cvtsi32_si128(static_cast<int>(32 - vb_));
            const int* base = reinterpret_cast<const int*>(s);
            for (; j < k; j += 8) {
                const __m256i t = _mm256_add_epi32(lane_bits, _mm256_set1_epi32(static_cast<int>(j * w)));
                const __m256i at = _mm256_srli_epi32(t, 3), from = _mm256_min_epu32(at, last);
                const __m256i shift = _mm256_add_epi32(_mm256_and_si256(t, _mm256_set1_epi32(7)),
                                                       _mm256_slli_epi32(_mm256_sub_epi32(at, from), 3));
                const __m256i x = _mm256_srlv_epi32(_mm256_i32gather_epi32(base, from, 1), shift);
                const __m256i idx = _mm256_and_si256(x, imask);
                const __m256 q = _mm256_cvtepi32_ps(_mm256_sra_epi32(_mm256_sll_epi32(x, up), down));
                const __m256 live = _mm256_castsi256_ps(
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k - j)), lanes));
                acc = _mm256_fmadd_ps(q, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, live, 4), acc);
            }
            __m128 half4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            half4 = _mm_add_ps(half4, _mm_movehl_ps(half4, half4));
            return _mm_cvtss_f32(_mm_add_ss(half4, _mm_movehdup_ps(half4)));
        }
#endif
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four chains: the adds do not wait on each other
        for (; j + 4 <= fast; j += 4)
            for (size_t u = 0; u < 4; ++u) {
                const size_t t = (j + u) * w;
                const uint64_t x = load_le64(s + (t >> 3)) >> (t & 7);
                acc[u] += static_cast<float>(entry_value(x, ib_, vb_)) * p[entry_index(x, ib_)];
            }
        return (acc[0] + acc[1]) + (acc[2] + acc[3]) + checked_tail(r, j, p);
    }
};

}  // namespace csae
