// Bounded top-k of (score, id) pairs: a min-heap whose root is the worst kept entry.
// Ties go to the smaller id, so results are deterministic whatever the scan order.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace csae {

struct Hit {
    float score;
    int64_t id;
};

// a ranks before b
inline bool better(const Hit& a, const Hit& b) { return a.score > b.score || (a.score == b.score && a.id < b.id); }

class TopK {
  public:
    explicit TopK(size_t k = 0) { reset(k); }

    void reset(size_t k) {
        k_ = k;
        heap_.clear();
        heap_.reserve(k);
    }

    bool full() const { return heap_.size() == k_; }
    // Scores at or below this can no longer enter (once full).
    float threshold() const { return full() ? heap_.front().score : -std::numeric_limits<float>::infinity(); }

    void push(float score, int64_t id) {
        Hit hit{score, id};
        if (!full()) {
            heap_.push_back(hit);
            std::push_heap(heap_.begin(), heap_.end(), better);
        } else if (better(hit, heap_.front())) {
            std::pop_heap(heap_.begin(), heap_.end(), better);
            heap_.back() = hit;
            std::push_heap(heap_.begin(), heap_.end(), better);
        }
    }

    // Every score of a dense block of consecutive ids [first_id, first_id + n), then zeroes the block (so an
    // accumulator is ready for reuse without a separate pass). Blocks with no score above the threshold are skipped.
    void push_dense_and_clear(float* scores, size_t n, int64_t first_id) {
        constexpr size_t B = 16;
        size_t i = 0;
        for (; i + B <= n; i += B) {
            const float t = threshold();
            int any = 0;
            for (size_t j = 0; j < B; ++j) any |= scores[i + j] >= t;
            if (any)
                for (size_t j = 0; j < B; ++j) push(scores[i + j], first_id + static_cast<int64_t>(i + j));
            for (size_t j = 0; j < B; ++j) scores[i + j] = 0.0f;
        }
        for (; i < n; ++i) {
            push(scores[i], first_id + static_cast<int64_t>(i));
            scores[i] = 0.0f;
        }
    }

    // Best first, padded with (-inf, -1) up to k.
    void write_sorted(float* scores, int64_t* ids) {
        std::sort_heap(heap_.begin(), heap_.end(), better);
        for (size_t i = 0; i < k_; ++i) {
            bool have = i < heap_.size();
            scores[i] = have ? heap_[i].score : -std::numeric_limits<float>::infinity();
            ids[i] = have ? heap_[i].id : -1;
        }
        heap_.clear();
    }

  private:
    size_t k_ = 0;
    std::vector<Hit> heap_;
};

}  // namespace csae
