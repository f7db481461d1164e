// The only pybind11 file: checks shapes and dtypes, releases the GIL after reading inputs, returns numpy arrays.
//
// SegmentIndex holds one segment's arrays (never copied: they may be read-only memory maps), checks them once, and
// owns search, rerank, scan and export (PostingArrays, ForwardArrays and the *_query functions below).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "clusters.h"
#include "encode.h"
#include "ef.h"
#include "half.h"
#include "index.h"
#include "packed.h"
#include "postings.h"
#include "rerank.h"
#include "scorer.h"

namespace py = pybind11;

namespace {

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

bool is_half(const py::array& a) { return a.dtype().is(py::dtype("float16")); }
bool is_f32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

void require_values_dtype(const py::array& a, const std::string& name) {
    if (!is_half(a) && !is_f32(a)) throw std::invalid_argument(name + " must be float16 or float32, got " + dtype_name(a));
}

void require_c_contiguous(const py::array& a, const std::string& name) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(name + " must be C-contiguous");
}

void require_1d(const py::array& a, const std::string& name) {
    if (a.ndim() != 1) throw std::invalid_argument(name + " must be 1-D, got " + std::to_string(a.ndim()) + "-D");
}

void require_2d(const py::array& a, const std::string& name) {
    if (a.ndim() != 2)
        throw std::invalid_argument(name + " must be 2-D (n, k), got " + std::to_string(a.ndim()) + "-D");
}

// A C-contiguous view of exactly dtype T, never a copy (large, possibly memory-mapped arrays).
template <class T>
const T* exact(const py::array& a, const std::string& name) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw std::invalid_argument(name + " has dtype " + dtype_name(a) + ", expected " +
                                    py::str(py::dtype::of<T>()).cast<std::string>());
    require_c_contiguous(a, name);
    return static_cast<const T*>(a.data());
}

// Values as the C++ code reads them: float, or the raw bits (uint16_t) of a float16 array.
template <class Value>
const Value* values_of(const py::array& a, const std::string& name) {
    if constexpr (std::is_same<Value, float>::value) {
        return exact<float>(a, name);
    } else {
        if (!is_half(a)) throw std::invalid_argument(name + " has dtype " + dtype_name(a) + ", expected float16");
        require_c_contiguous(a, name);
        return static_cast<const uint16_t*>(a.data());
    }
}

// Query inputs: any array-like, converted once to C-contiguous float32 / int64 (a copy only when needed).
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

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

// ---- building ----

template <class Index, class Value>
py::tuple build_postings_typed(const py::array& indices_in, const py::array& values_in, size_t h, int num_threads) {
    auto indices = py::array_t<Index, py::array::c_style | py::array::forcecast>::ensure(indices_in);
    const size_t n = indices.shape(0), k = indices.shape(1);
    py::array_t<int64_t> offsets(h + 1);
    py::array_t<uint32_t> ids(n * k);
    py::array out_values(values_in.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n * k)});
    const Index* idx = indices.data();
    const Value* val = values_of<Value>(values_in, "values");
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

void require_window_bits(int64_t window_bits) {
    if (window_bits < 1 || window_bits > 16)
        throw std::invalid_argument("window_bits must be in 1..16, got " + std::to_string(window_bits));
}

// Codes (n, k): indices as uint32 (converted when narrower), each below h, beside values of the same shape.
py::array_t<uint32_t> checked_codes(const py::array& indices_in, const py::array& values, size_t h) {
    require_2d(indices_in, "indices");
    require_2d(values, "values");
    auto indices = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(indices_in);
    if (indices.shape(0) != values.shape(0) || indices.shape(1) != values.shape(1))
        throw std::invalid_argument("indices and values must have the same shape");
    for (py::ssize_t i = 0; i < indices.size(); ++i)
        if (indices.data()[i] >= h) throw std::invalid_argument("code index out of range for h=" + std::to_string(h));
    return indices;
}

py::tuple build_windowed(const py::array& indices_in, const py::array& values, py::object keep_in, int64_t h,
                         int window_bits, int num_threads) {
    require_values_dtype(values, "values");
    require_window_bits(window_bits);
    const auto indices = checked_codes(indices_in, values, static_cast<size_t>(h));
    const size_t n = indices.shape(0), k = indices.shape(1);
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

// ---- one segment's arrays ----

// The windowed posting lists of index.h, checked for dtypes and shapes (O(1)). The arrays are held, not copied;
// what the query code needs is read out once, so it runs without the GIL.
struct PostingArrays {
    py::array offsets, local_ids, values;
    size_t n = 0, h = 0, window_bits = 0, n_windows = 0;
    bool half = false;  // values are float16

    PostingArrays(py::array offsets_in, py::array local_ids_in, py::array values_in, int64_t n_in, int64_t h_in,
                  int64_t window_bits_in, const std::string& values_name)
        : offsets(std::move(offsets_in)), local_ids(std::move(local_ids_in)), values(std::move(values_in)) {
        if (n_in < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n_in));
        if (h_in <= 0) throw std::invalid_argument("h must be positive, got " + std::to_string(h_in));
        require_window_bits(window_bits_in);
        n = static_cast<size_t>(n_in), h = static_cast<size_t>(h_in), window_bits = static_cast<size_t>(window_bits_in);
        n_windows = csae::windows_for(n, window_bits);
        require_1d(offsets, "offsets");
        exact<int64_t>(offsets, "offsets");
        if (static_cast<size_t>(offsets.shape(0)) != n_windows * h + 1)
            throw std::invalid_argument("offsets has " + std::to_string(offsets.shape(0)) +
                                        " entries, expected n_windows * h + 1 = " + std::to_string(n_windows * h + 1));
        require_1d(local_ids, "local_ids");
        exact<uint16_t>(local_ids, "local_ids");
        require_1d(values, values_name);
        require_values_dtype(values, values_name);
        require_c_contiguous(values, values_name);
        half = is_half(values);
        const int64_t total = offset_data()[n_windows * h];
        if (local_ids.shape(0) != total || values.shape(0) != total)
            throw std::invalid_argument("postings arrays disagree with offsets: offsets[-1] = " + std::to_string(total) +
                                        ", local_ids has " + std::to_string(local_ids.shape(0)) + ", " + values_name +
                                        " has " + std::to_string(values.shape(0)));
    }

    const int64_t* offset_data() const { return static_cast<const int64_t*>(offsets.data()); }
    const uint16_t* local_id_data() const { return static_cast<const uint16_t*>(local_ids.data()); }
    size_t n_postings() const { return static_cast<size_t>(offset_data()[n_windows * h]); }

    // Calls fn(IndexView<Value>) for the values' dtype.
    template <class Fn>
    void with_view(const uint8_t* allowed, Fn fn) const {
        auto view = [&](const auto* vals) {
            using V = std::remove_const_t<std::remove_pointer_t<decltype(vals)>>;
            fn(csae::IndexView<V>{n, h, window_bits, offset_data(), local_id_data(), vals, allowed});
        };
        if (half) view(static_cast<const uint16_t*>(values.data()));
        else view(static_cast<const float*>(values.data()));
    }

    // The checks that read the data: offsets start at 0 and never decrease, and every local id lies inside its
    // window (a larger one would be scored as another window's item). O(n_windows * h + postings); call without
    // the GIL.
    void check_contents() const {
        const int64_t* off = offset_data();
        if (off[0] != 0) throw std::invalid_argument("offsets[0] must be 0, got " + std::to_string(off[0]));
        for (size_t i = 0; i < n_windows * h; ++i)
            if (off[i + 1] < off[i])
                throw std::invalid_argument("offsets must be non-decreasing: offsets[" + std::to_string(i + 1) + "] = " +
                                            std::to_string(off[i + 1]) + " < offsets[" + std::to_string(i) +
                                            "] = " + std::to_string(off[i]));
        const uint16_t* ids = local_id_data();
        const size_t win = size_t{1} << window_bits;
        for (size_t lat = 0; lat < h; ++lat)
            for (size_t w = 0; w < n_windows; ++w) {
                const size_t len = std::min(win, n - w * win);
                for (int64_t p = off[lat * n_windows + w]; p < off[lat * n_windows + w + 1]; ++p)
                    if (ids[p] >= len)
                        throw std::invalid_argument("local_ids[" + std::to_string(p) + "] = " + std::to_string(ids[p]) +
                                                    " is outside window " + std::to_string(w) + " (" +
                                                    std::to_string(len) + " items)");
            }
    }
};

