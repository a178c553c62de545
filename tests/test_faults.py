"""Faults caused the way a user causes them: crafted checkpoints, kill -9 and Ctrl-C mid-epoch, a full disk,
a reused run folder, impossible settings, a dead model. Data and predict faults are in test_faults_data.py,
sweep faults in test_faults_sweep.py.

Training runs here are real `python -m anomaly_lab.train` processes on tiny generated bottles; a test-only
callback (tests/fault_helpers.py) holds a process at a known batch so the kill lands mid-epoch whatever the
machine's load.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import pickle
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from anomaly_lab.checkpoint_loading import SPEC_KEY, CheckpointError, load_model
from anomaly_lab.config_checks import check_train_config
from anomaly_lab.errors import ConfigError, RunFolderError, storage_error, storage_message
from anomaly_lab.run_folder import prepare_run_folder
from anomaly_lab.train import build_module, run
from tests.conftest import ComposeFn

REPO = Path(__file__).resolve().parents[1]
# 21 training images in batches of 4: 5 steps per epoch, so "batch 2 of epoch 2" is mid-epoch
SYNTHETIC = ["dataset.n_train=24", "dataset.n_test_good=3", "dataset.n_test_per_defect=2"]
RUN = [
    "trainer=cpu",
    "model.image_size=32",
    "dataset.batch_size=4",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
]
TIMING_KEYS = ("train/images_per_s", "train/seconds", "test/images_per_s", "peak_memory_mb")
HANG_GUARD = 600  # seconds; only against a hung process, never a measure of speed


def train_cli(
    args: list[str], run_dir: Path, cache: Path, full_error: bool = False, **popen: Any
) -> subprocess.Popen[str]:
    data = [] if any(arg.startswith("dataset=") for arg in args) else SYNTHETIC  # tiny generated bottles
    command = [sys.executable, "-m", "anomaly_lab.train", *RUN, *data, f"paths.cache_dir={cache}"]
    command.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.Popen([*command, *args], cwd=REPO, env=env, text=True, **popen)


def train(
    args: list[str], run_dir: Path, cache: Path, full_error: bool = False, **popen: Any
) -> subprocess.CompletedProcess[str]:
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = train_cli(args, run_dir, cache, full_error, **pipes, **popen)
    stdout, stderr = process.communicate(timeout=HANG_GUARD)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def hold_at(epoch: int, batch: int, marker: Path) -> str:
    callback = f"_target_: tests.fault_helpers.HoldInEpoch, epoch: {epoch}, batch: {batch}, marker: {marker}"
    return f"+callbacks.hold={{{callback}}}"


def interruptible() -> None:
    """In the child: Ctrl-C as in a terminal. A background job of a non-interactive shell (nohup, `&` in a
    script, some CI runners) inherits SIGINT ignored, and the child would never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_mid_epoch(run_dir: Path, cache: Path, sig: signal.Signals, args: Sequence[str] = ()) -> int:
    """Start a 3-epoch run, send `sig` during batch 2 of epoch 2 (0-based epoch 1); its exit code."""
    marker = run_dir.parent / f"{run_dir.name}.held"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        process = train_cli(
            [*args, hold_at(1, 2, marker)],
            run_dir,
            cache,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=interruptible,
        )
        try:
            deadline = time.monotonic() + HANG_GUARD
            while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert marker.exists(), f"the run never reached epoch 2 (exit code {process.poll()}, see {log.name})"
            process.send_signal(sig)
            return process.wait(timeout=HANG_GUARD)
        finally:
            process.kill()
            process.wait()


def quality_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train([], run_dir, cache)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


# ------------------------------------------------------------------------------- 1. checkpoints choose nothing


class RunsACommand:
    """A pickle payload: unpickling it calls os.system (what a crafted checkpoint smuggles in)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def crafted_checkpoint(good: Path, path: Path, marker: Path) -> Path:
    """The issue's attack: a net spec that names torch.load through an allowed prefix, on a pickled os.system."""
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    payload = pickle.dumps(RunsACommand(f"touch {marker}"))
    checkpoint[SPEC_KEY]["model"]["net"] = {
        "_target_": "anomaly_lab.masking.torch.load",
        "f": {"_target_": "anomaly_lab.masking.torch.serialization.io.BytesIO", "initial_bytes": payload},
        "weights_only": False,
    }
    torch.save(checkpoint, path)
    return path


