"""MLLP: multi-level learnable prompts of FineGrainedAD (METHOD.md §2.3).

Two halves:

* :func:`build_mllp_texts` turns one class's caption record and defect phrases ``Δ_c`` into the
  prompt *texts* of every family (image, background, entities; relation, colour, texture and shape
  as fusion sources), with a seeded RNG of its own (the global RNG is never touched), so the same
  record, phrases and seed always give the same texts. The texts are plain data
  (:class:`MllpTexts`), stored in the checkpoint, so a model can be rebuilt even if the shipped
  records change later.
* :class:`MultiLevelPrompts` holds the learnable parts (normal contexts ``N`` ``[n_pro, 4, W]``,
  abnormal contexts ``A`` ``[4, 1, W]``, 8 fusion weights) and, built once from the texts, the
  tokenised prompts as frozen embedding buffers. Its forward assembles every prompt's token
  embeddings, fuses the attribute prompts into the image prompts, and encodes all of them in one
  batch of the CoOp text encoder (METHOD.md §0.3).

Prompt kinds (every prompt starts with one normal context ``N_i``):

* normal: ``[N_i] + text``;
* handle (abnormal by replacement): ``[N_i] + corrupted text``;
* learned (abnormal by semantic concatenation): ``[N_i][A_r] + normal text``, ``r = 1..n_abnormal_ctx``.

Attribute fusion ("concatenation"), per METHOD.md §2.3: ``E_img <- E_img + Σ_a σ(w_a) E_a`` for the
attributes ``a`` in (relation, colour, texture, shape), position-wise, separately for the normal
prompts (4 normal weights) and for the handle and learned prompts (4 abnormal weights). Prompt ``j``
of the image set takes prompt ``j`` of each attribute set; the attribute handle sets are cut to the
image handle count by top-k on the mean token embedding of their words, cycling when a set is
smaller (CHOICE for F17, whose top-k crashed). Which rows are added is ``fusion_rows``:

* ``"words"`` (default, CHOICE): only the attribute prompt's *word* rows, and only at positions
  before the image prompt's EOT. SOS, the context rows, the EOT and the padding of the attribute
  sentence are never added, and the image prompt's own EOT row (whose output is the feature) is
  left as it is. This is the fusion on token embeddings with the image prompt's EOT index that
  METHOD.md asks for, without the released code's mixing of special tokens (F9).
* ``"all"``: every one of the 77 rows, as the released code did (F9), to reproduce it.

Entity and background prompts are not fused. Relation handle prompts are made per (entity named in
the relation, δ) pair (CHOICE: METHOD.md's "each entity name -> name with δ, for each δ" read as one
corruption per prompt).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgad.methods.finegrained.config import FineGrainedConfig

__all__ = [
    "ATTRIBUTE_KINDS",
    "FamilyTexts",
    "MllpTexts",
    "MultiLevelPrompts",
    "PromptFeatures",
    "Vocabulary",
    "build_mllp_texts",
    "class_texts",
]

#: Fusion sources, in the order of the fusion weights (normal weights 0-3, abnormal weights 4-7).
ATTRIBUTE_KINDS: tuple[str, ...] = ("relation", "color", "texture", "shape")
PLACEHOLDER = "X"
#: At most this many length groups per text-encoder pass (see _length_buckets).
MAX_BUCKETS = 3


# ---------------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class Vocabulary:
    """Global MFSC vocabularies (METHOD.md §2.2) used for attribute complements and location swaps."""

    colors: tuple[str, ...]
    textures: tuple[str, ...]
    shapes: tuple[str, ...]
    locations: tuple[str, ...]

    @classmethod
    def default(cls) -> Vocabulary:
        """The shipped vocabularies (``fgad/data/captions/vocabulary.json``)."""
        from fgad.methods.finegrained.captions.schema import COLORS, LOCATIONS, SHAPES, TEXTURES

        return cls(colors=COLORS, textures=TEXTURES, shapes=SHAPES, locations=LOCATIONS)


@dataclass(frozen=True)
class FamilyTexts:
    """One prompt family: its normal text and its handle (corrupted) texts."""

    kind: str  # "image", "background", "entity" or one of ATTRIBUTE_KINDS
    name: str  # "image", "background", "entity: <name>", "relation", "color", ...
    normal: str
    handle: tuple[str, ...]
    notes: tuple[str, ...] = ()  # what each handle text replaced, one per handle text


@dataclass(frozen=True)
class MllpTexts:
    """Every prompt text of one class. ``families`` is the pair order: entities, image, background."""

    class_name: str
    defects: tuple[str, ...]
    seed: int
    families: tuple[FamilyTexts, ...]  # encoded families, in pair order
    attributes: tuple[FamilyTexts, ...] = ()  # fusion sources present for this class (ATTRIBUTE_KINDS order)

    @property
    def num_entities(self) -> int:
        return sum(f.kind == "entity" for f in self.families)

    @property
    def pair_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.families)

    def family(self, kind: str) -> FamilyTexts:
        for f in self.families + self.attributes:
            if f.kind == kind:
                return f
        raise KeyError(f"class {self.class_name!r} has no {kind!r} prompt family")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MllpTexts:
        def fam(d: dict[str, Any]) -> FamilyTexts:
            return FamilyTexts(kind=d["kind"], name=d["name"], normal=d["normal"], handle=tuple(d["handle"]),
                               notes=tuple(d.get("notes", ())))

        return cls(
            class_name=data["class_name"],
            defects=tuple(data["defects"]),
            seed=int(data["seed"]),
            families=tuple(fam(d) for d in data["families"]),
            attributes=tuple(fam(d) for d in data.get("attributes", ())),
        )


def _word_pattern(phrase: str, plural: bool = False) -> re.Pattern[str]:
    """``phrase`` as a whole word or phrase (optionally with an ``s``/``es`` plural), case-insensitive."""
    suffix = r"(?:e?s)?" if plural else ""
    return re.compile(rf"(?<!\w){re.escape(phrase)}{suffix}(?!\w)", flags=re.IGNORECASE)


def _append_after(text: str, phrase: str, addition: str, plural: bool = False) -> tuple[str, int]:
    """Every occurrence of ``phrase`` -> ``phrase addition``; returns the text and the count."""
    return _word_pattern(phrase, plural).subn(lambda m: f"{m.group(0)} {addition}", text)


def _with_defect(text: str, phrase: str, defect: str, plural: bool = False) -> str:
    """``phrase`` -> ``phrase defect`` everywhere; if ``phrase`` is absent, ``text, phrase defect.`` (stated)."""
    out, count = _append_after(text, phrase, defect, plural)
    if count:
        return out
    return f"{text.rstrip(' .')}, {phrase} {defect}."


def _join_values(values: Sequence[str]) -> str:
    return ". ".join(values)


def _end_sentence(text: str, released: bool) -> str:
    """Every prompt text ends with one full stop, as in the released code's ``text + "."``.

    The released code appends it even to texts that already end with one ("..."the bottle.." from a
    caption); ``released`` reproduces that, otherwise a present full stop is kept as the only one.
    """
    if released:
        return f"{text}."
    stripped = text.rstrip()
    return stripped if stripped.endswith(".") else f"{stripped}."


def _end_sentences(fam: FamilyTexts, released: bool) -> FamilyTexts:
    return FamilyTexts(fam.kind, fam.name, _end_sentence(fam.normal, released),
                       tuple(_end_sentence(t, released) for t in fam.handle), fam.notes)


def build_mllp_texts(
    record: Any,
    defects: Sequence[str],
    seed: int = 111,
    vocabulary: Vocabulary | None = None,
    entity_handles: int = 1,
    released: bool = False,
    full_stop: bool = True,
) -> MllpTexts:
    """The prompt texts of one class (METHOD.md §2.3 table), from its caption record and ``Δ_c``.

    Args:
        record: a :class:`fgad.methods.finegrained.captions.schema.CaptionRecord` (any object with its fields).
        defects: ``Δ_c``, phrases starting with "with" ("with large breakage").
        seed: seeds the private RNG that picks each entity's defect phrase and new location.
        vocabulary: global vocabularies (default: the shipped ones).
        entity_handles: handle prompts per entity (METHOD.md: one).
        released: the released code's texts (``model.reproduce: released``): a full stop appended to every
            text even after one; colour/texture/shape values per entity joined with "." as written
            ("brown.brown and black.brown") and the abnormal words every vocabulary word not equal to one
            of those raw values (so "black" is abnormal for a "brown and black" entity). Otherwise values
            are split at " and ", de-duplicated and joined with ". ", and a word the class uses is never
            abnormal.
        full_stop: end every text with a full stop (the released code's prompts); False builds the texts
            as fgad did before (checkpoints keep their own texts; this rebuilds such texts on purpose).

    Counts: image and background ``|Δ|`` handle texts each; entity ``entity_handles``; relation
    ``|Δ|`` per entity named in it; colour/texture/shape one per vocabulary word the class does not use.
    """
    defects = tuple(" ".join(d.split()) for d in defects)
    if not defects:
        raise ValueError(f"class {record.class_name!r}: no defect phrases; MLLP needs at least one (Δ_c)")
    vocab = vocabulary or Vocabulary.default()
    rng = random.Random(seed)

    entities: list[FamilyTexts] = []
    for ent in record.entities:
        base = ent.caption.lower()
        handles: list[str] = []
        notes: list[str] = []
        for _ in range(entity_handles):
            defect = rng.choice(defects)
            others = [loc for loc in vocab.locations if loc != ent.location]
            new_location = rng.choice(others) if others else ent.location
            text, moved = _word_pattern(ent.location).subn(new_location, base)
            if ent.location == "center":
                text, extra = _word_pattern("centrally").subn(f"at the {new_location}", text)
                moved += extra
            text = _with_defect(text, ent.name.lower(), defect, plural=True)
            handles.append(text)
            where = f"location {ent.location} -> {new_location}" if moved else "location not in the sentence"
            notes.append(f"{ent.name} {defect}; {where}")
        entities.append(FamilyTexts("entity", f"entity: {ent.name}", ent.caption, tuple(handles), tuple(notes)))

    fg = record.foreground
    image = FamilyTexts(
        "image", "image", record.caption,
        tuple(_with_defect(record.caption, fg, d) for d in defects),
        tuple(f"{fg} {d}" for d in defects),
    )
    bg_text = f"{record.background} background"
    background = FamilyTexts(
        "background", "background", bg_text, tuple(f"{bg_text} {d}" for d in defects), tuple(defects)
    )

    attributes: list[FamilyTexts] = []
    rel_handles: list[str] = []
    rel_notes: list[str] = []
    for ent in record.entities:
        if not _word_pattern(ent.name, plural=True).search(record.relation):
            continue
        for d in defects:
            rel_handles.append(_append_after(record.relation, ent.name, d, plural=True)[0])
            rel_notes.append(f"{ent.name} {d}")
    if record.relation.strip():
        attributes.append(FamilyTexts("relation", "relation", record.relation, tuple(rel_handles), tuple(rel_notes)))
    for kind, values, raw, words in (
        ("color", tuple(record.colors), tuple(e.color for e in record.entities), vocab.colors),
        ("texture", tuple(record.textures), tuple(e.texture for e in record.entities), vocab.textures),
        ("shape", tuple(record.shapes), tuple(e.shape for e in record.entities), vocab.shapes),
    ):
        if not values:
            continue
        used = raw if released else values
        complement = tuple(w for w in words if w not in used)
        joined = ".".join(raw) if released else _join_values(values)
        attributes.append(FamilyTexts(kind, kind, joined, complement, complement))
    return MllpTexts(
        class_name=record.class_name,
        defects=defects,
        seed=seed,
        families=tuple(_end_sentences(f, released) if full_stop else f for f in (*entities, image, background)),
        attributes=tuple(_end_sentences(a, released) if full_stop else a for a in attributes),
    )


def class_texts(
    fc: FineGrainedConfig, class_name: str, captions: str | None = None, released: bool = False
) -> MllpTexts:
    """The texts of ``class_name``: its caption record (``captions`` file, ``fc.captions``, or the shipped one)
    and its defect phrases (from the bank file ``fc.bank`` first, then the built-in banks), built with ``fc.seed``;
    ``released``: the released code's texts (:func:`build_mllp_texts`)."""
    from fgad.methods.finegrained.captions.schema import defect_phrases, load_caption

    path = captions if captions is not None else fc.captions
    record = load_caption(class_name, path)
    return build_mllp_texts(record, defect_phrases(class_name, fc.bank), seed=fc.seed,
                            entity_handles=fc.entity_handles, released=released)


# ---------------------------------------------------------------------------------- learnable prompts


@dataclass
class _Entry:
    text: str
    ctx: int  # which normal context N_i
    ab: int = -1  # which abnormal context A_r (learned prompts), -1 otherwise


@dataclass
class _FamilyLayout:
    """Rows of one encoded family in the feature tensor (static Python slices)."""

    name: str
    normal: slice
    handle: slice
    learned: slice


@dataclass
class PromptFeatures:
    """Raw (unnormalised) text features of every encoded prompt, with the per-family layout."""

    features: Tensor  # [P, C]
    layout: list[_FamilyLayout] = field(repr=False)

    def normal(self, family: int) -> Tensor:
        return self.features[self.layout[family].normal]

    def handle(self, family: int) -> Tensor:
        return self.features[self.layout[family].handle]

    def learned(self, family: int) -> Tensor:
        return self.features[self.layout[family].learned]

    def abnormal(self, family: int) -> Tensor:
        """Handle and learned abnormal features of a family ``[J, C]``."""
        return torch.cat([self.handle(family), self.learned(family)], dim=0)


def _top_by_embedding(texts: Sequence[str], count: int, score: Callable[[list[str]], Tensor]) -> list[str]:
    """``count`` texts, best mean word embedding first (stable), cycling when there are fewer (F17)."""
    if not texts or count <= 0:
        return []
    values = score(list(texts))
    order = sorted(range(len(texts)), key=lambda i: (-float(values[i]), i))
    return [texts[order[j % len(order)]] for j in range(count)]


class MultiLevelPrompts(nn.Module):
    """Learnable MLLP contexts and fusion weights; forward -> :class:`PromptFeatures` of one class.

    Args:
        fc: the FineGrainedAD config (context sizes, fusion settings).
        texts: the class's prompt texts (:func:`build_mllp_texts`).
        tokenizer: open_clip tokenizer (build time only).
        token_embedding: the frozen CLIP token embedding (build time only; not kept).
        context_length: text tokens (77).
        released: the released code's numerics (``model.reproduce: released``): fusion weights drawn from
            N(0, 1) instead of 0, attribute handle sets ranked by the mean over the whole assembled 77-row
            prompt (SOS, the normal context N_1, words, EOT, padding) instead of the word rows, and all 77
            rows fused (``fusion_rows: all``, F9).
    """

    ctx_normal: nn.Parameter
    ctx_abnormal: nn.Parameter
    fusion_weights: nn.Parameter
    plain_eot: Tensor
    learned_eot: Tensor
    bucket_inverse: Tensor
    _tokenizer: Any  # build time only
    _embedding: Any  # build time only

    def __init__(
        self,
        fc: FineGrainedConfig,
        texts: MllpTexts,
        tokenizer: Any,
        token_embedding: nn.Embedding,
        context_length: int = 77,
        released: bool = False,
    ) -> None:
        super().__init__()
        self.fc = fc
        self.released = released
        self.fusion_rows = "all" if released else fc.fusion_rows
        self.texts = texts
        self.context_length = context_length
        width = token_embedding.weight.shape[1]
        self.n_ctx = fc.n_normal_ctx
        self.n_ab = fc.abnormal_ctx_len
        self.ctx_normal = nn.Parameter(torch.randn(fc.n_pro, fc.n_normal_ctx, width) * fc.ctx_init_std)
        self.ctx_abnormal = nn.Parameter(torch.randn(fc.n_abnormal_ctx, fc.abnormal_ctx_len, width) * fc.ctx_init_std)
        n_weights = 2 * len(ATTRIBUTE_KINDS)
        # sigma(0) = 1/2 at the start: every attribute counts the same until training says otherwise
        self.fusion_weights = nn.Parameter(torch.randn(n_weights) if released else torch.zeros(n_weights))
        self._tokenizer = tokenizer
        self._embedding = token_embedding
        try:
            self._build()
        finally:
            self._tokenizer = None
            self._embedding = None

    # ------------------------------------------------------------------ build time
    def _tokens(self, texts: list[str], placeholders: int) -> Tensor:
        prefix = " ".join([PLACEHOLDER] * placeholders)
        return self._tokenizer([f"{prefix} {t}" if prefix else t for t in texts])

    @torch.no_grad()
    def _word_score(self, texts: list[str]) -> Tensor:
        """Mean token embedding of each text's words (rows between SOS and EOT)."""
        tokens = self._tokens(texts, 0)
        eot = tokens.argmax(dim=-1)
        emb = self._embedding(tokens.to(self._embedding.weight.device)).float()  # [P, 77, W]
        pos = torch.arange(tokens.shape[1])
        words = ((pos[None, :] >= 1) & (pos[None, :] < eot[:, None])).to(emb.dtype).to(emb.device)
        return ((emb.mean(-1) * words).sum(-1) / words.sum(-1).clamp_min(1.0)).cpu()

    @torch.no_grad()
    def _assembled_score(self, texts: list[str]) -> Tensor:
        """Mean over all 77 rows and channels of each text's prompt as assembled with N_1 (the released rule)."""
        tokens = self._tokens(texts, self.n_ctx)
        emb = self._embedding(tokens.to(self._embedding.weight.device)).float().clone()
        emb[:, 1:1 + self.n_ctx] = self.ctx_normal[0].float().to(emb.device)
        return emb.mean(dim=(1, 2)).cpu()

    def _expand(self, texts: Sequence[str], learned: bool) -> list[_Entry]:
        """Text-major: every text with every normal context (and every abnormal context if learned)."""
        entries: list[_Entry] = []
        for t in texts:
            for i in range(self.fc.n_pro):
                if learned:
                    entries.extend(_Entry(t, i, r) for r in range(self.fc.n_abnormal_ctx))
                else:
                    entries.append(_Entry(t, i))
        return entries

    @torch.no_grad()
    def _build(self) -> None:
        fc, texts = self.fc, self.texts
        plain: list[_Entry] = []
        learned: list[_Entry] = []
        plain_encoded: list[int] = []
        learned_encoded: list[int] = []
        spans: dict[str, dict[str, tuple[int, int]]] = {}

        def add(group: list[_Entry], encoded: list[int] | None, entries: list[_Entry]) -> tuple[int, int]:
            start = len(group)
            group.extend(entries)
            if encoded is not None:
                encoded.extend(range(start, len(group)))
            return start, len(group)

        for fam in texts.families:
            spans[fam.name] = {
                "normal": add(plain, plain_encoded, self._expand([fam.normal], False)),
                "handle": add(plain, plain_encoded, self._expand(fam.handle, False)),
                "learned": add(learned, learned_encoded, self._expand([fam.normal], True)),
            }
        image = texts.family("image")
        # fusion sources: attribute prompts, not encoded themselves
        fusion_plain: list[tuple[int, int, int]] = []  # (target row, source row, weight index)
        fusion_learned: list[tuple[int, int, int]] = []
        if fc.fusion:
            for attr in texts.attributes:
                a = ATTRIBUTE_KINDS.index(attr.kind)
                tgt = spans[image.name]
                src_n = add(plain, None, self._expand([attr.normal], False))
                fusion_plain.extend((t, s, a) for t, s in zip(range(*tgt["normal"]), range(*src_n), strict=True))
                rank = self._assembled_score if self.released else self._word_score
                cut = _top_by_embedding(attr.handle, len(image.handle), rank)
                if cut:
                    src_h = add(plain, None, self._expand(cut, False))
                    fusion_plain.extend(
                        (t, s, 4 + a) for t, s in zip(range(*tgt["handle"]), range(*src_h), strict=True)
                    )
                src_l = add(learned, None, self._expand([attr.normal], True))
                fusion_learned.extend(
                    (t, s, 4 + a) for t, s in zip(range(*tgt["learned"]), range(*src_l), strict=True)
                )

        # families come first in each group and fusion sources after them: encoded rows are a prefix
        n_plain_enc = len(plain_encoded)
        self.layout = [
            _FamilyLayout(
                name=fam.name,
                normal=slice(*spans[fam.name]["normal"]),
                handle=slice(*spans[fam.name]["handle"]),
                learned=slice(n_plain_enc + spans[fam.name]["learned"][0], n_plain_enc + spans[fam.name]["learned"][1]),
            )
            for fam in texts.families
        ]
        self.num_plain = n_plain_enc
        self.num_learned = len(learned_encoded)
        self._register_group("plain", plain, self.n_ctx, fusion_plain)
        self._register_group("learned", learned, self.n_ctx + self.n_ab, fusion_learned)
        eots = torch.cat([self.plain_eot[: self.num_plain], self.learned_eot[: self.num_learned]])
        self.seq_len = int(eots.max()) + 1
        self.num_encoded = int(eots.shape[0])
        # length buckets: prompts are encoded in a few groups, each cut after its own longest EOT
        order = torch.argsort(eots, stable=True)
        self.bucket_lengths: list[int] = []
        for i, (start, stop) in enumerate(_length_buckets([int(v) + 1 for v in eots[order]], MAX_BUCKETS)):
            self.register_buffer(f"bucket_{i}", order[start:stop].clone(), persistent=False)
            self.bucket_lengths.append(int(eots[order[stop - 1]]) + 1)
        self.register_buffer("bucket_inverse", torch.argsort(order), persistent=False)

    def _register_group(self, name: str, entries: list[_Entry], n_ctx: int, fusion: list[tuple[int, int, int]]) -> None:
        tokens = self._tokens([e.text for e in entries], n_ctx)
        if int(tokens[:, -1].ne(0).sum()):
            raise ValueError(f"a {name} prompt of class {self.texts.class_name!r} is longer than "
                             f"{self.context_length} tokens; shorten the caption record")
        eot = tokens.argmax(dim=-1)
        emb = self._embedding(tokens.to(self._embedding.weight.device)).detach().clone()
        self.register_buffer(f"{name}_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer(f"{name}_suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer(f"{name}_eot", eot.to(emb.device), persistent=False)
        self.register_buffer(f"{name}_ctx", torch.tensor([e.ctx for e in entries], dtype=torch.long,
                                                         device=emb.device), persistent=False)
        self.register_buffer(f"{name}_ab", torch.tensor([max(e.ab, 0) for e in entries], dtype=torch.long,
                                                        device=emb.device), persistent=False)
        target = torch.tensor([f[0] for f in fusion], dtype=torch.long)
        source = torch.tensor([f[1] for f in fusion], dtype=torch.long)
        weight = torch.tensor([f[2] for f in fusion], dtype=torch.long)
        pos = torch.arange(self.context_length)
        if self.fusion_rows == "all":
            rows = torch.ones(len(fusion), self.context_length)
        else:  # the attribute's word rows, before the image prompt's EOT (module docstring)
            first = 1 + n_ctx
            rows = ((pos[None, :] >= first) & (pos[None, :] < eot[source][:, None])
                    & (pos[None, :] < eot[target][:, None])).float()
        self.register_buffer(f"{name}_fuse_target", target.to(emb.device), persistent=False)
        self.register_buffer(f"{name}_fuse_source", source.to(emb.device), persistent=False)
        self.register_buffer(f"{name}_fuse_weight", weight.to(emb.device), persistent=False)
        self.register_buffer(f"{name}_fuse_rows", rows.unsqueeze(-1).to(emb.dtype).to(emb.device), persistent=False)

    # ------------------------------------------------------------------ forward
    def add_banks(self, banks: Sequence[str]) -> None:
        """Description banks do not apply: FineGrainedAD prompts come from the caption record and ``Δ_c``."""
        raise ValueError(
            "--bank does not apply to a FineGrainedAD model: its prompts are built from the class's caption "
            "record and defect phrases at training time (stored in the checkpoint)"
        )

    def _assemble(self, name: str) -> Tensor:
        prefix: Tensor = getattr(self, f"{name}_prefix")
        suffix: Tensor = getattr(self, f"{name}_suffix")
        ctx = self.ctx_normal[getattr(self, f"{name}_ctx")]  # [P, n_ctx, W]
        if name == "learned":
            ctx = torch.cat([ctx, self.ctx_abnormal[getattr(self, f"{name}_ab")]], dim=1)
        emb = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)  # [P, 77, W]
        target: Tensor = getattr(self, f"{name}_fuse_target")
        if target.numel():
            source = getattr(self, f"{name}_fuse_source")
            scale = torch.sigmoid(self.fusion_weights)[getattr(self, f"{name}_fuse_weight")].to(emb.dtype)
            added = emb[source] * getattr(self, f"{name}_fuse_rows") * scale[:, None, None]
            emb = emb.index_add(0, target, added)
        return emb[: self.num_plain if name == "plain" else self.num_learned]

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Token embeddings ``[P, 77, W]`` of every encoded prompt (fusion applied) and their EOT indices ``[P]``."""
        emb = torch.cat([self._assemble("plain"), self._assemble("learned")], dim=0)
        eot = torch.cat([self.plain_eot[: self.num_plain], self.learned_eot[: self.num_learned]])
        return emb, eot

    def forward(self, text_encoder: nn.Module) -> PromptFeatures:
        """Encode every prompt with ``text_encoder`` (:class:`fgad.backbone.dual_path.TextEncoder`)."""
        emb, eot = self.embeddings()
        parts = []
        for i, length in enumerate(self.bucket_lengths):
            index = getattr(self, f"bucket_{i}")
            parts.append(text_encoder(emb[index], eot[index], seq_len=length))
        return PromptFeatures(torch.cat(parts)[self.bucket_inverse], self.layout)

    def pairs(self, feats: PromptFeatures) -> tuple[Tensor, Tensor]:
        """``T_f = (n(mean t_f^n), n(mean t_f^a))`` for every family, pair order: ``[F, C]`` each."""
        normal = torch.stack([feats.normal(f).mean(dim=0) for f in range(len(self.layout))])
        abnormal = torch.stack([feats.abnormal(f).mean(dim=0) for f in range(len(self.layout))])
        return F.normalize(normal, dim=-1), F.normalize(abnormal, dim=-1)

    @property
    def num_families(self) -> int:
        return len(self.layout)

    def family_index(self, kind: str) -> int:
        names = [f.kind for f in self.texts.families]
        return names.index(kind)


def _length_buckets(lengths: Sequence[int], max_buckets: int) -> list[tuple[int, int]]:
    """Split sorted sequence lengths into at most ``max_buckets`` contiguous groups minimising
    ``sum(group size * longest length in the group)``: the tokens the text encoder processes. Causal
    attention makes cutting a prompt after its EOT exact, so grouping short prompts saves padding."""
    n = len(lengths)
    if n == 0:
        return []
    inf = float("inf")
    # best[b][i]: cost of the first i prompts in b groups; cut[b][i]: where the last group starts
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for b in range(1, max_buckets + 1):
        for i in range(1, n + 1):
            for j in range(i):
                cost = best[b - 1][j] + (i - j) * lengths[i - 1]
                if cost < best[b][i]:
                    best[b][i], cut[b][i] = cost, j
    groups = min(range(1, max_buckets + 1), key=lambda b: (best[b][n], b))
    spans: list[tuple[int, int]] = []
    stop = n
    for b in range(groups, 0, -1):
        start = cut[b][stop]
        spans.append((start, stop))
        stop = start
    return spans[::-1]

