// The only pybind11 file: checks shapes and dtypes, releases the GIL after reading inputs, returns numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "index.h"
#include "postings.h"
#include "rerank.h"
#include "scorer.h"

namespace py = pybind11;

namespace {

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

bool is_half(const py::array& a) { return a.dtype().is(py::dtype("float16")); }
bool is_f32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

void require_values_dtype(const py::array& a, const char* name) {
    if (!is_half(a) && !is_f32(a))
        throw std::invalid_argument(std::string(name) + " must be float16 or float32, got " + dtype_name(a));
}

// A C-contiguous view of exactly dtype T, never a copy (large, possibly memory-mapped arrays).
template <class T>
const T* exact(const py::array& a, const char* name) {
    if (!a.dtype().is(py::dtype::of<T>()) && !(std::is_same<T, uint16_t>::value && is_half(a)))
        throw std::invalid_argument(std::string(name) + " has dtype " + dtype_name(a) + ", expected " +
                                    py::str(py::dtype::of<T>()).cast<std::string>());
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    return static_cast<const T*>(a.data());
}

void require_2d(const py::array& a, const char* name) {
    if (a.ndim() != 2)
        throw std::invalid_argument(std::string(name) + " must be 2-D (n, k), got " + std::to_string(a.ndim()) + "-D");
}

// An optional (n,) mask of the items a search may return: None, or uint8/bool, non-zero = allowed.
const uint8_t* allowed_mask(const py::object& mask, size_t n) {
    if (mask.is_none()) return nullptr;
    if (!py::isinstance<py::array>(mask)) throw std::invalid_argument("allowed must be a uint8 or bool array");
    py::array a = py::reinterpret_borrow<py::array>(mask);
    if ((!a.dtype().is(py::dtype::of<uint8_t>()) && !a.dtype().is(py::dtype::of<bool>())))
        throw std::invalid_argument("allowed must be a uint8 or bool array");
    if (a.ndim() != 1 || static_cast<size_t>(a.shape(0)) != n)
        throw std::invalid_argument("allowed must have one entry per item (" + std::to_string(n) + ")");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("allowed must be C-contiguous");
    return static_cast<const uint8_t*>(a.data());
}

// The (nq, top_k) ids and scores a search writes into.
struct Results {
    py::array_t<int64_t> ids;
    py::array_t<float> scores;
    Results(size_t nq, int64_t top_k)
        : ids(std::vector<size_t>{nq, checked(top_k)}), scores(std::vector<size_t>{nq, checked(top_k)}) {}
    static size_t checked(int64_t top_k) {
        if (top_k <= 0) throw std::invalid_argument("top_k must be positive");
        return static_cast<size_t>(top_k);
    }
    py::tuple tuple() const { return py::make_tuple(ids, scores); }
};

template <class Index, class Value>
py::tuple build_postings_typed(const py::array& indices_in, const py::array& values_in, size_t h, int num_threads) {
    auto indices = py::array_t<Index, py::array::c_style | py::array::forcecast>::ensure(indices_in);
    const size_t n = indices.shape(0), k = indices.shape(1);
    py::array_t<int64_t> offsets(h + 1);
    py::array_t<uint32_t> ids(n * k);
    py::array out_values(values_in.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n * k)});
    const Index* idx = indices.data();
    const Value* val = exact<Value>(values_in, "values");
    int64_t* off = offsets.mutable_data();
    uint32_t* id = ids.mutable_data();
    Value* ov = static_cast<Value*>(out_values.mutable_data());
    {
        py::gil_scoped_release release;
        csae::build_postings(idx, val, n, k, h, off, id, ov, num_threads);
    }
    return py::make_tuple(offsets, ids, out_values);
}

template <class Value>
py::tuple dispatch_index(const py::array& indices, const py::array& values, size_t h, int num_threads) {
    switch (indices.dtype().num()) {
        case py::detail::npy_api::NPY_UBYTE_: return build_postings_typed<uint8_t, Value>(indices, values, h, num_threads);
        case py::detail::npy_api::NPY_USHORT_: return build_postings_typed<uint16_t, Value>(indices, values, h, num_threads);
        case py::detail::npy_api::NPY_UINT_: return build_postings_typed<uint32_t, Value>(indices, values, h, num_threads);
        default: throw std::invalid_argument("indices must be uint8, uint16 or uint32, got " + dtype_name(indices));
    }
}

py::tuple build_postings(const py::array& indices, const py::array& values, int64_t h, int num_threads) {
    require_2d(indices, "indices");
    require_2d(values, "values");
    if (indices.shape(0) != values.shape(0) || indices.shape(1) != values.shape(1))
        throw std::invalid_argument("indices and values must have the same shape");
    if (h <= 0) throw std::invalid_argument("h must be positive, got " + std::to_string(h));
    if (values.dtype().is(py::dtype::of<float>()))
        return dispatch_index<float>(indices, values, static_cast<size_t>(h), num_threads);
    if (values.dtype().is(py::dtype("float16")))
        return dispatch_index<uint16_t>(indices, values, static_cast<size_t>(h), num_threads);
    throw std::invalid_argument("values must be float16 or float32, got " + dtype_name(values));
}


