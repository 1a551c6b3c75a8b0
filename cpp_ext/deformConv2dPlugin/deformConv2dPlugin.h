/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * FgadDeformConv2d: TensorRT 10 IPluginV3 plugin for the deformable convolution (DCNv1/DCNv2) of
 * ONNX DeformConv, as emitted by fgad-export's `plugin` flavour. See README.md in this folder for
 * inputs, fields, formats and limits.
 *
 * Interfaces, grouped as TensorRT's headers group them:
 *   IPluginV3             capability lookup, clone
 *   IPluginV3OneCore      name / version / namespace
 *   IPluginV3OneBuild     output types and shapes, formats, configuration, workspace, tactics
 *   IPluginV3OneRuntime   shape change, enqueue, context attachment, serialization fields
 * and the creator IPluginCreatorV3One. The library exports getCreators() (and setLoggerFinder())
 * for IPluginRegistry::loadLibrary / trt.get_plugin_registry().load_library(path).
 */
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "common/fgadMacros.h"
#include "deformConv2dShape.h"

namespace fgad
{
namespace plugin
{

//! The node's attributes (plugin fields). Defaults are ONNX DeformConv's.
struct DeformConv2dAttributes
{
    int32_t strides[2]{1, 1};
    int32_t pads[4]{0, 0, 0, 0}; //!< top, left, bottom, right
    int32_t dilations[2]{1, 1};
    int32_t group{1};
    int32_t offsetGroup{1};
    int32_t kernelShape[2]{0, 0}; //!< meaningful when hasKernelShape; otherwise W's last two dims
    bool hasKernelShape{false};

    //! Empty when valid, else a message naming the field.
    std::string validate() const;
    //! "strides=[1,1] pads=[1,1,1,1] ..." for logs and error messages.
    std::string describe() const;
};

class DeformConv2dPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit DeformConv2dPlugin(DeformConv2dAttributes const& attributes);
    DeformConv2dPlugin(DeformConv2dPlugin const&) = delete; // use clone()
    DeformConv2dPlugin& operator=(DeformConv2dPlugin const&) = delete;
    ~DeformConv2dPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
    int32_t getNbTactics() noexcept override;

    // IPluginV3OneRuntime
    int32_t setTactic(int32_t tactic) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    DeformConv2dAttributes const& attributes() const noexcept
    {
        return mAttributes;
    }

private:
    //! Report through the execution context's error recorder when attached, and the logger.
    void reportError(std::string const& message) const noexcept;
    //! Shape of one call from concrete X and W dims; false with a message if they do not fit.
    bool makeShape(nvinfer1::Dims const& x, nvinfer1::Dims const& w, FgadDeformConvShape& shape,
        std::string& error) const;
    //! Consistency of the five input shapes (wildcard -1 dims are skipped, as at build time).
    bool checkInputDims(nvinfer1::Dims const* dims, int32_t nbInputs, std::string& error) const;

    DeformConv2dAttributes mAttributes;
    std::string mNamespace;
    int32_t mTactic{FGAD_DEFORM_ALGO_AUTO};
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class DeformConv2dPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    DeformConv2dPluginCreator();
    ~DeformConv2dPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parse plugin fields into attributes; false with a message naming the field on error.
//! Unknown fields are reported in `warnings` and ignored.
bool parseAttributes(nvinfer1::PluginFieldCollection const* fc, DeformConv2dAttributes& attributes, std::string& error,
    std::string& warnings);

} // namespace plugin
} // namespace fgad

extern "C"
{
    //! Called by IPluginRegistry::loadLibrary so the plugin logs through the application's logger.
    FGAD_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
    //! The plugin creators of this library, for IPluginRegistry::loadLibrary.
    FGAD_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}
