"""The example notebook in docs/ runs, for real, in a Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "docs" / "quickstart.ipynb"


def test_quickstart_notebook_runs() -> None:
    """Every cell of docs/quickstart.ipynb runs without error in an IPython kernel."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute(
        cwd=str(NOTEBOOK.parent)
    )
    outputs = [
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    ]
    joined = "\n".join(outputs)
    assert "streaming" in joined
    assert "hello again" in joined
    assert "'blue is my favourite'" in joined
    assert "'cancelled'" in joined
