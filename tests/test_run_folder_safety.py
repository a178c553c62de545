"""A run folder someone sends you is as safe to open as a checkpoint: its .hydra/overrides.yaml is plain data.

The scripts that score a run again (operating_point, blur_table, passes_table, objective_agreement) compose the
run's recorded command-line options. Lines added to that file once made them instantiate any callable (issue 29:
`+optimizer.a={_target_:pathlib.Path.write_text,...}` wrote a pickle, `+optimizer.b={_target_:torch.load,...}`
ran it); now every option that could name code is refused, naming the file and the line, before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.tools.rescoring import RunOptionError, read_run_options
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_rescoring import train_run_folder

PLAIN_OPTIONS = [
    "model.image_size=32",
    "masking.grid_sizes=[2,4]",
    "scoring=riad",
    "threshold=f1",
    "~logger",
    "+trainer.enable_checkpointing=false",
    "paths.cache_dir=../shared/data/cache",
    "+sweep_trial.storage='postgresql://user@dbhost:5432/optuna'",
    "dataset.val_anomalous=null",
]


def outside_config(folder: Path, group: str, marker: Path) -> str:
    """A config file outside this project's config folder, written into `folder`, as a `group` option's value
    (a path relative to the group's folder) whose node writes `marker`."""
    evil = folder / "evil.yaml"
    write = {
        "_target_": "pathlib.Path.write_text",
        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "x"],
    }
    # builtins.dict takes any keyword a tool adds, and the keys the run's options set on the node
    settable = {key.split("=")[0].split(".")[-1]: 1 for key in [*TINY, *TINY_SYNTHETIC] if key.startswith(group)}
    evil.write_text(yaml.safe_dump({"_target_": "builtins.dict", "written": write, **settable}))
    return f"{group}={os.path.relpath(evil.with_suffix(''), Path(CONFIG_DIR) / group)}"


