"""Adds the recipes `make tune` writes (<project root>/recipes/, PROJECT_ROOT or the working directory) to Hydra's
config search path, so `python -m anomaly_lab.train experiment=<written name>` finds recipes/experiment/<name>.yaml.

Only where the folder exists: Hydra warns about a search path entry that is not there. Shipped configs come first
(a recipe cannot shadow a shipped experiment: anomaly_lab.tune refuses such names).
"""

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def recipes_dir() -> Path:
    """<project root>/recipes: PROJECT_ROOT (as paths.root_dir) or the working directory."""
    return Path(os.environ.get("PROJECT_ROOT", ".")).resolve() / "recipes"


class RecipesSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folder = recipes_dir()
        if folder.is_dir():
            search_path.append(provider="anomaly_lab-recipes", path=f"file://{folder}")
