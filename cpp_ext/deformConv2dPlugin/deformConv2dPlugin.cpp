/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * FgadDeformConv2d TensorRT plugin (IPluginV3). The computation is deformConv2dKernel.cu; this file
 * maps TensorRT's descriptions onto FgadDeformConvShape and validates everything it is given, with
 * messages that name the input or field at fault.
 */
#include "deformConv2dPlugin.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>

#include <cuda_runtime_api.h>

#include "deformConv2dKernel.h"
#include "deformConv2dPluginInfo.h"
#include "deformConv2dShape.h"

using namespace nvinfer1;

namespace fgad
{
namespace plugin
{
namespace
{

constexpr int32_t kNbInputs = 5; // X, W, offset, B, mask (ONNX DeformConv order, all present)
constexpr int32_t kNbOutputs = 1;
constexpr char const* kInputNames[kNbInputs] = {"X", "W", "offset", "B", "mask"};

// ------------------------------------------------------------------------------------------------
// Logging: the application's logger once setLoggerFinder() was called, stderr before that.
// ------------------------------------------------------------------------------------------------

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    ILogger* logger = nullptr;
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder != nullptr)
        {
            logger = gLoggerFinder->findLogger();
        }
    }
    if (logger != nullptr)
    {
        logger->log(severity, message.c_str());
    }
    else if (severity <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[fgad] %s\n", message.c_str());
    }
}

bool known(int64_t d) noexcept
{
    return d >= 0;
}

std::string dimsToString(Dims const& dims)
{
    std::ostringstream out;
    out << "[";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        out << (i > 0 ? ", " : "") << dims.d[i];
    }
    out << "]";
    return out.str();
}

//! dilation * (kernel - 1) + 1 subtracted from size + padTotal, floor-divided by stride, plus one.
IDimensionExpr const* outputExtent(IExprBuilder& eb, IDimensionExpr const* size, IDimensionExpr const* kernel,
    int32_t stride, int32_t padTotal, int32_t dilation)
{
    if (size == nullptr || kernel == nullptr)
    {
        return nullptr;
    }
    using Op = DimensionOperation;
    IDimensionExpr const* one = eb.constant(1);
    IDimensionExpr const* kernelMinusOne = eb.operation(Op::kSUB, *kernel, *one);
    IDimensionExpr const* span
        = eb.operation(Op::kSUM, *eb.operation(Op::kPROD, *eb.constant(dilation), *kernelMinusOne), *one);
    IDimensionExpr const* padded = eb.operation(Op::kSUM, *size, *eb.constant(padTotal));
    IDimensionExpr const* numerator = eb.operation(Op::kSUB, *padded, *span);
    return eb.operation(Op::kSUM, *eb.operation(Op::kFLOOR_DIV, *numerator, *eb.constant(stride)), *one);
}

//! Copy an INT32 (or INT64, converted with a range check) field of exactly `length` values.
bool readInts(PluginField const& field, int32_t length, int32_t* dst, std::string& error)
{
    if (field.length != length || field.data == nullptr)
    {
        error = std::string("FgadDeformConv2d: field '") + field.name + "' needs " + std::to_string(length)
            + " value(s), got " + std::to_string(field.length);
        return false;
    }
    if (field.type == PluginFieldType::kINT32)
    {
        std::memcpy(dst, field.data, sizeof(int32_t) * static_cast<size_t>(length));
        return true;
    }
    if (field.type == PluginFieldType::kINT64)
    {
        auto const* values = static_cast<int64_t const*>(field.data);
        for (int32_t i = 0; i < length; ++i)
        {
            if (values[i] < std::numeric_limits<int32_t>::min() || values[i] > std::numeric_limits<int32_t>::max())
            {
                error = std::string("FgadDeformConv2d: field '") + field.name + "' value out of int32 range";
                return false;
            }
            dst[i] = static_cast<int32_t>(values[i]);
        }
        return true;
    }
    error = std::string("FgadDeformConv2d: field '") + field.name
        + "' must be INT32 (ONNX ints attributes are passed as INT32 by the ONNX parser)";
    return false;
}

} // namespace

