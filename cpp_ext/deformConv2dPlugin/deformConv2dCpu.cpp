/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CPU build of the deformable convolution: plain loops around the per-element math of
 * deformConv2dMath.h and the block steps of deformConv2dTile.h, the same functions the CUDA
 * kernels call. It exists to test that shared arithmetic on machines without a GPU (ctypes, see
 * tests/cpp_ext), including an emulation of the fp16-I/O kernels. Single-threaded; not meant to
 * be fast.
 *
 * Build: g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -I cpp_ext \
 *            cpp_ext/deformConv2dPlugin/deformConv2dCpu.cpp -o libfgad_deform_cpu.so
 */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/fgadHalf.h"
#include "common/fgadMacros.h"
#include "deformConv2dCApi.h"
#include "deformConv2dMath.h"
#include "deformConv2dPluginInfo.h"
#include "deformConv2dShape.h"
#include "deformConv2dTile.h"

namespace
{

using fgad::HalfBits;
using namespace fgad::deform;

//! One output element per iteration, like deformConv2dDirectKernel's threads.
template <typename T>
void runDirect(FgadDeformConvShape const& s, T const* x, T const* w, T const* offset, T const* bias, T const* mask,
    T* out)
{
    int64_t const total = outputElements(s);
    for (int64_t index = 0; index < total; ++index)
    {
        int32_t n, oc, oy, ox;
        unravelOutputIndex(s, index, n, oc, oy, ox);
        storeFloat(out + index, deformOutputElement(s, x, w, offset, bias, mask, n, oc, oy, ox));
    }
}

//! Every block of the tiled grid, each phase run for all threads of the block before the next
//! phase (the CUDA kernel's __syncthreads() points).
template <typename T>
void runTiled(FgadDeformConvShape const& s, T const* x, T const* w, T const* offset, T const* bias, T const* mask,
    T* out)
{
    std::vector<float> cs(kTileK * kTileP);
    std::vector<float> ws(kTileK * kTileOC);
    std::vector<float> accStorage(static_cast<size_t>(kThreads) * kMicro * kMicro);
    auto acc = reinterpret_cast<float(*)[kMicro][kMicro]>(accStorage.data());
    int32_t const rows = columnsPerGroup(s);
    int64_t const blocksZ = static_cast<int64_t>(s.batch) * s.group;
    for (int64_t bz = 0; bz < blocksZ; ++bz)
    {
        for (int32_t by = 0; by < channelTiles(s); ++by)
        {
            for (int32_t bx = 0; bx < pixelTiles(s); ++bx)
            {
                TileCoord const t = tileCoord(s, bx, by, bz);
                std::fill(accStorage.begin(), accStorage.end(), 0.0f);
                for (int32_t k0 = 0; k0 < rows; k0 += kTileK)
                {
                    for (int32_t tid = 0; tid < kThreads; ++tid)
                    {
                        loadColumnSlab(s, x, offset, mask, t, k0, tid, cs.data());
                        loadWeightSlab(s, w, t, k0, tid, ws.data());
                    }
                    for (int32_t tid = 0; tid < kThreads; ++tid)
                    {
                        accumulateSlab(cs.data(), ws.data(), tid % kBlockX, tid / kBlockX, acc[tid]);
                    }
                }
                for (int32_t tid = 0; tid < kThreads; ++tid)
                {
                    storeMicroTile(s, bias, out, t, tid % kBlockX, tid / kBlockX, acc[tid]);
                }
            }
        }
    }
}

template <typename T>
int32_t run(FgadDeformConvShape const& s, int32_t algo, void const* x, void const* w, void const* offset,
    void const* bias, void const* mask, void* out)
{
    auto const* xt = static_cast<T const*>(x);
    auto const* wt = static_cast<T const*>(w);
    auto const* ot = static_cast<T const*>(offset);
    auto const* bt = static_cast<T const*>(bias);
    auto const* mt = static_cast<T const*>(mask);
    auto* yt = static_cast<T*>(out);
    if (algo == FGAD_DEFORM_ALGO_DIRECT)
    {
        runDirect(s, xt, wt, ot, bt, mt, yt);
    }
    else
    {
        runTiled(s, xt, wt, ot, bt, mt, yt);
    }
    return 0;
}

void writeMessage(char* message, int32_t capacity, char const* text)
{
    if (message != nullptr && capacity > 0)
    {
        std::snprintf(message, static_cast<size_t>(capacity), "%s", text);
    }
}

} // namespace

extern "C"
{

    //! Run the convolution on host memory. dtype: FgadDeformDataType (FLOAT16 buffers hold binary16
    //! bit patterns); algo: FgadDeformAlgo. bias and mask may be NULL (zeros / ones).
    //! Returns 0 on success, 1 for an invalid shape, 2 for a bad dtype or algo, 3 for a NULL tensor.
    FGAD_EXPORT int32_t fgad_deform_conv2d_cpu(FgadDeformConvShape const* shape, int32_t dtype, int32_t algo,
        void const* x, void const* w, void const* offset, void const* bias, void const* mask, void* out,
        char* message, int32_t capacity)
    {
        if (fgad_deform_conv2d_validate(shape, message, capacity) != 0)
        {
            return 1;
        }
        if (algo != FGAD_DEFORM_ALGO_AUTO && algo != FGAD_DEFORM_ALGO_TILED && algo != FGAD_DEFORM_ALGO_DIRECT)
        {
            writeMessage(message, capacity, "FgadDeformConv2d: algo must be 0 (auto), 1 (tiled) or 2 (direct)");
            return 2;
        }
        if (x == nullptr || w == nullptr || offset == nullptr || out == nullptr)
        {
            writeMessage(message, capacity, "FgadDeformConv2d: X, W, offset and the output must not be NULL");
            return 3;
        }
        switch (dtype)
        {
        case FGAD_DEFORM_FLOAT32: return run<float>(*shape, algo, x, w, offset, bias, mask, out);
        case FGAD_DEFORM_FLOAT16: return run<HalfBits>(*shape, algo, x, w, offset, bias, mask, out);
        default:
            writeMessage(message, capacity, "FgadDeformConv2d: dtype must be 0 (float32) or 1 (float16)");
            return 2;
        }
    }

    //! Element-wise binary16 -> float32 (the conversion the fp16 emulation uses).
    FGAD_EXPORT void fgad_half_to_float(uint16_t const* src, float* dst, int64_t count)
    {
        for (int64_t i = 0; i < count; ++i)
        {
            dst[i] = fgad::halfBitsToFloat(src[i]);
        }
    }

    //! Element-wise float32 -> binary16, round to nearest even.
    FGAD_EXPORT void fgad_float_to_half(float const* src, uint16_t* dst, int64_t count)
    {
        for (int64_t i = 0; i < count; ++i)
        {
            dst[i] = fgad::floatToHalfBits(src[i]);
        }
    }

    //! "name|version|namespace|field:length,..." of the TensorRT plugin (deformConv2dPluginInfo.h).
    FGAD_EXPORT char const* fgad_deform_conv2d_plugin_contract(void)
    {
        static std::string const contract = [] {
            using namespace fgad::plugin;
            std::string text = std::string(kDeformConv2dPluginName) + "|" + kDeformConv2dPluginVersion + "|"
                + kDeformConv2dPluginNamespace + "|";
            for (int i = 0; i < kDeformConv2dNbFields; ++i)
            {
                text += (i > 0 ? "," : "") + std::string(kDeformConv2dFields[i].name) + ":"
                    + std::to_string(kDeformConv2dFields[i].length);
            }
            return text;
        }();
        return contract.c_str();
    }

} // extern "C"
