"""The frozen-backbone fast path: run the backbone once per view, then train only the head.

With a frozen backbone (kept in eval mode, BatchNorm statistics fixed) the features of an image are
a pure function of its pixels, so caching them is exact. Augmentation survives as ``views``: view 0
is the clean image, views 1..K-1 are seeded augmented copies, and epoch ``e`` trains on view ``e % K``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch.utils.data import Dataset

from braintumor.data.dataset import ImageSet
from braintumor.progress import progress_bar
from braintumor.runtime import INFERENCE_BATCH_SIZE, autocast, channels_last_batch, to_channels_last, tune_cpu_runtime
from braintumor.training.determinism import kill_point

# Where encoder outputs are written: ``allocate(count, shape)`` gives a float32 ``[count, *shape]`` tensor.
Allocate = Callable[[int, torch.Size], torch.Tensor]


class Batches(Protocol):
    """What :func:`extract_features` reads: a sized source of consecutive input batches (an ``ImageSet``)."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...


class _StoredBatches:
    """Rows of a stored tensor (cached activations) served as :class:`Batches`."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.rows), batch_size):
            yield self.rows[start : start + batch_size]


def _in_memory(count: int, shape: torch.Size) -> torch.Tensor:
    return torch.empty((count, *shape), dtype=torch.float32)


def extract_features(
    model: torch.nn.Module,
    image_set: ImageSet | Batches,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    description: str = "Backbone features",
    show_progress: bool = True,
    per_image: bool = True,
    precision: str = "32-true",
    channels_last: bool = True,
    out: Allocate | None = None,
) -> torch.Tensor:
    """Outputs ``[N, ...]`` (float32) of a frozen encoder, in batches.

    Args:
        model: a backbone (pooled features) or the frozen bottom of a partly fine-tuned one (activation maps).
        image_set: the decoded uint8 images (or any :class:`Batches`: stored activations).
        transform: uint8 image to network input; applied per image when ``per_image`` (augmentation draws per
            image), else to each whole batch (a deterministic transform: the same result, faster).
        batch_size, description, show_progress: batching and the progress bar.
        precision: ``32-true``, ``bf16-mixed`` or ``auto`` (:func:`braintumor.runtime.resolve_precision`).
        channels_last: run a convolutional ``model`` in NHWC order.
        out: where the outputs go: ``out(count, shape)`` returns a float32 ``[count, *shape]`` tensor (in memory
            by default; :mod:`braintumor.training.feature_cache` passes one backed by a file on disk).
    """
    allocate = out or _in_memory
    tune_cpu_runtime()  # for library callers; the CLI has done it already
    model.eval()
    if channels_last:
        # Outside inference mode: parameters converted inside it become inference tensors, which a later
        # fine-tuning stage cannot set requires_grad on.
        to_channels_last(model)
    result: torch.Tensor | None = None
    start = 0
    with torch.inference_mode(), progress_bar(show_progress) as progress, autocast(precision):
        task = progress.add_task(description, total=len(image_set))
        # A streaming set decodes in worker processes; the augmentation stays here, drawn image by image in order
        # from the global generator, so the views are those of an in-memory set.
        for images in image_set.batches(batch_size):
            batch = torch.stack([transform(image) for image in images]) if per_image else transform(images)
            outputs = model(channels_last_batch(batch) if channels_last else batch).float()
            if result is None:
                result = allocate(len(image_set), outputs.shape[1:])
            result[start : start + len(outputs)] = outputs
            start += len(outputs)
            progress.advance(task, len(images))
    if result is None:
        raise ValueError("no images to encode")
    return result


def build_view_features(
    model: torch.nn.Module,
    image_set: ImageSet,
    clean_transform: Callable[[torch.Tensor], torch.Tensor],
    augmented_transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    views: int,
    seed: int,
    show_progress: bool = True,
    precision: str = "32-true",
    channels_last: bool = True,
    out: Allocate | None = None,
    augmented_per_image: bool = True,
) -> torch.Tensor:
    """Features ``[views, N, D]``: view 0 clean (``clean_transform`` is deterministic), the others augmented
    with seeds ``seed + view`` (``augmented_transform`` applied image by image, or to each whole batch when
    ``augmented_per_image`` is False: :mod:`braintumor.data.batch_augment`).

    ``out(views, shape)`` allocates the float32 ``[views, *shape]`` result (default in memory); each view is
    written into it as it is computed, so no second copy is made.
    """
    slots = _ViewSlots(out or _in_memory, views)
    run = {"show_progress": show_progress, "precision": precision, "channels_last": channels_last, "out": slots}
    extract_features(model, image_set, clean_transform, description="Features (clean view)", per_image=False, **run)
    for view in range(1, views):
        torch.manual_seed(seed + view)
        start_view = getattr(augmented_transform, "start_view", None)
        if callable(start_view):  # a batched augmentation draws for fixed blocks of images, whatever the batch
            start_view(len(image_set))
        slots.view = view
        description = f"Features (augmented view {view}/{views - 1})"
        extract_features(
            model, image_set, augmented_transform, description=description, per_image=augmented_per_image, **run
        )
        kill_point(f"features:{view}")
    assert slots.result is not None  # extract_features fails on an empty set
    return slots.result


def encode_stored_views(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    show_progress: bool = True,
    precision: str = "32-true",
    channels_last: bool = True,
    out: Allocate | None = None,
) -> torch.Tensor:
    """``model``'s outputs ``[views, N, ...]`` on stored inputs ``[views, N, ...]`` (a frozen bottom's activations),
    in the batches :func:`build_view_features` uses, so that ``top`` over the bottom's views gives exactly the
    features of the whole backbone over the images."""
    slots = _ViewSlots(out or _in_memory, len(inputs))
    run = {"show_progress": show_progress, "precision": precision, "channels_last": channels_last, "out": slots}
    for view, rows in enumerate(inputs):
        slots.view = view
        description = f"Features from stored activations (view {view + 1}/{len(inputs)})"
        extract_features(model, _StoredBatches(rows), _unchanged, description=description, per_image=False, **run)
    assert slots.result is not None  # extract_features fails on an empty set
    return slots.result


def _unchanged(batch: torch.Tensor) -> torch.Tensor:
    return batch


class _ViewSlots:
    """Allocates ``[views, N, ...]`` on the first batch of view 0 and hands out the current view's ``[N, ...]``."""

    def __init__(self, allocate: Allocate, views: int) -> None:
        self.allocate, self.views = allocate, views
        self.result: torch.Tensor | None = None
        self.view = 0

    def __call__(self, count: int, shape: torch.Size) -> torch.Tensor:
        if self.result is None:
            self.result = self.allocate(self.views, torch.Size((count, *shape)))
        return self.result[self.view]


class FeatureViewDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Serves cached features: keys ``(epoch, index)`` (:class:`~braintumor.training.determinism.EpochSampler`)
    read view ``epoch % num_views``, plain indices read ``self.view``.

    With ``teacher`` (a distillation teacher's outputs ``[views, N, C]`` on the same views) each item is
    ``(features, label, teacher outputs)``.

    Example:
        >>> dataset = FeatureViewDataset(torch.arange(6.0).reshape(3, 2, 1), torch.tensor([0, 1]))
        >>> dataset[(4, 1)][0].item(), dataset[1][0].item()
        (3.0, 1.0)
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> None:
        if features.dim() == 2:
            features = features.unsqueeze(0)
        if teacher is not None and teacher.shape[:2] != features.shape[:2]:
            raise ValueError(f"teacher outputs {tuple(teacher.shape)} do not match the views {tuple(features.shape)}")
        self.features = features
        self.labels = labels
        self.teacher = teacher
        self.view = 0

    @property
    def num_views(self) -> int:
        return self.features.shape[0]

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, index = key if isinstance(key, tuple) else (self.view, key)
        view = epoch % self.num_views
        if self.teacher is None:
            return self.features[view, index], self.labels[index]
        return self.features[view, index], self.labels[index], self.teacher[view, index]
