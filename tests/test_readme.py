"""The README's Python predictor example runs as written (with a saved tiny labeler as its run)."""
import re
from pathlib import Path

import numpy as np
import torch

from conftest import TINY_KV
from mal.modeling.labeler import LabelerConfig, build_labeler, save_labeler

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_predictor_example_runs(tmp_path, monkeypatch):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "MaskPredictor" in b)
    torch.manual_seed(0)
    save_labeler(build_labeler(LabelerConfig(**TINY_KV)).eval(), tmp_path / "runs" / "mal")
    monkeypatch.chdir(tmp_path)  # "runs/mal" as the README says
    scope = {"rgb": np.full((240, 320, 3), 128, np.uint8)}
    exec(compile(block, "README.md", "exec"), scope)
    masks, scores = scope["masks"], scope["scores"]
    assert masks.shape == (1, 240, 320) and masks.dtype == bool and masks[0].any() and 0 <= scores[0] <= 1


def test_readme_review_loop_commands_parse():
    """Every command of the README's review loop is one the CLI accepts as written."""
    import shlex

    from mal.cli import build_parser
    block = next(b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S) if "mal import" in b)
    lines = [ln for ln in block.replace("\\\n", " ").splitlines() if ln.startswith("mal ")]
    assert [ln.split()[1] for ln in lines] == ["train", "label", "show", "export", "import", "train", "label"]
    for ln in lines:
        args = build_parser().parse_args(shlex.split(ln)[1:])
        if args.command == "train" and args.masks:
            assert [str(m) for m in args.masks] == ["reviewed.json"]
