"""Experiment tracking: MLflow by default (a local store, no server), ClearML on request, or none.

Both trackers are Lightning loggers, so per-epoch metrics flow through ``self.log`` as usual; the
recipe goes in as flattened parameters and the run's files (bundle, plots, report) as artifacts.

Example:
    >>> flatten_params({"train": {"learning_rate": 0.001}, "name": "x"})
    {'train.learning_rate': 0.001, 'name': 'x'}
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from braintumor.errors import BrainTumorError

TrackerName = Literal["mlflow", "clearml", "none"]
EXPERIMENT_NAME = "braintumor"
DEFAULT_MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
# MLflow's own warnings, re-issued as log records under its logger: shown like its other log lines, silenced with
# them (MLFLOW_LOGGING_LEVEL, or the CLI without --verbose).
_MLFLOW_WARNINGS = logging.getLogger("mlflow.warnings")
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


class TrackingError(BrainTumorError):
    """The tracker could not be set up (missing package, unreachable server)."""


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe sections to ``section.field`` keys, the shape trackers expect for parameters."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextmanager
def mlflow_warnings_to_log() -> Iterator[None]:
    """Turn the Python warnings raised inside the block into ``mlflow.warnings`` log records without colour codes.

    MLflow warns about things that do not apply here (an input example, type hints on a models-from-code entry
    whose signature is given), in ANSI colours that show up raw in logs and pipes.

    Example:
        >>> with mlflow_warnings_to_log():
        ...     warnings.warn("\x1b[33mcheck this\x1b[0m", UserWarning, stacklevel=1)
    """
    # The filters in force still apply: what they ignore is not recorded.
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:
            for item in caught:
                text = _ANSI_CODES.sub("", str(item.message)).strip()
                _MLFLOW_WARNINGS.warning("%s: %s", item.category.__name__, text)


def default_mlflow_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the working directory (no server)."""
    return os.environ.get(DEFAULT_MLFLOW_URI_ENV) or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_location(tracking_uri: str) -> str | None:
    # MLflow puts a SQLite store's artifacts in ./mlruns of whatever folder the process runs in;
    # keep them beside the database instead, so a store is one self-contained folder.
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    return None


class ClearMLLogger(Logger):
    """A Lightning logger on ClearML's SDK; with no server configured it runs in ClearML's offline mode."""

    def __init__(self, project: str, task_name: str) -> None:
        super().__init__()
        try:
            from clearml import Task
        except ImportError:
            raise TrackingError("--tracker clearml needs the clearml package: pip install clearml") from None
        configured = (
            any(os.environ.get(k) for k in ("CLEARML_API_HOST", "CLEARML_CONFIG_FILE"))
            or (Path.home() / "clearml.conf").is_file()
        )
        self.offline = not configured
        if self.offline:
            Task.set_offline(offline_mode=True)
        # ClearML's default reporter os.fork()s a monitor process; forking a process that already runs
        # torch and Lightning threads can deadlock (seen in the test suite). Report from threads instead
        # (the SDK's `sdk.development.report_use_subprocess: false`, set here for every run).
        Task._report_subprocess_enabled = False
        self.task = Task.init(
            project_name=project,
            task_name=task_name,
            reuse_last_task_id=False,
            auto_connect_frameworks=False,
            auto_resource_monitoring=False,
        )
        self._name = task_name

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return str(self.task.id)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.task.connect(dict(params), name="recipe")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        reporter = self.task.get_logger()
        for key, value in metrics.items():
            title, _, series = key.partition("_")
            reporter.report_scalar(title=title, series=series or title, value=float(value), iteration=step or 0)

    @rank_zero_only
    def log_artifact(self, path: Path, name: str | None = None) -> None:
        self.task.upload_artifact(name or path.name, artifact_object=str(path))

    def offline_folder(self) -> Path | None:
        return Path(self.task.get_offline_mode_folder()) if self.offline else None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.task.flush(wait_for_uploads=True)


def create_logger(
    tracker: TrackerName, run_name: str, *, tracking_uri: str | None = None, run_id: str | None = None
) -> Logger | None:
    """The Lightning logger for ``tracker``; ``run_id`` continues an MLflow run (resume)."""
    if tracker == "none":
        return None
    if tracker == "clearml":
        return ClearMLLogger(project=EXPERIMENT_NAME, task_name=run_name)
    try:
        from lightning.pytorch.loggers import MLFlowLogger
    except ImportError:  # pragma: no cover - lightning always ships it, mlflow may be missing
        raise TrackingError("MLflow tracking needs mlflow: pip install mlflow (or use --tracker none)") from None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingError("MLflow tracking needs mlflow: pip install mlflow (or use --tracker none)") from None
    uri = tracking_uri or default_mlflow_uri()
    return MLFlowLogger(
        experiment_name=EXPERIMENT_NAME,
        run_name=run_name,
        tracking_uri=uri,
        run_id=run_id,
        artifact_location=_artifact_location(uri),
    )


