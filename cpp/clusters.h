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
#include <functional>
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

// Approximate assign_clusters for many clusters numbered group by group (group g's clusters are
// [group_first[g], group_first[g + 1]), none empty): each code goes to its best cluster among those of its
// probe_groups best groups (scored by the group centroids; ties: the smaller cluster, as in assign_clusters).
// The codes are taken a block at a time and their (code, group) pairs bucketed by group, so that one group's
// centroid lists stay in cache while all the codes that probe it are scored.
template <class Lat>
void assign_clusters_grouped(const CentroidLists& groups, const CentroidLists& cl, const int64_t* group_first,
                             size_t probe_groups, const Lat* indices, const float* values, size_t n, size_t k,
                             int32_t* out, int num_threads) {
    const size_t G = groups.n_clusters, h = cl.h, P = std::min(probe_groups, G);
    // the centroid lists group-major: group g, latent l holds entries [offsets[g * h + l], offsets[g * h + l + 1])
    std::vector<int64_t> offsets(G * h + 1, 0);
    std::vector<uint32_t> group_of(cl.n_clusters);
    for (size_t g = 0; g < G; ++g)
        std::fill(group_of.begin() + group_first[g], group_of.begin() + group_first[g + 1], static_cast<uint32_t>(g));
    for (size_t l = 0; l < h; ++l)
        for (int64_t p = cl.offsets[l]; p < cl.offsets[l + 1]; ++p) ++offsets[group_of[cl.clusters[p]] * h + l + 1];
    for (size_t i = 0; i < G * h; ++i) offsets[i + 1] += offsets[i];
    std::vector<uint32_t> members(offsets[G * h]);
    std::vector<float> weights(offsets[G * h]);
    {
        std::vector<int64_t> at(offsets.begin(), offsets.end() - 1);
        for (size_t l = 0; l < h; ++l)
            for (int64_t p = cl.offsets[l]; p < cl.offsets[l + 1]; ++p) {
                const int64_t to = at[group_of[cl.clusters[p]] * h + l]++;
                members[to] = cl.clusters[p];
                weights[to] = cl.weights[p];
            }
    }
    int64_t widest = 0;
    for (size_t g = 0; g < G; ++g) widest = std::max(widest, group_first[g + 1] - group_first[g]);
    const int threads = resolve_threads(num_threads);
    const size_t block = size_t{1} << 16, chunk = 256;
    std::vector<uint32_t> slot_group(block * P), bucket(block * P);
    std::vector<int64_t> bucket_start(G + 1);
    std::vector<float> best_score(block * P);
    std::vector<int32_t> best_cluster(block * P);
    for (size_t first = 0; first < n; first += block) {
        const size_t m = std::min(block, n - first);
        parallel_for((m + chunk - 1) / chunk, threads, [&](size_t c, int) {  // each code's best groups
            std::vector<float> scores(G);
            std::vector<uint64_t> keys(G);
            for (size_t i = c * chunk, end = std::min(m, (c + 1) * chunk); i < end; ++i) {
                score_centroids(groups, indices + (first + i) * k, values + (first + i) * k, k, scores.data());
                for (size_t g = 0; g < G; ++g) keys[g] = hit_key(scores[g] + 0.0f, static_cast<uint32_t>(g));
                std::partial_sort(keys.begin(), keys.begin() + P, keys.end(), std::greater<uint64_t>());
                for (size_t j = 0; j < P; ++j) slot_group[i * P + j] = static_cast<uint32_t>(key_id(keys[j]));
            }
        });
        std::fill(bucket_start.begin(), bucket_start.end(), 0);  // the slots bucketed by group
        for (size_t s = 0; s < m * P; ++s) ++bucket_start[slot_group[s] + 1];
        for (size_t g = 0; g < G; ++g) bucket_start[g + 1] += bucket_start[g];
        {
            std::vector<int64_t> at(bucket_start.begin(), bucket_start.end() - 1);
            for (size_t s = 0; s < m * P; ++s) bucket[at[slot_group[s]]++] = static_cast<uint32_t>(s);
        }
        parallel_for(G, threads, [&](size_t g, int) {  // each group's best cluster for each code probing it
            std::vector<float> scores(widest);
            const int64_t base = group_first[g], width = group_first[g + 1] - base;
            const int64_t* off = &offsets[g * h];
            for (int64_t b = bucket_start[g]; b < bucket_start[g + 1]; ++b) {
                const size_t slot = bucket[b], i = first + slot / P;
                const Lat* lat = indices + i * k;
                const float* val = values + i * k;
                std::fill(scores.begin(), scores.begin() + width, 0.0f);
                for (size_t t = 0; t < k; ++t)
                    for (int64_t p = off[lat[t]]; p < off[lat[t] + 1]; ++p)
                        scores[members[p] - base] += val[t] * weights[p];
                const int64_t f = std::max_element(scores.begin(), scores.begin() + width) - scores.begin();
                best_score[slot] = scores[f];
                best_cluster[slot] = static_cast<int32_t>(base + f);
            }
        });
        for (size_t i = 0; i < m; ++i) {  // the best of each code's groups
            size_t win = i * P;
            for (size_t s = i * P + 1; s < (i + 1) * P; ++s)
                if (best_score[s] > best_score[win] ||
                    (best_score[s] == best_score[win] && best_cluster[s] < best_cluster[win]))
                    win = s;
            out[first + i] = best_cluster[win];
        }
    }
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

// Asks for every cache line of [begin, end) at once.
template <class T>
inline void prefetch_range(const T* begin, const T* end) {
    const char* line = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(begin) & ~uintptr_t{63});
    for (; line < reinterpret_cast<const char*>(end); line += 64) __builtin_prefetch(line);
}

