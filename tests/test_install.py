"""A non-editable install works from any directory: configs and the sweeper plugin ship in the package (issue 14).

Both are in the slow tier (`make test-all`). One builds a wheel offline and checks its contents. The other installs
the package (not editable) into a fresh virtual environment and runs train, predict and an Optuna `--multirun` from
an unrelated folder.

Everything is offline. The build runs on a copy of the source tree (git's tracked and untracked, not ignored,
files), so no build/ or *.egg-info lands in the repository. The fresh venv has no pip and no packages of its
own: a .pth file puts this environment's site-packages behind its own. A .pth line only adds a folder to sys.path;
the .pth files inside that folder are not run, so this environment's editable hook for anomaly_lab
(__editable__*anomaly_lab*.pth) stays off and `import anomaly_lab` finds the installed copy.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "anomaly_lab" / "conf"
SWEEPER = "hydra_plugins/anomaly_lab_sweeper/__init__.py"

# keys that make a train run tiny; only model.*, trainer.* and dataset.n_* (other dataset keys are moving)
TINY = [
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "model.image_size=32",
    "model.net.base_channels=4",
    "model.net.depth=2",
    "dataset.n_train=8",
    "dataset.n_test_good=3",
    "dataset.n_test_per_defect=2",  # 2 per defect type: the default val_anomalous=0.25 keeps one for validation
]
PIP_OFFLINE = ["--disable-pip-version-check", "--no-input", "--no-cache-dir", "--no-index", "--no-deps"]


def _env() -> dict[str, str]:
    """The environment for every subprocess: nothing leaks the repository onto sys.path, one thread each."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PROJECT_ROOT", "VIRTUAL_ENV")}
    env.update(
        PYTHONNOUSERSITE="1",
        PIP_CONFIG_FILE=os.devnull,
        HYDRA_FULL_ERROR="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
    )
    return env


def _run(cmd: list[str | Path], cwd: Path, timeout: float) -> str:
    """Run cmd in cwd; fail the test with the command and its output's tail unless it exits 0."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else e.output or ""
        pytest.fail(f"timed out after {timeout}s in {cwd}: {' '.join(cmd)}\n{out[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode} in {cwd}: {' '.join(cmd)}\n{proc.stdout[-6000:]}")
    return proc.stdout


def _ignore_outside_git(folder: str, names: list[str]) -> set[str]:
    """Without git: skip caches everywhere, and the repository's own data, outputs and build folders."""
    skip = {n for n in names if n in ("__pycache__", ".git") or n.endswith((".egg-info", "_cache"))}
    if Path(folder).resolve() == ROOT:  # top level only: anomaly_lab/data is a package
        skip |= {n for n in names if n in (".venv", "outputs", "data", "build", "dist", "shared")}
    return skip


def _copy_source(dst: Path) -> Path:
    """Copy the source tree (git's tracked and untracked-not-ignored files; without git, all but caches) to dst."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dst, ignore=_ignore_outside_git)
        return dst
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def _source_yamls() -> set[str]:
    return {f"anomaly_lab/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # looked up on disk: importing setuptools, or even find_spec("pip") (setuptools' distutils hack then turns
    # itself off), would leave the stdlib distutils under later tests (torch.compile's build then fails)
    site = Path(sysconfig.get_path("purelib"))
    missing = [m for m in ("pip", "setuptools") if not (site / m).is_dir()]
    if missing:
        pytest.skip(f"an offline build needs {' and '.join(missing)} in this environment")
    return _copy_source(tmp_path_factory.mktemp("src") / "anomaly_lab_src")


@pytest.mark.slow
def test_wheel_ships_configs_and_sweeper(source_copy: Path, tmp_path: Path) -> None:
    """Every YAML of anomaly_lab/conf, every module and the hydra_plugins sweeper are in the wheel; tests and
    scripts/ are not."""
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", *PIP_OFFLINE, "--no-build-isolation", "-w", wheels, source_copy],
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = wheels.glob("anomaly_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    yamls = _source_yamls()
    assert "anomaly_lab/conf/train.yaml" in yamls and "anomaly_lab/conf/predict.yaml" in yamls
    assert not yamls - names, f"configs missing from the wheel: {sorted(yamls - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "anomaly_lab").rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert SWEEPER in names
    assert "hydra_plugins/__init__.py" not in names  # hydra_plugins stays a namespace package shared with Hydra's
    assert not [n for n in names if n.startswith(("tests/", "scripts/"))]  # one-off scripts are not installed


CHECK_INSTALL = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anomaly_lab, hydra_plugins.anomaly_lab_sweeper as sweeper
    from anomaly_lab.configs import CONFIG_DIR
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    site, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    for f in (anomaly_lab.__file__, sweeper.__file__, CONFIG_DIR):
        assert Path(f).resolve().is_relative_to(site), f"{f} is not under {site}"
    assert repo not in {Path(p or ".").resolve() for p in sys.path}, sys.path  # (its .venv's site-packages may be)
    assert not [m for m in sys.modules if "__editable__" in m]
    sweepers = {c.__name__: sys.modules[c.__module__].__file__ for c in Plugins.instance().discover(Sweeper)}
    assert Path(sweepers["ResumableOptunaSweeper"]).resolve().is_relative_to(site), sweepers
    print(sorted(sweepers))
    """
)


