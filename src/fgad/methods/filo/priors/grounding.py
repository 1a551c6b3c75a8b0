"""The ``grounding-dino`` box prior: DefLoc as CODE-FiLo's test.py runs it (METHOD.md §1.5), bugs fixed.

Per image of class c:

1. **caption**: lower-case ``" . ".join(generic words + A_c)`` ending in ".", with the generic words
   "anomaly", "damage", "broken", "defect", "contamination" and the class's anomaly phrases A_c
   from the description banks (:func:`build_caption`);
2. **detector**: Hugging Face transformers' ``GroundingDinoForObjectDetection`` on the image, resized to
   ``image_size`` (518) and ImageNet-normalised; token probabilities = sigmoid(logits) ``[Q, T]``;
3. **box filter**: keep a query when its best token probability > ``box_threshold`` and its normalised
   area w·h < ``max_area``; if none passes, keep the top-1 query (:func:`select_detections`);
4. **phrase**: the caption tokens whose probability > ``text_threshold`` (its own threshold: CODE-FiLo
   passed ``box_threshold`` for both, P6), decoded; **phrase filter**: drop a box whose phrase contains
   no anomaly word (substring test; :func:`anomaly_keywords`);
5. kept boxes become ``xyxy`` pixels at the model input size (CODE-FiLo left rejected boxes in
   normalised cxcywh, P6); R = their union, the position = the cell of the best kept box's centre
   (:mod:`fgad.methods.filo.priors.base`, any input size, not a table for 518).

CHOICE (anomaly words): the generic words and every word of the A_c phrases except function words
("a", "on", "the", ...): a phrase is a run of caption tokens, so "crack" must match the phrase
"a crack".

The detector loads by Hugging Face model id (from the local cache when offline) or from a local
folder holding a transformers-format checkpoint and its tokenizer. CODE-FiLo's fine-tuned
``grounding_train_on_*.pth`` files are in the original GroundingDINO format and must be converted
to that format first. transformers is imported lazily (``pip install 'fgad[detect]'``).

:func:`export_grounding_onnx` writes the detector for one class as its own ONNX graph (the caption
is a constant); the bundle runtime does not run it yet, so this prior is a PyTorch-path prior
(``fgad-eval --box-prior grounding-dino``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fgad.backbone.dual_path import VisualFeatures
from fgad.config import BackboneConfig, GroundingConfig
from fgad.data.descriptions import anomaly_phrases
from fgad.methods.filo.priors.base import BoxPriorResult, result_from_boxes

__all__ = [
    "DetectorNotFoundError",
    "Detections",
    "GroundingDinoOnnxModule",
    "GroundingDinoPrior",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NEEDS_TORCH_MESSAGE",
    "anomaly_keywords",
    "build_caption",
    "export_grounding_onnx",
    "load_grounding_dino",
    "phrase_has_anomaly_word",
    "select_detections",
    "tiny_random_grounding_dino",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Words that never make a phrase an anomaly phrase on their own.
FUNCTION_WORDS = frozenset(
    "a an the on of in at with and or to from for by its it is are near along across around into over under".split()
)
#: What the runtime, fgad-export and the manifest say about this prior.
NEEDS_TORCH_MESSAGE = (
    "the grounding-dino box prior runs only on the PyTorch path (fgad-eval --box-prior grounding-dino): its "
    "detector exports to its own ONNX graph, but bundles and the runtime do not run it; export the bundle with "
    "--box-prior objectness (in the graph) or none"
)


class DetectorNotFoundError(FileNotFoundError):
    """The Grounding DINO weights or tokenizer could not be found; the message says where to get them."""


# ---------------------------------------------------------------------------------- caption and words


def build_caption(
    class_name: str,
    banks: Sequence[str | Path] | None = None,
    generic_words: Sequence[str] = GroundingConfig.generic_words,
) -> str:
    """Lower-case ``" . ".join(generic_words + A_c)`` ending in "." (METHOD.md §1.5)."""
    phrases = [*generic_words, *anomaly_phrases(class_name, banks)]
    caption = " . ".join(" ".join(p.split()) for p in phrases).lower().strip()
    return caption if caption.endswith(".") else caption + "."


def anomaly_keywords(
    class_name: str,
    banks: Sequence[str | Path] | None = None,
    generic_words: Sequence[str] = GroundingConfig.generic_words,
) -> tuple[str, ...]:
    """The words a kept box's phrase must contain one of: the generic words, then the content words of A_c."""
    words: list[str] = [w.lower() for w in generic_words]
    for phrase in anomaly_phrases(class_name, banks):
        for word in re.findall(r"[a-z0-9]+", phrase.lower()):
            if word not in FUNCTION_WORDS and word not in words:
                words.append(word)
    return tuple(words)


