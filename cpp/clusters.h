// Clustered windows: approximate sparse search that visits only the items of the clusters a query routes to.
//
// A clustered segment numbers its rows cluster by cluster, so cluster c is the row range
// [cluster_rows[c], cluster_rows[c + 1]). Cut at window boundaries, clusters become pieces; within a window's
// posting list (index.h, items in increasing order) each piece's postings are one contiguous run, and
// piece_starts[lat * P + p] is where piece p's run begins, counted from the start of latent lat's list in p's
// window (a uint16: fewer rows than a window precede it). A query scores the sparse centroids, takes clusters best
// first until it has covered its budget of items, and runs the scorer's accumulate loop over their runs only.
// Visiting every cluster scores every item: the exact mode.
//
// Thread safety: immutable once built, like IndexView.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "accumulate.h"
#include "index.h"
#include "parallel.h"
#include "scorer.h"
#include "topk.h"

namespace csae {

// Sparse centroids stored latent-major: latent l's entries [offsets[l], offsets[l + 1]) of (cluster, weight).
struct CentroidLists {
    size_t h = 0, n_clusters = 0;
    const int64_t* offsets = nullptr;
    const uint32_t* clusters = nullptr;
    const float* weights = nullptr;
};

// scores[c] = sum_t q_val[t] * centroid_c[q_lat[t]] for every cluster c (n_clusters entries, overwritten).
template <class Lat>
void score_centroids(const CentroidLists& cl, const Lat* q_lat, const float* q_val, size_t q_len, float* scores) {
    std::fill(scores, scores + cl.n_clusters, 0.0f);
    for (size_t t = 0; t < q_len; ++t) {
        const int64_t begin = cl.offsets[q_lat[t]], end = cl.offsets[q_lat[t] + 1];
        const float qv = q_val[t];
        for (int64_t p = begin; p < end; ++p) scores[cl.clusters[p]] += qv * cl.weights[p];
    }
}

// Each of n codes (n, k) goes to its best-scoring cluster (ties: the smaller cluster).
template <class Lat>
void assign_clusters(const CentroidLists& cl, const Lat* indices, const float* values, size_t n, size_t k,
                     int32_t* out, int num_threads) {
    const size_t chunk = 256;
    parallel_for((n + chunk - 1) / chunk, num_threads, [&](size_t c, int) {
        std::vector<float> scores(cl.n_clusters);
        for (size_t i = c * chunk, end = std::min(n, (c + 1) * chunk); i < end; ++i) {
            score_centroids(cl, indices + i * k, values + i * k, k, scores.data());
            out[i] = static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
        }
    });
}

// The rows of a clustered segment cut into pieces, and where each piece's run begins in every posting list.
struct ClusterLayout {
    size_t n_clusters = 0, n_pieces = 0, window_bits = 16;
    std::vector<int64_t> piece_rows;    // n_pieces + 1 row boundaries
    std::vector<int64_t> first_piece;   // n_clusters + 1: cluster c's pieces are [first_piece[c], first_piece[c + 1])
    std::vector<uint16_t> piece_starts; // h * n_pieces

