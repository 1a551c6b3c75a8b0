/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The small C API that every library of this folder exports (CPU build, CUDA build, TensorRT
 * plugin), so ctypes bindings can build and check shapes with whichever library they loaded.
 *
 * This header DEFINES the functions: include it in exactly one translation unit per library
 * (deformConv2dCpu.cpp for the CPU build, deformConv2dKernel.cu for the CUDA build and plugin).
 */
#pragma once

#include <cstdint>
#include <cstdio>

#include "common/fgadMacros.h"
#include "deformConv2dShape.h"

extern "C"
{

    //! sizeof(FgadDeformConvShape), so bindings can check their mirror of the struct.
    FGAD_EXPORT int32_t fgad_deform_conv2d_shape_size(void)
    {
        return static_cast<int32_t>(sizeof(FgadDeformConvShape));
    }

    //! Set shape->outH/outW from the other fields.
    FGAD_EXPORT void fgad_deform_conv2d_fill_output_size(FgadDeformConvShape* shape)
    {
        if (shape != nullptr)
        {
            fgad::deform::fillOutputSize(*shape);
        }
    }

    //! 0 when the shape is valid, else 1 and a message naming the bad field in `message`.
    FGAD_EXPORT int32_t fgad_deform_conv2d_validate(FgadDeformConvShape const* shape, char* message, int32_t capacity)
    {
        size_t const size = capacity > 0 ? static_cast<size_t>(capacity) : 0;
        if (shape == nullptr)
        {
            return fgad::deform::reportInvalid(message, size, "FgadDeformConv2d: shape is NULL") ? 0 : 1;
        }
        return fgad::deform::validateShape(*shape, message, size) ? 0 : 1;
    }

} // extern "C"
