"""Grad-CAM and Grad-CAM++ class-activation maps on captum, with the target layer found automatically.

Grad-CAM is captum's :class:`~captum.attr.LayerGradCam`. Captum has no Grad-CAM++, so
:class:`LayerGradCamPlusPlus` adds it on captum's own layer-gradient utility
(``compute_layer_gradients_and_eval``): the same hooks, only the channel weights differ. That keeps
one library (and one set of hooks) for every method instead of adding pytorch-grad-cam beside captum.

The target layer is the last convolutional stage: ``backbone.blocks[-1]`` for the custom CNN and, for
timm backbones, the module of the last entry of timm's ``feature_info`` (``layer4`` for ResNets,
``blocks.5`` for MobileNetV3, ``stages.3`` for ConvNeXt), except for EfficientNet-style models whose
1x1 conv head runs before pooling: there it is that head's output, ``bn2``. Any module can be named.

A vision transformer's layers output tokens ``[N, T, C]``, not feature maps: their patch tokens are laid
out on the patch grid (:class:`~braintumor.explain.transformer.TokenLayout`, prefix tokens dropped) and
Grad-CAM runs on that map. Its target layer is the last block's ``norm1``, the tokens the last attention
reads: a class-token model's output comes from the class token alone, and after the last attention the
patch tokens no longer reach it (their gradient is zero). A model that averages its patch tokens
(``global_pool: avg``) uses the last block's output instead.

Example:
    >>> import torch
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe).eval()
    >>> name, layer = find_target_layer(model)
    >>> name
    'backbone.blocks.1'
    >>> class_activation_maps(model, layer, torch.rand(2, 3, 32, 32), [0, 3]).shape
    torch.Size([2, 32, 32])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerAttribution, LayerGradCam
from captum.attr._utils.attribution import GradientAttribution
from timm.models.efficientnet import EfficientNet

from braintumor.explain.errors import ExplainError
from braintumor.explain.transformer import TokenLayout, is_transformer, layout_for_layer
from braintumor.models.ensemble import EnsembleNet
from braintumor.models.network import SeedCNN

CamMethod = Literal["gradcam", "gradcam++"]
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")


class LayerGradCamPlusPlus(LayerAttribution, GradientAttribution):
    """Grad-CAM++ (Chattopadhay et al., 2018) for one layer, built on captum's layer gradients.

    Channel weights are positive gradients weighted by the closed-form ``alpha`` of the paper (for an
    exponential of the class score), so several separate regions of one class all show up, where
    Grad-CAM's mean gradient favours the largest one.
    """

    def __init__(self, forward_func: nn.Module, layer: nn.Module) -> None:
        LayerAttribution.__init__(self, forward_func, layer)
        GradientAttribution.__init__(self, forward_func)

    def attribute(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """ReLU'd map ``[N, 1, h, w]`` at the layer's resolution."""
        gradients, activations = compute_layer_gradients_and_eval(self.forward_func, self.layer, (inputs,), target)
        return cam_from_gradients(gradients[0], activations[0], "gradcam++")


def cam_from_gradients(grad: torch.Tensor, act: torch.Tensor, method: CamMethod | str) -> torch.Tensor:
    """ReLU'd Grad-CAM or Grad-CAM++ map ``[N, 1, h, w]`` from a layer's gradients and activations ``[N, C, h, w]``."""
    if method == "gradcam":
        weights = grad.mean(dim=(2, 3), keepdim=True)
    else:
        grad_2 = grad.pow(2)
        grad_3 = grad_2 * grad
        activation_sums = act.sum(dim=(2, 3), keepdim=True)
        alpha = grad_2 / (2 * grad_2 + activation_sums * grad_3 + 1e-7)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * act).sum(dim=1, keepdim=True))


def token_cam(
    model: nn.Module, layer: nn.Module, layout: TokenLayout, inputs: torch.Tensor, target: torch.Tensor, method: str
) -> torch.Tensor:
    """Grad-CAM(++) ``[N, 1, h, w]`` on a transformer layer: its patch tokens laid out on the patch grid.

    captum's layer gradients give the token tensors ``[N, T, C]``; a layer that already outputs a
    ``[N, C, h, w]`` map (the patch embedding's convolution) is used as it is.
    """
    gradients, activations = compute_layer_gradients_and_eval(model, layer, (inputs,), target)
    grad, act = gradients[0], activations[0]
    if grad.dim() == 3:
        grad, act = layout.to_grid(grad), layout.to_grid(act)
    return cam_from_gradients(grad, act, method)


def find_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last convolutional stage of a :class:`~braintumor.models.network.BrainTumorNet` as ``(name, module)``,
    or for a vision transformer the tokens its last attention reads (see the module's notes).

    For an ensemble it is the first member's layer: the map then shows that member's evidence for the
    ensemble's output (name another member's layer with ``members.N.`` to see that one).
    """
    if isinstance(model, EnsembleNet):
        name, module = find_target_layer(model.members[0])
        return f"members.0.{name}", module
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ExplainError("the model has no .backbone; name the target layer explicitly")
    if is_transformer(backbone):
        return _transformer_target_layer(backbone)
    if isinstance(backbone, SeedCNN):
        return f"backbone.blocks.{len(backbone.blocks) - 1}", backbone.blocks[-1]
    if isinstance(backbone, EfficientNet) and isinstance(getattr(backbone, "bn2", None), nn.Module):
        # EfficientNet-style models run a 1x1 conv head (conv_head + bn2 with its activation) after the last
        # stage and before pooling: bn2's rectified output is the map the pooled features come from, where
        # feature_info's last stage is the linear (signed) bottleneck below it.
        return "backbone.bn2", backbone.bn2
    feature_info = getattr(backbone, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and "module" in feature_info[-1]:
        name = str(feature_info[-1]["module"])
        try:
            return f"backbone.{name}", backbone.get_submodule(name)
        except AttributeError:
            pass  # timm named a module that this build of the model does not have: fall back below
    # Any other backbone: the last Conv2d registered is the last convolution of a sequential CNN.
    convolutions = [(name, module) for name, module in backbone.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ExplainError(
            f"{type(backbone).__name__} has no convolutional layer for Grad-CAM; name one with --layer or use SHAP"
        )
    name, module = convolutions[-1]
    return f"backbone.{name}", module


def _transformer_target_layer(backbone: nn.Module) -> tuple[str, nn.Module]:
    """The last block's ``norm1`` (class-token models) or the last block (models that average their patch tokens)."""
    last = len(backbone.blocks) - 1
    block = backbone.blocks[last]
    averages_patches = getattr(backbone, "global_pool", "token") in {"avg", "avgmax", "max"}
    if averages_patches or not isinstance(getattr(block, "norm1", None), nn.Module):
        return f"backbone.blocks.{last}", block
    return f"backbone.blocks.{last}.norm1", block.norm1


def resolve_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The named module (dotted path, ``backbone.`` optional), or the automatic target layer when ``None``."""
    if not name:
        return find_target_layer(model)
    for candidate in (name, f"backbone.{name}"):
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; layers include: {', '.join(names[-8:])}"
    raise ExplainError(f"the model has no layer {name!r}{hint}")


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each non-negative map ``[N, H, W]`` to [0, 1] by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0.0, 1.0)


def class_activation_maps(
    model: nn.Module,
    layer: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    method: CamMethod | str = "gradcam",
) -> torch.Tensor:
    """Grad-CAM or Grad-CAM++ maps ``[N, H, W]`` in [0, 1], upsampled to the input size.

    ``inputs`` are normalised model inputs ``[N, 3, H, W]``; ``targets`` one class index per input.
    The model must be in eval mode; its parameters may be frozen (gradients flow through activations).
    """
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown class-activation method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if len(targets) != len(inputs):
        raise ExplainError(f"{len(inputs)} inputs but {len(targets)} targets")
    target_tensor = torch.as_tensor(list(targets), dtype=torch.long)
    # Inputs that require grad make every activation part of the graph even when all weights are frozen.
    inputs = inputs.detach().clone().requires_grad_(True)
    layout = layout_for_layer(model, layer)
    with torch.enable_grad():
        if layout is not None:
            raw = token_cam(model, layer, layout, inputs, target_tensor, method)
        elif method == "gradcam":
            raw = LayerGradCam(model, layer).attribute(inputs, target=target_tensor, relu_attributions=True)
        else:
            raw = LayerGradCamPlusPlus(model, layer).attribute(inputs, target=target_tensor)
    if raw.dim() != 4:
        raise ExplainError(
            f"the target layer's output has shape {tuple(raw.shape)}, not a [N, C, H, W] feature map; "
            "name a convolutional layer with --layer"
        )
    upsampled = LayerAttribution.interpolate(raw.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    return normalise_maps(upsampled[:, 0].clamp_min(0.0))