def phrase_has_anomaly_word(phrase: str, keywords: Sequence[str]) -> bool:
    """Substring test of CODE-FiLo's phrase filter: does ``phrase`` contain any of ``keywords``?"""
    text = phrase.lower()
    return any(k and k in text for k in keywords)


# ---------------------------------------------------------------------------------- post-processing


@dataclass
class Detections:
    """The boxes kept for one image."""

    boxes: torch.Tensor  # [K, 4] xyxy pixels at the model input size
    scores: torch.Tensor  # [K] best token probability of each box
    phrases: list[str]  # [K]
    queries: list[int]  # [K] detector query index of each box
    candidates: int  # boxes that passed the box threshold and the area filter
    fallback: bool  # none passed: the top-1 box was kept instead


def select_detections(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    input_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    keywords: Sequence[str],
    params: GroundingConfig,
    size: int,
    special_ids: Sequence[int] = (),
) -> Detections:
    """CODE-FiLo's box selection for one image (steps 3-5 of the module docstring).

    Args:
        probs: ``[Q, T]`` token probabilities (sigmoid of the detector's logits); columns past the caption's
            tokens are ignored.
        boxes: ``[Q, 4]`` normalised ``(cx, cy, w, h)``.
        input_ids: the caption's token ids (length <= T).
        decode: token ids -> text (the tokenizer's ``decode``).
        keywords: anomaly words (:func:`anomaly_keywords`).
        params: thresholds and the area limit.
        size: model input size in pixels (boxes are returned at this scale).
        special_ids: ids never part of a phrase (``[CLS]``, ``[SEP]``, ``[PAD]``, ``.``).
    """
    ids = list(input_ids)
    probs = probs[:, : len(ids)].float()
    score = probs.max(dim=1).values  # [Q]
    area = boxes[:, 2] * boxes[:, 3]
    keep = (score > params.box_threshold) & (area < params.max_area)
    candidates = int(keep.sum())
    fallback = candidates == 0
    if fallback:
        keep = torch.zeros_like(keep)
        keep[int(score.argmax())] = True
    special = set(int(i) for i in special_ids)
    token_ok = torch.tensor([i not in special for i in ids], dtype=torch.bool, device=probs.device)
    kept_q: list[int] = []
    phrases: list[str] = []
    for q in torch.nonzero(keep).flatten().tolist():
        chosen = (probs[q] > params.text_threshold) & token_ok
        phrase = decode([ids[t] for t in torch.nonzero(chosen).flatten().tolist()]).strip()
        if phrase_has_anomaly_word(phrase, keywords):
            kept_q.append(q)
            phrases.append(phrase)
    index = torch.tensor(kept_q, dtype=torch.int64, device=boxes.device)
    cx, cy, w, h = boxes.index_select(0, index).float().unbind(dim=1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1).clamp(0.0, 1.0) * float(size)
    return Detections(boxes=xyxy, scores=score.index_select(0, index.to(score.device)), phrases=phrases,
                      queries=kept_q, candidates=candidates, fallback=fallback)