def with_spec(good: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of checkpoint `good` whose spec has `value` at the dotted `key` (e.g. "model.net._target_")."""
    checkpoint = copy.deepcopy(good)
    *parents, last = key.split(".")
    node = checkpoint[SPEC_KEY]
    for name in parents:
        node = node[name]
    node[last] = value
    return checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["predict", "predict with no input", "export"])
def test_a_crafted_checkpoint_runs_nothing_in_predict_and_export(tiny_run: Path, tmp_path: Path, tool: str) -> None:
    marker = tmp_path / "pwned"
    crafted = crafted_checkpoint(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", marker)
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "part.png")
    args = {
        "predict": [f"input={tmp_path / 'part.png'}", f"output={tmp_path / 'out'}"],
        "predict with no input": [f"output={tmp_path / 'out'}"],
        "export": [],
    }[tool]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    module = f"anomaly_lab.{tool.split()[0]}"
    result = subprocess.run(
        [sys.executable, "-m", module, f"ckpt_path={crafted}", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not crafted.with_suffix(".onnx").exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"CheckpointError: {crafted}: model.net: _target_ 'anomaly_lab.masking.torch.load' is not")
    assert "Traceback" not in result.stderr


NOT_LISTED = "_target_ '{}' is not one of the classes a checkpoint may name"
REFUSED_SPECS = {  # name: (dotted spec key, crafted value, what the refusal says after the checkpoint's path)
    "an allowed prefix walking to torch": (
        "model.net._target_",
        "anomaly_lab.nets.unet.torch.load",
        "model.net: " + NOT_LISTED.format("anomaly_lab.nets.unet.torch.load"),
    ),
    "a nested _target_": (
        "model.masking.grid_sizes",
        {"_target_": "os.system", "c": "id"},
        "model.masking.grid_sizes: " + NOT_LISTED.format("os.system"),
    ),
    "a class's attribute": (
        "model.net._target_",
        "anomaly_lab.nets.unet.UNet.__init__",
        "model.net: " + NOT_LISTED.format("anomaly_lab.nets.unet.UNet.__init__"),
    ),
    "hydra's positional args": ("model.net._args_", ["id"], "model.net._args_: not a keyword argument"),
    "a hidden _partial_": ("model.preprocessing._partial_", True, "model.preprocessing._partial_: not a keyword"),
    "a keyword the class lacks": (
        "model.net.command",
        "id",
        "model.net: cannot build anomaly_lab.nets.unet.UNet from the checkpoint (",
    ),
    "torch.hub.load as the map": (
        "model.anomaly_map",
        {"_target_": "anomaly_lab.scoring.torch.hub.load", "repo": "x"},
        "model.anomaly_map: " + NOT_LISTED.format("anomaly_lab.scoring.torch.hub.load"),
    ),
    "a tensor as a value": ("model.net.base_channels", torch.tensor(16), "model.net.base_channels: only plain values"),
    "another model class": (
        "model._target_",
        "os.system",
        "the spec's model must be an anomaly_lab.model.InpaintingModel node (_target_ 'os.system')",
    ),
}


@pytest.mark.parametrize("name", REFUSED_SPECS)
def test_only_the_table_of_classes_with_plain_values_is_built(name: str, tiny_run: Path, tmp_path: Path) -> None:
    good = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    key, value, message = REFUSED_SPECS[name]
    path = tmp_path / "crafted.ckpt"
    torch.save(with_spec(good, key, value), path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_model(path)


CANNOT_BUILD = "{key}: cannot build {cls} from the checkpoint ({reason}"
PREPROCESSING, MODEL = "anomaly_lab.preprocessing.Preprocessing", "anomaly_lab.model.InpaintingModel"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.preprocessing.image_size", float("inf"), ("model.preprocessing", PREPROCESSING, "image_size=inf")),
        (
            "model.preprocessing.image_size",
            0,
            ("model.preprocessing", PREPROCESSING, "image_size=0: must be an integer from 1 to 4096"),
        ),
        ("model.preprocessing.image_size", -32, ("model.preprocessing", PREPROCESSING, "image_size=-32")),
        ("model.image_size", 64, ("model", MODEL, "preprocessing.image_size=32 differs from image_size=64")),
        ("model.threshold", 0.5, ("model", MODEL, "InpaintingModel.__init__() got an unexpected keyword argument")),
        ("model.preprocessing", [1, 2], "model.preprocessing: expected a mapping with a _target_, got list"),
        ("model.preprocessing.divide_by", 0, ("model.preprocessing", PREPROCESSING, "divide_by=0: expected a pos")),
        ("model.preprocessing.divide_by", -1, ("model.preprocessing", PREPROCESSING, "divide_by=-1")),
        ("model.preprocessing.divide_by", float("inf"), ("model.preprocessing", PREPROCESSING, "divide_by=inf")),
        ("model.preprocessing.divide_by", True, ("model.preprocessing", PREPROCESSING, "divide_by=true")),
        ("model.preprocessing.divide_by", "abc", ("model.preprocessing", PREPROCESSING, "")),
        ("model.preprocessing.border", "x", ("model.preprocessing", PREPROCESSING, "border='x': must be one of")),
        ("model.preprocessing.orient", "x", ("model.preprocessing", PREPROCESSING, "orient='x': must be one of")),
        ("model.preprocessing", {}, "model.preprocessing: expected a mapping with a _target_, got dict"),
        ("model.reduce", "median", ("model", MODEL, "reduce='median': must be one of mean, max, topk")),
        ("model.topk_fraction", 0, ("model", MODEL, "topk_fraction=0: must be in (0, 1]")),
        ("model.topk_fraction", 2, ("model", MODEL, "topk_fraction=2: must be in (0, 1]")),
        ("model.net.base_channels", -1, ("model.net", "anomaly_lab.nets.unet.UNet", "")),
        ("model.net.base_channels", 0, ("model", MODEL, "the net cannot take (1,3,32,32) images")),
        # far wider than its weights: refused from shapes alone (the meta device), before any memory is taken
        ("model.net.base_channels", 10**6, "weights do not fit the model of its spec (size mismatch for net.stem.0"),
        ("model.net.out_channels", 1, ("model", MODEL, "the net maps (1,3,32,32) images to (1, 1, 32, 32), not")),
        ("model.masking", {"_target_": PREPROCESSING, "image_size": 32}, ("model", MODEL, "'Preprocessing' object")),
        # grid x grid cells are drawn when the model is built: a grid finer than the pixels is refused first
        (
            "model.masking.grid_sizes",
            [2, 10**5],
            ("model", MODEL, "masking.grid_sizes=[2, 100000]: each must be an integer from 1 to image_size=32"),
        ),
        ("model.preprocessing.crop_height", 0, ("model.preprocessing", PREPROCESSING, "crop_height=0: must be a pos")),
        ("model.preprocessing.crop_height", 64, ("model.preprocessing", PREPROCESSING, "crop_height=64: must be a")),
    ],
)
def test_a_spec_with_impossible_values_is_a_checkpoint_error(
    key: str, value: Any, message: str | tuple[str, str, str], tiny_run: Path, tmp_path: Path
) -> None:
    good = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    path = tmp_path / "odd.ckpt"
    torch.save(with_spec(good, key, value), path)
    if isinstance(message, tuple):
        message = CANNOT_BUILD.format(key=message[0], cls=message[1], reason=message[2])
    with pytest.raises(CheckpointError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_model(path)


@pytest.mark.slow
def test_a_crafted_large_image_size_is_refused_or_loaded_without_taking_its_memory(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The model's image size, unlike its weights, is not bounded by the file: a crafted one must not make loading
    allocate what a pass at that size would (the shape checks run on the meta device); a size above 4096 px, or
    coverage masks that alone would take more than 2 GiB, are refused before anything is made. Loaded in a process
    limited to 4 GiB of address space, where one real pass at 4096 px does not fit."""
    good = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    paths = {}
    many_masks = {"_target_": "anomaly_lab.masking.GridMasking", "grid_sizes": [64], "ratio": 0.01}  # 100 masks
    for name, size, masking in (("largest", 4096, None), ("too large", 4097, None), ("many masks", 4096, many_masks)):
        spec = with_spec(with_spec(good, "model.image_size", size), "model.preprocessing.image_size", size)
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        torch.save(with_spec(spec, "model.masking", masking) if masking else spec, paths[name])
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))\n"
        "from anomaly_lab.checkpoint_loading import CheckpointError, load_model\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        print('loaded', load_model(path).image_size)\n"
        "    except CheckpointError as error:\n"
        "        print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths.values())], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded, too_large, too_many = result.stdout.strip().splitlines()
    assert loaded == "loaded 4096"
    assert too_large == (
        f"{paths['too large']}: model.preprocessing: cannot build {PREPROCESSING} from the checkpoint "
        "(image_size=4097: must be an integer from 1 to 4096 (e.g. 64, 128, 256))"
    )
    assert too_many == (
        f"{paths['many masks']}: model: cannot build {MODEL} from the checkpoint (100 full-coverage masks of "
        "4096x4096 px would take 6.2 GiB (at most 2 GiB): lower image_size or the number of masks)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", 'While copying the parameter named "threshold", expected torch.Tensor'),
        (torch.tensor([1.0, 2.0]), "size mismatch for threshold"),
    ],
)
def test_a_threshold_that_is_not_one_number_is_a_checkpoint_error(
    value: Any, message: str, tiny_run: Path, tmp_path: Path
) -> None:
    good = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    path = tmp_path / "odd.ckpt"
    torch.save({**good, "state_dict": {**good["state_dict"], "model.threshold": value}}, path)
    expected = f"{path}: weights do not fit the model of its spec ({message}"
    with pytest.raises(CheckpointError, match=f"^{re.escape(expected)}"):
        load_model(path)


