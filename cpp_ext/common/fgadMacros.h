/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Portability macros shared by the CPU build, the CUDA build and the TensorRT plugin.
 */
#pragma once

// Functions marked FGAD_HD are compiled for the host and, under nvcc, for the device too: the
// per-element math is written once and the CPU library (tested on CI) runs the same source as
// the CUDA kernels.
#if defined(__CUDACC__)
#define FGAD_HD __host__ __device__ __forceinline__
#else
#define FGAD_HD inline
#endif

// Symbols that the shared libraries export (the rest is hidden with -fvisibility=hidden).
#if defined(_WIN32)
#define FGAD_EXPORT __declspec(dllexport)
#else
#define FGAD_EXPORT __attribute__((visibility("default")))
#endif
