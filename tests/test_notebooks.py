"""The notebooks run as they are in git (outputs stripped there), in their quick setting."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    from nbclient import NotebookClient

    zoo = pytest.importorskip("lowbit.zoo", reason="the bundled-model zoo is not built yet")
    from lowbit.data import AssetMissing

    try:  # the notebooks use the bundled model and its data
        zoo.load_task("fmnist-resnet", quick=True)
    except AssetMissing as e:
        pytest.skip(str(e))
    monkeypatch.setenv("LOWBIT_NOTEBOOK_QUICK", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