def test_garbage_files_are_checkpoint_errors(compose_tiny: ComposeFn, tiny_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "text.ckpt").write_text("hello")
    (tmp_path / "raw.ckpt").write_bytes(pickle.dumps(RunsACommand(f"touch {marker}")))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "text.ckpt")
    with pytest.raises(CheckpointError, match=r"a plain pickle, not a checkpoint written by torch\.save"):
        load_model(tmp_path / "raw.ckpt")
    good = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    broken = {
        "callbacks": {**good, "callbacks": {name: "garbage" for name in good["callbacks"]}},
        "loops": {**good, "loops": "garbage"},
    }
    for name, checkpoint in broken.items():
        torch.save(checkpoint, tmp_path / f"{name}.ckpt")
        with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
            run(compose_tiny([f"resume={tmp_path / f'{name}.ckpt'}"], output_dir=tmp_path / name))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        run(compose_tiny([f"resume={tmp_path / 'text.ckpt'}"], output_dir=tmp_path / "text"))
    assert not marker.exists()


def test_a_pickled_payload_is_refused_without_torchs_advice(tiny_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    torch.save({**good, "extra": RunsACommand(f"touch {marker}")}, tmp_path / "pickled.ckpt")
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors") as error:
        load_model(tmp_path / "pickled.ckpt")
    assert "weights_only" not in str(error.value)
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_runs_nothing(compose_tiny: ComposeFn, tiny_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    torch.save({**good, "extra": RunsACommand(f"touch {marker}")}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="holds Python objects"):
        run(compose_tiny([f"resume={tmp_path / 'last.ckpt'}"]))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ("dataset.preprocessing.grayscale=true", "dataset.preprocessing.grayscale: False in the checkpoint, True now"),
        ("dataset.preprocessing.orient=principal_axis", "dataset.preprocessing.orient: 'none' in the checkpoint"),
        ("masking.grid_sizes=[4,8]", r"masking.grid_sizes: \[2, 4\] in the checkpoint, \[4, 8\] now"),
        ("seed=1", r"masking.seed \(set by seed\): 0 in the checkpoint, 1 now"),  # named as typed
    ],
)
def test_resuming_into_a_different_model_is_refused_before_anything_is_written(
    compose_tiny: ComposeFn, tiny_run: Path, tmp_path: Path, changed: str, named: str
) -> None:
    overrides = ["scoring=riad", "masking=multiscale_grid", "masking.grid_sizes=[2,4]", "masking.ratio=0.5"]
    resume = f"resume={tiny_run / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(CheckpointError, match=f"resuming a different model: {named}"):
        run(compose_tiny([*overrides, changed, resume], output_dir=tmp_path / "resumed"))
    assert not (tmp_path / "resumed").exists()


