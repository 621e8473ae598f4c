"""The quickstart notebook runs from top to bottom in a fresh folder and shows a prediction and images.

The notebook is executed with nbclient in the ``python3`` kernel (ipykernel in this environment), in a
temporary working directory, so everything it writes (demo data, the run, explanations, the evaluation)
stays there. Skips when the notebook tools (``braintumor[docs]``) are not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install 'braintumor[docs]')")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install 'braintumor[docs]')")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install 'braintumor[docs]')")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
CLASS_NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")


def _outputs(notebook: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    """The outputs of the code cells tagged ``tag``."""
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])
        for output in cell.get("outputs", [])
    ]


def test_the_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_quickstart_notebook_runs_and_shows_a_prediction_and_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(output.output_type != "error" for cell in code for output in cell.outputs)

    prediction_text = "".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for output in _outputs(notebook, "prediction")
    )
    assert any(name in prediction_text for name in CLASS_NAMES), prediction_text

    images = [output for output in _outputs(notebook, "images") if "image/png" in output.get("data", {})]
    assert len(images) >= 2  # a Grad-CAM figure and the evaluation's plots
    assert (work / "runs" / "demo" / "bundle").is_dir()
    assert (work / "eval" / "confusion_matrix.png").is_file()
