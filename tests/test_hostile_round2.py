"""A hostile but honest user's second look at issue 29's fixes: inputs the first fixes did not foresee.

Each test causes the fault as a user or an attacker would: a crafted file in a run folder, the real tool's process.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.tools.rescoring import MAX_OPTIONS_BYTES, RunOptionError, read_run_options
from tests.conftest import TINY, TINY_SYNTHETIC, compose_config


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("x=" + "9" * 5000, "Exceeds the limit"),  # Python's int() refuses 4300+ digits: a ValueError, not Hydra's
        ("x=" + "[" * 3000 + "]" * 3000, "RecursionError|recursion"),  # the parser's recursion
    ],
)
def test_an_option_the_parser_cannot_read_is_one_run_option_error(tmp_path: Path, option: str, reason: str) -> None:
    """An option that crashes Hydra's override parser outside its own errors is refused like any other, naming the
    file and the line (it was a 48-line ValueError traceback, exit 1)."""
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(["model.image_size=32", option]))
    with pytest.raises(RunOptionError, match=rf"^{path}:2: .*not a command-line option \(.*({reason})"):
        read_run_options(path)


def test_a_huge_overrides_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """An overrides.yaml far larger than any run's options (11 MB of one valid line repeated took 270 s and
    880 MB before) is refused from its size, naming the file."""
    path = tmp_path / "overrides.yaml"
    line = "- model.image_size=32\n"
    path.write_text(line * (MAX_OPTIONS_BYTES // len(line) + 1))
    with pytest.raises(RunOptionError, match=rf"^{path}: \d+ bytes, more than a run's command-line options"):
        read_run_options(path)
    path.write_text(line * 50)  # a long but real list still reads
    assert read_run_options(path) == ["model.image_size=32"] * 50


@pytest.mark.slow
def test_operating_point_on_a_run_folder_with_an_unparsable_option_is_one_line(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The tool's real process on a sent run folder whose overrides.yaml holds a 5000-digit number: one line naming
    the file and the line, exit 2."""
    from anomaly_lab.train import run

    out = tmp_path_factory.mktemp("sent_run")
    options = [*TINY, *TINY_SYNTHETIC, f"paths.cache_dir={tmp_path_factory.getbasetemp() / 'cache'}", "threshold=f1"]
    run(compose_config([*options, f"paths.output_dir={out}"]))
    (out / ".hydra").mkdir()
    overrides = out / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([*options, "x=" + "9" * 5000]))
    folder = tmp_path / "sent"
    shutil.copytree(out, folder)
    overrides = folder / ".hydra" / "overrides.yaml"
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "scripts" / "operating_point.py"),
            str(folder),
            "--rules",
            "f1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"{overrides}:{len(options) + 1}: " in lines[0] and "refusing the run folder" in lines[0]


def rename_and_halve(graph: Any) -> None:
    """An attacker's edit that keeps every initializer of the model's names bit for bit: the nodes read halved
    copies under new names, the originals stay, unused (onnxruntime warns once per unused initializer)."""
    for tensor in list(graph.graph.initializer):
        if tensor.name.startswith("net."):
            halved = onnx.numpy_helper.to_array(tensor) / 2
            graph.graph.initializer.append(onnx.numpy_helper.from_array(halved, f"{tensor.name}_copy"))
    for node in graph.graph.node:
        node.input[:] = [f"{name}_copy" if name.startswith("net.") else name for name in node.input]


