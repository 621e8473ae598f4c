"""LP-FT's second half: the recipe's fine-tuning stages after the probe, then the WiSE-FT weight choice.

Each stage's final weights (and the history rows so far) go to ``checkpoints/stage-N/final.safetensors``;
a resumed run skips the stages that have one and continues an unfinished stage from its ``last.ckpt``. The
WiSE-FT choice is recomputed from the probed and fine-tuned weights, a pure function of both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from braintumor.config import FineTuneStage
from braintumor.errors import BrainTumorError
from braintumor.models.network import BrainTumorNet
from braintumor.training.feature_cache import (
    encode_views,
    remove_stage_activations,
    stage_activation_store,
    teacher_view_logits,
)
from braintumor.training.features import encode_stored_views
from braintumor.training.finetune import FineTuneNet, interpolate_weights, prepare_stage, split_backbone
from braintumor.training.fitting import (
    FitContext,
    classifier,
    fit_module,
    image_loaders,
    load_weights,
    save_weights,
    view_loaders,
)
from braintumor.training.validation import head_validation_metrics, validation_metrics

FINAL_FILE = "final.safetensors"


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def finetune(model: BrainTumorNet, context: FitContext) -> tuple[dict[str, Any], L.Trainer | None]:
    """Run the fine-tuning stages on the probed ``model``, then WiSE-FT; returns what was done, for the bundle."""
    stages = context.recipe.train.finetune_stages
    probe_state = _copy_state(model)
    record: dict[str, Any] = {"stages": []}
    trainer: L.Trainer | None = None
    inputs: StageInputs | None = None  # the last stage's, kept for WiSE-FT's validation passes
    for index, stage in enumerate(stages, start=1):
        final_file = context.run_dir / "checkpoints" / f"stage-{index}" / FINAL_FILE
        optimizer_groups = prepare_stage(model, stage, context.recipe.train.weight_decay)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if inputs is not None:
            inputs.release()
            inputs = None
        if context.resume and final_file.is_file():
            load_weights(model, final_file, context.history)
            _release_handed_activations(context)
            record["stages"].append({"stage": index, "reused": True, "trainable_parameters": trainable})
            continue
        context.say(
            f"fine-tuning stage {index}/{len(stages)}: {stage.epochs} epoch(s), top "
            f"{stage.unfreeze} layer group(s), LR {stage.learning_rate:g}, layer decay {stage.layer_decay:g}, "
            f"{trainable:,} trainable parameters"
        )
        started = time.perf_counter()
        trainer, inputs = _fit_stage(model, context, index, stage, optimizer_groups)
        record["stages"].append(
            {"stage": index, "trainable_parameters": trainable, "seconds": round(time.perf_counter() - started, 2)}
        )
    if context.recipe.train.wise_alphas:
        cached = inputs if inputs is not None and _bottom_unchanged(model, inputs, probe_state) else None
        record["wise_ft"] = _choose_wise_alpha(model, probe_state, context, cached)
    if inputs is not None:
        inputs.release()
    model.requires_grad_(False)
    return record, trainer


@dataclass
class StageInputs:
    """What a stage trains (``network``), on what (``loaders``), and what frees those inputs (``release``); for a
    stage on cached activations also its ``bottom`` and ``top`` and the validation images' bottom activations."""

    network: FineTuneNet
    loaders: tuple[DataLoader, DataLoader]
    release: Callable[[], None]
    bottom: nn.Module | None = None
    top: nn.Module | None = None
    val_activations: torch.Tensor | None = None  # [1, N, C, H, W]


def _fit_stage(
    model: BrainTumorNet, context: FitContext, index: int, stage: FineTuneStage, optimizer_groups: list[dict[str, Any]]
) -> tuple[L.Trainer, StageInputs]:
    """One stage's fit (continued from its ``last.ckpt`` when resuming), its final weights saved; its inputs are
    the caller's to release."""
    stage_dir = context.run_dir / "checkpoints" / f"stage-{index}"
    last = stage_dir / "last.ckpt"
    inputs = _stage_inputs(model, context, index, stage)
    module = classifier(inputs.network, context, optimizer_groups)
    context.history.stage = f"finetune-{index}"
    trainer = fit_module(
        module,
        inputs.loaders,
        context,
        resume_from=last if context.resume and last.is_file() else None,
        max_epochs=stage.epochs,
        checkpoint_dir=stage_dir,
    )
    save_weights(model, stage_dir / FINAL_FILE, context.history)
    return trainer, inputs


