/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Per-element math of the deformable convolution, written once for the host and the device.
 *
 * Under nvcc every function here is __host__ __device__ (FGAD_HD); under a plain C++ compiler they
 * are ordinary inline functions. The CPU library (deformConv2dCpu.cpp) and the CUDA kernels
 * (deformConv2dKernel.cu) call exactly these functions, so the CPU tests on CI check the arithmetic
 * the GPU runs. Arithmetic is fp32 whatever the storage type (float, __half, or HalfBits on the
 * host for the fp16 emulation).
 *
 * See deformConv2dShape.h for the tensor layouts.
 */
#pragma once

#include <math.h>
#include <stdint.h>

#include "common/fgadHalf.h"
#include "common/fgadMacros.h"
#include "deformConv2dShape.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace fgad
{
namespace deform
{

// ------------------------------------------------------------------------------------------------
// Loads and stores: storage type -> fp32 -> storage type
// ------------------------------------------------------------------------------------------------

FGAD_HD float toFloat(float v)
{
    return v;
}

FGAD_HD void storeFloat(float* dst, float v)
{
    *dst = v;
}

#if defined(__CUDACC__)
FGAD_HD float toFloat(__half v)
{
    return __half2float(v);
}

FGAD_HD void storeFloat(__half* dst, float v)
{
    *dst = __float2half_rn(v);
}
#endif

//! Host-only fp16 emulation (never instantiated in device code).
inline float toFloat(HalfBits v)
{
    return halfBitsToFloat(v.bits);
}

inline void storeFloat(HalfBits* dst, float v)
{
    dst->bits = floatToHalfBits(v);
}

// ------------------------------------------------------------------------------------------------
// Index helpers
// ------------------------------------------------------------------------------------------------

FGAD_HD int32_t taps(FgadDeformConvShape const& s)
{
    return s.kernelH * s.kernelW;
}

FGAD_HD int32_t inPerGroup(FgadDeformConvShape const& s)
{
    return s.inChannels / s.group;
}

FGAD_HD int32_t outPerGroup(FgadDeformConvShape const& s)
{
    return s.outChannels / s.group;
}

FGAD_HD int32_t inPerOffsetGroup(FgadDeformConvShape const& s)
{
    return s.inChannels / s.offsetGroup;
}

//! Rows of the implicit column matrix of one channel group: (C / group) * kh * kw; row k is
//! (input channel k / (kh*kw) within the group, tap k % (kh*kw)), the order of W's last three axes.
FGAD_HD int32_t columnsPerGroup(FgadDeformConvShape const& s)
{
    return inPerGroup(s) * taps(s);
}

FGAD_HD int32_t outPlane(FgadDeformConvShape const& s)
{
    return s.outH * s.outW;
}

FGAD_HD int64_t outputElements(FgadDeformConvShape const& s)
{
    return static_cast<int64_t>(s.batch) * s.outChannels * outPlane(s);
}

//! Flat NCHW output index -> (n, oc, oy, ox).
FGAD_HD void unravelOutputIndex(
    FgadDeformConvShape const& s, int64_t index, int32_t& n, int32_t& oc, int32_t& oy, int32_t& ox)
{
    ox = static_cast<int32_t>(index % s.outW);
    index /= s.outW;
    oy = static_cast<int32_t>(index % s.outH);
    index /= s.outH;
    oc = static_cast<int32_t>(index % s.outChannels);
    n = static_cast<int32_t>(index / s.outChannels);
}

// ------------------------------------------------------------------------------------------------
// Sampling
// ------------------------------------------------------------------------------------------------

//! Bilinear sample of one H x W plane at pixel coordinates (y, x) (pixel centres at integers);
//! each of the four corners outside the plane contributes zero (ONNX DeformConv / torchvision).
template <typename T>
FGAD_HD float bilinearZeroPadded(T const* plane, int32_t height, int32_t width, float y, float x)
{
    // Every corner is outside unless -1 < y < H and -1 < x < W. Checking first also keeps the int
    // conversion below in range for huge offsets, and maps NaN positions to 0.
    if (!(y > -1.0f && y < static_cast<float>(height) && x > -1.0f && x < static_cast<float>(width)))
    {
        return 0.0f;
    }
    float const yFloor = floorf(y);
    float const xFloor = floorf(x);
    int32_t const y0 = static_cast<int32_t>(yFloor);
    int32_t const x0 = static_cast<int32_t>(xFloor);
    int32_t const y1 = y0 + 1;
    int32_t const x1 = x0 + 1;
    float const wy1 = y - yFloor; // weight of row y1
    float const wx1 = x - xFloor; // weight of column x1
    float const wy0 = 1.0f - wy1;
    float const wx0 = 1.0f - wx1;
    bool const row0 = y0 >= 0;
    bool const row1 = y1 < height;
    bool const col0 = x0 >= 0;
    bool const col1 = x1 < width;
    float const v00 = (row0 && col0) ? toFloat(plane[y0 * width + x0]) : 0.0f;
    float const v01 = (row0 && col1) ? toFloat(plane[y0 * width + x1]) : 0.0f;
    float const v10 = (row1 && col0) ? toFloat(plane[y1 * width + x0]) : 0.0f;
    float const v11 = (row1 && col1) ? toFloat(plane[y1 * width + x1]) : 0.0f;
    return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
}

//! Where tap `tap` of output pixel (oy, ox) samples for offset group g of image n, and its mask.
struct TapSample
{
    float y;
    float x;
    float mask;
};

template <typename T>
FGAD_HD TapSample tapSample(FgadDeformConvShape const& s, T const* offset, T const* mask, int32_t n, int32_t g,
    int32_t tap, int32_t oy, int32_t ox)
{
    int32_t const k = taps(s);
    int64_t const plane = outPlane(s);
    int64_t const pixel = static_cast<int64_t>(oy) * s.outW + ox;
    int64_t const dyChannel = static_cast<int64_t>(n) * 2 * s.offsetGroup * k + 2 * (g * k + tap);
    float const dy = toFloat(offset[dyChannel * plane + pixel]);
    float const dx = toFloat(offset[(dyChannel + 1) * plane + pixel]);
    int32_t const i = tap / s.kernelW;
    int32_t const j = tap - i * s.kernelW;
    TapSample out;
    out.y = static_cast<float>(oy * s.strideH - s.padTop + i * s.dilationH) + dy;
    out.x = static_cast<float>(ox * s.strideW - s.padLeft + j * s.dilationW) + dx;
    out.mask = 1.0f;
    if (mask != nullptr)
    {
        int64_t const maskChannel = static_cast<int64_t>(n) * s.offsetGroup * k + g * k + tap;
        out.mask = toFloat(mask[maskChannel * plane + pixel]);
    }
    return out;
}

//! One entry of the implicit column matrix: input channel `ic` (absolute), tap `tap`, output pixel
//! (oy, ox) of image n, i.e. mask * bilinear(X[n, ic], position). The tiled kernel stages these in
//! shared memory; deformOutputElement sums them against W.
template <typename T>
FGAD_HD float deformColumnValue(FgadDeformConvShape const& s, T const* input, T const* offset, T const* mask,
    int32_t n, int32_t ic, int32_t tap, int32_t oy, int32_t ox)
{
    int32_t const g = ic / inPerOffsetGroup(s);
    TapSample const p = tapSample(s, offset, mask, n, g, tap, oy, ox);
    int64_t const planeSize = static_cast<int64_t>(s.height) * s.width;
    T const* plane = input + (static_cast<int64_t>(n) * s.inChannels + ic) * planeSize;
    return p.mask * bilinearZeroPadded(plane, s.height, s.width, p.y, p.x);
}

//! One output element Y[n, oc, oy, ox] = B[oc] + sum over (input channel of oc's group, tap) of
//! W * column value, accumulated in fp32 in W's memory order.
template <typename T>
FGAD_HD float deformOutputElement(FgadDeformConvShape const& s, T const* input, T const* weight, T const* offset,
    T const* bias, T const* mask, int32_t n, int32_t oc, int32_t oy, int32_t ox)
{
    int32_t const cin = inPerGroup(s);
    int32_t const k = taps(s);
    int32_t const group = oc / outPerGroup(s);
    T const* w = weight + static_cast<int64_t>(oc) * cin * k;
    float acc = 0.0f;
    for (int32_t icg = 0; icg < cin; ++icg)
    {
        int32_t const ic = group * cin + icg;
        for (int32_t tap = 0; tap < k; ++tap)
        {
            float const column = deformColumnValue(s, input, offset, mask, n, ic, tap, oy, ox);
            acc = fmaf(toFloat(w[icg * k + tap]), column, acc);
        }
    }
    if (bias != nullptr)
    {
        acc += toFloat(bias[oc]);
    }
    return acc;
}

} // namespace deform
} // namespace fgad
