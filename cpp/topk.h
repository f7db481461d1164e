// Bounded top-k of (score, id) pairs, ids below 2^32. Ties go to the smaller id, so results are deterministic
// whatever the scan order.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace csae {

// Bit j set when s[j] > t, for 16 scores.
inline uint32_t above(const float* s, float t) {
#if defined(__AVX__)
    const __m256 tv = _mm256_set1_ps(t);
    const uint32_t lo = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s), tv, _CMP_GT_OQ));
    const uint32_t hi = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + 8), tv, _CMP_GT_OQ));
    return lo | hi << 8;
#else
    uint32_t m = 0;
    for (int j = 0; j < 16; ++j) m |= static_cast<uint32_t>(s[j] > t) << j;
    return m;
#endif
}

// Bit j set when b[j] != 0, for 16 bytes.
inline uint32_t nonzero16(const uint8_t* b) {
#if defined(__SSE2__)
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    return ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xffffu;
#else
    uint32_t m = 0;
    for (int j = 0; j < 16; ++j) m |= static_cast<uint32_t>(b[j] != 0) << j;
    return m;
#endif
}

// (score, id) packed into one integer that orders like "ranks before": higher score, then smaller id.
inline uint64_t hit_key(float score, uint32_t id) {
    uint32_t bits;
    std::memcpy(&bits, &score, 4);
    bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // float order as unsigned order
    return static_cast<uint64_t>(bits) << 32 | (0xffffffffu - id);
}

inline float key_score(uint64_t key) {
    uint32_t bits = static_cast<uint32_t>(key >> 32);
    bits = (bits & 0x80000000u) ? bits & 0x7fffffffu : ~bits;
    float score;
    std::memcpy(&score, &bits, 4);
    return score;
}

inline int64_t key_id(uint64_t key) { return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key)); }

class TopK {
  public:
    explicit TopK(size_t k = 0) { reset(k); }

    void reset(size_t k) {
        k_ = k;
        buf_.clear();
        buf_.reserve(capacity());
        cut_ = 0;
        cut_score_ = -std::numeric_limits<float>::infinity();
    }

    // Scores below this can no longer enter.
    float threshold() const { return cut_score_; }

    void push(float score, int64_t id) { push_key(hit_key(score, static_cast<uint32_t>(id))); }

    void push_key(uint64_t key) {
        if (key <= cut_) return;
        buf_.push_back(key);
        if (buf_.size() == capacity()) compact();
    }

    // Every score of a dense block of consecutive ids [first_id, first_id + n), then zeroes the block (so an
    // accumulator is ready for reuse without a separate pass). Blocks must come in increasing id order: then a
    // score equal to the threshold loses its tie (larger id) and only scores above it are pushed. When allowed
    // (n bytes) is given, only items whose byte is non-zero are pushed.
    void push_dense_and_clear(float* scores, size_t n, int64_t first_id, const uint8_t* allowed = nullptr) {
        constexpr size_t B = 16;
        size_t i = 0;
        for (; i + B <= n; i += B) {
            uint32_t mask = above(scores + i, threshold());
            if (allowed && mask) mask &= nonzero16(allowed + i);
            while (mask) {
                const int j = __builtin_ctz(mask);
                mask &= mask - 1;
                push(scores[i + j], first_id + static_cast<int64_t>(i + j));
            }
            std::fill(scores + i, scores + i + B, 0.0f);
        }
        for (; i < n; ++i) {
            if (!allowed || allowed[i]) push(scores[i], first_id + static_cast<int64_t>(i));
            scores[i] = 0.0f;
        }
    }

    // Best first, padded with (-inf, -1) up to k.
    void write_sorted(float* scores, int64_t* ids) {
        if (buf_.size() > k_) compact();
        std::sort(buf_.begin(), buf_.end(), std::greater<uint64_t>());
        for (size_t i = 0; i < k_; ++i) {
            bool have = i < buf_.size();
            scores[i] = have ? key_score(buf_[i]) : -std::numeric_limits<float>::infinity();
            ids[i] = have ? key_id(buf_[i]) : -1;
        }
        buf_.clear();
    }

  private:
    // A buffer of candidates, cut back to the best k whenever it fills: O(1) amortised per push, even for large k.
    size_t capacity() const { return 2 * k_ + 32; }

    void compact() {
        std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), std::greater<uint64_t>());
        buf_.resize(k_);
        cut_ = buf_[k_ - 1];  // now the k-th best: only better hits can still enter
        cut_score_ = key_score(cut_);
    }

    size_t k_ = 0;
    uint64_t cut_ = 0;
    float cut_score_;
    std::vector<uint64_t> buf_;
};

}  // namespace csae