def _stack_detections(dets: Sequence[Detections], size: int, device: torch.device) -> BoxPriorResult:
    """Pad per-image detections to ``[B, K, 4]`` (K >= 1) with a validity mask, then region and position."""
    k = max(1, max((len(d.phrases) for d in dets), default=0))
    batch = len(dets)
    boxes = torch.zeros(batch, k, 4, device=device)
    scores = torch.zeros(batch, k, device=device)
    valid = torch.zeros(batch, k, dtype=torch.bool, device=device)
    for b, d in enumerate(dets):
        n = len(d.phrases)
        boxes[b, :n] = d.boxes.to(device)
        scores[b, :n] = d.scores.to(device)
        valid[b, :n] = True
    result = result_from_boxes(boxes, valid, scores, size)
    result.phrases = [list(d.phrases) for d in dets]
    return result


# ---------------------------------------------------------------------------------- loading


def _transformers() -> Any:
    from fgad.backbone.compat import import_grounding_dino

    return import_grounding_dino()


def load_grounding_dino(source: str | os.PathLike[str], local_files_only: bool = False) -> tuple[nn.Module, Any]:
    """(detector in eval mode, tokenizer) from a Hugging Face model id or a local folder.

    Raises :class:`DetectorNotFoundError` when the folder lacks the files or the id is neither cached nor
    downloadable (offline machines: download it elsewhere, or pass a folder).
    """
    modeling = _transformers()
    from transformers import AutoTokenizer

    text = os.fspath(source)
    path = Path(text).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or text.startswith((".", "/", "~"))):
        raise DetectorNotFoundError(f"Grounding DINO {text!r}: not a folder; pass a model folder or a model id")
    where = str(path) if local else text
    from fgad.backbone.clip_loader import weights_only_loads

    try:
        with weights_only_loads():  # a pickled pytorch_model.bin unpickles tensors only, whatever transformers asks
            detector = modeling.GroundingDinoForObjectDetection.from_pretrained(where,
                                                                                local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only)
    except OSError as err:
        if local:
            raise DetectorNotFoundError(
                f"{path}: not a Grounding DINO folder in transformers format (config.json, model weights and "
                f"tokenizer files; save one with save_pretrained): {err}"
            ) from err
        raise DetectorNotFoundError(
            f"Grounding DINO {text!r} is not in the Hugging Face cache and could not be downloaded (offline?): "
            f"download it where the hub is reachable (huggingface-cli download {text}) and copy the cache, or "
            f"pass a local folder with --box-model DIR ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    return detector.eval(), tokenizer


# ---------------------------------------------------------------------------------- the prior


class GroundingDinoPrior:
    """The ``grounding-dino`` :class:`~fgad.methods.filo.priors.base.BoxPrior` (PyTorch path).

    Args:
        detector: a ``GroundingDinoForObjectDetection``.
        tokenizer: its BERT tokenizer.
        params: thresholds, area limit, detector input size, generic words.
        backbone: the anomaly model's backbone config (input size and normalisation of the images given).
        banks: description banks searched first for the class's anomaly phrases (as the model's prompts).
    """

    name = "grounding-dino"

    def __init__(self, detector: nn.Module, tokenizer: Any, params: GroundingConfig, backbone: BackboneConfig,
                 banks: Sequence[str | Path] = ()) -> None:
        self.detector: Any = detector.eval()  # a transformers GroundingDinoForObjectDetection
        self.tokenizer = tokenizer
        self.params = params
        self.size = backbone.image_size
        self.mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        self.banks = tuple(banks)
        self._text: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], params: GroundingConfig, backbone: BackboneConfig,
                        banks: Sequence[str | Path] = (), local_files_only: bool = False
                        ) -> GroundingDinoPrior:
        detector, tokenizer = load_grounding_dino(source, local_files_only=local_files_only)
        return cls(detector, tokenizer, params, backbone, banks)

    @property
    def max_text_len(self) -> int:
        return int(self.detector.config.max_text_len)

    def text(self, class_name: str) -> dict[str, Any]:
        """The class's caption, its tokenisation (truncated to the detector's max_text_len) and anomaly words."""
        cached = self._text.get(class_name)
        if cached is None:
            banks = list(self.banks) or None
            caption = build_caption(class_name, banks, self.params.generic_words)
            encoded = self.tokenizer(caption, truncation=True, max_length=self.max_text_len, return_tensors="pt")
            special = set(self.tokenizer.all_special_ids)
            period = self.tokenizer.convert_tokens_to_ids(".")
            if isinstance(period, int):
                special.add(period)
            cached = {
                "caption": caption,
                "inputs": {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                "keywords": anomaly_keywords(class_name, banks, self.params.generic_words),
                "special_ids": sorted(special),
            }
            self._text[class_name] = cached
        return cached

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Model-normalised ``[B, 3, s, s]`` -> the detector's input: ``image_size`` px, ImageNet-normalised."""
        rgb = images.float() * self.std.to(images.device) + self.mean.to(images.device)
        side = self.params.image_size
        if rgb.shape[-2:] != (side, side):
            rgb = F.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return (rgb - mean) / std

    @torch.no_grad()
    def detect(self, images: torch.Tensor, class_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw detector outputs: token probabilities ``[B, Q, T]`` and normalised cxcywh boxes ``[B, Q, 4]``."""
        text = self.text(class_name)
        batch = images.shape[0]
        device = next(self.detector.parameters()).device
        inputs = {k: v.to(device).expand(batch, -1) for k, v in text["inputs"].items()}
        out = self.detector(pixel_values=self.pixel_values(images).to(device), **inputs)
        return out.logits.sigmoid(), out.pred_boxes

    def select(self, probs: torch.Tensor, boxes: torch.Tensor, class_name: str) -> list[Detections]:
        text = self.text(class_name)
        ids = text["inputs"]["input_ids"][0].tolist()
        return [
            select_detections(probs[b], boxes[b], ids, self.tokenizer.decode, text["keywords"], self.params, self.size,
                              text["special_ids"])
            for b in range(probs.shape[0])
        ]

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, class_name: str, features: VisualFeatures | None = None
    ) -> BoxPriorResult:
        probs, boxes = self.detect(images, class_name)
        return _stack_detections(self.select(probs, boxes, class_name), self.size, images.device)


# ---------------------------------------------------------------------------------- ONNX


class GroundingDinoOnnxModule(nn.Module):
    """pixel_values ``[B, 3, H, W]`` -> (token probabilities ``[B, Q, T]``, cxcywh boxes ``[B, Q, 4]``) for one
    caption, which is a constant of the graph."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor

    def __init__(self, detector: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.detector = detector.eval()
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            self.register_buffer(key, inputs[key].clone())

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pixel_values.shape[0]
        out = self.detector(
            pixel_values=pixel_values,
            input_ids=self.input_ids.expand(batch, -1),
            attention_mask=self.attention_mask.expand(batch, -1),
            token_type_ids=self.token_type_ids.expand(batch, -1),
        )
        return out.logits.sigmoid(), out.pred_boxes


@contextlib.contextmanager
def _exportable_grounding(modeling: Any, input_ids: torch.Tensor) -> Iterator[None]:
    """Two changes, for the duration of an export only, that make transformers' Grounding DINO export.

    * The text self-attention masks and position ids are a function of the caption's token ids alone
      (``generate_masks_with_special_tokens_and_transfer_map``, whose ``isin``/``cummax`` have no ONNX
      translation): with a constant caption they are computed once here and returned as constants.
    * ``torch_compilable_check`` turns shape assertions into ``_assert``-style ops without an ONNX form;
      transformers skips them when ``TRANSFORMERS_DISABLE_TORCH_CHECK=1``.
    """
    original = modeling.generate_masks_with_special_tokens_and_transfer_map
    masks, position_ids = original(input_ids, torch.tensor(modeling.SPECIAL_TOKENS))

    def constant(ids: torch.Tensor, special_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = ids.shape[0]
        return masks[:1].expand(batch, -1, -1), position_ids[:1].expand(batch, -1)

    previous = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    modeling.generate_masks_with_special_tokens_and_transfer_map = constant
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        modeling.generate_masks_with_special_tokens_and_transfer_map = original
        if previous is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous


def export_grounding_onnx(prior: GroundingDinoPrior, class_name: str, path: str | os.PathLike[str],
                          opset: int = 18) -> Path:
    """Write the detector with ``class_name``'s caption as its own ONNX graph (input ``pixel_values``
    ``[B, 3, image_size, image_size]``, outputs ``probs``, ``boxes``); checked with ``onnx.checker``.

    Raises the exporter's error when the installed torch/transformers cannot export it.
    """
    import onnx

    from fgad.core.atomic import atomic_path

    modeling = _transformers()
    inputs = prior.text(class_name)["inputs"]
    module = GroundingDinoOnnxModule(prior.detector, inputs).eval()
    side = prior.params.image_size
    example = torch.zeros(1, 3, side, side, device=next(prior.detector.parameters()).device)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, _exportable_grounding(modeling, inputs["input_ids"]), torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=["pixel_values"], output_names=["probs", "boxes"], verbose=False)
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program for the Grounding DINO graph")
        program.save(str(tmp))
        onnx.checker.check_model(str(tmp))
    return target


# ---------------------------------------------------------------------------------- test helper


def _tiny_vocab(extra_words: Sequence[str]) -> list[str]:
    """A BERT-layout vocabulary: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, "."=1012, "?"=1029.

    Grounding DINO hard-codes those ids of bert-base-uncased as its phrase delimiters.
    """
    from fgad.data.descriptions import BUILTIN_BANKS, load_bank

    words: list[str] = []
    seen: set[str] = set()
    sources = list(extra_words) + [w for w in GroundingConfig.generic_words]
    for bank in BUILTIN_BANKS:
        for phrases in load_bank(bank).values():
            sources.extend(phrases)
    for text in sources:
        for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s.?]", text.lower()):
            if w not in seen:
                seen.add(w)
                words.append(w)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [f"##{c}" for c in letters]
    body = [w for w in letters + words if w not in {"."}]
    body = list(dict.fromkeys(body)) + pieces
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    head, tail = body[: 1012 - len(vocab)], body[1012 - len(vocab) :]
    vocab += head
    vocab += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(vocab))]
    vocab.append(".")
    vocab += tail
    vocab += [f"[unused{i}]" for i in range(1000, 1000 + 1029 - len(vocab))]
    vocab.append("?")
    return vocab


def tiny_random_grounding_dino(folder: str | os.PathLike[str], seed: int = 0, max_text_len: int = 64,
                               num_queries: int = 30, extra_words: Sequence[str] = ()) -> tuple[nn.Module, Any]:
    """A randomly initialised, tiny Grounding DINO (Swin backbone of width 16, a 1-layer BERT) and a BERT
    tokenizer built from a vocabulary file written into ``folder`` (no downloads). For tests and plumbing.

    ``detector.save_pretrained(d)`` plus ``tokenizer.save_pretrained(d)`` make a folder that
    :func:`load_grounding_dino` reads.
    """
    modeling = _transformers()
    from transformers import BertConfig, BertTokenizer, GroundingDinoConfig, SwinConfig

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab(extra_words)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(root))
    backbone = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],  # type: ignore[call-arg]
                          num_heads=[1, 1, 1, 1], window_size=7, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=max(64, max_text_len))
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=num_queries, encoder_layers=1, decoder_layers=2,
        d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=max_text_len,
        disable_custom_kernels=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector = modeling.GroundingDinoForObjectDetection(config)
    return detector.eval(), tokenizer
