// Turning forward codes (n items x k entries) into inverted lists (CSC): one posting list per latent.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace csae {

// offsets has h + 1 entries; the items of latent i are ids[offsets[i] .. offsets[i+1]), in increasing order,
// with their values beside them. Value is copied bit for bit (float, or the raw bits of a float16).
template <class Index, class Value>
void build_postings(const Index* indices, const Value* values, size_t n, size_t k, size_t h,
                    int64_t* offsets, uint32_t* ids, Value* out_values, int num_threads) {
    if (n > UINT32_MAX) throw std::invalid_argument("at most 2^32 - 1 items fit in one index");
    for (size_t i = 0; i < n * k; ++i)
        if (static_cast<size_t>(indices[i]) >= h)
            throw std::invalid_argument("code index " + std::to_string(indices[i]) + " at item " +
                                        std::to_string(i / k) + " is out of range for h=" + std::to_string(h));
    // Items split into contiguous chunks, one per task; count per (chunk, latent), then scatter in order.
    const size_t tasks = std::max<size_t>(1, std::min<size_t>(resolve_threads(num_threads) * 4, n / 4096 + 1));
    const size_t per_task = (n + tasks - 1) / tasks;
    std::vector<int64_t> counts(tasks * h, 0);
    parallel_for(tasks, num_threads, [&](size_t t, int) {
        int64_t* c = &counts[t * h];
        size_t end = std::min(n, (t + 1) * per_task);
        for (size_t i = t * per_task * k; i < end * k; ++i) ++c[indices[i]];
    });
    int64_t total = 0;
    for (size_t lat = 0; lat < h; ++lat) {
        offsets[lat] = total;
        for (size_t t = 0; t < tasks; ++t) {
            int64_t c = counts[t * h + lat];
            counts[t * h + lat] = total;  // becomes this chunk's write cursor in the list
            total += c;
        }
    }
    offsets[h] = total;
    parallel_for(tasks, num_threads, [&](size_t t, int) {
        int64_t* cursor = &counts[t * h];
        size_t end = std::min(n, (t + 1) * per_task);
        for (size_t item = t * per_task; item < end; ++item)
            for (size_t j = 0; j < k; ++j) {
                int64_t at = cursor[indices[item * k + j]]++;
                ids[at] = static_cast<uint32_t>(item);
                out_values[at] = values[item * k + j];
            }
    });
}

}  // namespace csae