// Forward codes (n, width): indices uint8/uint16/uint32 and values float16/float32 of one shape, C-contiguous.
// Held like PostingArrays; with_codes needs no GIL.
struct ForwardArrays {
    py::array indices, values;
    size_t rows = 0, cols = 0;
    int index_type = 0;  // the numpy type number of indices
    bool half = false;   // values are float16

    ForwardArrays(py::array indices_in, py::array values_in, const std::string& indices_name,
                  const std::string& values_name)
        : indices(std::move(indices_in)), values(std::move(values_in)) {
        require_2d(indices, indices_name);
        require_2d(values, values_name);
        require_values_dtype(values, values_name);
        if (indices.shape(0) != values.shape(0) || indices.shape(1) != values.shape(1))
            throw std::invalid_argument(indices_name + " and " + values_name + " must have the same shape, got (" +
                                        std::to_string(indices.shape(0)) + ", " + std::to_string(indices.shape(1)) +
                                        ") and (" + std::to_string(values.shape(0)) + ", " +
                                        std::to_string(values.shape(1)) + ")");
        require_c_contiguous(indices, indices_name);
        require_c_contiguous(values, values_name);
        rows = static_cast<size_t>(indices.shape(0)), cols = static_cast<size_t>(indices.shape(1));
        index_type = indices.dtype().num();
        half = is_half(values);
        switch (index_type) {
            case py::detail::npy_api::NPY_UBYTE_:
            case py::detail::npy_api::NPY_USHORT_:
            case py::detail::npy_api::NPY_UINT_: break;
            default:
                throw std::invalid_argument(indices_name + " must be uint8, uint16 or uint32, got " + dtype_name(indices));
        }
    }

    size_t n() const { return rows; }
    size_t width() const { return cols; }

    // Calls fn(ForwardCodes<Index, Value>) for the arrays' dtypes.
    template <class Fn>
    void with_codes(Fn fn) const {
        auto with_value = [&](const auto* idx) {
            using I = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
            if (half) fn(csae::ForwardCodes<I, uint16_t>{rows, cols, idx, static_cast<const uint16_t*>(values.data())});
            else fn(csae::ForwardCodes<I, float>{rows, cols, idx, static_cast<const float*>(values.data())});
        };
        switch (index_type) {
            case py::detail::npy_api::NPY_UBYTE_: return with_value(static_cast<const uint8_t*>(indices.data()));
            case py::detail::npy_api::NPY_USHORT_: return with_value(static_cast<const uint16_t*>(indices.data()));
            default: return with_value(static_cast<const uint32_t*>(indices.data()));
        }
    }

    // One more than the largest index (0 when empty): projections need at least this many columns. Call without the GIL.
    size_t index_bound() const {
        size_t bound = 0;
        with_codes([&](auto fc) {
            for (size_t i = 0; i < fc.n * fc.k; ++i) bound = std::max<size_t>(bound, size_t{fc.indices[i]} + 1);
        });
        return bound;
    }
};

// A type passed as a value, to pick a template instantiation inside a generic lambda.
template <class T>
struct Type {
    using type = T;
};

// How packed rows store their latents: fixed-width entries (packed.h) or an Elias-Fano coded sorted set (ef.h).
enum class IndexCoding { fixed, ef };

IndexCoding index_coding_of(const std::string& name) {
    if (name == "packed") return IndexCoding::fixed;
    if (name == "ef") return IndexCoding::ef;
    throw std::invalid_argument("index_coding must be 'packed' or 'ef', got '" + name + "'");
}

// Packed forward codes (packed.h, ef.h): an (n, row_bytes) uint8 array, each row a header (RowLayout: a float16
// scale, a float16 weight with a decoder bias or a residual code, residual_m residual bytes), and k (latent, value)
// entries: of index_bits + value_bits bits each (coding "packed"), or
// Elias-Fano coded (coding "ef": index_bits is then the low bits per latent, set from h and k). Held like
// ForwardArrays; the constructor checks the shape and widths, check_contents (no GIL) every latent and scale.
struct PackedArrays {
    py::array packed;
    size_t rows = 0, row_bytes = 0, k = 0, h = 0;
    unsigned index_bits = 0, value_bits = 0;
    csae::RowLayout layout;
    IndexCoding coding = IndexCoding::fixed;

