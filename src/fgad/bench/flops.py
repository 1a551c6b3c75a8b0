"""Analytic FLOPs of FiLo++ inference, computed from the config's shapes (no torch, no model).

One FLOP is one multiply or one add, so a multiply-accumulate counts 2 (the convention of
``torch.utils.flop_counter`` and of vendor peak figures). Counted per image:

* **encoder** (:class:`~fgad.backbone.dual_path.ClipDualPath` as it runs: every block, since the
  global feature needs the last one): patch embedding; per block the QKV projection, the two
  attention matmuls (``q k^T`` and ``A v``), the output projection and the MLP; from block
  ``vv_start`` on, the V-V path (``v v^T``, ``A v`` and a second output projection; its ``v`` is the
  original path's, so no extra projection);
* **heads**: the global projection and adapter, the linear stage heads ``D -> C``, the two-way scores
  of every stage map (and of every MDCI kernel) against ``T_n, T_a``, and the best-description match
  against the abnormal prompts;
* **mdci**: per stage and kernel of ``K = kh * kw`` taps, the offset/modulation conv
  (``D -> 3K`` or ``2K`` channels, ``K`` taps), bilinear sampling of ``D * K`` values per position, and
  the main GEMM ``D * K -> C``;
* **text**: 0 at runtime: a bundle freezes the text side into constants at export time;
* **fewshot**: cosine similarity of the ``N`` query patches against ``shots * N`` memory rows of width
  ``D``, per memory layer (the numpy/FAISS search of the runtime).

Not counted: layer norms, softmax, GELU, residual adds, normalisations, upsampling and smoothing
(element-wise work, a few percent of the total). Bilinear sampling is counted as
:data:`SAMPLING_FLOPS_PER_VALUE` (+1 for DCNv2 modulation) per sampled value; it is the only counted
term that is not a matmul or convolution, so :attr:`FlopsBreakdown.matmul` (everything else) is what
``torch.utils.flop_counter.FlopCounterMode`` reports for the export graph under
:func:`fgad.backbone.deform.exportable` with the math attention kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fgad.config import ModelConfig

__all__ = [
    "MLP_RATIO",
    "SAMPLING_FLOPS_PER_VALUE",
    "FlopsBreakdown",
    "encoder_flops",
    "fewshot_flops",
    "mdci_flops",
    "model_flops",
]

#: open_clip's ViT MLP width is ``mlp_ratio * D``; 4.0 for every model we ship (and open_clip's default)
MLP_RATIO = 4.0
#: bilinear interpolation of one value from 4 corners: 4 multiplies + 3 adds (weights shared over channels)
SAMPLING_FLOPS_PER_VALUE = 7


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs of one batch, by part (see the module docstring for what each part holds)."""

    patch_embed: int
    attention_qkv: int
    attention_matmul: int
    attention_proj: int
    mlp: int
    vv_matmul: int
    vv_proj: int
    global_head: int
    linear_heads: int
    scoring: int
    mdci_offset: int
    mdci_sampling: int
    mdci_gemm: int
    text: int
    fewshot: int

    @property
    def encoder(self) -> int:
        """The dual-path image encoder."""
        return (self.patch_embed + self.attention_qkv + self.attention_matmul + self.attention_proj + self.mlp
                + self.vv_matmul + self.vv_proj)

    @property
    def heads(self) -> int:
        """Global head, adapter, linear heads and two-way scoring."""
        return self.global_head + self.linear_heads + self.scoring

    @property
    def mdci(self) -> int:
        return self.mdci_offset + self.mdci_sampling + self.mdci_gemm

    @property
    def engine(self) -> int:
        """Everything inside the exported graph (encoder, heads, MDCI; the text is constant)."""
        return self.encoder + self.heads + self.mdci + self.text

    @property
    def total(self) -> int:
        """Graph plus few-shot search."""
        return self.engine + self.fewshot

    @property
    def matmul(self) -> int:
        """The graph's matmul and convolution FLOPs: what ``FlopCounterMode`` counts (sampling excluded)."""
        return self.engine - self.mdci_sampling

    def to_dict(self) -> dict[str, int]:
        """Every part plus the ``encoder``/``heads``/``mdci``/``engine``/``total`` sums."""
        out = asdict(self)
        out.update(encoder=self.encoder, heads=self.heads, mdci=self.mdci, engine=self.engine, total=self.total)
        return out