py::tuple build_windowed(const py::array& indices_in, const py::array& values, py::object keep_in, int64_t h,
                         int window_bits, int num_threads) {
    require_2d(indices_in, "indices");
    require_2d(values, "values");
    require_values_dtype(values, "values");
    if (indices_in.shape(0) != values.shape(0) || indices_in.shape(1) != values.shape(1))
        throw std::invalid_argument("indices and values must have the same shape");
    if (window_bits < 1 || window_bits > 16) throw std::invalid_argument("window_bits must be in 1..16");
    auto indices = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(indices_in);
    const size_t n = indices.shape(0), k = indices.shape(1);
    for (size_t i = 0; i < n * k; ++i)
        if (indices.data()[i] >= static_cast<uint64_t>(h))
            throw std::invalid_argument("code index out of range for h=" + std::to_string(h));
    py::array_t<uint8_t, py::array::c_style | py::array::forcecast> keep;
    const bool has_keep = !keep_in.is_none();
    if (has_keep) {
        keep = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(keep_in);
        if (keep.ndim() != 2 || keep.shape(0) != static_cast<py::ssize_t>(n) || keep.shape(1) != static_cast<py::ssize_t>(k))
            throw std::invalid_argument("keep must have the codes' shape (n, k)");
    }
    size_t total = 0;
    for (size_t i = 0; i < n * k; ++i) total += has_keep ? (keep.data()[i] != 0) : 1;
    const size_t W = csae::windows_for(n, window_bits);
    py::array_t<int64_t> offsets(W * h + 1);
    py::array_t<uint16_t> ids(total);
    py::array out_values(values.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(total)});
    const uint32_t* idx = indices.data();
    const uint8_t* kp = has_keep ? keep.data() : nullptr;
    int64_t* off = offsets.mutable_data();
    uint16_t* id = ids.mutable_data();
    const bool half = is_half(values);
    const void* in_val = values.data();
    void* out_val = out_values.mutable_data();
    {
        py::gil_scoped_release release;
        if (half)
            csae::build_windowed(idx, static_cast<const uint16_t*>(in_val), kp, n, k, h, window_bits, off, id,
                                 static_cast<uint16_t*>(out_val), num_threads);
        else
            csae::build_windowed(idx, static_cast<const float*>(in_val), kp, n, k, h, window_bits, off, id,
                                 static_cast<float*>(out_val), num_threads);
    }
    return py::make_tuple(offsets, ids, out_values);
}

py::tuple sparse_search(const py::array& offsets, const py::array& local_ids, const py::array& values, int64_t n,
                        int64_t h, int window_bits, const py::array& q_lat_in, const py::array& q_val_in,
                        int64_t top_k, int num_threads, const py::object& allowed_in) {
    auto q_lat = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(q_lat_in);
    auto q_val = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(q_val_in);
    require_2d(q_lat, "query indices");
    require_2d(q_val, "query values");
    if (q_lat.shape(0) != q_val.shape(0) || q_lat.shape(1) != q_val.shape(1))
        throw std::invalid_argument("query indices and values must have the same shape");
    require_values_dtype(values, "values");
    const size_t W = csae::windows_for(n, window_bits);
    if (offsets.ndim() != 1 || static_cast<size_t>(offsets.shape(0)) != W * h + 1)
        throw std::invalid_argument("offsets must have n_windows * h + 1 entries");
    const int64_t* off = exact<int64_t>(offsets, "offsets");
    if (local_ids.ndim() != 1 || values.ndim() != 1 || local_ids.shape(0) != values.shape(0) ||
        off[W * h] != static_cast<int64_t>(local_ids.shape(0)))
        throw std::invalid_argument("postings arrays disagree with offsets");
    const size_t nq = q_lat.shape(0), q_len = q_lat.shape(1);
    Results out(nq, top_k);
    const uint16_t* ids = exact<uint16_t>(local_ids, "local_ids");
    const int64_t* ql = q_lat.data();
    const float* qv = q_val.data();
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    const bool half = is_half(values);
    const uint8_t* allowed = allowed_mask(allowed_in, static_cast<size_t>(n));
    {
        py::gil_scoped_release release;
        auto run = [&](auto* vals) {
            using V = std::remove_const_t<std::remove_pointer_t<decltype(vals)>>;
            csae::IndexView<V> ix{static_cast<size_t>(n), static_cast<size_t>(h), static_cast<size_t>(window_bits), off, ids, vals, allowed};
            csae::search(ix, ql, qv, nq, q_len, top_k, oi, os, num_threads);
        };
        if (half) run(static_cast<const uint16_t*>(values.data()));
        else run(static_cast<const float*>(values.data()));
    }
    return out.tuple();
}