    PackedArrays(py::array packed_in, size_t n, size_t h_, int64_t k_, int64_t ib, int64_t vb, bool bias,
                 int64_t residual_m, IndexCoding coding_)
        : packed(std::move(packed_in)), h(h_), coding(coding_) {
        if (residual_m < 0 || residual_m > 65536)
            throw std::invalid_argument("residual_m must be in 0..65536, got " + std::to_string(residual_m));
        layout = csae::RowLayout{h, bias, static_cast<size_t>(residual_m)};
        const bool ef = coding == IndexCoding::ef;
        if (!ef && (ib < 1 || ib > 32))
            throw std::invalid_argument("index_bits must be in 1..32, got " + std::to_string(ib));
        if (vb < 2 || vb > 16) throw std::invalid_argument("value_bits must be in 2..16, got " + std::to_string(vb));
        if (k_ < 1) throw std::invalid_argument("k must be positive, got " + std::to_string(k_));
        if (ef && static_cast<size_t>(k_) > h)
            throw std::invalid_argument("k = " + std::to_string(k_) + " exceeds h = " + std::to_string(h) +
                                        ": ef rows hold k distinct latents");
        k = static_cast<size_t>(k_), value_bits = static_cast<unsigned>(vb);
        index_bits = ef ? csae::ef_low_bits(h, k) : static_cast<unsigned>(ib);
        if (packed.ndim() != 2)
            throw std::invalid_argument("fwd_packed must be 2-D (n, row_bytes), got " + std::to_string(packed.ndim()) + "-D");
        exact<uint8_t>(packed, "fwd_packed");
        rows = static_cast<size_t>(packed.shape(0)), row_bytes = static_cast<size_t>(packed.shape(1));
        if (rows != n)
            throw std::invalid_argument("fwd_packed has " + std::to_string(rows) + " rows, expected n = " + std::to_string(n));
        const size_t header = layout.bytes();
        if (!ef && k >= (size_t{1} << 31))  // guards the product below
            throw std::invalid_argument("k = " + std::to_string(k) + " entries do not fit a row (2^31 bits at most)");
        const size_t bits = ef ? csae::ef_stream_bits(h, k, value_bits) : k * (index_bits + value_bits);
        if (bits >= (size_t{1} << 31))  // stream bit offsets are 32-bit
            throw std::invalid_argument("k = " + std::to_string(k) + " entries do not fit a row (2^31 bits at most)");
        const size_t need = header + (bits + 7) / 8;
        if (row_bytes < need) {
            const std::string entries = ef ? " ef-coded entries over h = " + std::to_string(h) + " with " +
                                                 std::to_string(value_bits) + "-bit values need "
                                           : " entries of " + std::to_string(index_bits) + " + " +
                                                 std::to_string(value_bits) + " bits need ";
            throw std::invalid_argument("fwd_packed has " + std::to_string(row_bytes) + " bytes per row, k = " +
                                        std::to_string(k) + entries + std::to_string(need) + " (header " +
                                        std::to_string(header) + ")");
        }
    }

    size_t n() const { return rows; }
    size_t width() const { return k + layout.has_bias; }     // the plain format's columns: k, and the bias column
    size_t index_bound() const { return layout.index_bound(); }  // p: h columns, the bias column, residual tables

    // Calls fn(PackedCodes<IB, VB>) with compile-time widths for the common layouts, PackedCodes<> otherwise;
    // ef rows: fn(EFCodes<VB>), likewise.
    template <class Fn>
    void with_codes(Fn fn) const {
        const auto* data = static_cast<const uint8_t*>(packed.data());
        if (coding == IndexCoding::ef) {
            auto ef_codes = [&](auto tag) {
                using Codes = typename decltype(tag)::type;
                fn(Codes(data, rows, row_bytes, k, value_bits, layout));
            };
            if (value_bits == 4) return ef_codes(Type<csae::EFCodes<4>>{});
            if (value_bits == 8) return ef_codes(Type<csae::EFCodes<8>>{});
            return ef_codes(Type<csae::EFCodes<>>{});
        }
        auto codes = [&](auto tag) {
            using Codes = typename decltype(tag)::type;
            fn(Codes(data, rows, row_bytes, k, index_bits, value_bits, layout));
        };
        const unsigned ib = index_bits, vb = value_bits;
        if (ib == 12 && vb == 4) return codes(Type<csae::PackedCodes<12, 4>>{});
        if (ib == 12 && vb == 8) return codes(Type<csae::PackedCodes<12, 8>>{});
        if (ib == 12 && vb == 6) return codes(Type<csae::PackedCodes<12, 6>>{});
        if (ib == 13 && vb == 4) return codes(Type<csae::PackedCodes<13, 4>>{});
        return codes(Type<csae::PackedCodes<>>{});
    }

    // Every latent below h and every scale (and bias weight) finite: O(n k), reporting the first bad row and entry;
    // ef rows also hold exactly k set bitmap bits and strictly increasing latents. Call without the GIL.
    void check_contents() const {
        if (coding == IndexCoding::ef) {
            const csae::EFCodes<> fc(static_cast<const uint8_t*>(packed.data()), rows, row_bytes, k, value_bits,
                                     layout);
            for (size_t i = 0; i < rows; ++i) {
                const int64_t item = static_cast<int64_t>(i);
                check_header(i, fc.scale(item), fc.weight(item));
                const std::string problem = fc.check_row(item);
                if (!problem.empty())
                    throw std::invalid_argument("fwd_packed row " + std::to_string(i) + ", " + problem);
            }
            return;
        }
        const csae::PackedCodes<> fc(static_cast<const uint8_t*>(packed.data()), rows, row_bytes, k, index_bits,
                                     value_bits, layout);
        for (size_t i = 0; i < rows; ++i) {
            const int64_t item = static_cast<int64_t>(i);
            check_header(i, fc.scale(item), fc.weight(item));
            for (size_t j = 0; j < k; ++j)
                if (fc.index(item, j) >= h)
                    throw std::invalid_argument("fwd_packed row " + std::to_string(i) + ", entry " + std::to_string(j) +
                                                ": latent " + std::to_string(fc.index(item, j)) +
                                                " out of range for h=" + std::to_string(h));
        }
    }

    static void check_header(size_t i, float scale, float weight) {
        if (!std::isfinite(scale))
            throw std::invalid_argument("fwd_packed row " + std::to_string(i) + ": scale is not finite (" +
                                        std::to_string(scale) + ")");
        if (!std::isfinite(weight))
            throw std::invalid_argument("fwd_packed row " + std::to_string(i) + ": weight is not finite (" +
                                        std::to_string(weight) + ")");
    }
};

// The forward store of a segment: plain (indices, values) or packed rows; the query paths take either.
using ForwardStore = std::variant<ForwardArrays, PackedArrays>;

// ---- queries, shared by SegmentIndex and the free functions ----

// Projections (nq, width) as float32; width must cover every forward index (index_bound).
void check_projections(const FloatArray& P, size_t index_bound) {
    if (P.ndim() != 2) throw std::invalid_argument("projections must be 2-D (nq, h)");
    if (static_cast<size_t>(P.shape(1)) < index_bound)
        throw std::invalid_argument("projections have " + std::to_string(P.shape(1)) +
                                    " columns, the forward codes need " + std::to_string(index_bound));
}

// Forward: ForwardArrays or PackedArrays (n() and with_codes).
template <class Forward>
py::tuple rerank_query(const Forward& fa, size_t index_bound, const FloatArray& P, const Int64Array& cand,
                       int64_t top_k, int num_threads) {
    check_projections(P, index_bound);
    require_2d(cand, "candidates");
    if (cand.shape(0) != P.shape(0)) throw std::invalid_argument("candidates and projections disagree on nq");
    const size_t nq = P.shape(0), h = P.shape(1), c = cand.shape(1);
    Results out(nq, top_k);
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    {
        py::gil_scoped_release release;
        fa.with_codes([&](auto fc) { csae::rerank(fc, P.data(), h, nq, cand.data(), c, top_k, oi, os, num_threads); });
    }
    return out.tuple();
}

