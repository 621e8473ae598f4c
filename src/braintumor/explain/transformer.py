"""Explanations for vision transformers: patch tokens as a feature map, and attention rollout.

A vision transformer (timm's ViT and DeiT) works on a sequence of tokens: its prefix tokens (the class
token, DeiT's distillation token, register tokens) and then one token per image patch, in row-major order
over the patch grid. :class:`TokenLayout` turns a ``[N, T, C]`` token tensor into a ``[N, C, h, w]`` map of
the patch tokens, so Grad-CAM weighs token channels exactly as it weighs a CNN's feature channels.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying attention flow in transformers") follows how
attention mixes the tokens through all the blocks: each block's attention, averaged over its heads, plus
the identity for the residual connection, rows renormalised to sum to 1; the product over the blocks says
how much of each input token reaches each output token. The map is the row of the token the classifier
reads (the class token, or the mean of the patch tokens for average pooling) over the patch tokens. It does
not depend on the class explained: it shows where the network looks, not what speaks for a class.

timm's attention runs fused (``scaled_dot_product_attention``), so the attention weights are never held in
memory: :func:`capture_attentions` recomputes ``softmax(q k^T * scale)`` from the queries and keys, caught
by hooks on each attention module's ``q_norm`` and ``k_norm`` (identities unless the model normalises them),
which see exactly the ``q`` and ``k`` the attention uses.

Example:
    >>> import torch
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny-vit", "data": {"image_size": 32},
    ...      "model": {"architecture": "transfer", "backbone": "deit_tiny_patch16_224", "pretrained": False,
    ...                "backbone_args": {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}}})
    >>> model = create_model(recipe).eval()
    >>> token_layout(find_transformer(model))
    TokenLayout(prefix_tokens=1, grid=(4, 4))
    >>> attention_rollout(model, torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from braintumor.explain.errors import ExplainError, NotATransformerError


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer orders its tokens: ``prefix_tokens`` first, then the ``grid`` of patches row by row."""

    prefix_tokens: int
    grid: tuple[int, int]

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens ``[N, h*w, ...]`` of ``[N, T, ...]`` (with or without the prefix tokens)."""
        count = tokens.shape[1]
        if count == self.prefix_tokens + self.patches:
            return tokens[:, self.prefix_tokens :]
        if count == self.patches:  # the patch embedding's own output has no prefix tokens yet
            return tokens
        raise ExplainError(
            f"a layer output of {count} tokens does not fit the transformer's {self.prefix_tokens} prefix tokens "
            f"and {self.grid[0]}x{self.grid[1]} patches; name a block or its norm1 with --layer"
        )

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, T, C]`` tokens as a ``[N, C, h, w]`` map of the patch tokens (prefix tokens dropped)."""
        patches = self.patch_tokens(tokens)
        return patches.transpose(1, 2).reshape(len(tokens), -1, *self.grid)


def is_transformer(module: nn.Module) -> bool:
    """Whether ``module`` is a timm-style vision transformer: a patch embedding with a grid, prefix tokens, blocks."""
    grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    return (
        grid is not None
        and hasattr(module, "num_prefix_tokens")
        and isinstance(getattr(module, "blocks", None), nn.Module)
    )


def find_transformer(model: nn.Module) -> nn.Module | None:
    """The vision transformer backbone of a bundle's network (an ensemble's first member's), or ``None``."""
    backbone = getattr(model, "backbone", None)
    return backbone if backbone is not None and is_transformer(backbone) else None


def token_layout(transformer: nn.Module) -> TokenLayout:
    """The :class:`TokenLayout` of a timm vision transformer."""
    rows, columns = (int(v) for v in transformer.patch_embed.grid_size)
    return TokenLayout(int(transformer.num_prefix_tokens), (rows, columns))


def layout_for_layer(model: nn.Module, layer: nn.Module) -> TokenLayout | None:
    """The token layout of the vision transformer that ``layer`` belongs to, or ``None`` outside any."""
    for module in model.modules():
        if is_transformer(module) and any(part is layer for part in module.modules()):
            return token_layout(module)
    return None


def require_transformer(model: nn.Module, method: str = "rollout") -> nn.Module:
    """The model's vision transformer, or a :class:`NotATransformerError` saying which methods fit instead."""
    transformer = find_transformer(model)
    if transformer is None:
        backbone = type(getattr(model, "backbone", model)).__name__
        raise NotATransformerError(
            f"{method} needs a vision transformer (attention blocks); this model's backbone is {backbone}, "
            "a convolutional network: use gradcam, gradcam++ or shap"
        )
    return transformer


