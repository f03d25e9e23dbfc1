"""examples/quickstart.ipynb, run from top to bottom in a fresh kernel of this venv: every
cell must run without an error (nbclient raises CellExecutionError naming the cell)."""

import nbformat
from nbclient import NotebookClient

from conftest import DEFAULT_GGUF, ROOT, _missing

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
# the default corpus, where `glassbox fetch` puts it (beside the models)
CORPUS = DEFAULT_GGUF.parent.parent / "corpora" / "sotu"


def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path):
    if not DEFAULT_GGUF.exists():
        _missing(f"the default model is not fetched ({DEFAULT_GGUF}); run `glassbox fetch`")
    if not CORPUS.is_dir():
        _missing(f"the default corpus is not fetched ({CORPUS}); run `glassbox fetch`")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # the demo's own checks of what it printed
    assert "activations cached" in text
    assert "logit diff" in text and "share of the difference restored" in text
    assert "held-out: FVU" in text and "steered:" in text