template <class Forward>
py::tuple scan_query(const Forward& fa, size_t index_bound, const FloatArray& P, int64_t top_k,
                     int num_threads, const py::object& allowed_in) {
    check_projections(P, index_bound);
    const size_t nq = P.shape(0), h = P.shape(1);
    const uint8_t* allowed = allowed_mask(allowed_in, fa.n());
    Results out(nq, top_k);
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    {
        py::gil_scoped_release release;
        fa.with_codes([&](auto fc) { csae::scan_all(fc, P.data(), h, nq, top_k, oi, os, num_threads, allowed); });
    }
    return out.tuple();
}

// ---- clusters ----

// A clustered segment's routing arrays (clusters.h), checked once, and the layout derived from its postings.
struct ClusterArrays {
    py::array cluster_rows, centroid_offsets, centroid_clusters, centroid_weights;
    csae::CentroidLists lists;
    csae::ClusterLayout layout;
    std::vector<int64_t> sizes;  // items per cluster

    ClusterArrays(const PostingArrays& pa, py::array rows_in, py::array offsets_in, py::array clusters_in,
                  py::array weights_in, int num_threads)
        : cluster_rows(std::move(rows_in)), centroid_offsets(std::move(offsets_in)),
          centroid_clusters(std::move(clusters_in)), centroid_weights(std::move(weights_in)) {
        require_1d(cluster_rows, "cluster_rows");
        const int64_t* rows = exact<int64_t>(cluster_rows, "cluster_rows");
        if (cluster_rows.shape(0) < 2) throw std::invalid_argument("cluster_rows needs at least 2 entries (1 cluster)");
        const size_t C = cluster_rows.shape(0) - 1;
        if (rows[0] != 0 || rows[C] != static_cast<int64_t>(pa.n))
            throw std::invalid_argument("cluster_rows must run from 0 to n = " + std::to_string(pa.n) + ", got " +
                                        std::to_string(rows[0]) + " to " + std::to_string(rows[C]));
        sizes.resize(C);
        for (size_t c = 0; c < C; ++c) {
            if (rows[c + 1] < rows[c])
                throw std::invalid_argument("cluster_rows must be non-decreasing (cluster " + std::to_string(c) + ")");
            sizes[c] = rows[c + 1] - rows[c];
        }
        require_1d(centroid_offsets, "centroid_offsets");
        require_1d(centroid_clusters, "centroid_clusters");
        require_1d(centroid_weights, "centroid_weights");
        const int64_t* off = exact<int64_t>(centroid_offsets, "centroid_offsets");
        const uint32_t* cl = exact<uint32_t>(centroid_clusters, "centroid_clusters");
        const float* wt = exact<float>(centroid_weights, "centroid_weights");
        if (static_cast<size_t>(centroid_offsets.shape(0)) != pa.h + 1)
            throw std::invalid_argument("centroid_offsets must have h + 1 = " + std::to_string(pa.h + 1) + " entries");
        const int64_t total = centroid_clusters.shape(0);
        if (centroid_weights.shape(0) != total || off[0] != 0 || off[pa.h] != total)
            throw std::invalid_argument("centroid lists disagree: offsets must run from 0 to the " +
                                        std::to_string(total) + " entries of centroid_clusters and centroid_weights");
        for (size_t l = 0; l < pa.h; ++l)
            if (off[l + 1] < off[l]) throw std::invalid_argument("centroid_offsets must be non-decreasing");
        for (int64_t p = 0; p < total; ++p) {
            if (cl[p] >= C)
                throw std::invalid_argument("centroid_clusters[" + std::to_string(p) + "] = " + std::to_string(cl[p]) +
                                            " out of range for " + std::to_string(C) + " clusters");
            if (!std::isfinite(wt[p]))
                throw std::invalid_argument("centroid_weights[" + std::to_string(p) + "] is not finite");
        }
        lists = csae::CentroidLists{pa.h, C, off, cl, wt};
        py::gil_scoped_release release;
        pa.with_view(nullptr, [&](const auto& ix) { layout = csae::make_layout(ix, rows, C, num_threads); });
    }

    // Per cluster, its items that may be returned.
    std::vector<int64_t> counts(const uint8_t* allowed) const {
        if (!allowed) return sizes;
        const int64_t* rows = static_cast<const int64_t*>(cluster_rows.data());
        std::vector<int64_t> out(sizes.size(), 0);
        for (size_t c = 0; c < sizes.size(); ++c)
            for (int64_t r = rows[c]; r < rows[c + 1]; ++r) out[c] += allowed[r] != 0;
        return out;
    }
};

// Sparse search: exact (ca null), or over clusters, each query visiting clusters until max(ceil(probe * allowed
// items), min_items) items are covered.
py::tuple sparse_query(const PostingArrays& pa, const ClusterArrays* ca, const Int64Array& q_lat,
                       const FloatArray& q_val, int64_t top_k, int num_threads, const py::object& allowed_in,
                       double probe, int64_t min_items) {
    require_2d(q_lat, "query indices");
    require_2d(q_val, "query values");
    if (q_lat.shape(0) != q_val.shape(0) || q_lat.shape(1) != q_val.shape(1))
        throw std::invalid_argument("query indices and values must have the same shape");
    const size_t nq = q_lat.shape(0), q_len = q_lat.shape(1);
    Results out(nq, top_k);
    const uint8_t* allowed = allowed_mask(allowed_in, pa.n);
    const int64_t* ql = q_lat.data();
    const float* qv = q_val.data();
    int64_t* oi = out.ids.mutable_data();
    float* os = out.scores.mutable_data();
    {
        py::gil_scoped_release release;
        if (!ca) {
            pa.with_view(allowed, [&](const auto& ix) { csae::search(ix, ql, qv, nq, q_len, top_k, oi, os, num_threads); });
        } else {
            const std::vector<int64_t> counts = ca->counts(allowed);
            int64_t total = 0;
            for (int64_t c : counts) total += c;
            const int64_t budget = std::max<int64_t>(
                static_cast<int64_t>(std::ceil(probe * static_cast<double>(total))), min_items);
            pa.with_view(allowed, [&](const auto& ix) {
                csae::probe_search(ix, ca->layout, ca->lists, counts.data(), budget, ql, qv, nq, q_len, top_k, oi,
                                   os, num_threads);
            });
        }
    }
    return out.tuple();
}

// Sparse centroid lists as index/clusters.py stores them, checked against n_clusters: offsets (h + 1,) int64,
// clusters uint32, weights float32.
csae::CentroidLists centroid_lists(const py::array& offsets_in, const py::array& clusters_in,
                                   const py::array& weights_in, int64_t n_clusters, const char* what) {
    for (const py::array* a : {&offsets_in, &clusters_in, &weights_in}) require_1d(*a, what);
    if (offsets_in.shape(0) < 1) throw std::invalid_argument(std::string(what) + ": offsets need h + 1 entries");
    const int64_t* off = exact<int64_t>(offsets_in, what);
    const uint32_t* cl = exact<uint32_t>(clusters_in, what);
    const float* wt = exact<float>(weights_in, what);
    if (n_clusters <= 0) throw std::invalid_argument(std::string(what) + ": the cluster count must be positive");
    const size_t h = offsets_in.shape(0) - 1;
    if (off[0] != 0 || off[h] != clusters_in.shape(0) || weights_in.shape(0) != clusters_in.shape(0))
        throw std::invalid_argument(std::string(what) + ": lists disagree with their offsets");
    for (size_t l = 0; l < h; ++l)
        if (off[l] > off[l + 1]) throw std::invalid_argument(std::string(what) + ": offsets must not decrease");
    for (int64_t p = 0; p < clusters_in.shape(0); ++p)
        if (cl[p] >= static_cast<uint64_t>(n_clusters))
            throw std::invalid_argument(std::string(what) + ": a cluster id >= the cluster count");
    return {h, static_cast<size_t>(n_clusters), off, cl, wt};
}

