"""What a bundle's ``manifest.json`` says, as frozen dataclasses, and the names the manifest contract fixes.

``docs/bundle.md`` is the contract; :mod:`fgad.bundle.parse` builds these from the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BOX_PRIOR_OUTPUTS",
    "DIGEST_FILE",
    "ENGINE_FILE",
    "FEWSHOT_SEARCHES",
    "FORMAT_VERSION",
    "GRAPH_BOX_PRIORS",
    "GRAPH_SEARCH_FORMAT_VERSION",
    "INPUT_NAME",
    "INTEGRITY_FILES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PLUGIN_DIR",
    "QDQ_FILE",
    "QUANTIZATION_REPORT_FILE",
    "REFERENCES_FILE",
    "REFERENCES_FINGERPRINT_KEY",
    "REQUIRED_OUTPUTS",
    "SIGNATURE_FILE",
    "SUPPORTED_FORMAT_VERSIONS",
    "knn_output",
    "token_output",
    "BoxPriorSpec",
    "EngineSpec",
    "FewshotSpec",
    "InputSpec",
    "Manifest",
    "PluginSpec",
    "PostSpec",
    "Shape",
    "TextSpec",
    "ThresholdSpec",
]

# ---- every name the contract fixes, declared once for the writers (export, calibration) and the runtime

#: The manifest format version writers write.
FORMAT_VERSION = 1
#: The version of a bundle whose graph searches the reference memory itself (``fewshot.search: "graph"``): a
#: version-1 reader would ignore that field and silently run such a bundle zero-shot, so it must refuse it.
GRAPH_SEARCH_FORMAT_VERSION = 2
#: Manifest format versions this runtime understands.
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (FORMAT_VERSION, GRAPH_SEARCH_FORMAT_VERSION)
#: Files of a bundle folder.
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"  # the ONNX graph (fp32, or Q/DQ int8 in an int8 bundle)
REFERENCES_FILE = "references.npz"  # few-shot memory: layer_<l> unit rows, paths, fingerprint
#: The array of a references file holding the fingerprint of the model and layers that made its rows.
REFERENCES_FINGERPRINT_KEY = "fingerprint"
ENGINE_FILE = "model.engine"  # a TensorRT plan
QDQ_FILE = "model.qdq.onnx"  # the Q/DQ graph an int8 engine is built from
PLUGIN_DIR = "plugins"  # TensorRT plugin libraries
QUANTIZATION_REPORT_FILE = "quantization.json"  # an int8 bundle's record of what stayed float
#: Beside the manifest, not listed in its ``sha256`` (they cover it): the digest of the canonical manifest
#: (fgad.bundle.digest) and, for a signed bundle, the Ed25519 signature of that digest (fgad.bundle.signing).
DIGEST_FILE = "manifest.digest"
SIGNATURE_FILE = "manifest.sig"
#: The files of a bundle that ``sha256`` does not list: the manifest and the two that protect it.
INTEGRITY_FILES: tuple[str, ...] = (MANIFEST_FILE, DIGEST_FILE, SIGNATURE_FILE)
#: The graph's one input: images [B, 3, s, s].
INPUT_NAME = "image"
#: Outputs every graph has, first and in this order; ``tokens_<layer>`` (:func:`token_output`) follow.
REQUIRED_OUTPUTS: tuple[str, ...] = ("vl_map", "global_prob", "best_description")
#: Outputs of a graph with a box prior inside, after the tokens: the chosen position cell and the few-shot
#: map's weight.
BOX_PRIOR_OUTPUTS: tuple[str, ...] = ("position", "region_weight")
#: Box priors a bundle's graph can hold.
GRAPH_BOX_PRIORS: tuple[str, ...] = ("none", "objectness")
#: Where the few-shot search runs (``fewshot.search``): in the runtime against ``references.npz``, or inside the
#: graph against its constant memory bank (``knn_<layer>`` outputs, fgad-export --knn graph).
FEWSHOT_SEARCHES: tuple[str, ...] = ("runtime", "graph")


def token_output(layer: int) -> str:
    """Name of the graph output holding the patch tokens of ``layer``."""
    return f"tokens_{layer}"


def knn_output(layer: int) -> str:
    """Name of the graph output holding ``max_m <t, m>`` of every patch of ``layer`` ([B, N], fewshot.search
    "graph")."""
    return f"knn_{layer}"


Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "onnx" (onnxruntime) or "tensorrt" (serialized TensorRT engine)
    file: str  # engine file, relative to the bundle folder
    opset: int | None = None  # ONNX opset of the exported graph
    precision: str = "fp32"  # fp32 | fp16 | int8 (informational for the runtime)
    tensorrt_version: str | None = None  # TensorRT version that built the engine ("10.3.0"); engines only
    compute_capability: str | None = None  # GPU compute capability the engine was built for ("8.7"); engines only
    deform: str | None = None  # deformable-conv flavour the engine was built from (decomposed | onnx | plugin)
    plugins: tuple[PluginSpec, ...] = ()  # TensorRT plugin libraries to load before deserializing; engines only
    fallback: EngineSpec | None = None  # what to run where this engine cannot run (the ONNX graph it was built from)


@dataclass(frozen=True)
class PluginSpec:
    file: str  # plugin library, relative to the bundle folder (listed in ``sha256`` too)
    ops: tuple[str, ...] = ()  # "<domain>::<op>" nodes it implements, e.g. "fgad::FgadDeformConv2d"


@dataclass(frozen=True)
class InputSpec:
    name: str  # graph input name
    size: int  # s: the image is resized to s x s
    layout: str  # only "NCHW"
    color: str  # only "RGB"
    resize: str  # only "bicubic" (fgad.core.transforms.preprocess)
    mean: tuple[float, float, float]  # per-channel mean on [0, 1] pixels
    std: tuple[float, float, float]  # per-channel std


@dataclass(frozen=True)
class FewshotSpec:
    layers: tuple[int, ...] = ()  # memory layers; each has a tokens_<layer> output
    file: str | None = None  # references.npz, relative to the bundle folder (None: zero-shot bundle)
    num_references: int = 0  # k reference images stored in ``file`` (or in the graph)
    search: str = "runtime"  # FEWSHOT_SEARCHES: "graph" = the memory bank is a constant of the graph


@dataclass(frozen=True)
class PostSpec:
    sigma: float  # Gaussian smoothing sigma, pixels at input size
    truncate: float  # kernel radius int(truncate * sigma + 0.5)
    # map fusion and score (fgad.runtime.fusion); the defaults are FiLo++'s
    fusion: str = "mean"  # "mean": (vl_map + few) / 2; "harmonic": 1 / (1/vl_map + 1/few) (FineGrainedAD)
    score: str = "mean"  # "mean": (global_prob + max map) / 2; "harmonic": global_prob (+) max Up(few) (FineGrainedAD)
    fewshot_scale: float = 1.0  # few-shot map = scale * mean over layers of the min distance (FineGrainedAD: 0.5)
    map_size: int | None = None  # side of vl_map, where the maps are fused (None: input.size)
    output_size: int | None = None  # side of the final map (None: map_size)
    # bilinear upsampling of the runtime's maps; bundles written before the field existed used True
    align_corners: bool = True


@dataclass(frozen=True)
class TextSpec:
    mode: str | None = None  # "frozen" or "bank"
    conditioning: str | None = None
    filtering: str | None = None
    descriptions: tuple[str, ...] = ()  # best_description indexes into this list
    num_normal: int | None = None
    num_abnormal: int | None = None


@dataclass(frozen=True)
class ThresholdSpec:
    image: float | None = None  # image-score threshold chosen at export (None: none recorded)
    rule: str | None = None  # how it was chosen
    auto: float | None = None  # the "auto" (leave-one-out) threshold, computed at export (fewshot.search "graph")


@dataclass(frozen=True)
class BoxPriorSpec:
    name: str = "none"  # "none" or a prior computed inside the graph ("objectness")
    outputs: tuple[str, ...] = ()  # extra graph outputs the runtime reads (BOX_PRIOR_OUTPUTS for a prior)
    suppression: float | None = None  # lambda outside the box (informational: region_weight already holds it)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    engine: EngineSpec
    input: InputSpec
    outputs: dict[str, Shape]  # output name -> declared shape, None for dynamic dims
    grid: int  # g: patch tokens form a g x g grid, N = g * g
    post: PostSpec
    sha256: dict[str, str]  # relative file name -> hex digest
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)
    text: TextSpec = field(default_factory=TextSpec)
    thresholds: ThresholdSpec = field(default_factory=ThresholdSpec)
    box_prior: BoxPriorSpec = field(default_factory=BoxPriorSpec)
    class_name: str = ""
    fgad_version: str | None = None
    created: str | None = None
    deform: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the parsed JSON as read

    @property
    def map_size(self) -> int:
        """Side of the graph's ``vl_map`` (``post.map_size``, default ``input.size``)."""
        return self.post.map_size or self.input.size

    @property
    def output_size(self) -> int:
        """Side of the final anomaly map (``post.output_size``, default the map size)."""
        return self.post.output_size or self.map_size

    @property
    def num_patches(self) -> int:
        """N = grid * grid patch tokens per image."""
        return self.grid * self.grid

    @staticmethod
    def token_output(layer: int) -> str:
        """Name of the graph output holding the patch tokens of ``layer``."""
        return token_output(layer)

    def token_dim(self, layer: int) -> int | None:
        """D of ``tokens_<layer>`` as declared in ``outputs`` (None if unknown)."""
        shape = self.outputs.get(self.token_output(layer))
        return shape[-1] if shape else None

    def description(self, index: int) -> str:
        """The abnormal description at ``index`` (``#index`` if the manifest has no such entry)."""
        if 0 <= index < len(self.text.descriptions):
            return self.text.descriptions[index]
        return f"#{index}"

