"""tune's folders go into Hydra overrides (dataset.normal_dir=<path>): a path Hydra would not read back as itself
is refused naming its key, before anything is composed or trained; an ordinary path with a space is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_lab import tune
from anomaly_lab.errors import UserError


@pytest.mark.parametrize("folder", ["good,2", "a=b", "batch [2]", "x${oc.env:HOME}", "it's"])
@pytest.mark.parametrize("key", ["data", "defects", "masks"])
def test_a_folder_hydra_cannot_take_is_refused_naming_its_key(tmp_path: Path, folder: str, key: str) -> None:
    odd = tmp_path / folder
    plain = {name: str(tmp_path / name) for name in ("data", "defects", "masks")}
    arguments = {**plain, key: str(odd), "minutes": "5"}
    with pytest.raises(UserError, match=rf"^{key}=.*cannot be a Hydra override value"):
        tune.parse_args([f"{name}={value}" for name, value in arguments.items()])


def test_a_folder_with_a_space_is_taken(tmp_path: Path) -> None:
    args = tune.parse_args([f"data={tmp_path / 'my bottles'}", "minutes=5"])
    assert args.data == (tmp_path / "my bottles").resolve()