py::array_t<int32_t> assign_clusters(const py::array& indices_in, const FloatArray& values, const py::array& offsets_in,
                                     const py::array& clusters_in, const py::array& weights_in, int64_t n_clusters,
                                     int num_threads) {
    const csae::CentroidLists lists = centroid_lists(offsets_in, clusters_in, weights_in, n_clusters, "centroid lists");
    const auto indices = checked_codes(indices_in, values, lists.h);
    const size_t n = indices.shape(0), k = indices.shape(1);
    py::array_t<int32_t> out(n);
    int32_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        csae::assign_clusters(lists, indices.data(), values.data(), n, k, o, num_threads);
    }
    return out;
}

py::array_t<int32_t> assign_clusters_grouped(const py::array& indices_in, const FloatArray& values,
                                             const py::array& group_offsets, const py::array& group_clusters,
                                             const py::array& group_weights, const py::array& offsets,
                                             const py::array& clusters, const py::array& weights,
                                             const py::array& group_first_in, int64_t probe_groups,
                                             int num_threads) {
    const int64_t* first = exact<int64_t>(group_first_in, "group_first");
    const int64_t G = group_first_in.shape(0) - 1;
    if (G < 1 || first[0] != 0) throw std::invalid_argument("group_first must start at 0 and hold n_groups + 1 entries");
    for (int64_t g = 0; g < G; ++g)
        if (first[g + 1] <= first[g]) throw std::invalid_argument("every group must hold at least one cluster");
    if (probe_groups < 1) throw std::invalid_argument("probe_groups must be positive");
    const csae::CentroidLists groups = centroid_lists(group_offsets, group_clusters, group_weights, G, "group lists");
    const csae::CentroidLists lists = centroid_lists(offsets, clusters, weights, first[G], "centroid lists");
    for (size_t l = 0; l < lists.h; ++l)
        for (int64_t p = lists.offsets[l] + 1; p < lists.offsets[l + 1]; ++p)
            if (lists.clusters[p] <= lists.clusters[p - 1])
                throw std::invalid_argument("centroid lists: each latent's clusters must increase");
    if (groups.h != lists.h) throw std::invalid_argument("group and centroid lists must have the same h");
    const auto indices = checked_codes(indices_in, values, lists.h);
    const size_t n = indices.shape(0), k = indices.shape(1);
    py::array_t<int32_t> out(n);
    int32_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        csae::assign_clusters_grouped(groups, lists, first, static_cast<size_t>(probe_groups), indices.data(),
                                      values.data(), n, k, o, num_threads);
    }
    return out;
}

// ---- query encoding ----

// Queries (nq, d) and weights (h, d), both C-contiguous float32: checked, with their sizes.
struct QueryProduct {
    const float* Q;
    const float* W;
    size_t nq, d, h;

    QueryProduct(const py::array& queries, const py::array& weights) {
        if (queries.ndim() != 2) throw std::invalid_argument("queries must be 2-D (nq, d)");
        if (weights.ndim() != 2) throw std::invalid_argument("weights must be 2-D (h, d)");
        Q = exact<float>(queries, "queries");
        W = exact<float>(weights, "weights");
        nq = queries.shape(0), d = queries.shape(1), h = weights.shape(0);
        if (static_cast<size_t>(weights.shape(1)) != d)
            throw std::invalid_argument("weights have d=" + std::to_string(weights.shape(1)) + ", queries d=" +
                                        std::to_string(d));
    }
};

// The int8 copy of an encoder (h, d): int8_weights (h, width) int8, width d rounded up to 32; int8_bounds (3, h)
// float32: scale, q_slack, w_norm (cpp/encode.h, Int8Encoder).
csae::Int8Encoder int8_encoder_of(const py::object& weights, const py::object& bounds, size_t h, size_t d) {
    if (weights.is_none() != bounds.is_none())
        throw std::invalid_argument("int8_weights and int8_bounds go together");
    if (weights.is_none()) return {};
    if (!py::isinstance<py::array>(weights) || !py::isinstance<py::array>(bounds))
        throw std::invalid_argument("int8_weights and int8_bounds must be arrays");
    const py::array W8 = py::reinterpret_borrow<py::array>(weights), B = py::reinterpret_borrow<py::array>(bounds);
    const size_t width = (d + csae::INT8_STEP - 1) / csae::INT8_STEP * csae::INT8_STEP;
    if (W8.ndim() != 2 || static_cast<size_t>(W8.shape(0)) != h || static_cast<size_t>(W8.shape(1)) != width)
        throw std::invalid_argument("int8_weights must have shape (h, d rounded up to 32) = (" + std::to_string(h) +
                                    ", " + std::to_string(width) + ")");
    if (B.ndim() != 2 || B.shape(0) != 3 || static_cast<size_t>(B.shape(1)) != h)
        throw std::invalid_argument("int8_bounds must have shape (3, h), h=" + std::to_string(h));
    const float* bp = exact<float>(B, "int8_bounds");
    return {exact<int8_t>(W8, "int8_weights"), width, bp, bp + h, bp + 2 * h};
}

py::tuple encode_queries(const py::array& queries, const py::array& weights, const py::object& bias, int64_t k,
                         bool nonneg, int num_threads, const py::object& int8_weights, const py::object& int8_bounds) {
    const QueryProduct qp(queries, weights);
    const float *Q = qp.Q, *W = qp.W;
    const size_t nq = qp.nq, d = qp.d, h = qp.h;
    if (k < 1 || static_cast<size_t>(k) > h)
        throw std::invalid_argument("k must be in 1..h=" + std::to_string(h) + ", got " + std::to_string(k));
    const float* b = nullptr;
    if (!bias.is_none()) {
        if (!py::isinstance<py::array>(bias)) throw std::invalid_argument("bias must be None or an (h,) array");
        py::array ba = py::reinterpret_borrow<py::array>(bias);
        if (ba.ndim() != 1 || static_cast<size_t>(ba.shape(0)) != h)
            throw std::invalid_argument("bias must have shape (h,), h=" + std::to_string(h));
        b = exact<float>(ba, "bias");
    }
    const csae::Int8Encoder int8 = int8_encoder_of(int8_weights, int8_bounds, h, d);
    py::array_t<int64_t> idx(std::vector<size_t>{nq, static_cast<size_t>(k)});
    py::array_t<float> val(std::vector<size_t>{nq, static_cast<size_t>(k)});
    int64_t* ip = idx.mutable_data();
    float* vp = val.mutable_data();
    {
        py::gil_scoped_release release;
        csae::encode_queries(Q, nq, d, W, b, h, static_cast<size_t>(k), nonneg, ip, vp, num_threads, int8);
    }
    return py::make_tuple(idx, val);
}