// ------------------------------------------------------------------------------------------------
// Attributes
// ------------------------------------------------------------------------------------------------

std::string DeformConv2dAttributes::validate() const
{
    std::ostringstream error;
    if (strides[0] < 1 || strides[1] < 1)
    {
        error << "strides must be >= 1";
    }
    else if (dilations[0] < 1 || dilations[1] < 1)
    {
        error << "dilations must be >= 1";
    }
    else if (pads[0] < 0 || pads[1] < 0 || pads[2] < 0 || pads[3] < 0)
    {
        error << "pads must be >= 0";
    }
    else if (group < 1)
    {
        error << "group must be >= 1";
    }
    else if (offsetGroup < 1)
    {
        error << "offset_group must be >= 1";
    }
    else if (hasKernelShape && (kernelShape[0] < 1 || kernelShape[1] < 1))
    {
        error << "kernel_shape must be positive";
    }
    std::string const text = error.str();
    return text.empty() ? text : "FgadDeformConv2d: " + text + " (got " + describe() + ")";
}

std::string DeformConv2dAttributes::describe() const
{
    std::ostringstream out;
    out << "strides=[" << strides[0] << "," << strides[1] << "] pads=[" << pads[0] << "," << pads[1] << "," << pads[2]
        << "," << pads[3] << "] dilations=[" << dilations[0] << "," << dilations[1] << "] group=" << group
        << " offset_group=" << offsetGroup;
    if (hasKernelShape)
    {
        out << " kernel_shape=[" << kernelShape[0] << "," << kernelShape[1] << "]";
    }
    return out.str();
}

bool parseAttributes(
    PluginFieldCollection const* fc, DeformConv2dAttributes& attributes, std::string& error, std::string& warnings)
{
    attributes = DeformConv2dAttributes{};
    if (fc == nullptr)
    {
        return true; // all defaults
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            continue;
        }
        std::string const name(field.name);
        bool ok = true;
        if (name == kFieldStrides)
        {
            ok = readInts(field, 2, attributes.strides, error);
        }
        else if (name == kFieldPads)
        {
            ok = readInts(field, 4, attributes.pads, error);
        }
        else if (name == kFieldDilations)
        {
            ok = readInts(field, 2, attributes.dilations, error);
        }
        else if (name == kFieldGroup)
        {
            ok = readInts(field, 1, &attributes.group, error);
        }
        else if (name == kFieldOffsetGroup)
        {
            ok = readInts(field, 1, &attributes.offsetGroup, error);
        }
        else if (name == kFieldKernelShape)
        {
            ok = readInts(field, 2, attributes.kernelShape, error);
            attributes.hasKernelShape = ok;
        }
        else if (name != "plugin_namespace" && name != "plugin_version")
        {
            warnings += "FgadDeformConv2d: ignoring unknown field '" + name + "'; ";
        }
        if (!ok)
        {
            return false;
        }
    }
    error = attributes.validate();
    return error.empty();
}

// ------------------------------------------------------------------------------------------------
// Plugin: construction, IPluginV3, IPluginV3OneCore
// ------------------------------------------------------------------------------------------------

DeformConv2dPlugin::DeformConv2dPlugin(DeformConv2dAttributes const& attributes)
    : mAttributes(attributes)
    , mNamespace(kDeformConv2dPluginNamespace)
{
}

IPluginCapability* DeformConv2dPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* DeformConv2dPlugin::clone() noexcept
{
    try
    {
        // Built from the attributes rather than copied: mFields/mFieldCollection point into their
        // owner and are rebuilt on demand by getFieldsToSerialize().
        auto* copy = new DeformConv2dPlugin(mAttributes);
        copy->mNamespace = mNamespace;
        copy->mTactic = mTactic;
        copy->mErrorRecorder = mErrorRecorder;
        return copy;
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string("FgadDeformConv2d: clone failed: ") + e.what());
    }
    return nullptr;
}