def capture_attentions(transformer: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention weights ``[N, heads, T, T]`` (rows sum to 1) for ``inputs``, first block first."""
    modules = [getattr(block, "attn", None) for block in transformer.blocks]
    if not modules or not all(_has_qk_hooks(module) for module in modules):
        raise NotATransformerError(
            f"{type(transformer).__name__} has no standard timm attention (q_norm/k_norm) in every block: "
            "attention rollout cannot read its attention weights"
        )
    caught: list[dict[str, torch.Tensor]] = [{} for _ in modules]
    handles = []
    for store, module in zip(caught, modules, strict=True):
        for name in ("q", "k"):
            hook = _store_output(store, name)
            handles.append(getattr(module, f"{name}_norm").register_forward_hook(hook))
    try:
        with torch.no_grad():
            transformer(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [
        ((store["q"].float() * module.scale) @ store["k"].float().transpose(-2, -1)).softmax(dim=-1)
        for store, module in zip(caught, modules, strict=True)
    ]


def _has_qk_hooks(module: nn.Module | None) -> bool:
    return module is not None and all(hasattr(module, name) for name in ("q_norm", "k_norm", "scale"))


def _store_output(store: dict[str, torch.Tensor], name: str):
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        store[name] = output.detach()

    return hook


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout ``[N, T, T]`` of per-block attentions ``[N, heads, T, T]``: rows sum to 1.

    Each block: heads averaged, the identity added for the residual connection, rows renormalised;
    the blocks' matrices multiplied, the last block on the left.

    Example:
        >>> uniform = torch.full((1, 1, 3, 3), 1 / 3)
        >>> rollout([uniform])[0, 0]
        tensor([0.6667, 0.1667, 0.1667])
    """
    if not attentions:
        raise ValueError("attention rollout needs the attention of at least one block")
    result: torch.Tensor | None = None
    for attention in attentions:
        fused = attention.mean(dim=1)
        mixed = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    assert result is not None
    return result


def rollout_relevance(matrix: torch.Tensor, layout: TokenLayout, *, class_token: bool = True) -> torch.Tensor:
    """Relevance ``[N, h, w]`` of each patch: the class token's row of the rollout, or the patch rows' mean."""
    rows = matrix[:, 0] if class_token else layout.patch_tokens(matrix).mean(dim=1)
    return rows[:, layout.prefix_tokens :].reshape(len(matrix), *layout.grid)


def _reads_class_token(transformer: nn.Module) -> bool:
    # timm pools with the class token ('token') or averages the patch tokens ('avg', 'max', ...).
    return getattr(transformer, "global_pool", "token") == "token" and transformer.num_prefix_tokens > 0


def attention_rollout(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Attention-rollout maps ``[N, H, W]`` in [0, 1] (each scaled by its maximum), upsampled to the input size.

    ``model`` is a bundle's network with a vision transformer backbone (:class:`NotATransformerError`
    otherwise); ``inputs`` normalised ``[N, 3, H, W]`` images.
    """
    transformer = require_transformer(model)
    layout = token_layout(transformer)
    matrix = rollout(capture_attentions(transformer, inputs))
    relevance = rollout_relevance(matrix, layout, class_token=_reads_class_token(transformer))
    upsampled = F.interpolate(
        relevance.unsqueeze(1), size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False
    )
    peak = upsampled.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (upsampled[:, 0] / peak).clamp(0.0, 1.0)


def block_inputs(transformer: nn.Module, inputs: torch.Tensor, first: int = -1) -> torch.Tensor:
    """The tokens ``[N, T, C]`` entering block ``first`` (default the last) of the transformer for ``inputs``
    (caught by a pre-hook, so whatever the model does before its blocks is its own code)."""
    caught: list[torch.Tensor] = []
    handle = transformer.blocks[first].register_forward_pre_hook(lambda _, args: caught.append(args[0].detach()))
    try:
        with torch.no_grad():
            transformer(inputs)
    finally:
        handle.remove()
    return caught[0]


def from_block(transformer: nn.Module, tokens: torch.Tensor, first: int = -1) -> torch.Tensor:
    """The transformer's output (its pooled features) from the tokens entering block ``first``: the blocks from
    there on, the final norm, then timm's pooling head; ``from_block(t, block_inputs(t, x, i), i)`` equals ``t(x)``."""
    for block in transformer.blocks[first:]:
        tokens = block(tokens)
    return transformer.forward_head(transformer.norm(tokens))


def blocks_onwards(transformer: nn.Module, first: int = -1) -> list[nn.Module]:
    """The modules :func:`from_block` runs that hold parameters: the blocks from ``first`` on, the final norms."""
    parts = [*transformer.blocks[first:], transformer.norm, getattr(transformer, "fc_norm", None)]
    return [part for part in parts if isinstance(part, nn.Module) and any(True for _ in part.parameters())]