py::array_t<float> project_queries(const py::array& queries, const py::array& weights, int num_threads) {
    const QueryProduct qp(queries, weights);
    const float *Q = qp.Q, *W = qp.W;
    const size_t nq = qp.nq, d = qp.d, h = qp.h;
    py::array_t<float> out(std::vector<size_t>{nq, h});
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        csae::project_queries(Q, nq, d, W, h, op, num_threads);
    }
    return out;
}

// ---- SegmentIndex ----

// One index segment: its windowed postings and forward codes, checked once, then searched, reranked, scanned and
// exported without re-checking them. Immutable; any number of threads may query it at once.
class SegmentIndex {
  public:
    SegmentIndex(py::array offsets, py::array local_ids, py::array post_values, py::array fwd_indices,
                 py::array fwd_values, int64_t n, int64_t h, int64_t window_bits)
        : postings_(std::move(offsets), std::move(local_ids), std::move(post_values), n, h, window_bits, "post_values"),
          forward_(ForwardArrays(std::move(fwd_indices), std::move(fwd_values), "fwd_indices", "fwd_values")) {
        const auto& fa = std::get<ForwardArrays>(forward_);
        if (fa.n() != postings_.n)
            throw std::invalid_argument("fwd_indices has " + std::to_string(fa.n()) + " rows, expected n = " +
                                        std::to_string(postings_.n));
        py::gil_scoped_release release;
        postings_.check_contents();
        forward_bound_ = fa.index_bound();
    }

    // The same segment with packed forward codes (PackedArrays).
    static SegmentIndex packed(py::array offsets, py::array local_ids, py::array post_values, py::array fwd_packed,
                               int64_t n, int64_t h, int64_t window_bits, int64_t k, int64_t index_bits,
                               int64_t value_bits, bool has_bias, const std::string& index_coding,
                               int64_t residual_m) {
        const IndexCoding coding = index_coding_of(index_coding);
        PostingArrays postings(std::move(offsets), std::move(local_ids), std::move(post_values), n, h, window_bits,
                               "post_values");
        PackedArrays packed(std::move(fwd_packed), postings.n, postings.h, k, index_bits, value_bits, has_bias,
                            residual_m, coding);
        {
            py::gil_scoped_release release;
            postings.check_contents();
            packed.check_contents();
        }
        const size_t bound = packed.index_bound();
        return SegmentIndex(std::move(postings), std::move(packed), bound);
    }

    py::tuple search(const Int64Array& q_lat, const FloatArray& q_val, int64_t top_k, int num_threads,
                     const py::object& allowed, double probe, int64_t min_items) const {
        if (!(probe > 0.0 && probe <= 1.0))
            throw std::invalid_argument("probe must be in (0, 1], got " + std::to_string(probe));
        if (probe < 1.0 && !clusters_) throw std::invalid_argument("probe < 1 needs a clustered segment (with_clusters)");
        return sparse_query(postings_, probe < 1.0 ? clusters_.get() : nullptr, q_lat, q_val, top_k, num_threads,
                            allowed, probe, min_items);
    }

    // This segment with routing arrays: its rows are numbered cluster by cluster (clusters.h).
    SegmentIndex with_clusters(py::array cluster_rows, py::array centroid_offsets, py::array centroid_clusters,
                               py::array centroid_weights, int num_threads) const {
        SegmentIndex out(*this);
        out.clusters_ = std::make_shared<const ClusterArrays>(postings_, std::move(cluster_rows),
                                                              std::move(centroid_offsets), std::move(centroid_clusters),
                                                              std::move(centroid_weights), num_threads);
        return out;
    }

    size_t n_clusters() const { return clusters_ ? clusters_->lists.n_clusters : 0; }
    // Memory the cluster layout derives on load (not stored in the index files): piece rows and run starts.
    size_t layout_bytes() const {
        if (!clusters_) return 0;
        const auto& l = clusters_->layout;
        return l.piece_starts.size() * sizeof(uint16_t) + (l.piece_rows.size() + l.first_piece.size()) * sizeof(int64_t);
    }

    py::tuple rerank(const FloatArray& P, const Int64Array& candidates, int64_t top_k, int num_threads) const {
        return std::visit([&](const auto& fa) { return rerank_query(fa, forward_bound_, P, candidates, top_k, num_threads); },
                          forward_);
    }

    py::tuple scan(const FloatArray& P, int64_t top_k, int num_threads, const py::object& allowed) const {
        return std::visit([&](const auto& fa) { return scan_query(fa, forward_bound_, P, top_k, num_threads, allowed); },
                          forward_);
    }

    // Every posting of window w in latent order: (rows within the window, latents, values as float32).
    py::tuple window_postings(int64_t w) const {
        const size_t W = postings_.n_windows, h = postings_.h;
        if (w < 0 || static_cast<size_t>(w) >= W)
            throw std::invalid_argument("window " + std::to_string(w) + " out of range: the segment has " +
                                        std::to_string(W) + " windows");
        const int64_t* off = postings_.offset_data();
        size_t total = 0;
        for (size_t lat = 0; lat < h; ++lat) total += off[lat * W + w + 1] - off[lat * W + w];
        py::array_t<int32_t> rows(total), latents(total);
        py::array_t<float> values(total);
        int32_t* r = rows.mutable_data();
        int32_t* l = latents.mutable_data();
        float* v = values.mutable_data();
        const uint16_t* ids = postings_.local_id_data();
        {
            py::gil_scoped_release release;
            postings_.with_view(nullptr, [&](const auto& ix) {
                size_t at = 0;
                for (size_t lat = 0; lat < h; ++lat)
                    for (int64_t p = off[lat * W + w]; p < off[lat * W + w + 1]; ++p, ++at) {
                        r[at] = ids[p];
                        l[at] = static_cast<int32_t>(lat);
                        v[at] = value_as_float(ix.values[p]);
                    }
            });
        }
        return py::make_tuple(rows, latents, values);
    }

    size_t n() const { return postings_.n; }
    size_t h() const { return postings_.h; }
    size_t window_bits() const { return postings_.window_bits; }
    size_t n_windows() const { return postings_.n_windows; }
    size_t forward_width() const { return std::visit([](const auto& fa) { return fa.width(); }, forward_); }
    size_t n_postings() const { return postings_.n_postings(); }
    bool is_packed() const { return std::holds_alternative<PackedArrays>(forward_); }
    size_t row_bytes() const { return is_packed() ? std::get<PackedArrays>(forward_).row_bytes : 0; }
    size_t index_bits() const { return is_packed() ? std::get<PackedArrays>(forward_).index_bits : 0; }
    size_t value_bits() const { return is_packed() ? std::get<PackedArrays>(forward_).value_bits : 0; }
    size_t residual_m() const { return is_packed() ? std::get<PackedArrays>(forward_).layout.residual_m : 0; }
    std::string index_coding() const {
        if (!is_packed()) return "";
        return std::get<PackedArrays>(forward_).coding == IndexCoding::ef ? "ef" : "packed";
    }