    size_t window_of(size_t piece) const { return static_cast<size_t>(piece_rows[piece]) >> window_bits; }
};

// The layout of cluster row ranges over ix's posting lists. cluster_rows: n_clusters + 1 non-decreasing row
// boundaries from 0 to ix.n (checked by the caller).
template <class Value>
ClusterLayout make_layout(const IndexView<Value>& ix, const int64_t* cluster_rows, size_t n_clusters, int num_threads) {
    ClusterLayout out;
    out.n_clusters = n_clusters;
    out.window_bits = ix.window_bits;
    const int64_t win = static_cast<int64_t>(ix.window_size());
    out.first_piece.assign(n_clusters + 1, 0);
    out.piece_rows.push_back(0);
    for (size_t c = 0; c < n_clusters; ++c) {
        out.first_piece[c] = static_cast<int64_t>(out.piece_rows.size()) - 1;
        for (int64_t row = cluster_rows[c], end = cluster_rows[c + 1]; row < end;) {
            const int64_t cut = std::min(end, (row / win + 1) * win);
            out.piece_rows.push_back(cut);
            row = cut;
        }
    }
    out.first_piece[n_clusters] = static_cast<int64_t>(out.piece_rows.size()) - 1;
    const size_t P = out.n_pieces = out.piece_rows.size() - 1, W = ix.n_windows();
    out.piece_starts.assign(ix.h * P, 0);
    parallel_for(ix.h, num_threads, [&](size_t lat, int) {
        uint16_t* starts = &out.piece_starts[lat * P];
        size_t p = 0;
        for (size_t w = 0; w < W; ++w) {
            const int64_t list_begin = ix.offsets[lat * W + w], list_end = ix.offsets[lat * W + w + 1];
            int64_t at = list_begin;
            for (; p < P && out.window_of(p) == w; ++p) {
                const int64_t first_local = out.piece_rows[p] - static_cast<int64_t>(w) * win;
                while (at < list_end && ix.local_ids[at] < first_local) ++at;
                starts[p] = static_cast<uint16_t>(at - list_begin);
            }
        }
    });
    return out;
}

// One posting run to add into the accumulator: postings [begin, end) times the query value qv.
struct Run {
    int64_t begin, end;
    float qv;
};

// Per-thread scratch of the clustered scorer: centroid scores, the cluster order, the pieces chosen and the runs
// of one window.
struct ProbeScratch {
    std::vector<float> scores;
    std::vector<uint32_t> order;
    std::vector<int64_t> pieces;
    std::vector<Run> runs;
};

inline ProbeScratch& thread_probe_scratch() {
    static thread_local ProbeScratch scratch;
    return scratch;
}

// The pieces of the clusters a query visits, sorted: clusters by descending centroid score (ties: smaller
// cluster) until their counts reach budget (counts[c]: the items of cluster c that may be returned).
template <class Lat>
void choose_pieces(const CentroidLists& cl, const ClusterLayout& layout, const int64_t* counts, int64_t budget,
                   const Lat* q_lat, const float* q_val, size_t q_len, ProbeScratch& s) {
    const size_t C = cl.n_clusters;
    s.scores.resize(C);
    score_centroids(cl, q_lat, q_val, q_len, s.scores.data());
    s.order.resize(C);
    for (size_t c = 0; c < C; ++c) s.order[c] = static_cast<uint32_t>(c);
    const float* sc = s.scores.data();
    auto better = [sc](uint32_t a, uint32_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); };
    s.pieces.clear();
    size_t sorted = 0;
    int64_t covered = 0;
    for (size_t at = 0; at < C && covered < budget; ++at) {
        if (at == sorted) {  // sort the next batch of best clusters: twice what the budget still looks to need
            const size_t want = std::min(C, at + std::max<size_t>(16, 2 * at + 16));
            std::nth_element(s.order.begin() + at, s.order.begin() + (want - 1), s.order.end(), better);
            std::sort(s.order.begin() + at, s.order.begin() + want, better);
            sorted = want;
        }
        const uint32_t c = s.order[at];
        covered += counts[c];
        for (int64_t p = layout.first_piece[c]; p < layout.first_piece[c + 1]; ++p) s.pieces.push_back(p);
    }
    std::sort(s.pieces.begin(), s.pieces.end());
}

