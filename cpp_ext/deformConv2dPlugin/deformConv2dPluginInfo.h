/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The plugin's identity and field names: the contract with the exporter, which emits a node
 * FgadDeformConv2d (plugin_version "1", plugin_namespace "fgad") with the ONNX DeformConv inputs
 * and attributes. The CPU library exposes these strings so a test compares them with the
 * exporter's attribute names without needing TensorRT.
 */
#pragma once

namespace fgad
{
namespace plugin
{

constexpr char const* kDeformConv2dPluginName = "FgadDeformConv2d";
constexpr char const* kDeformConv2dPluginVersion = "1";
constexpr char const* kDeformConv2dPluginNamespace = "fgad";

// Field names (ONNX DeformConv attribute names; INT32 arrays as the ONNX parser passes them).
constexpr char const* kFieldStrides = "strides";          //!< 2 values: h, w
constexpr char const* kFieldPads = "pads";                //!< 4 values: top, left, bottom, right
constexpr char const* kFieldDilations = "dilations";      //!< 2 values: h, w
constexpr char const* kFieldGroup = "group";              //!< 1 value
constexpr char const* kFieldOffsetGroup = "offset_group"; //!< 1 value
constexpr char const* kFieldKernelShape = "kernel_shape"; //!< 2 values, optional (else from W)

//! A field the creator accepts: its name and its number of INT32 values.
struct FieldSpec
{
    char const* name;
    int length;
};

//! Every field the creator accepts, in serialization order.
constexpr FieldSpec kDeformConv2dFields[] = {{kFieldStrides, 2}, {kFieldPads, 4}, {kFieldDilations, 2},
    {kFieldGroup, 1}, {kFieldOffsetGroup, 1}, {kFieldKernelShape, 2}};
constexpr int kDeformConv2dNbFields = static_cast<int>(sizeof(kDeformConv2dFields) / sizeof(kDeformConv2dFields[0]));

} // namespace plugin
} // namespace fgad