// The runs of one window's chosen pieces: pieces [pieces_begin, pieces_end) of the chosen list, runs up to runs_end.
struct WindowGroup {
    size_t pieces_begin, pieces_end, runs_end;
};

// Per-thread scratch of the clustered scorer: centroid scores, their rank keys, the pieces chosen, their runs
// and window groups.
struct ProbeScratch {
    std::vector<float> scores;
    std::vector<uint64_t> keys;
    std::vector<int64_t> pieces;
    std::vector<Run> runs;
    std::vector<WindowGroup> groups;
};

inline ProbeScratch& thread_probe_scratch() {
    static thread_local ProbeScratch scratch;
    return scratch;
}

// The pieces of the clusters a query visits, sorted: clusters by descending centroid score (ties: smaller
// cluster) until their counts reach budget (counts[c]: the items of cluster c that may be returned). The best
// `first_batch` clusters are ranked first, then more as the budget needs them.
template <class Lat>
void choose_pieces(const CentroidLists& cl, const ClusterLayout& layout, const int64_t* counts, int64_t budget,
                   size_t first_batch, const Lat* q_lat, const float* q_val, size_t q_len, ProbeScratch& s) {
    const size_t C = cl.n_clusters;
    s.scores.resize(C);
    score_centroids(cl, q_lat, q_val, q_len, s.scores.data());
    s.keys.resize(C);  // hit_key orders like the routing: higher score first, then the smaller cluster
    for (size_t c = 0; c < C; ++c) s.keys[c] = hit_key(s.scores[c] + 0.0f, static_cast<uint32_t>(c));  // -0 as +0
    s.pieces.clear();
    size_t sorted = 0;
    int64_t covered = 0;
    for (size_t at = 0; at < C && covered < budget; ++at) {
        if (at == sorted) {  // rank the next batch of best clusters: as many again as ranked so far
            const size_t want = std::min(C, at == 0 ? first_batch : 2 * at);
            std::partial_sort(s.keys.begin() + at, s.keys.begin() + want, s.keys.end(), std::greater<uint64_t>());
            sorted = want;
        }
        const size_t c = static_cast<size_t>(key_id(s.keys[at]));
        covered += counts[c];
        for (int64_t p = layout.first_piece[c]; p < layout.first_piece[c + 1]; ++p) s.pieces.push_back(p);
    }
    std::sort(s.pieces.begin(), s.pieces.end());
}