def add_external_constant(graph: Any) -> None:
    """An initializer of no parameter's name whose data is to be read from another file (here /etc/passwd)."""
    tensor = onnx.TensorProto(name="stolen", data_type=onnx.TensorProto.UINT8, dims=[16])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph.graph.initializer.append(tensor)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (rename_and_halve, r"its (anomaly_map|score) on random images is [0-9.e-]+ off the model's"),
        (add_external_constant, r"it keeps stolen in an external file"),
    ],
)
def test_a_graph_tampered_around_the_weight_check_is_refused_in_one_line(
    tiny_run: Path, tmp_path: Path, tamper: Callable[[Any], None], reason: str
) -> None:
    """predict backend=onnxruntime, the real process, on a graph beside the checkpoint whose metadata and
    parameter-named initializers are all kept: one line (no onnxruntime warnings before it), exit 2, nothing
    written. Before: the renamed copies were refused after 100 lines of onnxruntime warnings, and an external
    initializer of another name was not looked at (exit 0)."""
    from anomaly_lab.export import run as export_run

    checkpoint = tmp_path / "run" / "model.ckpt"
    checkpoint.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", checkpoint)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export_run(compose(config_name="export", overrides=[f"ckpt_path={checkpoint}", "check=false"]))
    graph_path = checkpoint.with_suffix(".onnx")
    graph = onnx.load(str(graph_path))
    tamper(graph)
    onnx.save(graph, str(graph_path))
    images = tiny_run.parent / "cache"
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "anomaly_lab.predict", f"ckpt_path={checkpoint}", f"input={images}"]
    command += [f"output={tmp_path / 'out'}", "backend=onnxruntime", "device=cpu", "progress=false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"GraphMismatchError: onnx {graph_path} is not {checkpoint}'s model")
    assert re.search(reason, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def small_bottles(folder: Path, count: int) -> list[Path]:
    """`count` MVTec bottle training images at 64 px, written into folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((DATA / "train" / "good").glob("*.png"))[:count]
    for source in sources:
        Image.open(source).resize((64, 64)).save(folder / source.name)
    return [folder / source.name for source in sources]


def train_process(tmp_path: Path, options: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.train` as a user runs it, one tiny epoch on the CPU."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "anomaly_lab.train", *TINY, *options, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


DATA = Path("/work/shared/data/mvtec_bottle")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="needs the MVTec bottle data")


@pytest.mark.slow
@needs_data
def test_one_file_under_two_names_in_the_normal_folder_is_refused(tmp_path: Path) -> None:
    """A hard link of a normal image under a second name in dataset.normal_dir: the split put one name in training
    and the other in the test set (the test scored a training image, silently, exit 0). Now one line, exit 2."""
    normal = small_bottles(tmp_path / "normal", 12)
    anomalous = small_bottles(tmp_path / "anomalous", 2)
    for index in range(6):
        os.link(normal[index], normal[0].parent / f"copy{index}.png")
    result = train_process(
        tmp_path,
        [
            "dataset=folder",
            f"dataset.normal_dir={normal[0].parent}",
            f"dataset.abnormal_dir={anomalous[0].parent}",
            "dataset.test_fraction=0.5",
        ],
    )
    lines = [line for line in result.stderr.strip().splitlines() if line != "Seed set to 0"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"dataset.normal_dir={normal[0].parent}: {normal[0].name} and copy0.png are one file" in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
@needs_data
def test_a_training_image_linked_into_the_mvtec_test_folder_is_refused(tmp_path: Path) -> None:
    """dataset=mvtec whose test/good holds a hard link of a train/good image: the test scored an image the model
    trained on (exit 0, nothing said). Now one line naming both paths, exit 2."""
    root = tmp_path / "bottle"
    train = small_bottles(root / "train" / "good", 10)
    small_bottles(root / "test" / "good", 2)
    os.link(train[3], root / "test" / "good" / "linked.png")
    result = train_process(tmp_path, ["dataset=mvtec", f"dataset.root={root}"])
    lines = [line for line in result.stderr.strip().splitlines() if line != "Seed set to 0"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"{train[3]} and {root / 'test' / 'good' / 'linked.png'} are one file" in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of trainer=gpu on a machine without a GPU")
def test_trainer_gpu_without_a_gpu_is_one_clear_line(tmp_path: Path) -> None:
    """trainer=gpu where torch sees no GPU said Lightning's "Error in call to target ... MisconfigurationException
    ('No supported gpu backend found!') full_key: trainer"; now what is wrong and what to use, and no run folder."""
    result = train_process(tmp_path, ["dataset=synthetic_bottles", *TINY_SYNTHETIC, "trainer=gpu"])
    lines = [line for line in result.stderr.strip().splitlines() if line != "Seed set to 0"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines == [
        "ConfigError: trainer.accelerator=gpu: torch sees no CUDA GPU on this machine; use trainer=cpu, or "
        "trainer=auto (the default: the GPU when there is one, else the CPU) [HYDRA_FULL_ERROR=1 shows the traceback]"
    ]
    assert not (tmp_path / "run").exists()


def test_a_missing_category_root_names_that_categorys_folder(tmp_path: Path) -> None:
    """dataset=bottles dataset.category=screw without a root: the example path is the screw's, not the bottle's."""
    from anomaly_lab.errors import ConfigError
    from anomaly_lab.train import prepare_module

    cfg = compose_config(["dataset=bottles", "dataset.category=screw", f"dataset.root={tmp_path / 'mvtec_screw'}"])
    with pytest.raises(
        ConfigError, match=r"^dataset\.root=.*not found; .*e\.g\. dataset\.root=\.\./shared/data/mvtec_screw,"
    ):
        prepare_module(cfg)


def can_mount_a_tmpfs() -> bool:
    """Whether a process may mount a tmpfs in a mount namespace of its own (unshare -rm)."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], check=False)
    except FileNotFoundError:  # no unshare (util-linux)
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_a_tmpfs(), reason="no mount namespaces here (unshare -rm) for a small disk")
def test_a_disk_full_before_the_first_checkpoint_advises_what_works(tmp_path: Path) -> None:
    """A real 400 KB tmpfs holds a new run: its first checkpoint meets the full disk. The line said "free space,
    then continue the run with resume=true", but there is no last.ckpt (resume=true: "no checkpoint") and a plain
    rerun is refused (the folder holds a run). It now says overwrite=true, which, once the disk has room, works."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    options = [*TINY, "dataset=synthetic_bottles", *TINY_SYNTHETIC, f"paths.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "-m", "anomaly_lab.train", *options, f"hydra.run.dir={disk / 'run'}"]
    script = f"""
        mount -t tmpfs -o size=400k tmpfs {disk} || exit 97
        {shlex.join(command)} > {out}/first.out 2> {out}/first.err; echo $? > {out}/first.exit
        mount -o remount,size=200m {disk} || exit 98
        {shlex.join([*command, "overwrite=true"])} > {out}/second.out 2>&1; echo $? > {out}/second.exit
    """
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    setup = subprocess.run(["unshare", "-rm", "bash", "-c", script], env=env, timeout=900, check=False)
    assert setup.returncode == 0, setup.returncode
    stderr = (out / "first.err").read_text()
    assert (out / "first.exit").read_text().strip() == "2", stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"StorageError: {disk / 'run' / 'checkpoints'}/") and "no space left on device" in last
    assert "then run the command again with overwrite=true (no last.ckpt to resume from yet)" in last, last
    assert (out / "second.exit").read_text().strip() == "0", (out / "second.out").read_text()[-3000:]


@pytest.mark.slow
@needs_data
def test_a_fifo_named_like_an_image_is_one_line_not_a_hang(tmp_path: Path) -> None:
    """A FIFO called zz.png among the normal images (a folder someone sent, or a pipe left by a tool): training
    waited in PIL's open for a writer forever. Now one line naming it, exit 2."""
    normal = small_bottles(tmp_path / "normal", 8)
    anomalous = small_bottles(tmp_path / "anomalous", 2)
    os.mkfifo(normal[0].parent / "zz.png")
    options = [
        "dataset=folder",
        f"dataset.normal_dir={normal[0].parent}",
        f"dataset.abnormal_dir={anomalous[0].parent}",
    ]
    try:
        result = train_process(tmp_path, options, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("training hung on the FIFO")
    lines = [line for line in result.stderr.strip().splitlines() if line != "Seed set to 0"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines == [
        f"BadImageError: {normal[0].parent / 'zz.png'}: not a regular file (a FIFO, device or folder); remove it "
        f"from the images [HYDRA_FULL_ERROR=1 shows the traceback]"
    ], result.stderr[-3000:]
