from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

_DEFAULT = Path(__file__).resolve().parents[3] / "mesh" / "topology.yaml"


@cache
def load_topology(path: str | None = None) -> dict[str, Any]:
    """Load mesh/topology.yaml, or the file named by ``AISWA_TOPOLOGY``."""
    location = Path(path or os.environ.get("AISWA_TOPOLOGY") or _DEFAULT)
    try:
        return yaml.safe_load(location.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"topology file {location} not found; set AISWA_TOPOLOGY to mesh/topology.yaml"
        ) from None
