// TopK (topk.h) against a naive sort, and the windowed scorer (scorer.h) against a naive exhaustive scorer.
// Build: c++ -std=c++17 -O1 -march=native -I cpp cpp/tests/test_topk.cpp -pthread; exits 1 on any failure.
// tests/test_core.py compiles and runs it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "index.h"
#include "scorer.h"
#include "topk.h"

namespace {

int checks = 0, failures = 0;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        ++checks;                                                             \
        if (!(cond)) {                                                        \
            ++failures;                                                       \
            std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            std::printf(__VA_ARGS__);                                         \
            std::printf("\n");                                                \
        }                                                                     \
    } while (0)

const float kNegInf = -std::numeric_limits<float>::infinity();

// The best k (score, id) pairs: higher score first, ties to the smaller id, padded with (-inf, -1).
void naive_topk(std::vector<std::pair<float, int64_t>> hits, size_t k, std::vector<float>& scores,
                std::vector<int64_t>& ids) {
    std::sort(hits.begin(), hits.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    scores.assign(k, kNegInf);
    ids.assign(k, -1);
    for (size_t i = 0; i < std::min(k, hits.size()); ++i) scores[i] = hits[i].first, ids[i] = hits[i].second;
}

// Scores drawn from few values (many ties), never -0.0 (TopK ranks -0.0 below 0.0; a float compare does not).
float tied_score(std::mt19937& rng) { return static_cast<float>(static_cast<int>(rng() % 9) - 4) * 0.25f; }

bool same(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string describe(const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
    std::string s = "got";
    for (size_t i = 0; i < std::min<size_t>(got.size(), 12); ++i) s += " " + std::to_string(got[i]);
    s += ", want";
    for (size_t i = 0; i < std::min<size_t>(want.size(), 12); ++i) s += " " + std::to_string(want[i]);
    return s;
}

// push in random order, k smaller and larger than the number of hits; one TopK reused through reset().
void test_push() {
    std::mt19937 rng(1);
    csae::TopK top;
    for (size_t n : {0, 1, 5, 17, 100, 3000})
        for (size_t k : {1, 3, 10, 64, 5000}) {
            std::vector<std::pair<float, int64_t>> hits;
            for (size_t i = 0; i < n; ++i) hits.emplace_back(tied_score(rng), static_cast<int64_t>(rng() % 100000));
            std::shuffle(hits.begin(), hits.end(), rng);
            top.reset(k);
            for (const auto& [s, id] : hits) top.push(s, id);
            std::vector<float> got_s(k), want_s;
            std::vector<int64_t> got_i(k), want_i;
            top.write_sorted(got_s.data(), got_i.data());
            naive_topk(hits, k, want_s, want_i);
            CHECK(got_i == want_i && same(got_s, want_s), "push n=%zu k=%zu: %s", n, k, describe(got_i, want_i).c_str());
            // write_sorted empties the buffer: a second call gives only padding
            top.write_sorted(got_s.data(), got_i.data());
            CHECK(got_i == std::vector<int64_t>(k, -1), "write_sorted twice n=%zu k=%zu", n, k);
        }
}

// Once k better hits are in, the threshold is the k-th best score and lower scores cannot enter.
void test_threshold() {
    csae::TopK top(3);
    CHECK(top.threshold() == kNegInf, "empty threshold %g", top.threshold());
    for (int i = 0; i < 100; ++i) top.push(static_cast<float>(i), i);  // enough pushes to compact
    CHECK(top.threshold() <= 97.0f, "threshold %g above the 3rd best", top.threshold());
    top.push(1000.0f, 1000);
    std::vector<float> s(3);
    std::vector<int64_t> ids(3);
    top.write_sorted(s.data(), ids.data());
    CHECK((ids == std::vector<int64_t>{1000, 99, 98}), "%s", describe(ids, {1000, 99, 98}).c_str());
}

// Dense blocks of consecutive ids in increasing order, lengths not a multiple of 16, with and without a mask;
// every block comes back zeroed.
void test_push_dense_and_clear() {
    std::mt19937 rng(2);
    csae::TopK top;
    for (size_t k : {1, 4, 33, 1000})
        for (int masked = 0; masked < 2; ++masked) {
            top.reset(k);
            std::vector<std::pair<float, int64_t>> hits;
            int64_t first = 0;
            bool cleared = true;
            for (size_t len : {0, 7, 16, 45, 128, 300, 1}) {
                std::vector<float> block(len);
                std::vector<uint8_t> allowed(len);
                for (size_t i = 0; i < len; ++i) {
                    block[i] = tied_score(rng);
                    allowed[i] = rng() % 3 != 0;
                    if (!masked || allowed[i]) hits.emplace_back(block[i], first + static_cast<int64_t>(i));
                }
                top.push_dense_and_clear(block.data(), len, first, masked ? allowed.data() : nullptr);
                cleared = cleared && std::all_of(block.begin(), block.end(), [](float x) { return x == 0.0f; });
                first += static_cast<int64_t>(len) + 5;  // gaps between blocks are fine: ids only increase
            }
            CHECK(cleared, "k=%zu masked=%d: a block was not zeroed", k, masked);
            std::vector<float> got_s(k), want_s;
            std::vector<int64_t> got_i(k), want_i;
            top.write_sorted(got_s.data(), got_i.data());
            naive_topk(hits, k, want_s, want_i);
            CHECK(got_i == want_i && same(got_s, want_s), "dense k=%zu masked=%d: %s", k, masked,
                  describe(got_i, want_i).c_str());
        }
}

// The float16 bits of v; exact for the values used here (0, or normal with a short mantissa).
uint16_t half_bits(float v) {
    if (v == 0.0f) return 0;
    int e;
    const float m = std::frexp(std::fabs(v), &e);  // v = m * 2^e, m in [0.5, 1)
    const uint16_t mantissa = static_cast<uint16_t>((m * 2.0f - 1.0f) * 1024.0f);
    return static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | (e - 1 + 15) << 10 | mantissa);
}

// Random (n, k) codes on latents 0..h-2 (latent h-1 is never used) with values a/8; queries with values b/4.
// Every sum is then exact in float, so the windowed scorer must equal the naive one bit for bit, ties included.
template <class Value>
void test_search_equals_exhaustive(size_t window_bits, bool with_keep, bool with_allowed, size_t top_k, int threads) {
    std::mt19937 rng(static_cast<unsigned>(window_bits * 131 + with_keep * 7 + with_allowed * 3 + top_k + threads));
    const size_t n = 3000, k = 4, h = 37, nq = 3, q_len = 5;
    std::vector<uint32_t> indices(n * k);
    std::vector<float> values(n * k);
    std::vector<Value> stored(n * k);
    std::vector<uint8_t> keep(n * k, 1), allowed(n, 1);
    for (size_t i = 0; i < n * k; ++i) {
        indices[i] = rng() % (h - 1);
        values[i] = static_cast<float>(static_cast<int>(rng() % 17) - 8) / 8.0f;
        if constexpr (std::is_same<Value, float>::value) stored[i] = values[i];
        else stored[i] = half_bits(values[i]);
        if (with_keep) keep[i] = rng() % 4 != 0;
    }
    if (with_allowed)
        for (auto& a : allowed) a = rng() % 2;
    const size_t W = csae::windows_for(n, window_bits);
    std::vector<int64_t> offsets(W * h + 1);
    size_t total = 0;
    for (uint8_t kp : keep) total += kp;
    std::vector<uint16_t> local_ids(total);
    std::vector<Value> post_values(total);
    csae::build_windowed(indices.data(), stored.data(), with_keep ? keep.data() : nullptr, n, k, h, window_bits,
                         offsets.data(), local_ids.data(), post_values.data(), threads);
    CHECK(offsets[W * h] == static_cast<int64_t>(total), "offsets end at %lld, want %zu",
          static_cast<long long>(offsets[W * h]), total);

    std::vector<int64_t> q_lat(nq * q_len);
    std::vector<float> q_val(nq * q_len);
    for (size_t i = 0; i < nq * q_len; ++i) {
        q_lat[i] = (i % q_len == 0) ? static_cast<int64_t>(h - 1) : static_cast<int64_t>(rng() % (h - 1));
        q_val[i] = static_cast<float>(static_cast<int>(rng() % 9) - 4) / 4.0f;
    }
    q_lat[2] = q_lat[1];  // a repeated query latent counts twice

    csae::IndexView<Value> ix{n, h, window_bits, offsets.data(), local_ids.data(), post_values.data(),
                              with_allowed ? allowed.data() : nullptr};
    std::vector<int64_t> got_i(nq * top_k);
    std::vector<float> got_s(nq * top_k);
    csae::search(ix, q_lat.data(), q_val.data(), nq, q_len, top_k, got_i.data(), got_s.data(), threads);

    for (size_t q = 0; q < nq; ++q) {
        std::vector<std::pair<float, int64_t>> hits;
        for (size_t item = 0; item < n; ++item) {
            if (!allowed[item]) continue;
            double score = 0;
            for (size_t t = 0; t < q_len; ++t)
                for (size_t j = 0; j < k; ++j)
                    if (keep[item * k + j] && indices[item * k + j] == static_cast<uint32_t>(q_lat[q * q_len + t]))
                        score += static_cast<double>(q_val[q * q_len + t]) * values[item * k + j];
            hits.emplace_back(static_cast<float>(score), static_cast<int64_t>(item));
        }
        std::vector<float> want_s;
        std::vector<int64_t> want_i;
        naive_topk(hits, top_k, want_s, want_i);
        std::vector<int64_t> gi(got_i.begin() + q * top_k, got_i.begin() + (q + 1) * top_k);
        std::vector<float> gs(got_s.begin() + q * top_k, got_s.begin() + (q + 1) * top_k);
        CHECK(gi == want_i && same(gs, want_s), "search %s window_bits=%zu keep=%d allowed=%d top_k=%zu threads=%d q=%zu: %s",
              sizeof(Value) == 2 ? "float16" : "float32", window_bits, with_keep, with_allowed, top_k, threads, q,
              describe(gi, want_i).c_str());
    }
}

}  // namespace

int main() {
    test_push();
    test_threshold();
    test_push_dense_and_clear();
    for (size_t window_bits : {1, 4, 7, 16})
        for (int threads : {1, 4})  // 4 threads for 3 queries also splits each query's windows
            for (size_t top_k : {1, 10, 3005}) {  // 3005: more than the 3000 items, padded with -1
                test_search_equals_exhaustive<float>(window_bits, window_bits == 4, top_k == 10, top_k, threads);
                test_search_equals_exhaustive<uint16_t>(window_bits, window_bits == 7, top_k != 10, top_k, threads);
            }
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