def _stage_inputs(model: BrainTumorNet, context: FitContext, index: int, stage: FineTuneStage) -> StageInputs:
    """What a stage trains and on what: the whole network on images, or its top on cached bottom activations
    (memory-mapped files when they are over the run's memory budget)."""
    frozen = context.recipe.train.finetune_batchnorm == "frozen"
    if not stage.cache_frozen_layers:
        return StageInputs(FineTuneNet(model, model.backbone if frozen else None), image_loaders(context), _nothing)
    split = split_backbone(model.backbone)
    if split is None:
        raise BrainTumorError(
            f"finetune_stages[{index}].cache_frozen_layers: backbone {context.recipe.model.backbone} cannot be split "
            "at its trainable layer groups (supported: timm EfficientNet and ResNet families); "
            "set cache_frozen_layers: false"
        )
    bottom, top = split
    # The frozen bottom's activations are computed once per cached view, not once per epoch; the first stage
    # gets them from the probe, which computed them on its way to the features.
    handed, context.bottom_activations = context.bottom_activations, None
    if index == 1 and handed is not None:
        train_activations, val_activations, release = handed.train, handed.val, handed.release
    else:
        store = stage_activation_store(context, index)
        train_activations, val_activations = encode_views(bottom, context, store)
        release = partial(remove_stage_activations, store)
    teacher_views = teacher_view_logits(context)
    val_batch = context.recipe.data.batch_size * 2
    loaders = view_loaders(train_activations, val_activations, context, val_batch, teacher_views)
    network = FineTuneNet(nn.Sequential(top, model.head), top if frozen else None)
    return StageInputs(network, loaders, release, bottom, top, val_activations)


def _bottom_unchanged(model: BrainTumorNet, inputs: StageInputs, probe_state: dict[str, torch.Tensor]) -> bool:
    """Whether the last stage's frozen bottom holds the probed weights and statistics: then every WiSE-FT mix has
    that bottom too, and its cached validation activations stand for the images."""
    if inputs.bottom is None or inputs.val_activations is None:
        return False
    names = {id(tensor): name for name, tensor in (*model.named_parameters(), *model.named_buffers())}
    tuned = model.state_dict()
    held = (*inputs.bottom.parameters(), *inputs.bottom.buffers())
    return all(torch.equal(tuned[names[id(tensor)]], probe_state[names[id(tensor)]]) for tensor in held)


def _release_handed_activations(context: FitContext) -> None:
    """Free the probe's bottom activations when the stage they were for is not run (a resumed run had it done)."""
    handed, context.bottom_activations = context.bottom_activations, None
    if handed is not None:
        handed.release()


def _nothing() -> None:
    return None


def _choose_wise_alpha(
    model: BrainTumorNet, probe_state: dict[str, torch.Tensor], context: FitContext, cached: StageInputs | None
) -> dict[str, Any]:
    """WiSE-FT: keep the interpolation of probed and fine-tuned weights with the lowest validation loss.

    With ``cached`` (the last stage's inputs, its bottom unchanged since the probe) only the top and the head run,
    on the validation images' cached bottom activations: ``top(bottom(x))`` is bitwise ``backbone(x)``, so the
    losses are those of a pass over the images.
    """
    tuned_state = _copy_state(model)
    losses: dict[str, float] = {}
    precision = context.recipe.precision()
    for alpha in sorted(set(context.recipe.train.wise_alphas)):
        model.load_state_dict(interpolate_weights(probe_state, tuned_state, alpha))
        # The same validation cross-entropy as the rest of the run reports.
        if cached is not None and cached.top is not None and cached.val_activations is not None:
            features = encode_stored_views(cached.top, cached.val_activations, show_progress=False, precision=precision)
            metrics = head_validation_metrics(model, context.val_set, features[0], precision)
        else:
            metrics = validation_metrics(model, context.val_set, context.prep, precision)
        losses[f"{alpha:g}"] = metrics["loss"]
    best = min(losses, key=losses.__getitem__)
    model.load_state_dict(interpolate_weights(probe_state, tuned_state, float(best)))
    context.say(f"WiSE-FT: validation loss per alpha {losses}; keeping alpha {best}")
    return {"alpha": float(best), "val_loss_per_alpha": losses}
