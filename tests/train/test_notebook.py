"""notebooks/quickstart.ipynb runs top to bottom on CPU with the tiny config (so it can't rot)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("PBRL_NOTEBOOK_CONFIG", "tiny")
  monkeypatch.setenv("PBRL_NOTEBOOK_STEPS", "2")
  monkeypatch.setenv("PBRL_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "largest configuration that fits:" in outputs
  assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
  assert os.path.exists(tmp_path / "run" / "report.md")
