"""The ``braintumor explain`` pipeline: images in, one PNG per image and a JSON summary out.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> work = Path(tempfile.mkdtemp())
    >>> bundle = tiny_bundle(work / "b")
    >>> root = make_synthetic_dataset(work / "data", per_class=1, test_per_class=2, size=32)
    >>> run = explain_paths(bundle, [root / "Testing" / "glioma_tumor"], work / "out", show_progress=False)
    >>> [Path(item["figure"]).suffix for item in run.images]
    ['.png', '.png']

An image the bundle's input guard flags has no diagnosis, so no heat map is drawn for it: it is listed in
``flagged`` and in the notes with the reason. With ``explain_flagged=True`` it is drawn anyway, under the title
"not a diagnosis: flagged (...)" and with ``predicted_class`` null in ``explanations.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from braintumor.bundle import Bundle, load_bundle
from braintumor.data.images import SkippedFile, load_image_rgb
from braintumor.errors import ImageDecodeError
from braintumor.explain.attributions import (
    Background,
    LabelledImages,
    background_images,
    fallback_baselines,
    labelled_images,
    shap_maps,
)
from braintumor.explain.defaults import DEFAULT_SANITY_IMAGES, DEFAULT_SHAP_SAMPLES
from braintumor.explain.explainer import METHODS, ROLLOUT_METHODS, Explainer
from braintumor.explain.gradcam import CAM_METHODS, ExplainError, class_activation_maps
from braintumor.explain.overlay import Panel, save_explanation_figure
from braintumor.explain.sanity import (
    HEAD,
    DeletionSettings,
    ExplainFunction,
    RefitPart,
    deletion_curve,
    label_randomisation_test,
    model_randomisation_test,
    random_deletion_scores,
)
from braintumor.explain.transformer import (
    attention_rollout,
    block_inputs,
    blocks_onwards,
    find_transformer,
    from_block,
)
from braintumor.inference.predictor import GuardVerdicts, expand_inputs
from braintumor.inference.volume_outputs import FLAG_REASON
from braintumor.io import write_json_atomic
from braintumor.progress import progress_bar

# The label test's scope for a network trained end to end: only its head learns the shuffled labels (a vision
# transformer's blocks that a method reads learn them too).
HEAD_ONLY = "head only"
LAST_BLOCK_AND_HEAD = "last block and head"
EVERY_BLOCK_AND_HEAD = "every block and head"
# Re-fitting every block costs a full forward and backward pass per step (seconds for 128 images of a 12-block
# DeiT-Tiny at 128 px on 2 CPU cores), so that test memorises fewer images in fewer steps, at a learning rate
# suited to transformer blocks rather than the head's.
EVERY_BLOCK_REFIT_IMAGES, EVERY_BLOCK_REFIT_STEPS, EVERY_BLOCK_REFIT_LR = 32, 100, 1e-3
# Rollout reads the attention weights alone: a test that re-fits only the head cannot change its maps.
ROLLOUT_LABEL_NOTE = "rollout does not read the head, so a head-only re-fit cannot change its maps"


@dataclass
class ExplainRun:
    """What ``explain_paths`` wrote: one entry per image, the sanity numbers, skipped files and notes."""

    out_dir: Path
    images: list[dict[str, Any]]
    sanity: dict[str, Any] | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Images the input guard flagged and that were not drawn: path, flag_reason, ood_score.
    flagged: list[dict[str, Any]] = field(default_factory=list)


def parse_methods(method: str) -> list[str]:
    """``gradcam``, ``gradcam++``, ``shap``, ``rollout``, a comma list of them, or ``all``.

    ``all`` lists every method; :func:`explain_paths` leaves out those that do not apply to the bundle's
    network (rollout for a CNN) and says so in its notes.
    """
    if method == "all":
        return list(METHODS)
    chosen = [part.strip().lower() for part in method.split(",") if part.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ExplainError(f"unknown method {method!r}; choose from {', '.join(METHODS)} or all")
    return list(dict.fromkeys(chosen))


def method_explain_function(
    explainer: Explainer, method: str, background: Background | None = None, n_samples: int = 32
) -> ExplainFunction:
    """``explain(model, inputs, targets)`` for the sanity checks: the same method on any copy of the network."""
    if method in CAM_METHODS:

        def cam(model: torch.nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
            return class_activation_maps(model, model.get_submodule(explainer.layer_name), inputs, targets, method)

        return cam

    if method in ROLLOUT_METHODS:

        def rollout(model: torch.nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
            return attention_rollout(model, inputs)

        return rollout

    def shap(model: torch.nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
        if background is not None and background.images is not None:
            return shap_maps(model, inputs, targets, explainer.transform(background.images), n_samples=n_samples)
        baselines = [fallback_baselines(single, explainer.black) for single in inputs]
        return shap_maps(model, inputs, targets, baselines, n_samples=n_samples)

    return shap


def cam_grid(explainer: Explainer, inputs: torch.Tensor) -> tuple[int, int]:
    """The spatial size ``(h, w)`` of the Grad-CAM layer's output for these inputs (a transformer's patch grid)."""
    grid = explainer.map_grid("gradcam", inputs)
    assert grid is not None
    return grid


def sanity_checks(
    explainer: Explainer,
    inputs: torch.Tensor,
    targets: Sequence[int],
    methods: Sequence[str] = ("gradcam",),
    *,
    background: Background | None = None,
    n_samples: int = 32,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
    on_method_done: Callable[[str], None] | None = None,
    labelled: LabelledImages | None = None,
) -> dict[str, Any]:
    """Model randomisation test, label randomisation test (with ``labelled`` images) and deletion curve for each
    method, as JSON-ready numbers.

    The random-order deletion curve uses random maps with the method's granularity (the Grad-CAM layer's
    grid, a transformer's patch grid for rollout, or single pixels for SHAP) and is computed once per granularity.
    """
    results: dict[str, Any] = {
        "n_images": len(inputs),
        "layer": explainer.layer_name,
        "deletion_steps": steps,
        "random_orders": random_orders,
        "methods": {},
    }
    random_by_grid: dict[tuple[int, int] | None, np.ndarray] = {}
    label_inputs: dict[bool, tuple[torch.Tensor, torch.Tensor, str, RefitPart] | str] = {}  # by "is rollout"
    for method in methods:
        grid = explainer.map_grid(method, inputs)
        settings = DeletionSettings(
            steps=steps, random_orders=random_orders, grid=grid, seed=seed, temperature=explainer.temperature
        )
        if grid not in random_by_grid:
            random_by_grid[grid] = random_deletion_scores(explainer.model, inputs, targets, explainer.black, settings)
        explain = method_explain_function(explainer, method, background, n_samples)
        maps = explain(explainer.model, inputs, targets)
        randomisation = model_randomisation_test(explainer.model, inputs, targets, explain, seed=seed, original=maps)
        deletion = deletion_curve(
            explainer.model, inputs, targets, maps, explainer.black, settings, random_scores=random_by_grid[grid]
        )
        results["methods"][method] = {"randomisation": randomisation.to_dict(), "deletion": deletion.to_dict()}
        kind = method == "rollout"
        if kind not in label_inputs:
            label_inputs[kind] = _label_test_inputs(explainer, labelled, method)
        shuffled = label_inputs[kind]
        if isinstance(shuffled, str):
            results["label_randomisation_note"] = shuffled
        else:
            features, labels, scope, refit = shuffled
            label_test = label_randomisation_test(
                explainer.model, inputs, targets, explain, features, labels,
                scope=scope, seed=seed, original=maps, refit=refit,
            )  # fmt: skip
            results["methods"][method]["label_randomisation"] = label_test.to_dict()
            if method == "rollout" and refit is HEAD:
                results["methods"][method]["label_randomisation"]["note"] = ROLLOUT_LABEL_NOTE
        if on_method_done is not None:
            on_method_done(method)
    return results


def _label_test_inputs(
    explainer: Explainer, labelled: LabelledImages | None, method: str
) -> tuple[torch.Tensor, torch.Tensor, str, RefitPart] | str:
    """What the label test of ``method`` re-fits, on which inputs of the labelled images, their labels and the
    test's scope; or why there is no test.

    A frozen backbone that no stage fine-tuned learnt nothing from the labels: the head is all training fitted. A
    vision transformer trained (or fine-tuned) end to end re-fits its head with its last block for Grad-CAM (what
    it reads), and with every block for attention rollout: rollout multiplies every block's attention, and after
    a dozen blocks its rows nearly agree, so a re-fitted last block cannot move it. Another network trained end
    to end re-fits its head.
    """
    if labelled is None:
        return "no label randomisation test: no labelled images were given"
    if labelled.images is None or labelled.labels is None:
        return labelled.note or "no label randomisation test: no labelled images"
    model = explainer.model
    if not isinstance(getattr(model, "head", None), torch.nn.Module):
        return "no label randomisation test for an ensemble: explain a member bundle for it"
    transformer = find_transformer(model)
    fine_tuned = bool(explainer.bundle.config.recipe.train.finetune_stages)
    with torch.no_grad():
        if transformer is not None and (fine_tuned or not model.frozen_backbone):
            if method != "rollout":
                batches = _batches(explainer, labelled.images)
                tokens = torch.cat([block_inputs(transformer, part).float() for part in batches])
                return tokens, labelled.labels, LAST_BLOCK_AND_HEAD, transformer_refit()
            # Evenly spaced, so that the classes stay mixed whatever order the labelled images come in; only those
            # images go through the network.
            keep = torch.linspace(0, len(labelled.labels) - 1, EVERY_BLOCK_REFIT_IMAGES).long().unique()
            batches = _batches(explainer, labelled.images[keep])
            tokens = torch.cat([block_inputs(transformer, part, 0).float() for part in batches])
            return tokens, labelled.labels[keep], EVERY_BLOCK_AND_HEAD, transformer_refit(0)
        features = torch.cat([model.forward_features(part).float() for part in _batches(explainer, labelled.images)])
    scope = "head (all that training fitted)" if model.frozen_backbone and not fine_tuned else HEAD_ONLY
    return features, labelled.labels, scope, HEAD


def _batches(explainer: Explainer, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """uint8 images as the network's normalised inputs, 32 at a time."""
    return explainer.to_inputs(images).split(32)


