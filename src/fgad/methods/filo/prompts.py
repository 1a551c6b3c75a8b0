"""FusDes prompts: fixed templates and learnable context (CoOp / CoCoOp), per class.

Strings, tokenisation and the token-embedding prefix/suffix split happen once per class at
build time (:meth:`PromptLearner.prepare`), never inside ``forward``. Fixed-template features
come from the frozen text encoder and are cached per class. Learnable prompts are
``[prefix(SOS); c_1..c_m; suffix(words, EOT, padding)]``; with CoCoOp every context vector of a
template gets the same image-conditioned bias ``pi(n(G))`` from that template's meta-net.

Abnormal prompts keep their position structure: features are ``[B, 9, K_pos, C]`` so position
selection is a mask over the position axis, not a data-dependent index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fgad.backbone.dual_path import TextEncoder
from fgad.config import ModelConfig
from fgad.core.cells import NUM_POSITIONS
from fgad.methods.filo.fusdes import PromptTexts, build_prompt_texts


@dataclass
class _LearnableSet:
    prefix: torch.Tensor  # [P, 1, W]
    suffix: torch.Tensor  # [P, length - 1 - n_ctx, W]
    eot: torch.Tensor  # [P]
    length: int  # tokens kept: longest EOT index + 1 (causal attention: the rest cannot matter)


@dataclass
class ClassPrompts:
    """Everything derived from one class's texts; rebuilt deterministically, never trained."""

    texts: PromptTexts
    fixed_normal: torch.Tensor | None  # [7, C] raw features
    fixed_abnormal: torch.Tensor | None  # [9, K, C] raw features
    learn_normal: _LearnableSet | None  # 7 prompts
    learn_abnormal: _LearnableSet | None  # 9 * K prompts, position-major rows

    @property
    def num_normal(self) -> int:
        return self.texts.num_normal_states * self._sources

    @property
    def num_abnormal_per_position(self) -> int:
        return self.texts.num_abnormal_states * self._sources

    @property
    def _sources(self) -> int:
        return int(self.fixed_normal is not None) + int(self.learn_normal is not None)

    def abnormal_descriptions(self) -> list[str]:
        """Human-readable text of each abnormal prompt, in the [9, K_pos] flattened order."""
        out: list[str] = []
        for p in range(NUM_POSITIONS):
            if self.fixed_abnormal is not None:
                out.extend(self.texts.fixed_abnormal[p])
            if self.learn_abnormal is not None:
                out.extend(f"[ctx] {t}" for t in self.texts.learn_abnormal[p])
        return out


class MetaNet(nn.Module):
    """CoCoOp's pi: Linear(C -> C/r) - ReLU - Linear(C/r -> W)."""

    def __init__(self, embed_dim: int, text_width: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, embed_dim // reduction)
        self.linear1 = nn.Linear(embed_dim, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, text_width)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(g)))