def encoder_flops(cfg: ModelConfig, batch: int = 1, mlp_ratio: float = MLP_RATIO) -> dict[str, int]:
    """The dual-path encoder's FLOPs by part, for ``batch`` images (see the module docstring)."""
    bb = cfg.backbone
    n, d, p = bb.num_patches, bb.width, bb.patch_size
    t = n + 1  # tokens with CLS
    hidden = int(round(mlp_ratio * d))
    dual_blocks = bb.layers - bb.vv_start + 1
    matmul_pair = 2 * (2 * t * t * d)  # q k^T and A v over all heads: 2 * T^2 * d_h * heads each
    return {
        "patch_embed": batch * 2 * n * 3 * p * p * d,
        "attention_qkv": batch * bb.layers * 2 * t * d * 3 * d,
        "attention_matmul": batch * bb.layers * matmul_pair,
        "attention_proj": batch * bb.layers * 2 * t * d * d,
        "mlp": batch * bb.layers * 2 * (2 * t * d * hidden),
        "vv_matmul": batch * dual_blocks * matmul_pair,
        "vv_proj": batch * dual_blocks * 2 * t * d * d,
    }


def mdci_flops(cfg: ModelConfig, batch: int = 1) -> dict[str, int]:
    """MDCI's FLOPs by part: offset/modulation conv, bilinear sampling, main GEMM (all stages and kernels)."""
    bb, heads = cfg.backbone, cfg.heads
    n, d, c = bb.num_patches, bb.width, bb.embed_dim
    stages = len(heads.mdci_layers)
    offset = sampling = gemm = 0
    per_value = SAMPLING_FLOPS_PER_VALUE + (1 if heads.mdci_modulation else 0)
    for kh, kw in heads.mdci_kernels:
        taps = kh * kw
        predicted = (3 if heads.mdci_modulation else 2) * taps
        offset += 2 * n * d * taps * predicted
        sampling += per_value * n * d * taps
        gemm += 2 * n * c * d * taps
    return {
        "mdci_offset": batch * stages * offset,
        "mdci_sampling": batch * stages * sampling,
        "mdci_gemm": batch * stages * gemm,
    }


def fewshot_flops(cfg: ModelConfig, shots: int, batch: int = 1) -> int:
    """Query-vs-memory similarity FLOPs of the few-shot search: ``layers * 2 * N * (shots * N) * D`` per image."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    bb = cfg.backbone
    n = bb.num_patches
    return batch * len(cfg.fewshot.memory_layers) * 2 * n * (shots * n) * bb.width


def model_flops(
    cfg: ModelConfig,
    shots: int = 0,
    batch: int = 1,
    abnormal_prompts: int = 0,
    mlp_ratio: float = MLP_RATIO,
) -> FlopsBreakdown:
    """FLOPs of FiLo++ inference for ``batch`` images with ``shots`` reference images in memory.

    ``abnormal_prompts``: rows of the frozen abnormal prompt matrix the graph matches ``G_a`` against for the
    best description (the manifest's ``text.num_abnormal``; 0 leaves that small term out).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    bb, heads = cfg.backbone, cfg.heads
    n, d, c = bb.num_patches, bb.width, bb.embed_dim
    hidden = max(1, c // heads.adapter_reduction)
    global_head = 2 * d * c + (2 * 2 * c * hidden if heads.adapter else 0)
    maps = len(heads.linear_layers) + len(heads.mdci_layers) * len(heads.mdci_kernels)
    scoring = maps * 2 * n * c * 2 + 2 * c * abnormal_prompts
    return FlopsBreakdown(
        **encoder_flops(cfg, batch, mlp_ratio),
        global_head=batch * global_head,
        linear_heads=batch * len(heads.linear_layers) * 2 * n * d * c,
        scoring=batch * scoring,
        **mdci_flops(cfg, batch),
        text=0,
        fewshot=fewshot_flops(cfg, shots, batch),
    )
