"""Where the Hydra configs live, for the entry points, the tools and the tests (no need to import train)."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped in the package (package-data)
