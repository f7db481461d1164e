// float16 <-> float32 for posting values stored as raw 16-bit patterns.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__F16C__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace csae {

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    // Scale the exponent: normals and subnormals come out exact after one multiply.
    uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t rest = h & 0x7fff;
    float f;
    if (rest >= 0x7c00) {  // Inf / NaN
        uint32_t bits = sign | 0x7f800000u | (rest & 0x3ff) << 13;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    uint32_t bits = rest << 13;
    std::memcpy(&f, &bits, 4);
    f *= 5.192296858534828e+33f;  // 2^112: rebias the exponent from 15 to 127
    uint32_t out;
    std::memcpy(&out, &f, 4);
    out |= sign;
    std::memcpy(&f, &out, 4);
    return f;
#endif
}

}  // namespace csae
