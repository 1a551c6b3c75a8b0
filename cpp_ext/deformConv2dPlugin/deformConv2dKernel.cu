/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA kernels of the deformable convolution. They are thin: the arithmetic lives in
 * deformConv2dMath.h / deformConv2dTile.h (__host__ __device__, also compiled into the CPU test
 * library); this file only maps threads and blocks onto those functions.
 */
#include <cstdio>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "deformConv2dCApi.h"
#include "deformConv2dKernel.h"
#include "deformConv2dMath.h"
#include "deformConv2dTile.h"

namespace fgad
{
namespace deform
{
namespace
{

constexpr int32_t kDirectThreads = 256;
constexpr int64_t kMaxGridZ = 65535;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxDirectBlocks = 1 << 20; // grid-stride loop beyond this

//! One block per kTileOC x kTileP output tile of one (image, group); see deformConv2dTile.h.
template <typename T>
__global__ void __launch_bounds__(kThreads) deformConv2dTiledKernel(FgadDeformConvShape s, T const* __restrict__ x,
    T const* __restrict__ weight, T const* __restrict__ offset, T const* __restrict__ bias, T const* __restrict__ mask,
    T* __restrict__ output, int64_t blockZBase)
{
    __shared__ float cs[kTileK * kTileP];
    __shared__ float ws[kTileK * kTileOC];
    int32_t const tx = static_cast<int32_t>(threadIdx.x);
    int32_t const ty = static_cast<int32_t>(threadIdx.y);
    int32_t const tid = ty * kBlockX + tx;
    TileCoord const t = tileCoord(s, static_cast<int32_t>(blockIdx.x), static_cast<int32_t>(blockIdx.y),
        blockZBase + static_cast<int64_t>(blockIdx.z));

    float acc[kMicro][kMicro];
#pragma unroll
    for (int32_t i = 0; i < kMicro; ++i)
    {
#pragma unroll
        for (int32_t j = 0; j < kMicro; ++j)
        {
            acc[i][j] = 0.0f;
        }
    }
    int32_t const rows = columnsPerGroup(s);
    for (int32_t k0 = 0; k0 < rows; k0 += kTileK)
    {
        loadColumnSlab(s, x, offset, mask, t, k0, tid, cs);
        loadWeightSlab(s, weight, t, k0, tid, ws);
        __syncthreads();
        accumulateSlab(cs, ws, tx, ty, acc);
        __syncthreads();
    }
    storeMicroTile(s, bias, output, t, tx, ty, acc);
}

//! One thread per output element (grid-stride); no shared memory, no reuse of samples.
template <typename T>
__global__ void __launch_bounds__(kDirectThreads) deformConv2dDirectKernel(FgadDeformConvShape s,
    T const* __restrict__ x, T const* __restrict__ weight, T const* __restrict__ offset, T const* __restrict__ bias,
    T const* __restrict__ mask, T* __restrict__ output)
{
    int64_t const total = outputElements(s);
    int64_t const step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total; index += step)
    {
        int32_t n, oc, oy, ox;
        unravelOutputIndex(s, index, n, oc, oy, ox);
        storeFloat(output + index, deformOutputElement(s, x, weight, offset, bias, mask, n, oc, oy, ox));
    }
}

template <typename T>
cudaError_t launchTyped(FgadDeformConvShape const& s, int32_t algo, void const* x, void const* weight,
    void const* offset, void const* bias, void const* mask, void* output, cudaStream_t stream)
{
    auto const* xt = static_cast<T const*>(x);
    auto const* wt = static_cast<T const*>(weight);
    auto const* ot = static_cast<T const*>(offset);
    auto const* bt = static_cast<T const*>(bias);
    auto const* mt = static_cast<T const*>(mask);
    auto* yt = static_cast<T*>(output);
    // Channel tiles beyond the grid's y limit (> 4 M channels per group) fall back to direct.
    bool const tiled = algo != FGAD_DEFORM_ALGO_DIRECT && channelTiles(s) <= kMaxGridY;
    if (tiled)
    {
        dim3 const block(kBlockX, kBlockY, 1);
        int64_t const blocksZ = static_cast<int64_t>(s.batch) * s.group;
        for (int64_t z0 = 0; z0 < blocksZ; z0 += kMaxGridZ)
        {
            int64_t const count = blocksZ - z0 < kMaxGridZ ? blocksZ - z0 : kMaxGridZ;
            dim3 const grid(static_cast<unsigned>(pixelTiles(s)), static_cast<unsigned>(channelTiles(s)),
                static_cast<unsigned>(count));
            deformConv2dTiledKernel<T><<<grid, block, 0, stream>>>(s, xt, wt, ot, bt, mt, yt, z0);
        }
    }
    else
    {
        int64_t const total = outputElements(s);
        int64_t blocks = (total + kDirectThreads - 1) / kDirectThreads;
        blocks = blocks < kMaxDirectBlocks ? blocks : kMaxDirectBlocks;
        deformConv2dDirectKernel<T>
            <<<static_cast<unsigned>(blocks), kDirectThreads, 0, stream>>>(s, xt, wt, ot, bt, mt, yt);
    }
    return cudaGetLastError();
}

} // namespace

cudaError_t launchDeformConv2d(FgadDeformConvShape const& shape, int32_t dtype, int32_t algo, void const* x,
    void const* weight, void const* offset, void const* bias, void const* mask, void* output,
    cudaStream_t stream) noexcept
{
    if (!validateShape(shape, nullptr, 0) || x == nullptr || weight == nullptr || offset == nullptr
        || output == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (algo != FGAD_DEFORM_ALGO_AUTO && algo != FGAD_DEFORM_ALGO_TILED && algo != FGAD_DEFORM_ALGO_DIRECT)
    {
        return cudaErrorInvalidValue;
    }
    switch (dtype)
    {
    case FGAD_DEFORM_FLOAT32: return launchTyped<float>(shape, algo, x, weight, offset, bias, mask, output, stream);
    case FGAD_DEFORM_FLOAT16: return launchTyped<__half>(shape, algo, x, weight, offset, bias, mask, output, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace deform
} // namespace fgad

extern "C" FGAD_EXPORT int32_t fgad_deform_conv2d_cuda(FgadDeformConvShape const* shape, int32_t dtype, int32_t algo,
    void const* x, void const* weight, void const* offset, void const* bias, void const* mask, void* output,
    void* stream, char* message, int32_t capacity)
{
    if (shape == nullptr)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    if (!fgad::deform::validateShape(*shape, message, capacity > 0 ? static_cast<size_t>(capacity) : 0))
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    cudaError_t const status = fgad::deform::launchDeformConv2d(
        *shape, dtype, algo, x, weight, offset, bias, mask, output, static_cast<cudaStream_t>(stream));
    if (status != cudaSuccess && message != nullptr && capacity > 0)
    {
        std::snprintf(message, static_cast<size_t>(capacity), "FgadDeformConv2d: CUDA launch failed: %s",
            cudaGetErrorString(status));
    }
    return static_cast<int32_t>(status);
}
