/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The tiled ("implicit GEMM") algorithm, as per-thread steps of one thread block.
 *
 * Per image n and channel group g the convolution is the product
 *     Y[oc, p] = B[oc] + sum_k W[oc, k] * Col[k, p],
 * k over (C / group) * kh * kw column rows, p over the Ho * Wo output pixels. A block owns a
 * kTileOC x kTileP tile of Y. It walks k in chunks of kTileK: the block's threads sample a
 * kTileK x kTileP slab of Col into shared memory (each entry one deformColumnValue call) and load
 * the matching kTileOC x kTileK slab of W, then each thread accumulates a kMicro x kMicro
 * micro-tile in registers (fp32). Each sampled column entry is thus reused by kTileOC output
 * channels, as in im2col + GEMM, but the column matrix never exists in global memory: no
 * workspace, no cuBLAS (which matters on Jetson, where memory is shared with the CPU).
 *
 * The steps below are FGAD_HD functions of the thread index. The CUDA kernel calls them with
 * threadIdx and __syncthreads() between phases; the CPU library runs the same steps for every
 * thread of a block in turn (a faithful emulation, since phases only communicate through the two
 * shared arrays), so the tile bookkeeping, including partial tiles, is tested without a GPU.
 */
#pragma once

#include "deformConv2dMath.h"

namespace fgad
{
namespace deform
{

constexpr int32_t kBlockX = 16;                 //!< threads along output pixels
constexpr int32_t kBlockY = 16;                 //!< threads along output channels
constexpr int32_t kThreads = kBlockX * kBlockY; //!< threads per block
constexpr int32_t kMicro = 4;                   //!< micro-tile edge per thread
constexpr int32_t kTileP = kBlockX * kMicro;    //!< output pixels per block
constexpr int32_t kTileOC = kBlockY * kMicro;   //!< output channels per block
constexpr int32_t kTileK = 16;                  //!< column rows per shared-memory slab

//! Which output tile a block computes: image n, channel group, first channel within the group,
//! first output pixel.
struct TileCoord
{
    int32_t n;
    int32_t group;
    int32_t oc0;
    int32_t p0;
};

//! Thread `tid` fills its share of the column slab cs[kTileK][kTileP] for rows k0 .. k0+kTileK.
//! Entries past the last row or pixel are zero, so partial tiles need no special case later.
template <typename T>
FGAD_HD void loadColumnSlab(FgadDeformConvShape const& s, T const* input, T const* offset, T const* mask,
    TileCoord const& t, int32_t k0, int32_t tid, float* cs)
{
    int32_t const rows = columnsPerGroup(s);
    int32_t const pixels = outPlane(s);
    int32_t const k = taps(s);
    for (int32_t e = tid; e < kTileK * kTileP; e += kThreads)
    {
        int32_t const row = k0 + e / kTileP;
        int32_t const p = t.p0 + e % kTileP;
        float v = 0.0f;
        if (row < rows && p < pixels)
        {
            int32_t const icg = row / k;
            int32_t const oy = p / s.outW;
            v = deformColumnValue(
                s, input, offset, mask, t.n, t.group * inPerGroup(s) + icg, row - icg * k, oy, p - oy * s.outW);
        }
        cs[e] = v;
    }
}

//! Thread `tid` fills its share of the weight slab ws[kTileK][kTileOC] (transposed so that the
//! accumulation reads contiguous channels), zero past the group's last channel or row.
template <typename T>
FGAD_HD void loadWeightSlab(FgadDeformConvShape const& s, T const* weight, TileCoord const& t, int32_t k0,
    int32_t tid, float* ws)
{
    int32_t const rows = columnsPerGroup(s);
    int32_t const channels = outPerGroup(s);
    for (int32_t e = tid; e < kTileOC * kTileK; e += kThreads)
    {
        int32_t const ocLocal = e / kTileK; // consecutive threads read consecutive k of one W row
        int32_t const kk = e % kTileK;
        int32_t const oc = t.oc0 + ocLocal;
        int32_t const row = k0 + kk;
        float v = 0.0f;
        if (oc < channels && row < rows)
        {
            int64_t const ocAbs = static_cast<int64_t>(t.group) * channels + oc;
            v = toFloat(weight[ocAbs * rows + row]);
        }
        ws[kk * kTileOC + ocLocal] = v;
    }
}

//! Thread (tx, ty) accumulates its micro-tile: channels ty + i * kBlockY, pixels tx + j * kBlockX.
//! The strided assignment keeps shared-memory reads conflict-free (a warp reads 16 consecutive
//! pixels and broadcasts two channel values).
FGAD_HD void accumulateSlab(float const* cs, float const* ws, int32_t tx, int32_t ty, float (&acc)[kMicro][kMicro])
{
    for (int32_t kk = 0; kk < kTileK; ++kk)
    {
        float a[kMicro];
        float b[kMicro];
        for (int32_t i = 0; i < kMicro; ++i)
        {
            a[i] = ws[kk * kTileOC + ty + i * kBlockY];
        }
        for (int32_t j = 0; j < kMicro; ++j)
        {
            b[j] = cs[kk * kTileP + tx + j * kBlockX];
        }
        for (int32_t i = 0; i < kMicro; ++i)
        {
            for (int32_t j = 0; j < kMicro; ++j)
            {
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    }
}

//! Thread (tx, ty) adds the bias and writes the in-range part of its micro-tile.
template <typename T>
FGAD_HD void storeMicroTile(FgadDeformConvShape const& s, T const* bias, T* output, TileCoord const& t, int32_t tx,
    int32_t ty, float const (&acc)[kMicro][kMicro])
{
    int32_t const channels = outPerGroup(s);
    int32_t const pixels = outPlane(s);
    for (int32_t i = 0; i < kMicro; ++i)
    {
        int32_t const oc = t.oc0 + ty + i * kBlockY;
        if (oc >= channels)
        {
            continue;
        }
        int32_t const ocAbs = t.group * channels + oc;
        float const b = bias != nullptr ? toFloat(bias[ocAbs]) : 0.0f;
        T* row = output + (static_cast<int64_t>(t.n) * s.outChannels + ocAbs) * pixels;
        for (int32_t j = 0; j < kMicro; ++j)
        {
            int32_t const p = t.p0 + tx + j * kBlockX;
            if (p < pixels)
            {
                storeFloat(row + p, acc[i][j] + b);
            }
        }
    }
}

//! Grid of the tiled algorithm: x over pixel tiles, y over channel tiles of one group, z over
//! (image, group) pairs, z = n * group + g.
FGAD_HD int32_t pixelTiles(FgadDeformConvShape const& s)
{
    return (outPlane(s) + kTileP - 1) / kTileP;
}

FGAD_HD int32_t channelTiles(FgadDeformConvShape const& s)
{
    return (outPerGroup(s) + kTileOC - 1) / kTileOC;
}

FGAD_HD TileCoord tileCoord(FgadDeformConvShape const& s, int32_t blockX, int32_t blockY, int64_t blockZ)
{
    TileCoord t;
    t.n = static_cast<int32_t>(blockZ / s.group);
    t.group = static_cast<int32_t>(blockZ % s.group);
    t.oc0 = blockY * kTileOC;
    t.p0 = blockX * kTileP;
    return t;
}

} // namespace deform
} // namespace fgad