@pytest.mark.slow
def test_non_editable_install_runs_from_anywhere(source_copy: Path, tmp_path: Path) -> None:
    """`pip install .` (not editable) into a fresh venv; train, predict and a 2-trial sweep from an unrelated cwd."""
    # 1. a fresh venv (no pip of its own) that sees this environment's packages behind its own site-packages
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, 60).strip())
    deps = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))  # this env's, in order, once
    (site / "_anomaly_lab_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))

    # 2. the non-editable install, offline, from the copy; --ignore-installed: never touch this environment's copy
    _run(
        [python, "-m", "pip", "install", *PIP_OFFLINE, "--no-build-isolation", "--ignore-installed", source_copy],
        cwd=tmp_path,
        timeout=300,
    )
    installed = {
        f"anomaly_lab/conf/{p.relative_to(site / 'anomaly_lab' / 'conf').as_posix()}"
        for p in (site / "anomaly_lab" / "conf").rglob("*.yaml")
    }
    assert not _source_yamls() - installed, f"configs not installed: {sorted(_source_yamls() - installed)}"
    assert (site / SWEEPER).is_file()
    (tmp_path / "check.py").write_text(CHECK_INSTALL)
    assert "ResumableOptunaSweeper" in _run([python, tmp_path / "check.py", site, ROOT], tmp_path, 120)

    # 3. from an unrelated folder: train, predict, sweep; outputs land under that folder (paths.root_dir='.')
    work = tmp_path / "elsewhere"
    work.mkdir()
    _run([python, "-m", "anomaly_lab.train", *TINY], cwd=work, timeout=900)
    (ckpt,) = work.glob("outputs/runs/*/checkpoints/best.ckpt")
    assert (ckpt.parents[1] / "metrics.json").is_file()

    from PIL import Image

    image = work / "new_image.png"
    Image.new("RGB", (48, 40), (90, 120, 150)).save(image)
    _run(
        [python, "-m", "anomaly_lab.predict", f"ckpt_path={ckpt}", f"input={image.name}", "progress=false"],
        cwd=work,
        timeout=600,
    )
    (scores,) = work.glob("outputs/predict/*/scores.csv")
    assert (scores.parent / "summary.json").is_file()
    assert "new_image.png" in scores.read_text()

    sweep = ["--multirun", "hparams_search=bottles_thesis", "hydra.sweeper.n_trials=2", *TINY]
    _run([python, "-m", "anomaly_lab.train", *sweep], cwd=work, timeout=1200)
    db = work / "outputs" / "sweeps" / "optuna.db"  # the search's default sqlite storage, under paths.root_dir
    assert db.is_file()
    conn = sqlite3.connect(db)
    try:
        states = [s for (s,) in conn.execute("SELECT state FROM trials")]
    finally:
        conn.close()
    assert states == ["COMPLETE", "COMPLETE"], states
    assert len(list(work.glob("outputs/sweeps/bottles_thesis-*/*/*/metrics.json"))) == 2
