// Dense-mode scoring straight from Elias-Fano coded forward rows (compact codes with index_coding "ef"): a row's
// k latents as a sorted set in about log2(h / k) + 2 bits each, scored at O(k + h / 2^L / 56) per row.
//
// A row of row_bytes bytes: a header (RowLayout, packed.h), then a bitstream read LSB-first
// (bit t is bit t & 7 of byte header + t / 8). With x_0 < x_1 < ... < x_{k-1} the row's latents and
// L = ef_low_bits(h, k) = max(0, floor(log2(h / k))):
//   k low parts, L bits each: x_i & (2^L - 1);
//   the high bitmap, k + ((h - 1) >> L) + 1 bits: bit (x_i >> L) + i set for each i, nothing else;
//   k values q_i, value_bits each (two's complement), in the same order.
// score = s * sum_i q_i * p[x_i] + the header's terms, as PackedCodes. Bytes past the stream are padding.
//
// Decoding walks the bitmap a 64-bit load at a time (56 bits of it used, so any bit offset fits one load): each
// set bit found by count-trailing-zeros at bitmap position t is the next entry i, with x_i >> L = t - i. dot does
// it in blocks of 64 entries: first the block's high parts into a small buffer, then its low parts and values,
// which are fixed-width fields (with AVX2, eight entries a step: gathered 4-byte windows, as PackedCodes; else
// scalar). Every read is clamped to the row as bits_at (packed.h) does, so none passes the row's end (the last
// row may end a memory map). The walk stops at the bitmap's end, so even a row with too few set bits reads nothing
// outside itself; SegmentIndex.packed checks every row once (check_row) before any query.
//
// EFCodes<VB> has ForwardCodes' contract (n, dot, prefetch), so rerank and scan_all take it unchanged; VB fixes the
// value width at compile time for the common layouts, EFCodes<> reads it at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "half.h"
#include "packed.h"

namespace csae {

// max(0, floor(log2(h / k))): the low bits per latent of k sorted latents below h (k >= 1).
inline unsigned ef_low_bits(size_t h, size_t k) {
    unsigned low = 0;
    for (size_t r = h / k; r > 1; r >>= 1) ++low;
    return low;
}

// The positions of the set bits of each byte value, lowest first (slots past the popcount are 0).
struct BitPositions {
    uint8_t at[256][8];
};

constexpr BitPositions make_bit_positions() {
    BitPositions t{};
    for (unsigned byte = 0; byte < 256; ++byte) {
        unsigned n = 0;
        for (unsigned b = 0; b < 8; ++b)
            if (byte >> b & 1) t.at[byte][n++] = static_cast<uint8_t>(b);
    }
    return t;
}

inline constexpr BitPositions kBitPositions = make_bit_positions();

inline size_t ef_bitmap_bits(size_t h, size_t k, unsigned low) { return k + ((h - 1) >> low) + 1; }

// Bits of a row's stream: low parts, bitmap, values.
inline size_t ef_stream_bits(size_t h, size_t k, unsigned vb) {
    const unsigned low = ef_low_bits(h, k);
    return k * low + ef_bitmap_bits(h, k, low) + k * vb;
}

template <unsigned VB = 0>
struct EFCodes {
    static constexpr bool fixed = VB != 0;
    static constexpr unsigned kChunk = 56;  // bitmap bits used per 64-bit load: bits_at gives at least 57
    static constexpr size_t kBlock = 64;    // entries whose positions the scalar path decodes before their terms

    size_t n = 0, k = 0, row_bytes = 0, h = 0;
    const uint8_t* rows = nullptr;  // (n, row_bytes)
    unsigned low_bits = 0, value_bits = VB;
    RowLayout layout;
    size_t header = 2;
    size_t low_at = 0, map_at = 0, map_bits = 0, value_at = 0;  // bit offsets in the row, header included

    EFCodes(const uint8_t* rows_, size_t n_, size_t row_bytes_, size_t k_, unsigned vb, const RowLayout& layout_)
        : n(n_), k(k_), row_bytes(row_bytes_), h(layout_.h), rows(rows_), low_bits(ef_low_bits(layout_.h, k_)),
          value_bits(vb), layout(layout_), header(layout_.bytes()) {
        low_at = header * 8;
        map_at = low_at + k * low_bits;
        map_bits = ef_bitmap_bits(h, k, low_bits);
        value_at = map_at + map_bits;
    }

    unsigned vb() const { return fixed ? VB : value_bits; }
    const uint8_t* row(int64_t item) const { return rows + static_cast<size_t>(item) * row_bytes; }
    float scale(int64_t item) const { return half_to_float(load_le16(row(item))); }
    float weight(int64_t item) const { return layout.weighted() ? half_to_float(load_le16(row(item) + 2)) : 0.0f; }