// Calls fn(ForwardCodes<Index, Value>) for the arrays' dtypes.
template <class Fn>
void with_forward(const py::array& indices, const py::array& values, Fn fn) {
    require_2d(indices, "forward indices");
    require_2d(values, "forward values");
    require_values_dtype(values, "forward values");
    if (indices.shape(0) != values.shape(0) || indices.shape(1) != values.shape(1))
        throw std::invalid_argument("forward indices and values must have the same shape");
    const size_t n = indices.shape(0), k = indices.shape(1);
    auto with_value = [&](auto* idx) {
        using I = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
        if (is_half(values)) fn(csae::ForwardCodes<I, uint16_t>{n, k, idx, exact<uint16_t>(values, "forward values")});
        else fn(csae::ForwardCodes<I, float>{n, k, idx, exact<float>(values, "forward values")});
    };
    switch (indices.dtype().num()) {
        case py::detail::npy_api::NPY_UBYTE_: return with_value(exact<uint8_t>(indices, "forward indices"));
        case py::detail::npy_api::NPY_USHORT_: return with_value(exact<uint16_t>(indices, "forward indices"));
        case py::detail::npy_api::NPY_UINT_: return with_value(exact<uint32_t>(indices, "forward indices"));
        default: throw std::invalid_argument("forward indices must be uint8, uint16 or uint32, got " + dtype_name(indices));
    }
}

py::array_t<float, py::array::c_style | py::array::forcecast> projections(const py::array& P_in) {
    auto P = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(P_in);
    if (P.ndim() != 2) throw std::invalid_argument("projections must be 2-D (nq, h)");
    return P;
}

py::tuple dense_rerank(const py::array& fwd_indices, const py::array& fwd_values, const py::array& P_in,
                       const py::array& candidates_in, int64_t top_k, int num_threads) {
    auto P = projections(P_in);
    auto cand = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(candidates_in);
    require_2d(cand, "candidates");
    if (cand.shape(0) != P.shape(0)) throw std::invalid_argument("candidates and projections disagree on nq");
    const size_t nq = P.shape(0), h = P.shape(1), c = cand.shape(1);
    Results out(nq, top_k);
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    with_forward(fwd_indices, fwd_values, [&](auto fc) {
        py::gil_scoped_release release;
        csae::rerank(fc, P.data(), h, nq, cand.data(), c, top_k, oi, os, num_threads);
    });
    return out.tuple();
}

py::tuple dense_scan(const py::array& fwd_indices, const py::array& fwd_values, const py::array& P_in, int64_t top_k,
                     int num_threads, const py::object& allowed_in) {
    auto P = projections(P_in);
    const size_t nq = P.shape(0), h = P.shape(1);
    const uint8_t* allowed = allowed_mask(allowed_in, fwd_indices.ndim() > 0 ? fwd_indices.shape(0) : 0);
    Results out(nq, top_k);
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    with_forward(fwd_indices, fwd_values, [&](auto fc) {
        py::gil_scoped_release release;
        csae::scan_all(fc, P.data(), h, nq, top_k, oi, os, num_threads, allowed);
    });
    return out.tuple();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "csae_engine's C++ core: posting lists and the inverted-index scorer";
    m.def("build_postings", &build_postings, py::arg("indices"), py::arg("values"), py::arg("h"),
          py::arg("num_threads") = -1,
          "Inverted lists of (n, k) codes: (offsets (h+1,) int64, item ids (n*k,) uint32, values (n*k,)).\n"
          "Items in each list are in increasing order; values keep their dtype (float16 or float32).");
    m.def("build_windowed", &build_windowed, py::arg("indices"), py::arg("values"), py::arg("keep"), py::arg("h"),
          py::arg("window_bits") = 16, py::arg("num_threads") = -1,
          "The windowed inverted index of (n, k) codes: (offsets (n_windows*h+1,) int64, local ids uint16, values).\n"
          "keep: None or an (n, k) mask of entries to index.");
    m.def("sparse_search", &sparse_search, py::arg("offsets"), py::arg("local_ids"), py::arg("values"), py::arg("n"),
          py::arg("h"), py::arg("window_bits"), py::arg("query_indices"), py::arg("query_values"), py::arg("top_k"),
          py::arg("num_threads") = -1, py::arg("allowed") = py::none(),
          "Exact top-k by the dot product of sparse query codes (nq, q) with the indexed codes: (ids, scores) (nq, top_k).\n"
          "allowed: None or an (n,) uint8/bool mask of the items that may be returned; fewer allowed than top_k pads with -1.");
    m.def("dense_rerank", &dense_rerank, py::arg("indices"), py::arg("values"), py::arg("projections"),
          py::arg("candidates"), py::arg("top_k"), py::arg("num_threads") = -1,
          "Top-k of candidates (nq, c; -1 = none) by sum_j values[i, j] * projections[q, indices[i, j]].");
    m.def("dense_scan", &dense_scan, py::arg("indices"), py::arg("values"), py::arg("projections"), py::arg("top_k"),
          py::arg("num_threads") = -1, py::arg("allowed") = py::none(),
          "Like dense_rerank over every item (or the items allowed by an (n,) uint8/bool mask).");
#ifdef CSAE_VERSION
    m.attr("__version__") = CSAE_VERSION;
#endif
}