// Scores the chosen pieces (sorted) whose window lies in [w_begin, w_end) into s.top. A window's runs are listed
// (and their first postings prefetched) before any is added: the runs lie scattered over the lists, and adding each
// as soon as it is found would wait on memory run by run.
template <class Value>
void score_pieces(const IndexView<Value>& ix, const ClusterLayout& layout, const int64_t* q_lat, const float* q_val,
                  size_t q_len, const std::vector<int64_t>& pieces, size_t w_begin, size_t w_end, Scratch& s,
                  std::vector<Run>& runs) {
    const size_t win = ix.window_size(), W = ix.n_windows(), P = layout.n_pieces;
    if (s.acc.size() != win) s.acc.assign(win, 0.0f);
    float* acc = s.acc.data();
    auto it = std::lower_bound(pieces.begin(), pieces.end(), w_begin,
                               [&](int64_t p, size_t w) { return layout.window_of(p) < w; });
    while (it != pieces.end() && layout.window_of(*it) < w_end) {
        const size_t w = layout.window_of(*it);
        auto group_end = it;
        while (group_end != pieces.end() && layout.window_of(*group_end) == w) ++group_end;
        const int64_t first = static_cast<int64_t>(w * win);
        runs.clear();
        for (size_t t = 0; t < q_len; ++t) {
            const int64_t lat = q_lat[t], base = ix.offsets[lat * W + w], list_end = ix.offsets[lat * W + w + 1];
            const uint16_t* starts = &layout.piece_starts[lat * P];
            for (auto p = it; p != group_end; ++p) {
                const int64_t begin = base + starts[*p];
                const bool last = static_cast<size_t>(*p) + 1 == P || layout.window_of(*p + 1) != w;
                const int64_t end = last ? list_end : base + starts[*p + 1];
                if (end == begin) continue;
                __builtin_prefetch(ix.local_ids + begin);
                __builtin_prefetch(ix.values + begin);
                runs.push_back({begin, end, q_val[t]});
            }
        }
        for (const Run& r : runs) accumulate(acc, ix.local_ids + r.begin, ix.values + r.begin, r.end - r.begin, r.qv);
        for (auto p = it; p != group_end; ++p) {
            const int64_t row = layout.piece_rows[*p], len = layout.piece_rows[*p + 1] - row;
            s.top.push_dense_and_clear(acc + (row - first), static_cast<size_t>(len), row,
                                       ix.allowed ? ix.allowed + row : nullptr);
        }
        it = group_end;
    }
}

// Approximate top-k: like search() (scorer.h), but each query scores only the clusters it routes to, until
// `budget` items are covered (counts: per cluster, the items that may be returned).
template <class Value>
void probe_search(const IndexView<Value>& ix, const ClusterLayout& layout, const CentroidLists& cl,
                  const int64_t* counts, int64_t budget, const int64_t* q_lat, const float* q_val, size_t nq,
                  size_t q_len, size_t top_k, int64_t* out_ids, float* out_scores, int num_threads) {
    for (size_t i = 0; i < nq * q_len; ++i)
        if (q_lat[i] < 0 || static_cast<size_t>(q_lat[i]) >= ix.h)
            throw std::invalid_argument("query latent " + std::to_string(q_lat[i]) + " out of range for h=" + std::to_string(ix.h));
    const int threads = resolve_threads(num_threads);
    const size_t W = ix.n_windows();
    const size_t parts = std::max<size_t>(1, nq >= static_cast<size_t>(threads) ? 1 : std::min(W, (threads + nq - 1) / nq));
    std::vector<float> part_scores(nq * parts * top_k);
    std::vector<int64_t> part_ids(nq * parts * top_k);
    std::vector<std::vector<int64_t>> routed(parts > 1 ? nq : 0);  // split queries: routed once, not per part
    parallel_for(routed.size(), threads, [&](size_t q, int) {
        ProbeScratch& ps = thread_probe_scratch();
        choose_pieces(cl, layout, counts, budget, q_lat + q * q_len, q_val + q * q_len, q_len, ps);
        routed[q] = ps.pieces;
    });
    parallel_for(nq * parts, threads, [&](size_t task, int) {
        const size_t q = task / parts, p = task % parts;
        ProbeScratch& ps = thread_probe_scratch();
        if (parts == 1) choose_pieces(cl, layout, counts, budget, q_lat + q * q_len, q_val + q * q_len, q_len, ps);
        Scratch& s = thread_scratch();
        s.top.reset(top_k);
        score_pieces(ix, layout, q_lat + q * q_len, q_val + q * q_len, q_len, parts == 1 ? ps.pieces : routed[q],
                     W * p / parts, W * (p + 1) / parts, s, ps.runs);
        if (parts == 1) s.top.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
        else s.top.write_sorted(&part_scores[task * top_k], &part_ids[task * top_k]);
    });
    if (parts > 1) merge_parts(part_scores.data(), part_ids.data(), nq, parts, top_k, out_ids, out_scores);
}

}  // namespace csae