def attack_lines(kind: str, node: str, folder: Path, marker: Path) -> list[str]:
    """Options an attacker appends to a run's overrides.yaml; each, when composed and instantiated, writes `marker`."""
    if kind == "pickle":  # the report's two lines: a text pickle calling os.system, then torch.load of it
        pickle_file, pickle_text = folder / "p.pkl", f"cos\nsystem\n(S'touch {marker}'\ntR."
        return [
            f"+{node}.a={{_target_:pathlib.Path.write_text,_args_:[{{_target_:pathlib.Path,_args_:['{pickle_file}']}},"
            f'"{pickle_text}"]}}',
            f"+{node}.b={{_target_:torch.load,f:'{pickle_file}',weights_only:false}}",
        ]
    if kind == "interpolation":  # a resolver that creates a node holding _target_ when the value is read
        created = f"{{_target_: pathlib.Path.write_text, _args_: [{{_target_: pathlib.Path, _args_: [{marker}]}}, x]}}"
        return [f"+{node}.b='${{oc.create:{created}}}'"]
    if kind == "outside_file":  # a config group's option that walks out of the project's config folder
        return [outside_config(folder, node, marker)]
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        (["+optimizer.a={_target_:os.system,_args_:[x]}"], 1, "its value holds _target_"),
        (["optimizer._target_=os.system"], 1, "sets _target_"),
        (["+dataset.a={x:{_partial_:true}}"], 1, "its value holds _partial_"),
        (["+dataset.x={_recursive_:false}"], 1, "its value holds _recursive_"),
        (["+dataset._convert_=all"], 1, "sets _convert_"),
        (["dataset.root=[1,{_args_:[2]}]"], 1, "its value holds _args_"),
        (["+optimizer.b='${oc.create:{_target_: os.system}}'"], 1, r"an interpolation \(\$\{\.\.\.\}\)"),
        (["+optimizer.c=${dataset}"], 1, "an interpolation"),
        ([r"+optimizer.b='\${oc.create:{_target_: os.system}}'"], 1, "an interpolation"),  # escaped in the file
        (["dataset.root=data/${oc.env:HOME}"], 1, "an interpolation"),
        (["+dataset@optimizer.a=mvtec"], 1, r"moves a config node \(@package\)"),
        (["optimizer=adam,sgd"], 1, "a sweep"),
        (["optimizer=../../../../tmp/evil"], 1, "is not an option of optimizer"),
        (["dataset=nonexistent"], 1, "is not an option of dataset"),
        (["dataset=[mvtec,../x]"], 1, "is not an option of dataset"),
        (["model.image_size=32", "optimizer.lr=0.1", "+x={_target_:os.system}"], 3, "its value holds _target_"),
        (["+x={a:"], 1, "not a command-line option"),
    ],
)
def test_a_run_folders_options_are_read_as_plain_data(tmp_path: Path, lines: list[str], line: int, reason: str) -> None:
    """The reader every rescoring tool uses: plain options pass as written; anything that could name code is one
    RunOptionError naming the file and the line of the first such option."""
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(PLAIN_OPTIONS))
    assert read_run_options(path) == PLAIN_OPTIONS
    path.write_text("".join(f"- {json.dumps(option)}\n" for option in lines))
    with pytest.raises(RunOptionError, match=rf"^{path}:{line}: .*{reason}.*refusing the run folder$"):
        read_run_options(path)
    path.write_text("- !!python/object/apply:os.system [touch x]\n")  # a YAML tag: refused, never built
    with pytest.raises(RunOptionError, match=rf"^{path}:1: not a command-line option"):
        read_run_options(path)
    path.write_text("optimizer: {_target_: os.system}\n")
    with pytest.raises(RunOptionError, match=rf"^{path}: expected a YAML list"):
        read_run_options(path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run folder (two grid sizes, F1 threshold) and the .hydra/ files a command-line run leaves."""
    return train_run_folder(tmp_path_factory.mktemp("sent_run"), tmp_path_factory.getbasetemp() / "cache")


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TOOLS: dict[str, Callable[[Path, Path], list[str]]] = {
    "operating_point": lambda run, images: [str(run), "--rules", "f1"],
    "blur_table": lambda run, images: [str(run), "--sigmas", "2"],
    "passes_table": lambda run, images: [str(run), "--grids", "2", "--input", str(images)],
    "objective_agreement": lambda run, images: [str(run), "--rescore", "validation_anomalies=real"],
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "interpolation", "outside_file"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_a_tool_refuses_a_run_folder_whose_options_name_code(
    trained_run: Path, tmp_path: Path, tool: str, kind: str
) -> None:
    """The attacker's lines appended to a sent run folder's overrides.yaml: each tool, run as a user runs it,
    stops with one line naming the file and the line, exit code 2, and nothing of the payload runs."""
    import shutil

    folder = tmp_path / "sent"
    shutil.copytree(trained_run, folder)
    marker = tmp_path / "marker"
    # where each tool instantiated the composed config before: every rescoring built the optimizer, and
    # objective_agreement only the dataset
    node = "dataset" if tool == "objective_agreement" else "optimizer"
    overrides = folder / ".hydra" / "overrides.yaml"
    first_line = len(overrides.read_text().splitlines()) + 1
    with overrides.open("a") as file:
        for option in attack_lines(kind, node, tmp_path, marker):
            file.write(f"- {json.dumps(option)}\n")
    before = snapshot(folder)
    images = trained_run.parent / "cache"  # the generated bottles the run trained on
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{tool}.py"), *TOOLS[tool](folder, images)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert not marker.exists(), f"the payload ran: {result.stderr[-2000:]}"
    assert not (tmp_path / "p.pkl").exists()
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"{overrides}:{first_line}: " in lines[0]
    assert "refusing the run folder" in lines[0]
    assert snapshot(folder) == before  # nothing in the folder written or removed