// Scores the chosen pieces (sorted) whose window lies in [w_begin, w_end) into s.top. Every window's runs are
// listed (and their postings prefetched) before any is added: the runs lie scattered over the lists and
// the piece tables, and listing them all first lets their cache misses overlap.
template <class Value>
void score_pieces(const IndexView<Value>& ix, const ClusterLayout& layout, const int64_t* q_lat, const float* q_val,
                  size_t q_len, const std::vector<int64_t>& pieces, size_t w_begin, size_t w_end, Scratch& s,
                  std::vector<Run>& runs, std::vector<WindowGroup>& groups) {
    const size_t win = ix.window_size(), W = ix.n_windows(), P = layout.n_pieces;
    if (s.acc.size() != win) s.acc.assign(win, 0.0f);
    float* acc = s.acc.data();
    runs.clear();
    groups.clear();
    size_t at = std::lower_bound(pieces.begin(), pieces.end(), w_begin,
                                 [&](int64_t p, size_t w) { return layout.window_of(p) < w; }) - pieces.begin();
    while (at < pieces.size() && layout.window_of(pieces[at]) < w_end) {
        const size_t w = layout.window_of(pieces[at]);
        size_t group_end = at;
        while (group_end < pieces.size() && layout.window_of(pieces[group_end]) == w) ++group_end;
        for (size_t t = 0; t < q_len; ++t) {
            const int64_t lat = q_lat[t], base = ix.offsets[lat * W + w], list_end = ix.offsets[lat * W + w + 1];
            const uint16_t* starts = &layout.piece_starts[lat * P];
            for (size_t i = at; i < group_end; ++i) {
                const int64_t p = pieces[i], begin = base + starts[p];
                const bool last = static_cast<size_t>(p) + 1 == P || layout.window_of(p + 1) != w;
                const int64_t end = last ? list_end : base + starts[p + 1];
                if (end == begin) continue;
                prefetch_range(ix.local_ids + begin, ix.local_ids + end);
                prefetch_range(ix.values + begin, ix.values + end);
                runs.push_back({begin, end, q_val[t]});
            }
        }
        groups.push_back({at, group_end, runs.size()});
        at = group_end;
    }
    size_t r = 0;
    for (const WindowGroup& g : groups) {
        for (; r < g.runs_end; ++r)
            accumulate(acc, ix.local_ids + runs[r].begin, ix.values + runs[r].begin, runs[r].end - runs[r].begin,
                       runs[r].qv);
        const int64_t first = static_cast<int64_t>(layout.window_of(pieces[g.pieces_begin]) * win);
        for (size_t i = g.pieces_begin; i < g.pieces_end; ++i) {
            const int64_t row = layout.piece_rows[pieces[i]], len = layout.piece_rows[pieces[i] + 1] - row;
            s.top.push_dense_and_clear(acc + (row - first), static_cast<size_t>(len), row,
                                       ix.allowed ? ix.allowed + row : nullptr);
        }
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
    int64_t total = 0;
    for (size_t c = 0; c < cl.n_clusters; ++c) total += counts[c];
    const double expected =  // clusters a query needs, if they were of mean size
        static_cast<double>(budget) * cl.n_clusters / static_cast<double>(std::max<int64_t>(total, 1));
    const size_t first_batch = static_cast<size_t>(1.5 * expected) + 8;
    std::vector<std::vector<int64_t>> routed(parts > 1 ? nq : 0);  // split queries: routed once, not per part
    parallel_for(routed.size(), threads, [&](size_t q, int) {
        ProbeScratch& ps = thread_probe_scratch();
        choose_pieces(cl, layout, counts, budget, first_batch, q_lat + q * q_len, q_val + q * q_len, q_len, ps);
        routed[q] = ps.pieces;
    });
    parallel_for(nq * parts, threads, [&](size_t task, int) {
        const size_t q = task / parts, p = task % parts;
        ProbeScratch& ps = thread_probe_scratch();
        if (parts == 1)
            choose_pieces(cl, layout, counts, budget, first_batch, q_lat + q * q_len, q_val + q * q_len, q_len, ps);
        Scratch& s = thread_scratch();
        s.top.reset(top_k);
        score_pieces(ix, layout, q_lat + q * q_len, q_val + q * q_len, q_len, parts == 1 ? ps.pieces : routed[q],
                     W * p / parts, W * (p + 1) / parts, s, ps.runs, ps.groups);
        if (parts == 1) s.top.write_sorted(out_scores + q * top_k, out_ids + q * top_k);
        else s.top.write_sorted(&part_scores[task * top_k], &part_ids[task * top_k]);
    });
    if (parts > 1) merge_parts(part_scores.data(), part_ids.data(), nq, parts, top_k, out_ids, out_scores);
}

}  // namespace csae