char const* DeformConv2dPlugin::getPluginName() const noexcept
{
    return kDeformConv2dPluginName;
}

char const* DeformConv2dPlugin::getPluginVersion() const noexcept
{
    return kDeformConv2dPluginVersion;
}

char const* DeformConv2dPlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

void DeformConv2dPlugin::reportError(std::string const& message) const noexcept
{
    if (mErrorRecorder != nullptr)
    {
        mErrorRecorder->reportError(ErrorCode::kINVALID_ARGUMENT, message.c_str());
    }
    logMessage(ILogger::Severity::kERROR, message);
}

// ------------------------------------------------------------------------------------------------
// Shape checks shared by build time (wildcards) and run time (concrete dims)
// ------------------------------------------------------------------------------------------------

bool DeformConv2dPlugin::checkInputDims(Dims const* dims, int32_t nbInputs, std::string& error) const
{
    if (nbInputs != kNbInputs)
    {
        error = "FgadDeformConv2d: needs 5 inputs (X, W, offset, B, mask; the exporter fills in a zero bias and a "
                "mask of ones), got "
            + std::to_string(nbInputs);
        return false;
    }
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        int32_t const rank = i == 3 ? 1 : 4;
        if (dims[i].nbDims != rank)
        {
            error = std::string("FgadDeformConv2d: input ") + kInputNames[i] + " must be " + std::to_string(rank)
                + "-D, got " + dimsToString(dims[i]);
            return false;
        }
    }
    Dims const& x = dims[0];
    Dims const& w = dims[1];
    Dims const& offset = dims[2];
    Dims const& b = dims[3];
    Dims const& mask = dims[4];
    auto const fail = [&](std::string const& text) {
        error = "FgadDeformConv2d: " + text + " (X " + dimsToString(x) + ", W " + dimsToString(w) + ", offset "
            + dimsToString(offset) + ", B " + dimsToString(b) + ", mask " + dimsToString(mask) + "; "
            + mAttributes.describe() + ")";
        return false;
    };
    int64_t const kh = mAttributes.hasKernelShape ? mAttributes.kernelShape[0] : w.d[2];
    int64_t const kw = mAttributes.hasKernelShape ? mAttributes.kernelShape[1] : w.d[3];
    int64_t const og = mAttributes.offsetGroup;
    if (mAttributes.hasKernelShape && ((known(w.d[2]) && w.d[2] != kh) || (known(w.d[3]) && w.d[3] != kw)))
    {
        return fail("kernel_shape disagrees with W's last two dimensions");
    }
    if (known(x.d[1]) && known(w.d[1]) && w.d[1] * mAttributes.group != x.d[1])
    {
        return fail("W's second dimension times group must equal X's channels");
    }
    if (known(w.d[0]) && w.d[0] % mAttributes.group != 0)
    {
        return fail("group must divide W's first dimension (output channels)");
    }
    if (known(x.d[1]) && x.d[1] % og != 0)
    {
        return fail("offset_group must divide X's channels");
    }
    if (known(b.d[0]) && known(w.d[0]) && b.d[0] != w.d[0])
    {
        return fail("B must have one value per output channel");
    }
    if (known(kh) && known(kw))
    {
        if (known(offset.d[1]) && offset.d[1] != 2 * og * kh * kw)
        {
            return fail("offset must have 2 * offset_group * kh * kw channels");
        }
        if (known(mask.d[1]) && mask.d[1] != og * kh * kw)
        {
            return fail("mask must have offset_group * kh * kw channels");
        }
    }
    for (Dims const* other : {&offset, &mask})
    {
        if (known(x.d[0]) && known(other->d[0]) && other->d[0] != x.d[0])
        {
            return fail("offset and mask must have X's batch size");
        }
    }
    if (known(kh) && known(kw))
    {
        int64_t const sizes[2] = {x.d[2], x.d[3]};
        int64_t const kernel[2] = {kh, kw};
        for (int32_t axis = 0; axis < 2; ++axis)
        {
            if (!known(sizes[axis]))
            {
                continue;
            }
            int64_t const out = deform::convOutputSize(sizes[axis], kernel[axis], mAttributes.strides[axis],
                mAttributes.pads[axis], mAttributes.pads[axis + 2], mAttributes.dilations[axis]);
            if (out < 1)
            {
                return fail("the kernel does not fit the input (check kernel_shape, pads, dilations)");
            }
            for (Dims const* other : {&offset, &mask})
            {
                if (known(other->d[2 + axis]) && other->d[2 + axis] != out)
                {
                    return fail("offset and mask must have the output's spatial size " + std::to_string(out)
                        + (axis == 0 ? " (rows)" : " (columns)"));
                }
            }
        }
    }
    return true;
}