    // fn(i, x_i, q_i) for the row's entries in increasing latent order; returns how many it found (k for a valid
    // row; fewer when the bitmap holds fewer set bits, more are never reported).
    template <class Fn>
    size_t for_each(const uint8_t* r, Fn&& fn) const {
        const unsigned low = low_bits, v = vb();
        const uint64_t low_mask = (uint64_t{1} << low) - 1;
        size_t i = 0;
        for (size_t pos = 0; pos < map_bits && i < k; pos += kChunk) {
            uint64_t word = bits_at(r, row_bytes, map_at + pos);
            const size_t left = map_bits - pos;
            if (left < kChunk) word &= (uint64_t{1} << left) - 1;
            else word &= (uint64_t{1} << kChunk) - 1;
            for (; word != 0 && i < k; word &= word - 1, ++i) {
                const uint64_t high = pos + static_cast<unsigned>(__builtin_ctzll(word)) - i;
                const uint64_t lo = bits_at(r, row_bytes, low_at + i * low) & low_mask;
                const int32_t q = entry_value(bits_at(r, row_bytes, value_at + i * v), 0, v);
                fn(i, (high << low) | lo, q);
            }
        }
        return i;
    }

    float dot(const float* p, int64_t item) const {
        const uint8_t* r = row(item);
        return row_score(r, entries_dot(r, p), layout, p);
    }

    void prefetch(int64_t item) const { prefetch_row(row(item), row_bytes); }

  private:
    // The bitmap's 56 bits from position pos (fewer at its end), never reading past the row.
    uint64_t chunk(const uint8_t* r, size_t pos) const {
        const size_t left = map_bits - pos;
        return bits_at(r, row_bytes, map_at + pos) & ((uint64_t{1} << (left < kChunk ? left : kChunk)) - 1);
    }

    // sum_i q_i * p[x_i] over the row. With AVX2 (and L <= 25): every set bit's bitmap position into a per-thread
    // buffer, a byte of the bitmap at a time (a table lookup, one 8-lane store, advance by its popcount), then the
    // entries eight at a time. Otherwise a block of positions by count-trailing-zeros, then the block's terms.
    float entries_dot(const uint8_t* r, const float* p) const {
#if defined(__AVX2__) && defined(__F16C__)
        if (low_bits <= 25 && row_bytes >= 4) {
            thread_local std::vector<uint32_t> buffer;
            if (buffer.size() < map_bits + 64) buffer.resize(map_bits + 64);  // every bit set, and a store's slack
            uint32_t* out = buffer.data();
            size_t m = 0;
            for (size_t pos = 0; pos < map_bits && m < k; pos += kChunk) {
                const uint64_t word = chunk(r, pos);
                for (unsigned b = 0; b < kChunk / 8; ++b) {
                    const unsigned byte = static_cast<unsigned>(word >> (8 * b)) & 0xff;
                    const __m256i at = _mm256_cvtepu8_epi32(
                        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kBitPositions.at[byte])));
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m),
                                        _mm256_add_epi32(at, _mm256_set1_epi32(static_cast<int>(pos + 8 * b))));
                    m += static_cast<size_t>(__builtin_popcount(byte));
                }
            }
            return sum8(r, p, out, m < k ? m : k);
        }
#endif
        uint32_t at[kBlock];
        float total = 0.0f;
        size_t i = 0, pos = 0;
        uint64_t word = chunk(r, 0);
        while (i < k) {
            const size_t want = k - i < kBlock ? k - i : kBlock;
            size_t m = 0;
            while (m < want) {
                if (word == 0) {
                    pos += kChunk;
                    if (pos >= map_bits) break;
                    word = chunk(r, pos);
                    continue;
                }
                at[m++] = static_cast<uint32_t>(pos + static_cast<unsigned>(__builtin_ctzll(word)));
                word &= word - 1;
            }
            total += block_sum(r, p, at, i, m);
            i += m;
            if (m < want) break;  // the bitmap ended early: a row check_row refuses
        }
        return total;
    }

    // sum over entries i .. i + m - 1 whose bitmap positions are at[0 .. m), one at a time.
    float block_sum(const uint8_t* r, const float* p, const uint32_t* at, size_t i, size_t m) const {
        const unsigned low = low_bits, v = vb();
        const uint64_t low_mask = (uint64_t{1} << low) - 1;
        auto term = [&](size_t u) {
            const size_t j = i + u;
            const uint64_t lo = bits_at(r, row_bytes, low_at + j * low) & low_mask;
            const int32_t q = entry_value(bits_at(r, row_bytes, value_at + j * v), 0, v);
            return static_cast<float>(q) * p[((uint64_t{at[u]} - j) << low) | lo];
        };
        float acc0 = 0.0f, acc1 = 0.0f;  // two chains: the adds do not wait on each other
        size_t u = 0;
        for (; u + 2 <= m; u += 2) {
            acc0 += term(u);
            acc1 += term(u + 1);
        }
        if (u < m) acc0 += term(u);
        return acc0 + acc1;
    }

