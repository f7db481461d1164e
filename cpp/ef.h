// Dense-mode scoring straight from Elias-Fano coded forward rows (compact codes with index_coding "ef"): a row's
// k latents as a sorted set in about log2(h / k) + 2 bits each, scored at O(k + h / 2^L / 56) per row.
//
// A row of row_bytes bytes: float16 scale s, then (has_bias) float16 bias weight b, then a bitstream read LSB-first
// (bit t is bit t & 7 of byte header + t / 8). With x_0 < x_1 < ... < x_{k-1} the row's latents and
// L = ef_low_bits(h, k) = max(0, floor(log2(h / k))):
//   k low parts, L bits each: x_i & (2^L - 1);
//   the high bitmap, k + ((h - 1) >> L) + 1 bits: bit (x_i >> L) + i set for each i, nothing else;
//   k values q_i, value_bits each (two's complement), in the same order.
// score = s * sum_i q_i * p[x_i] + b * p[h], as PackedCodes. Bytes past the stream are padding.
//
// Decoding walks the bitmap a 64-bit load at a time (56 bits of it used, so any bit offset fits one load): each
// set bit found by count-trailing-zeros at bitmap position t is the next entry i, with x_i >> L = t - i; its low
// part and value are read from their fixed-width fields. Every read is bits_at's (packed.h), so none passes the
// row's end (the last row may end a memory map). The walk stops at the bitmap's end, so even a row with too few set
// bits reads nothing outside itself; SegmentIndex.packed checks every row once (check_row) before any query.
//
// EFCodes<VB> has ForwardCodes' contract (n, dot, prefetch), so rerank and scan_all take it unchanged; VB fixes the
// value width at compile time for the common layouts, EFCodes<> reads it at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "half.h"
#include "packed.h"

namespace csae {

// max(0, floor(log2(h / k))): the low bits per latent of k sorted latents below h (k >= 1).
inline unsigned ef_low_bits(size_t h, size_t k) {
    unsigned low = 0;
    for (size_t r = h / k; r > 1; r >>= 1) ++low;
    return low;
}

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

    size_t n = 0, k = 0, row_bytes = 0, h = 0;  // h: the bias column of p
    const uint8_t* rows = nullptr;              // (n, row_bytes)
    unsigned low_bits = 0, value_bits = VB;
    bool has_bias = false;
    size_t header = 2;
    size_t low_at = 0, map_at = 0, map_bits = 0, value_at = 0;  // bit offsets in the row, header included

    EFCodes(const uint8_t* rows_, size_t n_, size_t row_bytes_, size_t k_, unsigned vb, bool bias, size_t h_)
        : n(n_), k(k_), row_bytes(row_bytes_), h(h_), rows(rows_), low_bits(ef_low_bits(h_, k_)), value_bits(vb),
          has_bias(bias), header(bias ? 4 : 2) {
        low_at = header * 8;
        map_at = low_at + k * low_bits;
        map_bits = ef_bitmap_bits(h, k, low_bits);
        value_at = map_at + map_bits;
    }

    unsigned vb() const { return fixed ? VB : value_bits; }
    const uint8_t* row(int64_t item) const { return rows + static_cast<size_t>(item) * row_bytes; }
    float scale(int64_t item) const { return half_to_float(load_le16(row(item))); }
    float bias_weight(int64_t item) const { return has_bias ? half_to_float(load_le16(row(item) + 2)) : 0.0f; }

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
        float acc[2] = {0.0f, 0.0f};  // two chains: the adds do not wait on each other
        for_each(r, [&](size_t i, uint64_t x, int32_t q) { acc[i & 1] += static_cast<float>(q) * p[x]; });
        float score = half_to_float(load_le16(r)) * (acc[0] + acc[1]);
        if (has_bias) score += half_to_float(load_le16(r + 2)) * p[h];
        return score;
    }

    void prefetch(int64_t item) const {
        const char* r = reinterpret_cast<const char*>(row(item));
        for (size_t at = 0; at < row_bytes; at += 64) __builtin_prefetch(r + at);
        __builtin_prefetch(r + row_bytes - 1);
    }

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