bool DeformConv2dPlugin::makeShape(Dims const& x, Dims const& w, FgadDeformConvShape& shape, std::string& error) const
{
    int64_t const kh = mAttributes.hasKernelShape ? mAttributes.kernelShape[0] : w.d[2];
    int64_t const kw = mAttributes.hasKernelShape ? mAttributes.kernelShape[1] : w.d[3];
    for (int64_t v : {x.d[0], x.d[1], x.d[2], x.d[3], w.d[0], kh, kw})
    {
        if (v < 0 || v > std::numeric_limits<int32_t>::max())
        {
            error = "FgadDeformConv2d: X " + dimsToString(x) + " / W " + dimsToString(w)
                + " has a negative or too large dimension";
            return false;
        }
    }
    shape = FgadDeformConvShape{};
    shape.batch = static_cast<int32_t>(x.d[0]);
    shape.inChannels = static_cast<int32_t>(x.d[1]);
    shape.height = static_cast<int32_t>(x.d[2]);
    shape.width = static_cast<int32_t>(x.d[3]);
    shape.outChannels = static_cast<int32_t>(w.d[0]);
    shape.kernelH = static_cast<int32_t>(kh);
    shape.kernelW = static_cast<int32_t>(kw);
    shape.strideH = mAttributes.strides[0];
    shape.strideW = mAttributes.strides[1];
    shape.padTop = mAttributes.pads[0];
    shape.padLeft = mAttributes.pads[1];
    shape.padBottom = mAttributes.pads[2];
    shape.padRight = mAttributes.pads[3];
    shape.dilationH = mAttributes.dilations[0];
    shape.dilationW = mAttributes.dilations[1];
    shape.group = mAttributes.group;
    shape.offsetGroup = mAttributes.offsetGroup;
    deform::fillOutputSize(shape);
    return true;
}

// ------------------------------------------------------------------------------------------------
// IPluginV3OneBuild
// ------------------------------------------------------------------------------------------------

int32_t DeformConv2dPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        std::string error;
        if (nbOutputs != kNbOutputs || in == nullptr || out == nullptr)
        {
            error = "FgadDeformConv2d: needs one output, got " + std::to_string(nbOutputs);
        }
        else if (nbInputs == kNbInputs)
        {
            Dims dims[kNbInputs];
            for (int32_t i = 0; i < kNbInputs; ++i)
            {
                dims[i] = in[i].desc.dims;
            }
            checkInputDims(dims, nbInputs, error);
        }
        else
        {
            checkInputDims(nullptr, nbInputs, error);
        }
        if (!error.empty())
        {
            reportError(error);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError(std::string("FgadDeformConv2d: configurePlugin failed: ") + e.what());
    }
    return -1;
}