@pytest.mark.slow
def test_resuming_with_a_speed_only_option_changed_goes_on(
    compose_tiny: ComposeFn, tiny_run: Path, tmp_path: Path
) -> None:
    overrides = ["scoring=riad", "masking=multiscale_grid", "masking.grid_sizes=[2,4]", "masking.ratio=0.5"]
    resume = f"resume={tiny_run / 'checkpoints' / 'last.ckpt'}"
    # the same model on another machine
    run(
        compose_tiny(
            [*overrides, "model.channels_last=true", "trainer.max_epochs=2", "test=false", resume],
            output_dir=tmp_path / "resumed",
        )
    )
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------- 2. kill, Ctrl-C, full disk


# both in the slow tier (CI runs it): the two trainings of one take 36 s, a fifth of `make test`'s 3 minutes
@pytest.mark.slow
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, id="kill-9"), pytest.param(signal.SIGINT, id="ctrl-c")])
def test_a_run_killed_mid_epoch_resumes_to_the_metrics_of_an_uninterrupted_run(
    sig: signal.Signals, uninterrupted: Path, cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code = kill_mid_epoch(run_dir, cache, sig)
    assert code != 0
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the last finished epoch; the killed epoch 2 left nothing half-written
    assert not (run_dir / "metrics.json").exists()
    result = train(["resume=true"], run_dir, cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert quality_metrics(run_dir) == quality_metrics(uninterrupted)
    scores = (run_dir / "scores.csv").read_text()
    assert scores == (uninterrupted / "scores.csv").read_text()


@pytest.mark.slow
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoints(cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert train(["trainer.max_epochs=1", "test=false"], run_dir, cache).returncode == 0
    checkpoints = run_dir / "checkpoints"
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in checkpoints.glob("*.ckpt")}
    limit = (checkpoints / "last.ckpt").stat().st_size // 2

    def small_disk() -> None:  # files may not grow past `limit` bytes: writes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = train(["trainer.max_epochs=2", "test=false", "resume=true"], run_dir, cache, preexec_fn=small_disk)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"StorageError: {checkpoints}/") and ": file too large: the checkpoint was not saved" in last
    assert last.split(" [HYDRA_FULL_ERROR")[0] in (run_dir / "train.log").read_text()  # the log says why it stopped
    after = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in checkpoints.glob("*.ckpt")}
    assert after == before
    assert sorted(path.name for path in checkpoints.iterdir()) == sorted(before)  # no temporary file left
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0


def test_a_refused_write_is_found_through_the_errors_that_wrap_it() -> None:
    """torch.save reports a full disk as a RuntimeError raised while handling the OSError: the CLI still finds it."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/metrics.json")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 12574656") from None
    except RuntimeError as wrapped:
        assert wrapped.__cause__ is None and storage_error(wrapped) is full
    assert storage_message(full) == "/data/run/metrics.json: no space left on device"
    assert storage_error(PermissionError(errno.EACCES, "Permission denied", "/data")) is None  # not the disk's state


def can_mount_a_tmpfs() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in a mount namespace of its own."""
    probe = "mount -t tmpfs -o size=1m tmpfs /mnt"
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0
    except FileNotFoundError:  # no unshare (util-linux)
        return False


FILL_THE_DISK = """
import os, sys
disk, free = sys.argv[1], int(sys.argv[2])
stat = os.statvfs(disk)
with open(os.path.join(disk, "filler"), "wb") as filler:
    os.posix_fallocate(filler.fileno(), 0, stat.f_bavail * stat.f_frsize - free)
"""


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_a_tmpfs(), reason="no mount namespaces here (unshare -rm) for a small disk")
def test_a_run_on_a_disk_that_fills_up_stops_with_one_line_and_keeps_its_checkpoints(
    cache: Path, tmp_path: Path
) -> None:
    """A real full disk (ENOSPC): a 200 MB tmpfs, mounted in a mount namespace of the test's own, holds the run;
    after its first epoch another file takes all but half a checkpoint of the free space, and the resumed run's
    next save meets the full disk."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    run_dir = disk / "run"

    def command(args: list[str]) -> str:
        process_args = [*RUN, *SYNTHETIC, f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", *args]
        return shlex.join([sys.executable, "-m", "anomaly_lab.train", *process_args])

    half_a_checkpoint = f"$(( $(stat -c %s {run_dir}/checkpoints/last.ckpt) / 2 ))"
    script = f"""
        mount -t tmpfs -o size=200m tmpfs {disk} || exit 97
        {command(["trainer.max_epochs=1", "test=false"])} > {out}/first.log 2>&1 || exit 98
        cp -a {run_dir} {out}/before
        {shlex.join([sys.executable, "-c", FILL_THE_DISK, str(disk)])} {half_a_checkpoint} || exit 99
        {command(["trainer.max_epochs=2", "test=false", "resume=true"])} > {out}/stdout 2> {out}/stderr
        echo $? > {out}/exit
        df -B1 --output=avail {disk} | tail -1 > {out}/free
        cp -a {run_dir} {out}/after
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    setup = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, env=env, timeout=HANG_GUARD)
    assert setup.returncode == 0, (setup.returncode, (out / "first.log").read_text()[-2000:])
    stderr = (out / "stderr").read_text()
    assert (out / "exit").read_text().strip() == "2", stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"StorageError: {run_dir}/checkpoints/") and ": no space left on device: " in last, last
    assert last.split(" [HYDRA_FULL_ERROR")[0] in (out / "after" / "train.log").read_text()
    before, after = out / "before" / "checkpoints", out / "after" / "checkpoints"
    assert sorted(path.name for path in after.iterdir()) == sorted(path.name for path in before.iterdir())
    for path in before.iterdir():  # the first epoch's checkpoints, byte for byte; no temporary file left
        assert (after / path.name).read_bytes() == path.read_bytes(), path.name
    assert int((out / "free").read_text()) > 0  # the failed save's temporary file was removed