def transformer_refit(first: int = -1) -> RefitPart:
    """A transformer's blocks from ``first`` on (default the last), its final norms and the head, re-fitted on the
    tokens entering block ``first``."""
    parts = RefitPart(
        lambda model: [*blocks_onwards(model.backbone, first), model.head],
        lambda model, tokens: model.forward_head(from_block(model.backbone, tokens, first)),
    )
    if first == 0:
        return replace(parts, steps=EVERY_BLOCK_REFIT_STEPS, learning_rate=EVERY_BLOCK_REFIT_LR)
    return parts


def plot_deletion_curves(sanity: dict[str, Any], path: Path) -> Path:
    """Mean class probability against the deleted fraction: one line per method and the shared random order."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (method, values) in enumerate(sanity["methods"].items()):
        deletion = values["deletion"]
        axis.plot(
            deletion["fractions"],
            deletion["attributed_scores"],
            color=f"C{index}",
            marker="o",
            markersize=3,
            label=f"{method}: most attributed first (AUC {deletion['auc_attributed']:.3f})",
        )
    drawn: set[str] = set()
    for index, values in enumerate(sanity["methods"].values()):
        deletion = values["deletion"]
        grid = deletion.get("random_grid")
        name = f"random {grid[0]}x{grid[1]} maps" if grid else "random pixels"
        if name in drawn:
            continue  # methods on the same grid share one random reference curve
        drawn.add(name)
        axis.plot(
            deletion["fractions"],
            deletion["random_scores"],
            color="black" if index == 0 else "grey",
            linestyle="--" if index == 0 else ":",
            label=f"{name} (AUC {deletion['auc_random']:.3f})",
        )
    axis.set(
        xlabel="fraction of pixels deleted (set to black)",
        ylabel="probability of the explained class",
        title=f"Deletion curves ({sanity['n_images']} images)",
        ylim=(0, 1.02),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _figure_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per image, or ``<folder>-<stem>.png`` where stems repeat (image(1).jpg in every class folder)."""

    def clean(text: str) -> str:
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "image"

    stems = [path.stem for path in paths]
    names: list[str] = []
    used: set[str] = set()
    for path in paths:
        base = clean(path.stem) if stems.count(path.stem) == 1 else f"{clean(path.parent.name)}-{clean(path.stem)}"
        name, counter = f"{base}.png", 2
        while name in used:
            name, counter = f"{base}-{counter}.png", counter + 1
        used.add(name)
        names.append(name)
    return names


