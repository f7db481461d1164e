// The windowed inverted index: its layout (IndexView) and its builder. The scorer is in scorer.h.
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
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "parallel.h"

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

}  // namespace csae
