"""FineGrainedAD configuration (METHOD.md §2, the FGAD column of §3): one frozen dataclass.

It is the method's own config section (registered by :mod:`fgad.methods.finegrained.spec`):
``model.finegrained`` in files, ``cfg.finegrained`` on a :class:`fgad.config.ModelConfig`, read when
``model.method`` is ``finegrained``. It holds the prompt sizes, the MLSA clustering and loss constants, the
per-class training schedule and the inference post-processing, so a checkpoint's ``config.json`` alone rebuilds
the model. This module imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FUSION_ROWS", "FineGrainedConfig", "finegrained_config_problems"]

#: Rows of an attribute prompt added onto the image prompt (METHOD.md §2.3, F9).
FUSION_ROWS = ("words", "all")


@dataclass(frozen=True)
class FineGrainedConfig:
    """MLLP prompts, MLSA region aggregation and losses, per-class few-shot training, inference."""

    # --- MLLP (§2.3)
    n_pro: int = 1  # normal contexts N_i (PromptAD n_pro; the seg recipe uses 1): N is [n_pro, n_normal_ctx, W]
    n_normal_ctx: int = 4  # tokens per normal context
    n_abnormal_ctx: int = 4  # abnormal contexts A_r, r = 1..n: one learned abnormal prompt [N][A_r] + text each
    abnormal_ctx_len: int = 1  # tokens per abnormal context (A is [n_abnormal_ctx, abnormal_ctx_len, W])
    ctx_init_std: float = 0.02  # N(0, std^2) initialisation of N and A
    fusion: bool = True  # attribute fusion into the image prompts (relation, colour, texture, shape)
    fusion_rows: str = "words"  # "words": only the attribute's word rows; "all": all 77 rows (F9, faithful)
    entity_handles: int = 1  # handle (replacement) prompts per entity (METHOD.md: one)
    seed: int = 111  # prompt-building RNG, trainable init, shot choice and training
    # --- MLSA (a): region aggregation (§2.5), training only
    tiles: int = 4  # shots are resized to tiles * s and encoded as tiles^2 crops of s (960 = 4 * 240)
    knn: tuple[int, int] = (8, 5)  # DPC-KNN neighbours: stage 1 (2 clusters), stage 2 (E + 1 clusters)
    omega_boost: float = 1.5  # region weight: 1 + omega_boost inside the family's region
    # --- MLSA (b): losses and schedule (§2.6)
    logit_scale: float | None = None  # t; None: the CLIP model's raw logit_scale parameter (F3), ~4.6 pretrained
    margin: float = 1.0  # explicit anomaly margin
    lambda_match: float = 1e-3  # lambda_1
    epochs: int = 100  # one optimiser step per epoch (a batch holds all k shots)
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_min: float = 1e-5  # cosine decay end
    # --- inference (§2.4, §2.7)
    gallery_layers: tuple[int, ...] = (3, 8)  # original-path blocks (1-indexed) of the few-shot galleries
    fewshot_scale: float = 0.5  # V_map = scale * mean over gallery layers of the min cosine distance
    output_size: int = 400  # side of the final pixel map
    sigma: float = 4.0  # Gaussian smoothing of the final map (at output_size)
    truncate: float = 4.0  # kernel radius = int(truncate * sigma + 0.5)
    align_corners: bool = False  # bilinear upsampling of the maps (False: the released code's, half-pixel)
    # --- optional
    captions: str | None = None  # caption record JSON (None: the built-in record of the class)
    bank: str | None = None  # description bank JSON {class: [phrases]} for the defect phrases (None: built-in banks)
    combined: bool = False  # combined mode (METHOD.md §3): average with a FiLo++ model's maps and scores
    combine_with: str | None = None  # the FiLo++ checkpoint of the combined mode (or fgad-eval --combine-with)


def finegrained_config_problems(fc: FineGrainedConfig, layers: int) -> list[str]:
    """What is wrong with ``fc`` for a backbone of ``layers`` blocks (empty: nothing).

    Returned as messages naming the field, for :func:`fgad.config.validate_model_config` to raise.
    """
    problems: list[str] = []
    for name in ("n_pro", "n_normal_ctx", "n_abnormal_ctx", "abnormal_ctx_len", "tiles", "epochs", "output_size"):
        value = getattr(fc, name)
        if value < 1:
            problems.append(f"finegrained.{name}={value} must be >= 1")
    if fc.fusion_rows not in FUSION_ROWS:
        problems.append(f"finegrained.fusion_rows={fc.fusion_rows!r}: use one of {list(FUSION_ROWS)}")
    if fc.entity_handles < 0:
        problems.append(f"finegrained.entity_handles={fc.entity_handles} must be >= 0")
    if len(fc.knn) != 2 or min(fc.knn) < 1:
        problems.append(f"finegrained.knn={list(fc.knn)} must be two positive neighbour counts (stage 1, stage 2)")
    if not fc.gallery_layers:
        problems.append("finegrained.gallery_layers is empty: the visual map needs at least one gallery layer")
    bad = [i for i in fc.gallery_layers if not 1 <= i <= layers]
    if bad:
        problems.append(f"finegrained.gallery_layers has layers {bad} outside [1, {layers}] (blocks are 1-indexed)")
    if len(set(fc.gallery_layers)) != len(fc.gallery_layers):
        problems.append(f"finegrained.gallery_layers lists a layer twice: {list(fc.gallery_layers)}")
    for name in ("sigma", "truncate", "fewshot_scale", "lr", "omega_boost"):
        if not getattr(fc, name) > 0:
            problems.append(f"finegrained.{name}={getattr(fc, name)} must be > 0")
    if not 0 < fc.lr_min <= fc.lr:
        problems.append(f"finegrained.lr_min={fc.lr_min} must be in (0, lr={fc.lr}]")
    if fc.logit_scale is not None and not fc.logit_scale > 0:
        problems.append(f"finegrained.logit_scale={fc.logit_scale} must be > 0 (or null for the model's own)")
    return problems