class PromptLearner(nn.Module):
    """Learnable context for the normal and abnormal templates, plus per-class caches."""

    def __init__(self, cfg: ModelConfig, text_encoder: TextEncoder, tokenizer) -> None:  # noqa: ANN001
        super().__init__()
        pc, bb = cfg.prompts, cfg.backbone
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.n_ctx = pc.n_ctx
        self.ctx_normal = nn.Parameter(torch.randn(pc.n_ctx, bb.text_width) * pc.ctx_init_std)
        self.ctx_abnormal = nn.Parameter(torch.randn(pc.n_ctx, bb.text_width) * pc.ctx_init_std)
        self.cocoop = pc.conditioning == "cocoop"
        if self.cocoop:
            self.meta_normal = MetaNet(bb.embed_dim, bb.text_width, pc.meta_reduction)
            self.meta_abnormal = MetaNet(bb.embed_dim, bb.text_width, pc.meta_reduction)
        self._cache: dict[str, ClassPrompts] = {}
        self.extra_banks: tuple[str, ...] = ()

    def add_banks(self, banks: tuple[str, ...] | list[str]) -> None:
        """Search these description banks (JSON files) first, e.g. for a product new to the model."""
        self.extra_banks = tuple(banks) + self.extra_banks
        self._cache.clear()

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module signature
        self._cache.clear()  # cached tensors follow the module on the next prepare()
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ build time
    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        device = self.ctx_normal.device
        return self.tokenizer(texts).to(device)

    @torch.no_grad()
    def _encode_fixed(self, texts: list[str]) -> torch.Tensor:
        tokens = self._tokenize(texts)
        eot = tokens.argmax(dim=-1)
        emb = self.text_encoder.embed_tokens(tokens)
        return self.text_encoder(emb, eot, seq_len=int(eot.max()) + 1)

    @torch.no_grad()
    def _learnable_set(self, texts: list[str]) -> _LearnableSet:
        placeholder = " ".join(["X"] * self.n_ctx)
        tokens = self._tokenize([f"{placeholder} {t}" for t in texts])
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        emb = self.text_encoder.embed_tokens(tokens)
        return _LearnableSet(
            prefix=emb[:, :1].clone(),
            suffix=emb[:, 1 + self.n_ctx : length].clone(),
            eot=eot,
            length=length,
        )

    def prepare(self, class_name: str) -> ClassPrompts:
        """Build (or fetch) the class's prompt texts, token caches and fixed features."""
        cached = self._cache.get(class_name)
        if cached is not None:
            return cached
        pc = self.cfg.prompts
        texts = build_prompt_texts(class_name, banks=list(self.extra_banks + pc.banks) or None)
        fixed_n = fixed_a = None
        learn_n = learn_a = None
        if pc.use_fixed:
            fixed_n = self._encode_fixed(list(texts.fixed_normal))
            flat = [t for row in texts.fixed_abnormal for t in row]
            fixed_a = self._encode_fixed(flat).unflatten(0, (NUM_POSITIONS, texts.num_abnormal_states))
        if pc.use_learnable:
            learn_n = self._learnable_set(list(texts.learn_normal))
            learn_a = self._learnable_set([t for row in texts.learn_abnormal for t in row])
        prompts = ClassPrompts(texts, fixed_n, fixed_a, learn_n, learn_a)
        self._cache[class_name] = prompts
        return prompts

    # ------------------------------------------------------------------ forward
    def _encode_learnable(self, ctx: torch.Tensor, bias: torch.Tensor | None, s: _LearnableSet) -> torch.Tensor:
        """Features [B or 1, P, C] of learnable prompts; bias [B, W] (CoCoOp) or None (CoOp)."""
        num_prompts = s.prefix.shape[0]
        if bias is None:
            ctx_b = ctx.unsqueeze(0).unsqueeze(0)  # [1, 1, m, W]
        else:
            ctx_b = (ctx.unsqueeze(0) + bias.unsqueeze(1)).unsqueeze(1)  # [B, 1, m, W]
        batch = ctx_b.shape[0]
        ctx_b = ctx_b.expand(batch, num_prompts, -1, -1)
        prefix = s.prefix.unsqueeze(0).expand(batch, -1, -1, -1)
        suffix = s.suffix.unsqueeze(0).expand(batch, -1, -1, -1)
        emb = torch.cat([prefix, ctx_b, suffix], dim=2).flatten(0, 1)  # [B*P, T, W]
        eot = s.eot.repeat(batch)
        return self.text_encoder(emb, eot, seq_len=s.length).unflatten(0, (batch, num_prompts))

    def forward(self, class_name: str, global_normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw text features: normal [B, Pn, C] and abnormal [B, 9, K_pos, C].

        ``global_normed`` is n(G) [B, C], the meta-nets' input (un-adapted, METHOD.md P9).
        """
        prompts = self.prepare(class_name)
        batch = global_normed.shape[0]
        normal: list[torch.Tensor] = []
        abnormal: list[torch.Tensor] = []
        if prompts.fixed_normal is not None and prompts.fixed_abnormal is not None:
            normal.append(prompts.fixed_normal.unsqueeze(0).expand(batch, -1, -1))
            abnormal.append(prompts.fixed_abnormal.unsqueeze(0).expand(batch, -1, -1, -1))
        if prompts.learn_normal is not None and prompts.learn_abnormal is not None:
            bias_n = self.meta_normal(global_normed) if self.cocoop else None
            bias_a = self.meta_abnormal(global_normed) if self.cocoop else None
            ln = self._encode_learnable(self.ctx_normal, bias_n, prompts.learn_normal)
            la = self._encode_learnable(self.ctx_abnormal, bias_a, prompts.learn_abnormal)
            normal.append(ln.expand(batch, -1, -1))
            la = la.unflatten(1, (NUM_POSITIONS, prompts.texts.num_abnormal_states))
            abnormal.append(la.expand(batch, -1, -1, -1))
        return torch.cat(normal, dim=1), torch.cat(abnormal, dim=2)