def _checked_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` as a list, or an :class:`ExplainError` naming the first unknown one."""
    chosen = list(methods)
    for method in chosen:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose from {', '.join(METHODS)} or all")
    return chosen


def _applicable_methods(explainer: Explainer, methods: list[str]) -> tuple[list[str], str | None]:
    """``methods`` for this network, and a note when ``all`` of them were asked and some do not apply.

    A method asked for by name that does not apply (rollout for a CNN) is an error that says which do.
    """
    available = explainer.methods_available()
    missing = [method for method in methods if method not in available]
    if not missing:
        return methods, None
    if set(methods) == set(METHODS):  # "all": every method this network has
        kept = [method for method in methods if method in available]
        return kept, f"{', '.join(missing)} left out: it applies to vision transformers only"
    backbone = type(explainer.model.backbone).__name__
    raise ExplainError(
        f"{', '.join(missing)} needs a vision transformer (attention blocks); this bundle's backbone is {backbone}, "
        f"a convolutional network: choose from {', '.join(available)}"
    )


def _fixed_targets(explainer: Explainer, target: str | None) -> list[int] | None:
    """The class indices explained on every image, or ``None`` to explain each image's predicted class."""
    if target == "all":
        return list(range(len(explainer.class_names)))
    if target is not None and target != "predicted":
        return [explainer.class_index(target)]
    return None


@dataclass(frozen=True)
class _ImagePlan:
    """How every image of a run is explained: methods, classes, SHAP background and the figures' note."""

    methods: list[str]
    fixed_targets: list[int] | None  # None: each image's predicted class
    background: Background | None
    shap_samples: int
    note: str | None
    # The input guard's ood_score of uint8 images [N, 3, S, S] (None: the bundle has no guard).
    guard_scores: Callable[[torch.Tensor], GuardVerdicts | None] = lambda _: None
    explain_flagged: bool = False


@dataclass(frozen=True)
class _Verdict:
    """The input guard on one image: its score, and the reason it has no diagnosis (None: not flagged)."""

    ood_score: float | None
    flag_reason: str | None

    @property
    def flagged(self) -> bool:
        return self.flag_reason is not None


def guard_scorer(bundle: Bundle) -> Callable[[torch.Tensor], GuardVerdicts | None]:
    """The input guard's verdicts on uint8 images (score and reason), computed as ``predict`` computes them."""
    if bundle.guard is None:
        return lambda _: None
    from braintumor.inference.predictor import Predictor

    predictor = Predictor(bundle)
    return lambda uint8: predictor.run_uint8_checked(uint8)[1]


def _verdict(plan: _ImagePlan, uint8: torch.Tensor) -> _Verdict:
    verdicts = plan.guard_scores(uint8)
    if verdicts is None:
        return _Verdict(None, None)
    score = float(verdicts.ood_score[0])
    flagged = not np.isfinite(score) or verdicts.flagged(0)
    return _Verdict(score, (verdicts.flag_reason(0) or FLAG_REASON) if flagged else None)


@dataclass(frozen=True)
class _Explained:
    """One explained image: its ``explanations.json`` entry, its model-size pixels and its sanity-check class."""

    record: dict[str, Any]
    uint8: torch.Tensor
    sanity_target: int


def _panel_rows(
    explainer: Explainer, inputs: torch.Tensor, probabilities: torch.Tensor, targets: list[int], plan: _ImagePlan
) -> list[list[Panel]]:
    """One row of panels per method, one panel per explained class."""
    rows: list[list[Panel]] = []
    for method in plan.methods:
        batch = inputs.expand(len(targets), -1, -1, -1)
        maps = explainer.maps(batch, targets, method, background=plan.background, n_samples=plan.shap_samples)
        rows.append(
            [
                Panel(
                    method,
                    explainer.class_names[t],
                    maps[i].numpy(),
                    f"{method}: {explainer.class_names[t]} (p={float(probabilities[t]):.2f})",
                )
                for i, t in enumerate(targets)
            ]
        )
    return rows


def _figure_title(explainer: Explainer, path: Path, probabilities: torch.Tensor, verdict: _Verdict) -> str:
    """``predicted <class> (p)``, or ``not a diagnosis: flagged (<reason>)`` for an image the guard flagged."""
    predicted = int(probabilities.argmax())
    if verdict.flagged:
        answer = f"not a diagnosis: flagged ({verdict.flag_reason}, ood_score {verdict.ood_score:.2f})"
    else:
        answer = f"predicted {explainer.class_names[predicted]} ({float(probabilities[predicted]):.1%})"
    return f"{path.parent.name}/{path.name}: {answer} - {explainer.bundle.name}, layer {explainer.layer_name}"


def _explain_image(
    explainer: Explainer, path: Path, image: Image.Image, figure: Path, plan: _ImagePlan, verdict: _Verdict
) -> _Explained:
    """Explain one decoded image and save its figure."""
    names = explainer.class_names
    uint8 = explainer.to_uint8([image])
    inputs = explainer.to_inputs(uint8)
    probabilities = explainer.probabilities(inputs)[0]
    predicted = int(probabilities.argmax())
    targets = plan.fixed_targets if plan.fixed_targets is not None else [predicted]
    rows = _panel_rows(explainer, inputs, probabilities, targets, plan)
    save_explanation_figure(figure, image, rows, _figure_title(explainer, path, probabilities, verdict), note=plan.note)
    record = {
        "path": str(path),
        "figure": str(figure),
        "predicted_class": None if verdict.flagged else names[predicted],
        "probabilities": {name: float(p) for name, p in zip(names, probabilities.tolist(), strict=True)},
        "targets": [names[t] for t in targets],
        "methods": plan.methods,
        "flagged": None if verdict.ood_score is None else verdict.flagged,
        "flag_reason": verdict.flag_reason,
        "ood_score": verdict.ood_score,
    }
    # With several fixed classes the sanity checks explain the predicted one, as without a target.
    several = plan.fixed_targets is None or len(plan.fixed_targets) > 1
    return _Explained(record, uint8[0], predicted if several else targets[0])


def _explain_images(
    explainer: Explainer, paths: list[Path], plan: _ImagePlan, run: ExplainRun, keep: int, show_progress: bool
) -> list[_Explained]:
    """Explain every decodable path into ``run`` (undecodable ones are skipped); returns the first ``keep``."""
    figure_names = dict(zip(paths, _figure_names(paths), strict=True))
    kept: list[_Explained] = []
    with progress_bar(show_progress) as progress:
        task = progress.add_task("Explaining", total=len(paths))
        for path in paths:
            progress.advance(task)
            try:
                image = load_image_rgb(path)
            except ImageDecodeError as error:
                run.skipped.append(SkippedFile(str(path), error.reason))
                continue
            verdict = _verdict(plan, explainer.to_uint8([image]))
            if verdict.flagged and not plan.explain_flagged:
                _list_flagged(run, path, verdict)
                continue
            explained = _explain_image(explainer, path, image, run.out_dir / figure_names[path], plan, verdict)
            run.images.append(explained.record)
            if len(kept) < keep and not verdict.flagged:  # the sanity checks explain diagnoses only
                kept.append(explained)
    return kept


def _list_flagged(run: ExplainRun, path: Path, verdict: _Verdict) -> None:
    """A flagged image is listed with its reason, not drawn."""
    run.flagged.append({"path": str(path), "flag_reason": verdict.flag_reason, "ood_score": verdict.ood_score})
    run.notes.append(
        f"{path}: no heat map, not a diagnosis: flagged ({verdict.flag_reason}, ood_score {verdict.ood_score:.2f}); "
        "explain_flagged (--explain-flagged) draws it anyway"
    )


def _sanity_on(
    explainer: Explainer, kept: list[_Explained], plan: _ImagePlan, out_dir: Path, show_progress: bool
) -> dict[str, Any]:
    """Run :func:`sanity_checks` on the kept images and write ``sanity.json`` and ``deletion_curves.png``."""
    labelled = labelled_images(explainer.bundle)
    with progress_bar(show_progress) as progress:
        task = progress.add_task(f"Sanity checks ({len(kept)} images)", total=len(plan.methods))
        sanity = sanity_checks(
            explainer,
            explainer.to_inputs(torch.stack([item.uint8 for item in kept])),
            [item.sanity_target for item in kept],
            plan.methods,
            background=plan.background,
            n_samples=plan.shap_samples,
            on_method_done=lambda _: progress.advance(task),
            labelled=labelled,
        )
    write_json_atomic(out_dir / "sanity.json", sanity)
    plot_deletion_curves(sanity, out_dir / "deletion_curves.png")
    return sanity


def explain_paths(
    bundle: Bundle | Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    methods: Sequence[str] = ("gradcam",),
    target: str | None = None,
    layer: str | None = None,
    background_dir: Path | str | None = None,
    shap_samples: int = DEFAULT_SHAP_SAMPLES,
    sanity: bool = False,
    sanity_images: int = DEFAULT_SANITY_IMAGES,
    show_progress: bool = True,
    explain_flagged: bool = False,
) -> ExplainRun:
    """Explain every decodable image under ``inputs`` and write ``<out_dir>/<image>.png`` + ``explanations.json``.

    ``target`` is a class name, ``"all"`` (every class), or ``None``/``"predicted"`` for the predicted
    class. With ``sanity``, the model and label randomisation tests and the deletion curve run on the first
    ``sanity_images`` of these images (explaining their predicted class, or the named one) and go to
    ``sanity.json`` and ``deletion_curves.png``. An image the input guard flags is not drawn (it is listed in
    ``flagged`` and the notes) unless ``explain_flagged``; the sanity checks never use flagged images.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_dir = Path(out_dir)
    methods = _checked_methods(methods)
    explainer = Explainer(bundle, layer=layer)
    methods, left_out = _applicable_methods(explainer, methods)
    fixed_targets = _fixed_targets(explainer, target)
    paths = expand_inputs(inputs)
    run = ExplainRun(out_dir, [])
    background: Background | None = None
    if "shap" in methods:
        background = background_images(bundle, background_dir=background_dir)
        if background.note:
            run.notes.append(background.note)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = "; ".join(run.notes) or None
    plan = _ImagePlan(methods, fixed_targets, background, shap_samples, note, guard_scorer(bundle), explain_flagged)
    if left_out:  # said once in the run's notes, not on every figure
        run.notes.append(left_out)
    kept = _explain_images(explainer, paths, plan, run, sanity_images, show_progress)
    if sanity and kept:
        run.sanity = _sanity_on(explainer, kept, plan, out_dir, show_progress)
        if "label_randomisation_note" in run.sanity:
            run.notes.append(run.sanity["label_randomisation_note"])
    write_json_atomic(
        out_dir / "explanations.json",
        {
            "bundle": str(bundle.path),
            "layer": explainer.layer_name,
            "methods": methods,
            "shap_background": background.source if background is not None else None,
            "notes": run.notes,
            "images": run.images,
            "flagged": run.flagged,
            "skipped": [vars(s) for s in run.skipped],
            "sanity": run.sanity,
        },
    )
    return run


def summarise_sanity(sanity: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows ``(method, model randomisation, label randomisation, deletion)`` in words and numbers, for the
    terminal and the report."""
    rows = []
    for method, values in sanity["methods"].items():
        rand, deletion = values["randomisation"], values["deletion"]
        labels = values.get("label_randomisation")
        rows.append(
            (
                method,
                f"mean |rank corr.| {rand['mean_abs_rank_correlation']:.3f} "
                f"({'pass' if rand['passed'] else 'FAIL'}: < {rand['threshold']})",
                (
                    f"mean |rank corr.| {labels['mean_abs_rank_correlation']:.3f} "
                    f"({'pass' if labels['passed'] else 'FAIL'}: < {labels['threshold']}; {labels['scope']})"
                    + (f"; {labels['note']}" if labels.get("note") else "")
                    if labels
                    else "not run (see notes)"
                ),
                f"AUC {deletion['auc_attributed']:.3f} vs random {deletion['auc_random']:.3f} "
                f"({'pass' if deletion['passed'] else 'FAIL'}; faster on "
                f"{deletion['images_faster_than_random']} of {len(deletion['per_image_auc_random'])} images)",
            )
        )
    return rows
