/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * IEEE 754 binary16 <-> binary32 conversions on the host, bit-exact with CUDA's __half2float and
 * __float2half_rn (round to nearest, ties to even; overflow to infinity; NaN stays NaN).
 *
 * The CPU library uses them to emulate the fp16-I/O kernels (fp16 loads and stores, fp32
 * arithmetic) so that the fp16 path's arithmetic is tested where there is no GPU.
 */
#pragma once

#include <cstdint>
#include <cstring>

namespace fgad
{

//! A binary16 value kept as its bit pattern (host-side stand-in for CUDA's __half).
struct HalfBits
{
    uint16_t bits;
};
static_assert(sizeof(HalfBits) == 2, "HalfBits must be layout-compatible with uint16_t");

inline float halfBitsToFloat(uint16_t h) noexcept
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t exponent = (h >> 10) & 0x1FU;
    uint32_t mantissa = h & 0x3FFU;
    uint32_t bits = 0;
    if (exponent == 0x1FU)
    {
        bits = sign | 0x7F800000U | (mantissa << 13); // inf or NaN
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
    }
    else if (mantissa != 0)
    {
        // Subnormal half: normalise into a float.
        int32_t shift = 0;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            ++shift;
        }
        mantissa &= 0x3FFU;
        bits = sign | (static_cast<uint32_t>(127 - 15 + 1 - shift) << 23) | (mantissa << 13);
    }
    else
    {
        bits = sign; // signed zero
    }
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

inline uint16_t floatToHalfBits(float value) noexcept
{
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    uint32_t const sign = (bits >> 16) & 0x8000U;
    uint32_t const absBits = bits & 0x7FFFFFFFU;
    if (absBits >= 0x7F800000U)
    {
        // inf stays inf; NaN becomes a quiet NaN.
        return static_cast<uint16_t>(sign | 0x7C00U | (absBits > 0x7F800000U ? 0x200U : 0U));
    }
    if (absBits >= 0x477FF000U)
    {
        return static_cast<uint16_t>(sign | 0x7C00U); // rounds to a value >= 65520: overflow
    }
    if (absBits < 0x38800000U)
    {
        // Result is subnormal (or zero) in half precision: value = m * 2^-24.
        if (absBits < 0x33000000U)
        {
            return static_cast<uint16_t>(sign); // below half of the smallest subnormal
        }
        uint32_t const exponent = absBits >> 23;
        uint32_t const mantissa = (absBits & 0x7FFFFFU) | 0x800000U;
        uint32_t const shift = 126U - exponent; // value = mantissa * 2^(exponent - 150); shift in [14, 24]
        uint32_t half = mantissa >> shift;
        uint32_t const rest = mantissa & ((1U << shift) - 1U);
        uint32_t const halfway = 1U << (shift - 1U);
        if (rest > halfway || (rest == halfway && (half & 1U)))
        {
            ++half;
        }
        return static_cast<uint16_t>(sign | half);
    }
    // Normal range: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
    uint32_t half = ((absBits - 0x38000000U) >> 13);
    uint32_t const rest = absBits & 0x1FFFU;
    if (rest > 0x1000U || (rest == 0x1000U && (half & 1U)))
    {
        ++half; // may carry into the exponent, which is the correct rounding
    }
    return static_cast<uint16_t>(sign | half);
}

} // namespace fgad