int32_t DeformConv2dPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != kNbOutputs || nbInputs != kNbInputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        reportError("FgadDeformConv2d: expects 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs));
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t DeformConv2dPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr
        || inputs[0].nbDims != 4 || inputs[1].nbDims != 4)
    {
        reportError("FgadDeformConv2d: needs X [N, C, H, W], W [Cout, C/group, kh, kw], offset, B, mask and one "
                    "output");
        return -1;
    }
    DimsExprs const& x = inputs[0];
    DimsExprs const& w = inputs[1];
    IDimensionExpr const* kh = mAttributes.hasKernelShape ? exprBuilder.constant(mAttributes.kernelShape[0]) : w.d[2];
    IDimensionExpr const* kw = mAttributes.hasKernelShape ? exprBuilder.constant(mAttributes.kernelShape[1]) : w.d[3];
    outputs[0].nbDims = 4;
    outputs[0].d[0] = x.d[0]; // dynamic batch stays symbolic
    outputs[0].d[1] = w.d[0];
    outputs[0].d[2] = outputExtent(exprBuilder, x.d[2], kh, mAttributes.strides[0],
        mAttributes.pads[0] + mAttributes.pads[2], mAttributes.dilations[0]);
    outputs[0].d[3] = outputExtent(exprBuilder, x.d[3], kw, mAttributes.strides[1],
        mAttributes.pads[1] + mAttributes.pads[3], mAttributes.dilations[1]);
    if (outputs[0].d[2] == nullptr || outputs[0].d[3] == nullptr)
    {
        reportError("FgadDeformConv2d: could not build the output size expressions");
        return -1;
    }
    return 0;
}

bool DeformConv2dPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0
        || pos >= kNbInputs + kNbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[0].desc.type; // every input and the output share X's type
}

int32_t DeformConv2dPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

size_t DeformConv2dPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // both kernels keep their column tiles in shared memory / registers
}

int32_t DeformConv2dPlugin::getNbTactics() noexcept
{
    return 2;
}

int32_t DeformConv2dPlugin::getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept
{
    if (tactics == nullptr || nbTactics != 2)
    {
        return -1;
    }
    tactics[0] = FGAD_DEFORM_ALGO_TILED; // TensorRT times both and keeps the faster
    tactics[1] = FGAD_DEFORM_ALGO_DIRECT;
    return 0;
}

// ------------------------------------------------------------------------------------------------
// IPluginV3OneRuntime
// ------------------------------------------------------------------------------------------------

int32_t DeformConv2dPlugin::setTactic(int32_t tactic) noexcept
{
    if (tactic != FGAD_DEFORM_ALGO_AUTO && tactic != FGAD_DEFORM_ALGO_TILED && tactic != FGAD_DEFORM_ALGO_DIRECT)
    {
        reportError("FgadDeformConv2d: unknown tactic " + std::to_string(tactic));
        return -1;
    }
    mTactic = tactic;
    return 0;
}

int32_t DeformConv2dPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        std::string error;
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            reportError("FgadDeformConv2d: onShapeChange needs 5 inputs and 1 output");
            return -1;
        }
        Dims dims[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        FgadDeformConvShape shape{};
        if (!checkInputDims(dims, nbInputs, error) || !makeShape(dims[0], dims[1], shape, error))
        {
            reportError(error);
            return -1;
        }
        if (shape.batch == 0)
        {
            return 0; // empty batch: enqueue has nothing to do
        }
        char message[512];
        if (!deform::validateShape(shape, message, sizeof(message)))
        {
            reportError(message);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError(std::string("FgadDeformConv2d: onShapeChange failed: ") + e.what());
    }
    return -1;
}

int32_t DeformConv2dPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        std::string error;
        FgadDeformConvShape shape{};
        if (!makeShape(inputDesc[0].dims, inputDesc[1].dims, shape, error))
        {
            reportError(error);
            return -1;
        }
        if (shape.batch == 0)
        {
            return 0;
        }
        char message[512];
        if (!deform::validateShape(shape, message, sizeof(message)))
        {
            reportError(message);
            return -1;
        }
        Dims const& y = outputDesc[0].dims;
        if (y.nbDims != 4 || y.d[0] != shape.batch || y.d[1] != shape.outChannels || y.d[2] != shape.outH
            || y.d[3] != shape.outW)
        {
            reportError("FgadDeformConv2d: output " + dimsToString(y) + " does not match the computed ["
                + std::to_string(shape.batch) + ", " + std::to_string(shape.outChannels) + ", "
                + std::to_string(shape.outH) + ", " + std::to_string(shape.outW) + "]");
            return -1;
        }
        DataType const type = inputDesc[0].type;
        if (type != DataType::kFLOAT && type != DataType::kHALF)
        {
            reportError("FgadDeformConv2d: only FP32 and FP16 tensors are supported");
            return -1;
        }
        int32_t const dtype = type == DataType::kHALF ? FGAD_DEFORM_FLOAT16 : FGAD_DEFORM_FLOAT32;
        cudaError_t const status = deform::launchDeformConv2d(
            shape, dtype, mTactic, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], outputs[0], stream);
        if (status != cudaSuccess)
        {
            reportError(std::string("FgadDeformConv2d: kernel launch failed: ") + cudaGetErrorString(status));
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError(std::string("FgadDeformConv2d: enqueue failed: ") + e.what());
    }
    return -1;
}

