"""Where the project's files are, for code that runs from anywhere (pytest, `python -m`)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS = PROJECT_ROOT / "assets"  # the example images, real photos the tests run on
