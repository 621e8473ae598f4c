"""One object that explains a bundle's predictions: Grad-CAM, Grad-CAM++, GradientShap and, for vision
transformers, attention rollout.

:class:`Explainer` works on a private copy of the bundle's network with every weight frozen: the
inputs carry the gradient, so a frozen backbone explains as well as a fine-tuned one, and captum's
temporary hooks never touch the model another thread (a server's predictor) is running.

Example:
    >>> from PIL import Image
    >>> from braintumor.bundle import load_bundle
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> bundle = load_bundle(tiny_bundle())
    >>> overlay, target = gradcam_overlay(bundle, Image.new("RGB", (60, 50), (80, 80, 80)), target="glioma")
    >>> overlay.size, target
    ((60, 50), 'glioma')
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerActivation
from PIL import Image

from braintumor.bundle import Bundle
from braintumor.data.preprocessing import eval_transform, resize_to_uint8_tensor
from braintumor.explain.attributions import Background, fallback_baselines, shap_maps
from braintumor.explain.gradcam import CAM_METHODS, ExplainError, class_activation_maps, resolve_layer
from braintumor.explain.overlay import overlay_heatmap
from braintumor.explain.transformer import (
    TokenLayout,
    attention_rollout,
    find_transformer,
    layout_for_layer,
    require_transformer,
    token_layout,
)
from braintumor.inference.predictor import softmax_with_temperature
from braintumor.runtime import channels_last_batch, to_channels_last

# Attention rollout applies to vision transformers only (ROLLOUT_METHODS); the others to every network.
ROLLOUT_METHODS: tuple[str, ...] = ("rollout",)
METHODS: tuple[str, ...] = (*CAM_METHODS, "shap", *ROLLOUT_METHODS)
# Methods with non-negative maps in [0, 1], drawn as one heat map over the image (gradcam_overlay, the server).
OVERLAY_METHODS: tuple[str, ...] = (*CAM_METHODS, *ROLLOUT_METHODS)


class Explainer:
    """Maps for a bundle's model: ``maps(inputs, targets, method)`` with inputs from :meth:`to_inputs`."""

    def __init__(self, bundle: Bundle, *, layer: str | None = None) -> None:
        self.bundle = bundle
        # A private, fully frozen copy: hooks and autograd here never disturb bundle.model.
        self.model = copy.deepcopy(bundle.model).eval()
        self.model.requires_grad_(False)
        # NHWC, as prediction runs (2-3x faster convolutions here); maps stay fp32, since gradients are what
        # they are made of.
        to_channels_last(self.model)
        self.layer_name, self.layer = resolve_layer(self.model, layer)
        transformer = find_transformer(self.model)
        # The token layout of the vision transformer (None for a CNN): rollout's grid and Grad-CAM's tokens.
        self.tokens: TokenLayout | None = token_layout(transformer) if transformer is not None else None
        self.transform = eval_transform(bundle.preprocessing)
        self.temperature = bundle.config.extras.temperature or 1.0
        prep = bundle.preprocessing
        self.black = (torch.zeros(3) - torch.tensor(prep.mean)) / torch.tensor(prep.std)
        self._lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @property
    def is_transformer(self) -> bool:
        """Whether the network is a vision transformer (attention rollout applies)."""
        return self.tokens is not None

    def methods_available(self) -> tuple[str, ...]:
        """The methods that apply to this network: attention rollout only for a vision transformer."""
        return METHODS if self.is_transformer else tuple(m for m in METHODS if m not in ROLLOUT_METHODS)

    def map_grid(self, method: str, inputs: torch.Tensor) -> tuple[int, int] | None:
        """The native resolution ``(h, w)`` of ``method``'s maps (the Grad-CAM layer's or the patch grid), or
        ``None`` for pixel-level maps (SHAP)."""
        if method in ROLLOUT_METHODS:
            return token_layout(require_transformer(self.model, method)).grid
        if method not in CAM_METHODS:
            return None
        layout = layout_for_layer(self.model, self.layer)
        activation = LayerActivation(self.model, self.layer).attribute(inputs[:1])
        if layout is not None and activation.dim() == 3:
            return layout.grid
        return int(activation.shape[-2]), int(activation.shape[-1])

    def class_index(self, name: str) -> int:
        """Index of a class name; a clear error listing the classes otherwise."""
        if name not in self.class_names:
            raise ExplainError(f"unknown class {name!r}; the model's classes are {', '.join(self.class_names)}")
        return self.class_names.index(name)

    def to_uint8(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Decoded images of any size to ``[N, 3, S, S]`` uint8 at the model's size."""
        return torch.stack([resize_to_uint8_tensor(image, self.bundle.preprocessing) for image in images])

    def to_inputs(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Normalised model inputs from PIL images or uint8 ``[N, 3, S, S]`` tensors."""
        batch = images if isinstance(images, torch.Tensor) else self.to_uint8(images)
        return channels_last_batch(self.transform(batch))

    @torch.no_grad()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[N, C]`` (with the bundle's temperature, as the predictor reports them)."""
        with self._lock:
            return softmax_with_temperature(self.model(inputs), self.temperature)

    def maps(
        self,
        inputs: torch.Tensor,
        targets: Sequence[int],
        method: str = "gradcam",
        *,
        background: Background | None = None,
        n_samples: int = 32,
    ) -> torch.Tensor:
        """Maps ``[N, S, S]``: in [0, 1] for Grad-CAM/Grad-CAM++ and rollout, signed in [-1, 1] for SHAP.

        Attention rollout does not depend on ``targets`` (it shows where the transformer looks); it raises
        :class:`~braintumor.explain.errors.NotATransformerError` for a convolutional network.
        """
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        with self._lock:
            if method in CAM_METHODS:
                return class_activation_maps(self.model, self.layer, inputs, targets, method)
            if method in ROLLOUT_METHODS:
                return attention_rollout(self.model, inputs)
            if background is not None and background.images is not None:
                baselines: torch.Tensor | list[torch.Tensor] = self.transform(background.images)
            else:
                baselines = [fallback_baselines(single, self.black) for single in inputs]
            return shap_maps(self.model, inputs, targets, baselines, n_samples=n_samples)


# One explainer per loaded bundle, so a server does not copy the network on every request.
_EXPLAINERS: dict[int, tuple[weakref.ref[Bundle], str | None, Explainer]] = {}
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(bundle: Bundle, layer: str | None = None) -> Explainer:
    """A cached :class:`Explainer` for this bundle object (and layer)."""
    key = id(bundle)
    with _EXPLAINERS_LOCK:
        cached = _EXPLAINERS.get(key)
        if cached is not None and cached[0]() is bundle and cached[1] == layer:
            return cached[2]
        for stale in [k for k, (ref, _, _) in _EXPLAINERS.items() if ref() is None]:
            del _EXPLAINERS[stale]
        explainer = Explainer(bundle, layer=layer)
        _EXPLAINERS[key] = (weakref.ref(bundle), layer, explainer)
        return explainer


def gradcam_overlay(
    bundle: Bundle, image: Image.Image, target: str | None = None, method: str = "gradcam"
) -> tuple[Image.Image, str]:
    """Grad-CAM (or Grad-CAM++, or a vision transformer's attention rollout) heat map over ``image`` for ``target``
    (default: the predicted class).

    Returns the RGB overlay at the image's own size (longest side capped at 1024 px) and the class name
    the map explains (rollout's map is the same for every class). Raises
    :class:`~braintumor.explain.gradcam.ExplainError` for an unknown class or method, or rollout on a CNN.
    """
    if method not in OVERLAY_METHODS:
        raise ExplainError(f"unknown method {method!r} for an overlay; choose one of {', '.join(OVERLAY_METHODS)}")
    explainer = explainer_for(bundle)
    inputs = explainer.to_inputs([image.convert("RGB")])
    # The predicted class, as the predictor would report it (argmax does not depend on the temperature).
    index = int(explainer.probabilities(inputs).argmax(dim=1)[0]) if target is None else explainer.class_index(target)
    heatmap = explainer.maps(inputs, [index], method)[0].numpy()
    return overlay_heatmap(image, np.asarray(heatmap)), explainer.class_names[index]