IPluginV3* DeformConv2dPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    auto* const copy = static_cast<DeformConv2dPlugin*>(clone());
    if (copy != nullptr && context != nullptr)
    {
        copy->mErrorRecorder = context->getErrorRecorder();
    }
    return copy;
}

PluginFieldCollection const* DeformConv2dPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFields.clear();
        mFields.emplace_back(kFieldStrides, mAttributes.strides, PluginFieldType::kINT32, 2);
        mFields.emplace_back(kFieldPads, mAttributes.pads, PluginFieldType::kINT32, 4);
        mFields.emplace_back(kFieldDilations, mAttributes.dilations, PluginFieldType::kINT32, 2);
        mFields.emplace_back(kFieldGroup, &mAttributes.group, PluginFieldType::kINT32, 1);
        mFields.emplace_back(kFieldOffsetGroup, &mAttributes.offsetGroup, PluginFieldType::kINT32, 1);
        if (mAttributes.hasKernelShape)
        {
            mFields.emplace_back(kFieldKernelShape, mAttributes.kernelShape, PluginFieldType::kINT32, 2);
        }
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        reportError(std::string("FgadDeformConv2d: getFieldsToSerialize failed: ") + e.what());
    }
    return nullptr;
}

// ------------------------------------------------------------------------------------------------
// Creator
// ------------------------------------------------------------------------------------------------

DeformConv2dPluginCreator::DeformConv2dPluginCreator()
{
    for (FieldSpec const& spec : kDeformConv2dFields)
    {
        mFieldNames.emplace_back(spec.name, nullptr, PluginFieldType::kINT32, spec.length);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* DeformConv2dPluginCreator::getPluginName() const noexcept
{
    return kDeformConv2dPluginName;
}

char const* DeformConv2dPluginCreator::getPluginVersion() const noexcept
{
    return kDeformConv2dPluginVersion;
}

char const* DeformConv2dPluginCreator::getPluginNamespace() const noexcept
{
    return kDeformConv2dPluginNamespace;
}

PluginFieldCollection const* DeformConv2dPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* DeformConv2dPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        DeformConv2dAttributes attributes;
        std::string error;
        std::string warnings;
        bool const ok = parseAttributes(fc, attributes, error, warnings);
        std::string const layer = name != nullptr ? name : "<unnamed>";
        if (!warnings.empty())
        {
            logMessage(ILogger::Severity::kWARNING, "layer " + layer + ": " + warnings);
        }
        if (!ok)
        {
            logMessage(ILogger::Severity::kERROR, "layer " + layer + ": " + error);
            return nullptr;
        }
        return new DeformConv2dPlugin(attributes);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string("FgadDeformConv2d: createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace fgad

// ------------------------------------------------------------------------------------------------
// Library entry points for IPluginRegistry::loadLibrary
// ------------------------------------------------------------------------------------------------

extern "C" void setLoggerFinder(ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(fgad::plugin::gLoggerMutex);
    if (fgad::plugin::gLoggerFinder == nullptr && finder != nullptr)
    {
        fgad::plugin::gLoggerFinder = finder;
    }
}

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static fgad::plugin::DeformConv2dPluginCreator deformConv2dCreator;
    static IPluginCreatorInterface* const creators[] = {&deformConv2dCreator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