def describe_logger(tracker: TrackerName, logger: Logger | None) -> dict[str, Any]:
    """What a later process needs to find this run again (resume, ``braintumor runs``)."""
    if logger is None:
        return {"tracker": "none"}
    if isinstance(logger, ClearMLLogger):
        folder = logger.offline_folder()
        return {"tracker": "clearml", "task_id": logger.version, "offline_folder": str(folder) if folder else None}
    return {
        "tracker": tracker,
        "run_id": logger.run_id,
        "experiment_id": logger.experiment_id,
        "tracking_uri": logger._tracking_uri,
    }


def log_artifacts(logger: Logger | None, paths: list[Path]) -> None:
    """Upload files and folders that exist to the run (rank zero only)."""
    if logger is None:
        return
    from lightning.pytorch.loggers import MLFlowLogger

    for path in paths:
        if not path.exists():
            continue
        if isinstance(logger, MLFlowLogger):
            if path.is_dir():
                logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=path.name)
            else:
                logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, ClearMLLogger):
            logger.log_artifact(path)


def log_final_metrics(logger: Logger | None, metrics: Mapping[str, float]) -> None:
    """Headline numbers logged once at the end (e.g. ``test_accuracy`` after --evaluate)."""
    if logger is not None:
        logger.log_metrics(dict(metrics))
        logger.save()


def list_runs(tracking_uri: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent runs of the braintumor experiment with their headline metrics, newest first."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("listing runs needs mlflow: pip install mlflow") from None
    uri = tracking_uri or default_mlflow_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []  # no store yet: do not create an empty database just to list nothing
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    rows = []
    for run in runs:
        metrics = run.data.metrics
        rows.append(
            {
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "status": run.info.status,
                "started": run.info.start_time,
                "recipe": run.data.params.get("name", ""),
                "best_val_accuracy": metrics.get("best_val_accuracy"),
                "best_val_loss": metrics.get("best_val_loss"),
                "test_accuracy": metrics.get("test_accuracy"),
                "test_macro_f1": metrics.get("test_macro_f1"),
                "epochs": metrics.get("best_epoch"),
                "model_uri": run.data.tags.get(MODEL_URI_TAG),
            }
        )
    return rows


MODEL_URI_TAG = "braintumor.model_uri"
MODEL_NAME = "model"


def _model_requirements() -> list[str]:
    """The packages the pyfunc model imports, pinned to this environment (MLflow would infer them slowly)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in ("mlflow", "torch", "torchvision", "timm", "numpy", "pandas", "pillow", "safetensors", "pydicom"):
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def log_bundle_model(logger: Logger | None, bundle_dir: Path) -> str | None:
    """Log ``bundle_dir`` as the run's MLflow ``pyfunc`` model with a signature; returns its URI (None: no MLflow).

    The URI (``models:/<id>``) is also set as the run tag ``braintumor.model_uri`` so ``braintumor runs`` shows it.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        return None
    import mlflow

    from braintumor.bundle.store import read_bundle_config

    class_names = list(read_bundle_config(bundle_dir).class_names)
    mlflow.set_tracking_uri(logger._tracking_uri)
    # MLflow warns when the entry module defines its PythonModel class, and again while logging it.
    with mlflow_warnings_to_log():
        from braintumor.inference.mlflow_model import BUNDLE_ARTIFACT, ENTRY_FILE, signature

        # The fluent API logs models into the active run: make Lightning's run the active one for this call.
        with mlflow.start_run(run_id=logger.run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(ENTRY_FILE),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                signature=signature(class_names),
                pip_requirements=_model_requirements(),
            )
    logger.experiment.set_tag(logger.run_id, MODEL_URI_TAG, info.model_uri)
    return str(info.model_uri)


def register_model(tracking: Mapping[str, Any], name: str) -> tuple[str, str]:
    """Register a run's logged model under ``name`` in the MLflow registry; returns (model URI, version)."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("registering a model needs mlflow: pip install mlflow") from None
    uri, run_id = tracking.get("tracking_uri"), tracking.get("run_id")
    if not uri or not run_id:
        raise TrackingError("--register-model needs MLflow tracking (the default --tracker mlflow)")
    model_uri = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise TrackingError(f"run {run_id} has no logged model to register")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    version = mlflow.register_model(model_uri, name)
    return model_uri, str(version.version)
