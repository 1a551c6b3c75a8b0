/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The geometry of one deformable convolution, shared by the CPU library, the CUDA launchers and
 * the TensorRT plugin, with the one validation routine they all use.
 *
 * Layouts (torchvision.ops.deform_conv2d = ONNX DeformConv = fgad::deform_conv2d):
 *   X      [N, C, H, W]
 *   W      [Cout, C / group, kh, kw]
 *   offset [N, 2 * offset_group * kh * kw, Ho, Wo]; channel 2 * (g * kh * kw + k) holds dy and the
 *          next one dx, for offset group g and tap k = i * kw + j
 *   B      [Cout]
 *   mask   [N, offset_group * kh * kw, Ho, Wo]; channel g * kh * kw + k
 *   Y      [N, Cout, Ho, Wo]
 * Tap (i, j) of output pixel (oy, ox) samples X at y = oy * stride_h - pad_top + i * dilation_h + dy,
 * x = ox * stride_w - pad_left + j * dilation_w + dx, bilinearly, every corner outside the image
 * contributing zero. Bottom/right pads only change the output size.
 */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
#include <cstddef>
#include <cstdio>
#endif

#ifdef __cplusplus
extern "C"
{
#endif

    //! Plain C struct (mirrored by ctypes in cpp_ext/tools/deform_ctypes.py; keep the field order).
    typedef struct FgadDeformConvShape
    {
        int32_t batch;       //!< N
        int32_t inChannels;  //!< C
        int32_t height;      //!< H
        int32_t width;       //!< W
        int32_t outChannels; //!< Cout
        int32_t kernelH;     //!< kh
        int32_t kernelW;     //!< kw
        int32_t strideH;
        int32_t strideW;
        int32_t padTop;
        int32_t padLeft;
        int32_t padBottom;
        int32_t padRight;
        int32_t dilationH;
        int32_t dilationW;
        int32_t group;       //!< ONNX `group`: channel groups of the convolution
        int32_t offsetGroup; //!< ONNX `offset_group`: channel groups sharing one offset field
        int32_t outH;        //!< Ho, see fgadDeformConvFillOutputSize
        int32_t outW;        //!< Wo
    } FgadDeformConvShape;

    //! Element types of the kernels (all five inputs and the output share one type).
    enum FgadDeformDataType
    {
        FGAD_DEFORM_FLOAT32 = 0,
        FGAD_DEFORM_FLOAT16 = 1 //!< fp16 loads/stores, fp32 arithmetic and accumulation
    };

    //! Kernel choice. AUTO is TILED; TensorRT may pick either by timing (plugin tactics).
    enum FgadDeformAlgo
    {
        FGAD_DEFORM_ALGO_AUTO = 0,
        FGAD_DEFORM_ALGO_TILED = 1, //!< implicit GEMM: sampled columns in shared memory, reused by 64 channels
        FGAD_DEFORM_ALGO_DIRECT = 2 //!< one thread per output element
    };

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
namespace fgad
{
namespace deform
{

//! Output length along one axis: (size + padBegin + padEnd - dilation * (kernel - 1) - 1) / stride + 1,
//! with floor division (a negative numerator means the kernel does not fit).
inline int64_t convOutputSize(
    int64_t size, int64_t kernel, int64_t stride, int64_t padBegin, int64_t padEnd, int64_t dilation) noexcept
{
    int64_t const numerator = size + padBegin + padEnd - dilation * (kernel - 1) - 1;
    if (stride <= 0)
    {
        return -1;
    }
    int64_t const q = numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride);
    return q + 1;
}

//! Fill outH/outW from the other fields (left unchanged when a stride is not positive).
inline void fillOutputSize(FgadDeformConvShape& s) noexcept
{
    int64_t const oh = convOutputSize(s.height, s.kernelH, s.strideH, s.padTop, s.padBottom, s.dilationH);
    int64_t const ow = convOutputSize(s.width, s.kernelW, s.strideW, s.padLeft, s.padRight, s.dilationW);
    if (s.strideH > 0 && s.strideW > 0)
    {
        s.outH = static_cast<int32_t>(oh);
        s.outW = static_cast<int32_t>(ow);
    }
}

//! Write a formatted message (when a buffer is given) and return false, for one-line failures.
template <typename... Args>
inline bool reportInvalid(char* message, size_t capacity, char const* format, Args... args) noexcept
{
    if (message != nullptr && capacity > 0)
    {
        std::snprintf(message, capacity, format, args...);
    }
    return false;
}

//! Check a shape; on failure write a message naming the bad field and what to do, return false.
//! Per-plane and per-group sizes must fit in int32 (the kernels index whole tensors with int64).
inline bool validateShape(FgadDeformConvShape const& s, char* message, size_t capacity) noexcept
{
    using ll = long long;
    if (s.batch < 1 || s.inChannels < 1 || s.height < 1 || s.width < 1 || s.outChannels < 1)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: X [N, C, H, W] = [%lld, %lld, %lld, %lld] and Cout = %lld must all be >= 1",
            ll(s.batch), ll(s.inChannels), ll(s.height), ll(s.width), ll(s.outChannels));
    }
    if (s.kernelH < 1 || s.kernelW < 1)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: kernel_shape must be positive, got [%lld, %lld] (W is [Cout, C/group, kh, kw])",
            ll(s.kernelH), ll(s.kernelW));
    }
    if (s.strideH < 1 || s.strideW < 1 || s.dilationH < 1 || s.dilationW < 1)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: strides and dilations must be >= 1, got strides=[%lld, %lld] dilations=[%lld, %lld]",
            ll(s.strideH), ll(s.strideW), ll(s.dilationH), ll(s.dilationW));
    }
    if (s.padTop < 0 || s.padLeft < 0 || s.padBottom < 0 || s.padRight < 0)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: pads must be >= 0, got [%lld, %lld, %lld, %lld] (top, left, bottom, right)",
            ll(s.padTop), ll(s.padLeft), ll(s.padBottom), ll(s.padRight));
    }
    if (s.group < 1 || s.inChannels % s.group != 0 || s.outChannels % s.group != 0)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: group=%lld must be >= 1 and divide both C=%lld and Cout=%lld", ll(s.group),
            ll(s.inChannels), ll(s.outChannels));
    }
    if (s.offsetGroup < 1 || s.inChannels % s.offsetGroup != 0)
    {
        return reportInvalid(message, capacity, "FgadDeformConv2d: offset_group=%lld must be >= 1 and divide C=%lld",
            ll(s.offsetGroup), ll(s.inChannels));
    }
    int64_t const oh = convOutputSize(s.height, s.kernelH, s.strideH, s.padTop, s.padBottom, s.dilationH);
    int64_t const ow = convOutputSize(s.width, s.kernelW, s.strideW, s.padLeft, s.padRight, s.dilationW);
    if (oh < 1 || ow < 1)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: a %lldx%lld kernel does not fit a %lldx%lld input (output would be %lldx%lld); "
            "check kernel_shape, pads and dilations",
            ll(s.kernelH), ll(s.kernelW), ll(s.height), ll(s.width), ll(oh), ll(ow));
    }
    if (s.outH != oh || s.outW != ow)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: output size %lldx%lld disagrees with the geometry (%lldx%lld); call "
            "fgad_deform_conv2d_fill_output_size first",
            ll(s.outH), ll(s.outW), ll(oh), ll(ow));
    }
    int64_t const columns = static_cast<int64_t>(s.inChannels / s.group) * s.kernelH * s.kernelW;
    int64_t const plane = static_cast<int64_t>(s.height) * s.width;
    int64_t const offsetChannels = 2LL * s.offsetGroup * s.kernelH * s.kernelW;
    if (columns > INT32_MAX || plane > INT32_MAX || oh * ow > INT32_MAX || offsetChannels > INT32_MAX)
    {
        return reportInvalid(message, capacity,
            "FgadDeformConv2d: too large for 32-bit indexing within a plane: C/group*kh*kw=%lld, H*W=%lld, "
            "Ho*Wo=%lld",
            ll(columns), ll(plane), ll(oh * ow));
    }
    return true;
}

} // namespace deform
} // namespace fgad
#endif