  private:
    SegmentIndex(PostingArrays postings, PackedArrays packed, size_t bound)
        : postings_(std::move(postings)), forward_(std::move(packed)), forward_bound_(bound) {}

    static float value_as_float(float v) { return v; }
    static float value_as_float(uint16_t bits) { return csae::half_to_float(bits); }

    PostingArrays postings_;
    ForwardStore forward_;
    std::shared_ptr<const ClusterArrays> clusters_;  // null: not clustered
    size_t forward_bound_ = 0;  // the columns projections need: the largest forward index + 1, or h + has_bias
};

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "csae_engine's C++ core: posting lists, the windowed inverted-index scorer and dense reranking";
    m.def("build_postings", &build_postings, py::arg("indices"), py::arg("values"), py::arg("h"),
          py::arg("num_threads") = -1,
          "Inverted lists of (n, k) codes: (offsets (h+1,) int64, item ids (n*k,) uint32, values (n*k,)).\n"
          "Items in each list are in increasing order; values keep their dtype (float16 or float32).");
    m.def("encode_queries", &encode_queries, py::arg("queries"), py::arg("weights"), py::arg("bias"), py::arg("k"),
          py::arg("nonneg") = false, py::arg("num_threads") = 1, py::arg("int8_weights") = py::none(),
          py::arg("int8_bounds") = py::none(), R"doc(
Sparse codes of queries: the k strongest entries of z = weights @ q + bias, values scaled to unit norm.

Parameters
----------
queries : (nq, d) float32, C-contiguous
weights : (h, d) float32, C-contiguous
    The encoder, one row per latent (W_enc transposed).
bias : None or (h,) float32
k : int
    1..h.
nonneg : bool, default False
    False: the k largest |z| with their signs, by |z| descending. True: the k largest z with ReLU applied, by z
    descending (a row with no positive z comes out all zeros). Ties go to the smaller latent.
num_threads : int, default 1
    Blocks of 4 queries share one pass over weights; blocks run in parallel (-1: all cores).
int8_weights, int8_bounds : None, or an int8 copy of weights (h, d rounded up to 32) and (3, h) float32 bounds
    (scale, q_slack, w_norm; csae_engine.index.query.int8_encoder): each query reads the copy, then multiplies
    in float32 only the latents that could reach its top k. The codes are the same, bit for bit.
Returns
-------
indices : (nq, k) int64
values : (nq, k) float32
)doc");
    m.def("project_queries", &project_queries, py::arg("queries"), py::arg("weights"), py::arg("num_threads") = 1,
          "weights (h, d) @ q for each row q of queries (nq, d), both float32 C-contiguous: (nq, h) float32.\n"
          "Blocks of 4 queries share one pass over weights; blocks run in parallel (-1: all cores).");
    m.def("build_windowed", &build_windowed, py::arg("indices"), py::arg("values"), py::arg("keep"), py::arg("h"),
          py::arg("window_bits") = 16, py::arg("num_threads") = -1,
          "The windowed inverted index of (n, k) codes: (offsets (n_windows*h+1,) int64, local ids uint16, values).\n"
          "keep: None or an (n, k) mask of entries to index.");

    m.def("assign_clusters_grouped", &assign_clusters_grouped, py::arg("indices"), py::arg("values"),
          py::arg("group_offsets"), py::arg("group_clusters"), py::arg("group_weights"), py::arg("centroid_offsets"),
          py::arg("centroid_clusters"), py::arg("centroid_weights"), py::arg("group_first"), py::arg("probe_groups"),
          py::arg("num_threads") = -1,
          "assign_clusters over clusters numbered group by group (group g: [group_first[g], group_first[g + 1])),\n"
          "each code scoring only the clusters of its probe_groups best groups (by the group centroid lists).");
    m.def("assign_clusters", &assign_clusters, py::arg("indices"), py::arg("values"), py::arg("centroid_offsets"),
          py::arg("centroid_clusters"), py::arg("centroid_weights"), py::arg("n_clusters"), py::arg("num_threads") = -1,
          "Each code's best cluster: argmax_c sum_j values[i, j] * centroid_c[indices[i, j]] (ties: the smaller c),\n"
          "(n,) int32. indices (n, k) uint32 < h, values (n, k) float32; the centroid lists as for\n"
          "SegmentIndex.with_clusters, h = len(centroid_offsets) - 1.");
    py::class_<SegmentIndex>(m, "SegmentIndex", R"doc(
One index segment: windowed posting lists and forward codes, checked once, then queried.

The arrays are held, never copied (they may be read-only memory maps) and must not change afterwards.

Parameters
----------
offsets : (n_windows * h + 1,) int64
    Postings of latent i in window w: ``offsets[i * n_windows + w] : offsets[i * n_windows + w + 1]``.
local_ids : (n_postings,) uint16
    Each posting's row relative to its window's first row.
post_values : (n_postings,) float16 or float32
fwd_indices : (n, width) uint8, uint16 or uint32
    Forward codes: the latents of each row.
fwd_values : (n, width) float16 or float32
n : int
    Rows in the segment.
h : int
    Latents.
window_bits : int
    Windows hold ``2 ** window_bits`` rows, 1..16.

Raises
------
ValueError
    Naming the array and the problem (dtype, contiguity, shape, offsets, local ids outside their window).
)doc")
        .def(py::init<py::array, py::array, py::array, py::array, py::array, int64_t, int64_t, int64_t>(),
             py::arg("offsets"), py::arg("local_ids"), py::arg("post_values"), py::arg("fwd_indices"),
             py::arg("fwd_values"), py::arg("n"), py::arg("h"), py::arg("window_bits"))
        .def_static("packed", &SegmentIndex::packed, py::arg("offsets"), py::arg("local_ids"), py::arg("post_values"),
                    py::arg("fwd_packed"), py::arg("n"), py::arg("h"), py::arg("window_bits"), py::arg("k"),
                    py::arg("index_bits"), py::arg("value_bits"), py::arg("has_bias"),
                    py::arg("index_coding") = "packed", py::arg("residual_m") = 0, R"doc(
A SegmentIndex whose forward codes are packed: k (latent, value) entries per row in a fixed number of bytes.

rerank and scan score straight from the packed bytes: score = s * sum_j q_j * projections[q, latent_j]
+ w * (projections[q, h] (only with has_bias) + sum_m projections[q, h + has_bias + 256 m + r_m]) (the r_m terms
only with residual_m > 0), so projections need h + has_bias + 256 * residual_m columns.

Parameters
----------
offsets, local_ids, post_values, n, h, window_bits
    The posting lists, as for SegmentIndex.
fwd_packed : (n, row_bytes) uint8, C-contiguous
    Each row: bytes 0-1 the float16 scale s (little-endian); with has_bias or residual_m > 0, bytes 2-3 the
    float16 weight w; then residual_m bytes r_m, the residual code; then a bitstream read LSB-first (bit t is bit
    t % 8 of byte header + t // 8, header = 2 + 2 * (has_bias or residual_m > 0) + residual_m).
    index_coding "packed": entry j takes bits j * w to (j + 1) * w - 1, w = index_bits + value_bits: the latent
    (unsigned, < h), then the value q_j (two's complement); latents need not be sorted. Stream bits: k * w.
    index_coding "ef": the latents x_0 < ... < x_{k-1} Elias-Fano coded with L = max(0, floor(log2(h / k))) low
    bits: k low parts (x_i & (2^L - 1), L bits each), a bitmap of k + ((h - 1) >> L) + 1 bits with bit
    (x_i >> L) + i set for each i and no other, then the k values q_i (value_bits each, two's complement).
    row_bytes >= header + ceil(stream bits / 8); later bytes are padding. Entries with q_j = 0 contribute nothing.
k : int
    Entries per row, >= 1 (ef: <= h).
index_bits : int
    1..32; ignored with index_coding "ef" (L follows from h and k).
value_bits : int
    2..16.
has_bias : bool
index_coding : {"packed", "ef"}, default "packed"
residual_m : int, default 0
    Bytes of residual code per row, 0..65536.

Raises
------
ValueError
    Naming the problem: dtype, shape, contiguity, rows, bytes per row, bit widths, an unknown index_coding, a
    latent >= h (its row and entry), a scale or weight that is not finite; ef rows: a bitmap without exactly
    k set bits, or latents that do not strictly increase (the row and entry).
)doc")
        .def("search", &SegmentIndex::search, py::arg("query_indices"), py::arg("query_values"), py::arg("top_k"),
             py::arg("num_threads") = -1, py::arg("allowed") = py::none(), py::arg("probe") = 1.0,
             py::arg("min_items") = 0, R"doc(
Top-k rows by the dot product of sparse queries with the posting lists: exact with probe=1, else over the
clusters each query routes to (with_clusters) until max(ceil(probe * allowed rows), min_items) rows are covered.

Parameters
----------
query_indices : (nq, q) int
    Latents, each in 0..h-1.
query_values : (nq, q) float
top_k : int
    Positive.
num_threads : int, default -1 (all cores)
allowed : None or (n,) uint8/bool
    Rows that may be returned (non-zero).
probe : float in (0, 1], default 1
    Share of the allowed rows to visit; 1 scores every row (exact).
min_items : int, default 0
    Rows to visit at least (probe < 1).

Returns
-------
ids : (nq, top_k) int64
    Rows of the segment, best first; -1 pads when fewer rows are allowed.
scores : (nq, top_k) float32
    -inf where ids is -1. Ties go to the smaller row.
)doc")
        .def("rerank", &SegmentIndex::rerank, py::arg("projections"), py::arg("candidates"), py::arg("top_k"),
             py::arg("num_threads") = -1, R"doc(
Top-k of candidate rows by the forward codes: score = sum_j fwd_values[i, j] * projections[q, fwd_indices[i, j]]
(packed codes: the score given under SegmentIndex.packed).

Parameters
----------
projections : (nq, p) float
    p covers every forward index.
candidates : (nq, c) int
    Rows to score; -1 = none.
top_k : int
num_threads : int, default -1

Returns
-------
ids : (nq, top_k) int64
scores : (nq, top_k) float32
)doc")
        .def("scan", &SegmentIndex::scan, py::arg("projections"), py::arg("top_k"), py::arg("num_threads") = -1,
             py::arg("allowed") = py::none(), R"doc(
Like rerank over every row (or the rows allowed by an (n,) uint8/bool mask).

Returns
-------
ids : (nq, top_k) int64
scores : (nq, top_k) float32
)doc")
        .def("window_postings", &SegmentIndex::window_postings, py::arg("w"), R"doc(
Every posting of window w, in latent order.

Parameters
----------
w : int
    0..n_windows-1; the window holds rows ``w << window_bits`` onwards.

Returns
-------
rows : (m,) int32
    Rows relative to the window's first row.
latents : (m,) int32
values : (m,) float32
)doc")
        .def("with_clusters", &SegmentIndex::with_clusters, py::arg("cluster_rows"), py::arg("centroid_offsets"),
             py::arg("centroid_clusters"), py::arg("centroid_weights"), py::arg("num_threads") = -1, R"doc(
This segment (sharing its arrays) with the routing arrays of approximate search (search with probe < 1).

Parameters
----------
cluster_rows : (C + 1,) int64
    Cluster c is rows [cluster_rows[c], cluster_rows[c + 1]): non-decreasing from 0 to n.
centroid_offsets : (h + 1,) int64
    The sparse centroids, latent-major: latent l's entries are [centroid_offsets[l], centroid_offsets[l + 1]).
centroid_clusters : (e,) uint32
    Each entry's cluster, < C.
centroid_weights : (e,) float32
    Each entry's centroid value, finite.
num_threads : int, default -1

Raises
------
ValueError
    Naming the array and the problem.
)doc")
        .def_property_readonly("n_clusters", &SegmentIndex::n_clusters, "Clusters of with_clusters; 0 for none.")
        .def_property_readonly("layout_bytes", &SegmentIndex::layout_bytes,
                               "Bytes the cluster layout derives from the postings on load (h x pieces uint16 run "
                               "starts); 0 when not clustered.")
        .def_property_readonly("n", &SegmentIndex::n, "Rows in the segment.")
        .def_property_readonly("h", &SegmentIndex::h, "Latents.")
        .def_property_readonly("window_bits", &SegmentIndex::window_bits, "Windows hold 2 ** window_bits rows.")
        .def_property_readonly("n_windows", &SegmentIndex::n_windows, "Windows: ceil(n / 2 ** window_bits).")
        .def_property_readonly("forward_width", &SegmentIndex::forward_width,
                               "Columns of the forward codes (packed: k + has_bias, as the plain format stores them).")
        .def_property_readonly("n_postings", &SegmentIndex::n_postings, "Postings over all lists: offsets[-1].")
        .def_property_readonly("is_packed", &SegmentIndex::is_packed, "Whether the forward codes are packed rows.")
        .def_property_readonly("row_bytes", &SegmentIndex::row_bytes, "Bytes per packed row; 0 for plain codes.")
        .def_property_readonly("index_bits", &SegmentIndex::index_bits,
                               "Bits per packed latent (ef: low bits per latent); 0 for plain codes.")
        .def_property_readonly("index_coding", &SegmentIndex::index_coding,
                               "How packed rows code their latents: 'packed' or 'ef'; '' for plain codes.")
        .def_property_readonly("value_bits", &SegmentIndex::value_bits, "Bits per packed value; 0 for plain codes.")
        .def_property_readonly("residual_m", &SegmentIndex::residual_m, "Residual bytes per packed row; 0 for none.");
#ifdef CSAE_VERSION
    m.attr("__version__") = CSAE_VERSION;
#endif
}