#if defined(__AVX2__) && defined(__F16C__)
    // sum over entries 0 .. m - 1 whose bitmap positions are at[0 .. m) (at has 8 readable slots past m), eight
    // at a time: x = (position - entry) << L | low part, q sign-extended, p gathered for the lanes below m.
    float sum8(const uint8_t* r, const float* p, const uint32_t* at, size_t m) const {
        const unsigned low = low_bits, v = vb();
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i lmask = _mm256_set1_epi32(static_cast<int>((uint64_t{1} << low) - 1));
        const __m128i lshift = _mm_cvtsi32_si128(static_cast<int>(low));
        const __m128i vshift = _mm_cvtsi32_si128(static_cast<int>(32 - v));
        __m256 acc = _mm256_setzero_ps();
        for (size_t u = 0; u < m; u += 8) {
            const __m256i entry = _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int>(u)));
            const __m256i pos = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + u));
            __m256i x = _mm256_sll_epi32(_mm256_sub_epi32(pos, entry), lshift);
            if (low != 0) x = _mm256_or_si256(x, _mm256_and_si256(fields8(r, low_at, low, u), lmask));
            const __m256i raw = fields8(r, value_at, v, u);
            const __m256 q = _mm256_cvtepi32_ps(_mm256_sra_epi32(_mm256_sll_epi32(raw, vshift), vshift));
            const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m - u)), lanes));
            acc = _mm256_fmadd_ps(q, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, x, live, 4), acc);
        }
        __m128 half4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        half4 = _mm_add_ps(half4, _mm_movehl_ps(half4, half4));
        return _mm_cvtss_f32(_mm_add_ss(half4, _mm_movehdup_ps(half4)));
    }

    // Eight fields of w <= 25 bits at row bits first + (j + lane) * w: each lane gathers the 4 bytes holding its
    // field; a window past the row's end reads the row's last 4 bytes and shifts further (to 0 past the end).
    __m256i fields8(const uint8_t* r, size_t first, unsigned w, size_t j) const {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i t = _mm256_add_epi32(_mm256_mullo_epi32(lanes, _mm256_set1_epi32(static_cast<int>(w))),
                                           _mm256_set1_epi32(static_cast<int>(first + j * w)));
        const __m256i at = _mm256_srli_epi32(t, 3);
        const size_t last = row_bytes - 4 < (size_t{1} << 30) ? row_bytes - 4 : size_t{1} << 30;  // fields: < 2^28 B
        const __m256i from = _mm256_min_epu32(at, _mm256_set1_epi32(static_cast<int>(last)));
        const __m256i shift = _mm256_add_epi32(_mm256_and_si256(t, _mm256_set1_epi32(7)),
                                               _mm256_slli_epi32(_mm256_sub_epi32(at, from), 3));
        return _mm256_srlv_epi32(_mm256_i32gather_epi32(reinterpret_cast<const int*>(r), from, 1), shift);
    }
#endif

  public:
    // Empty when the row's bitmap holds exactly k set bits and its latents are strictly increasing and below h;
    // otherwise the problem, in words (the caller names the row).
    std::string check_row(int64_t item) const {
        const uint8_t* r = row(item);
        size_t set = 0;
        for (size_t pos = 0; pos < map_bits; pos += kChunk) {
            uint64_t word = bits_at(r, row_bytes, map_at + pos);
            const size_t left = map_bits - pos;
            word &= (uint64_t{1} << (left < kChunk ? left : kChunk)) - 1;
            set += static_cast<size_t>(__builtin_popcountll(word));
        }
        if (set != k)
            return "the high bitmap holds " + std::to_string(set) + " set bits, expected k = " + std::to_string(k);
        std::string problem;
        uint64_t prev = 0;
        for_each(r, [&](size_t i, uint64_t x, int32_t) {
            if (!problem.empty()) return;
            if (x >= h)
                problem = "entry " + std::to_string(i) + ": latent " + std::to_string(x) + " out of range for h=" +
                          std::to_string(h);
            else if (i > 0 && x <= prev)
                problem = "entry " + std::to_string(i) + ": latent " + std::to_string(x) + " does not exceed entry " +
                          std::to_string(i - 1) + "'s " + std::to_string(prev) + " (ef latents strictly increase)";
            prev = x;
        });
        return problem;
    }
};

}  // namespace csae