# ------------------------------------------------------------------------------- 3. last epoch validated


@pytest.mark.slow
def test_one_epoch_with_sparse_validation_still_reports_every_metric(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=5"])
    objective = run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert objective == metrics["val/wasserstein"]
    for key in ("val/image_auroc", "val/threshold", "test/image_auroc", "test/pixel_auroc", "test/aupro"):
        assert key in metrics, key


# ------------------------------------------------------------------------------- 4. a reused run folder


@pytest.mark.slow
def test_a_reused_run_folder_is_refused_and_resuming_keeps_the_record(cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert train(["trainer.max_epochs=1"], run_dir, cache).returncode == 0
    recorded = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}

    again = train(["trainer.max_epochs=1", "dataset.data_seed=1"], run_dir, cache)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(f"RunFolderError: hydra.run.dir={run_dir} already holds")
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == recorded

    old_metrics = json.loads((run_dir / "metrics.json").read_text())
    old_config = (run_dir / ".hydra" / "config.yaml").read_text()
    resumed = train(["trainer.max_epochs=1", "resume=true"], run_dir, cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {key for key in old_metrics if key.startswith(("val/", "train/"))} <= set(metrics)
    assert (run_dir / ".hydra" / "previous" / "1" / "config.yaml").read_text() == old_config

    replaced = train(["trainer.max_epochs=1", "overwrite=true", "dataset.data_seed=1"], run_dir, cache)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (run_dir / ".hydra" / "previous").exists()


@pytest.mark.slow
def test_a_run_stopped_before_training_leaves_its_folder_to_the_corrected_command(cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # threshold=f1 needs anomalous validation images; the split holds none: refused before training
    no_anomalies = ["dataset.val_anomalous=0", "validation_anomalies=real", "objective.metric=val/loss", "threshold=f1"]
    stopped = train(["trainer.max_epochs=1", *no_anomalies], run_dir, cache)
    assert stopped.returncode == 2
    error_line = stopped.stderr.strip().splitlines()[-1].split(" [HYDRA_FULL_ERROR")[0]
    assert error_line.startswith("SplitError: threshold=f1 needs normal and anomalous")
    stopped_log = (run_dir / "train.log").read_text()
    assert error_line in stopped_log  # why the run stopped, kept beside its config
    stopped_overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert sorted(path.name for path in run_dir.iterdir()) == [".hydra", "train.log"]

    corrected = train(["trainer.max_epochs=1"], run_dir, cache)
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert (run_dir / ".hydra" / "previous" / "1" / "overrides.yaml").read_text() == stopped_overrides
    assert "threshold=f1" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert (run_dir / "train.log").read_text().startswith(stopped_log)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    again = train(["trainer.max_epochs=1"], run_dir, cache)  # a folder that holds a trained run is still refused
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(f"RunFolderError: hydra.run.dir={run_dir} already holds")


def test_a_crafted_value_in_the_resumed_spec_is_a_checkpoint_error(
    compose_tiny: ComposeFn, tiny_run: Path, tmp_path: Path
) -> None:
    good = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    good["anomaly_lab"]["model"]["masking"]["ratio"] = torch.tensor([0.5] * 10_000)  # no value a config gives
    torch.save(good, tmp_path / "last.ckpt")
    overrides = ["scoring=riad", "masking=multiscale_grid", "masking.grid_sizes=[2,4]", "masking.ratio=0.5"]
    with pytest.raises(CheckpointError, match=r"masking.ratio: a Tensor in the checkpoint, 0.5 now") as error:
        run(compose_tiny([*overrides, f"resume={tmp_path / 'last.ckpt'}"], output_dir=tmp_path / "resumed"))
    assert len(str(error.value)) < 600
    assert not (tmp_path / "resumed").exists()


@pytest.mark.slow
def test_resuming_a_run_with_other_preprocessing_is_one_line_and_leaves_the_run_as_it_was(
    cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = train(["trainer.max_epochs=1", "test=false"], run_dir, cache)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    resumed = train(
        ["trainer.max_epochs=2", "test=false", "dataset.preprocessing.grayscale=true", "resume=true"], run_dir, cache
    )
    assert resumed.returncode == 2
    last = resumed.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"CheckpointError: {run_dir / 'checkpoints' / 'last.ckpt'}: resuming a different model: "
        "dataset.preprocessing.grayscale: False in the checkpoint, True now;"
    ), last
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("odd", ["train.log is a folder", ".hydra is a link"])
def test_a_folder_that_only_looks_like_a_stopped_run_is_refused_untouched(odd: str, tmp_path: Path) -> None:
    other = tmp_path / "other_run" / ".hydra"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("seed: 0\n")
    folder = tmp_path / "run"
    folder.mkdir()
    if odd == "train.log is a folder":
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (folder / "train.log").mkdir()
    else:  # reusing it would move another run's config
        (folder / ".hydra").symlink_to(other)
        (folder / "train.log").write_text("")
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    with pytest.raises(RunFolderError, match=f"^hydra.run.dir={re.escape(str(folder))} already holds a run"):
        prepare_run_folder(folder, resume=False, overwrite=False)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------- 6. a dead model says so


@pytest.mark.slow
def test_a_collapsed_run_says_so_in_the_log_and_metrics(cache: Path, tmp_path: Path) -> None:
    result = train(["optimizer.lr=1e6"], tmp_path / "dead", cache)
    assert result.returncode == 0
    metrics = json.loads((tmp_path / "dead" / "metrics.json").read_text())
    assert metrics["collapsed"] is True
    assert any("saturated" in reason or "same for every" in reason for reason in metrics["collapse_reasons"])
    assert "THE MODEL LOOKS COLLAPSED" in result.stdout + result.stderr
    resumed = train(["optimizer.lr=1e6", "resume=true"], tmp_path / "dead", cache)  # nothing left to train
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((tmp_path / "dead" / "metrics.json").read_text())
    assert again["collapsed"] is True and again["collapse_reasons"] == metrics["collapse_reasons"]


@pytest.mark.slow
def test_a_diverged_run_is_one_line(cache: Path, tmp_path: Path) -> None:
    diverging = ["optimizer.lr=1e30", "scheduler=none", "model.net.output_activation=none"]  # as test_train's NaN
    result = train([*diverging, "trainer.check_val_every_n_epoch=5"], tmp_path / "run", cache)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("NonFiniteLossError: ") and "lower optimizer.lr (now 1e+30)" in last


@pytest.mark.slow  # the kill tests' uninterrupted run, through the command line (test_learns checks it in-process)
def test_a_healthy_run_is_not_called_collapsed(uninterrupted: Path) -> None:
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["collapsed"] is False and metrics["collapse_reasons"] == []
    # no time cap: every planned epoch ran, and metrics.json says so
    assert metrics["stopped_early_by"] is None and metrics["epochs_trained"] == metrics["epochs_planned"] == 3


# ------------------------------------------------------------------------------- 8, 11, 12. settings


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.val_fraction=0", r"dataset\.val_fraction=0: must be in \(0, 1\)"),
        (
            "dataset=synthetic_notes dataset.test_fraction=1",
            r"^dataset\.test_fraction=1: must be in \[0, 1\); the share of normal images",
        ),
        ("dataset.rotation_copies=-1", r"^dataset\.rotation_copies=-1: must be an integer >= 0$"),
        (
            "dataset.val_anomalous=0 validation_anomalies=real",
            r"dataset\.val_anomalous=0 leaves validation without anomalous.*validation_anomalies=synthetic",
        ),
        (
            "model.image_size=50",
            r"^model\.image_size=50: must be a multiple of 2\*\*depth = 16 \(model\.net\.depth=4\).*=48 or 64",
        ),
        ("model.image_size=0", r"^model\.image_size=0: must be an integer from 1 to 4096 \(e\.g\. 64, 128, 256\)$"),
        ("model.image_size=-64", r"^model\.image_size=-64: must be an integer from 1 to 4096"),
        ("model.image_size=abc", r"^model\.image_size='abc': must be an integer from 1 to 4096"),
        ("masking.grid_sizes=[1000]", r"masking\.grid_sizes=\[1000\]: each must be an integer from 1 to"),
        ("masking.ratio=1.5", r"masking\.ratio=1\.5: must be in \(0, 1\)"),
        ("optimizer.lr=-1", r"optimizer\.lr=-1: must be a number >= 0"),
        ("dataset.batch_size=0", r"dataset\.batch_size=0: must be a positive integer"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs=0: must be a positive integer"),
        ("dataset.num_workers=-1", r"dataset\.num_workers=-1: must be an integer >= 0"),
        ("scoring.reduce=median", r"scoring\.reduce='median': must be one of mean, max, topk"),
        ("scoring.topk_fraction=2", r"scoring\.topk_fraction=2: must be in \(0, 1\]"),
        ("optimizer.weight_decay=-1", r"optimizer\.weight_decay=-1: must be a number >= 0"),
        ("scheduler.gamma=abc", r"scheduler\.gamma='abc': must be a positive number"),
        ("seed=abc", r"seed='abc': must be an integer >= 0"),
        ("overwrite=maybe", r"overwrite='maybe': must be one of true, false"),
        ("objective.metric=val/nope", r"objective\.metric='val/nope': must be one of val/wasserstein"),
        ("resume=/no/such.ckpt", r"resume='/no/such\.ckpt': must be true, false or the path of a \.ckpt file"),
        ("dataset.n_train=0", r"dataset\.n_train=0: must be a positive integer"),
        ("dataset.max_image_pixels=0", r"^dataset\.max_image_pixels=0 is not a pixel limit: use a positive whole"),
        # values shown as the user writes them (true, null, [..]), not as Python prints them (True, None)
        ("trainer.max_epochs=true", r"^trainer\.max_epochs=true: must be a positive integer"),
        ("test=null", r"^test=null: must be one of true, false$"),
        ("scoring.topk_fraction=[0.1,null]", r"^scoring\.topk_fraction=\[0\.1, null\]: must be in \(0, 1\]"),
        ("model.net.norm=foo", r"^model: .*'anomaly_lab\.nets\.unet\.UNet'.*unknown norm 'foo'"),
        ("model.net.base_channels=0", r"^model: .*the net cannot take \(1,3,32,32\) images"),
        ("model.net.out_channels=1", r"^model: .*the net maps \(1,3,32,32\) images to \(1, 1, 32, 32\), not the same"),
        ("dataset.preprocessing.border=middle", r"dataset\.preprocessing\.border='middle': must be one of drop, pad"),
        ("dataset.preprocessing.orient=sideways", r"preprocessing\.orient='sideways': must be one of none, principal"),
        (
            "dataset.preprocessing.tiled=true dataset.preprocessing.orient=principal_axis",
            r"^dataset\.preprocessing\.orient='principal_axis' turns whole images; tiled pages keep their pose",
        ),
        ("dataset.preprocessing.stride=0", r"^dataset\.preprocessing\.stride=0: expected null or a positive integer"),
        ("++dataset.preprocessing.divide_by=0", r"^dataset\.preprocessing\.divide_by=0: expected a positive number"),
        (
            "dataset.preprocessing.image_size=64",
            r"^dataset\.preprocessing\.image_size=64 differs from model\.image_size=32$",
        ),
        (
            "dataset.preprocessing.crop_height=20",
            r"^dataset\.preprocessing\.crop_height=20: must be a multiple of 2\*\*depth = 16 .*=16 or 32",
        ),
        (
            "dataset.preprocessing.crop_height=64",
            r"^dataset\.preprocessing\.crop_height=64: must be a positive integer at most model\.image_size=32",
        ),
        ("dataset.preprocessing.crop_height=0", r"^dataset\.preprocessing\.crop_height=0: must be a positive integer"),
        (
            "dataset=synthetic_notes dataset.preprocessing.crop_height=16",
            r"^dataset\.preprocessing\.crop_height=16: crops whole images; tiled pages keep their tiles \(",
        ),
        ("scoring.anomaly_map.l2=-1", r"^scoring\.anomaly_map\.l2=-1: must be a number >= 0$"),
        ("scoring.anomaly_map.blur_sigma=-1", r"^scoring\.anomaly_map\.blur_sigma=-1: must be a number >= 0 \(0: no"),
        ("scoring.anomaly_map.score_blur_sigma=abc", r"^scoring\.anomaly_map\.score_blur_sigma='abc': must be a"),
        ("trainer.precision=17", r"trainer: .*Precision 17 is invalid"),
        ("trainer.devices=0", r"trainer: .*devices=0"),
    ],
)
def test_impossible_settings_name_the_key_before_anything_runs(
    override: str, message: str, compose_tiny: ComposeFn
) -> None:
    cfg = compose_tiny(override.split())
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)
        build_module(cfg)
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not Path(cfg.paths.output_dir).exists()


@pytest.mark.slow
def test_a_user_error_is_one_line_and_no_run_folder(cache: Path, tmp_path: Path) -> None:
    result = train(["model.image_size=abc"], tmp_path / "run", cache)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ConfigError: model.image_size='abc': must be an integer from 1 to 4096 (e.g. 64, 128, 256) "
        "[HYDRA_FULL_ERROR=1 shows the traceback]"
    ]
    assert not (tmp_path / "run").exists()
    typo = train(["modle.image_size=64"], tmp_path / "run", cache)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines()[-1].startswith("ConfigCompositionException: Could not override 'modle")
    full = train(["model.image_size=abc"], tmp_path / "run", cache, full_error=True)
    assert full.returncode != 0 and "Traceback" in full.stderr
