"""timm backbones with pretrained weights from the hub or from a local file, with clear offline errors.

Weights are found, in order: an explicit ``weights`` file; ``$BRAINTUMOR_WEIGHTS_DIR/<backbone>.safetensors``
(or ``.pth``); timm's normal hub download. Local files go through timm's own loader
(``pretrained_cfg_overlay=dict(file=...)``), which reads ``.pth`` files with ``weights_only=True``.
timm is imported by the functions that build a backbone, not by this module: with timm come torchvision and
torch's compiler, seconds of start-up that loading a bundle for prediction does without.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from braintumor.config import RecipeError
from braintumor.errors import WeightsUnavailableError
from braintumor.models.padding import use_fast_same_padding

WEIGHTS_DIR_ENV = "BRAINTUMOR_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_HOST = "huggingface.co"


def check_backbone_name(name: str) -> None:
    """Refuse an unknown timm model name, suggesting close matches."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise WeightsUnavailableError(f"unknown timm backbone {name!r}.{hint}")


def find_local_weights(backbone: str) -> Path | None:
    """Look for ``<backbone>.<suffix>`` in ``$BRAINTUMOR_WEIGHTS_DIR``."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    for suffix in WEIGHT_SUFFIXES:
        candidate = Path(folder) / f"{backbone}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _check_weight_keys(model: nn.Module, weights: Path) -> None:
    # timm only warns about missing keys when a file does not match; a backbone left half random
    # must be an error. Reading the file again is cheap next to what training costs.
    import timm

    file_keys = set(timm.models.load_state_dict(str(weights)).keys())
    missing = [key for key in model.state_dict() if key not in file_keys and not key.endswith("num_batches_tracked")]
    if missing:
        raise WeightsUnavailableError(
            f"weights file {weights} does not fit backbone {model.default_cfg.get('architecture', '?')!r}: "
            f"{len(missing)} of its tensors are missing from the file (first: {missing[0]})"
        )


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    # timm retries for about a minute when offline; a quick look first gives a prompt, clear error.
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline_message(backbone: str, reason: str) -> str:
    return (
        f"cannot get pretrained weights for {backbone!r}: {reason}. Pass a local file with "
        f"--weights PATH (.safetensors or .pth with timm's key names), put {backbone}.safetensors in "
        f"${WEIGHTS_DIR_ENV}, or train without pretraining (model.pretrained=false)."
    )


def create_backbone(
    name: str,
    *,
    pretrained: bool,
    weights: Path | None = None,
    image_size: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A timm feature extractor (``num_classes=0``: pooled features out) with the requested weights.

    ``options`` are further keyword arguments of ``timm.create_model`` (``depth``, ``patch_size``...).
    A model with a fixed input size (vision transformers) is built for ``image_size`` when it is given:
    timm resamples pretrained position embeddings to it. TF "SAME" convolutions pad with
    :func:`~braintumor.models.padding.pad_border` (bitwise the same, faster).
    """
    check_backbone_name(name)
    kwargs = {**_size_kwargs(name, image_size), **dict(options or {})}
    backbone = _timm_backbone(name, pretrained=pretrained, weights=weights, kwargs=kwargs)
    use_fast_same_padding(backbone)
    return backbone


def _size_kwargs(name: str, image_size: int | None) -> dict[str, Any]:
    """``{"img_size": image_size}`` for models timm builds for one input size (ViTs), else nothing.

    Convolutional networks take any size and most of them refuse an ``img_size`` argument.
    """
    import timm

    config = timm.get_pretrained_cfg(name)
    if image_size is None or config is None or not getattr(config, "fixed_input_size", False):
        return {}
    return {"img_size": image_size}


def _timm_backbone(name: str, *, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not pretrained:
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except (TypeError, ValueError, AssertionError) as error:
            # timm asserts on sizes a model cannot take (an image size not divisible by the patch size, ...).
            reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise RecipeError(
                f"cannot build backbone {name!r} with {kwargs} (data.image_size and model.backbone_args): {reason}"
            ) from None
    weights = weights or find_local_weights(name)
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise WeightsUnavailableError(f"weights file {weights} does not exist")
        if weights.suffix.lower() not in WEIGHT_SUFFIXES:
            raise WeightsUnavailableError(
                f"weights file {weights} must be one of {', '.join(WEIGHT_SUFFIXES)} (got {weights.suffix!r})"
            )
        try:
            model = timm.create_model(
                name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}, **kwargs
            )
            _check_weight_keys(model, weights)
        except WeightsUnavailableError:
            raise
        except Exception as error:  # timm/torch raise RuntimeError, KeyError, pickle errors, ...
            raise WeightsUnavailableError(
                f"weights file {weights} does not fit backbone {name!r}: {str(error).splitlines()[0][:300]}"
            ) from None
        return model
    if not _hub_reachable():
        raise WeightsUnavailableError(_offline_message(name, f"the model hub ({HUB_HOST}) is not reachable"))
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    except Exception as error:
        raise WeightsUnavailableError(_offline_message(name, f"download failed ({error})")) from None
