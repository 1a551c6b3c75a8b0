/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA launchers of the deformable convolution (fp32, and fp16 I/O with fp32 accumulation), any
 * batch size. Both algorithms need no workspace; see deformConv2dTile.h for the tiled one and
 * deformConv2dMath.h for the per-element math they share with the CPU build.
 */
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/fgadMacros.h"
#include "deformConv2dShape.h"

namespace fgad
{
namespace deform
{

//! Enqueue Y = deform_conv2d(X, W, offset, B, mask) on `stream`. All pointers are device memory of
//! `dtype` (FgadDeformDataType); `bias` and `mask` may be null (zeros / ones). `algo` is an
//! FgadDeformAlgo. The shape must pass validateShape. Returns cudaErrorInvalidValue for an invalid
//! shape, dtype or algo, otherwise the launch status (kernels run asynchronously).
cudaError_t launchDeformConv2d(FgadDeformConvShape const& shape, int32_t dtype, int32_t algo, void const* x,
    void const* weight, void const* offset, void const* bias, void const* mask, void* output,
    cudaStream_t stream) noexcept;

} // namespace deform
} // namespace fgad

extern "C"
{
    //! C entry point of launchDeformConv2d for ctypes (tests/cpp_ext, cpp_ext/tools/bench_gpu.py).
    //! `stream` is a cudaStream_t (0: the legacy default stream). Returns 0 on success, else the
    //! cudaError_t value, with a message for invalid shapes.
    FGAD_EXPORT int32_t fgad_deform_conv2d_cuda(FgadDeformConvShape const* shape, int32_t dtype, int32_t algo,
        void const* x, void const* weight, void const* offset, void const* bias, void const* mask, void* output,
        void* stream, char* message, int32_t capacity);
}
