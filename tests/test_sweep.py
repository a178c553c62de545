"""Optuna sweeps on tiny synthetic bottles: finite objectives, persistence, resume after a kill, failed trials."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from anomaly_lab.configs import CONFIG_DIR, data_digest
from anomaly_lab.errors import ConfigError
from anomaly_lab.secrets import mask_secrets, mask_secrets_in_files, mask_secrets_in_logs
from anomaly_lab.sweeps.resumable_optuna import check_same_data, check_study_name
from anomaly_lab.tools import sweep_report
from anomaly_lab.train import main
from tests.conftest import FAST_SWEEP, TINY, TINY_SYNTHETIC, ComposeFn

REPO = Path(__file__).resolve().parents[1]
# <search>-<dataset option>-<digest of the data (here the generator's settings)>-<model>-<size>px
STUDY = re.compile(r"bottles_thesis-synthetic_bottles-[0-9a-f]{8}-unet_small-32px")
FAST = FAST_SWEEP


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine tiny convolutions get slower with more (x5 measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sweep_args(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The thesis sweep on tiny data; its study and trial folders live under tmp_path/outputs/sweeps."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    return [
        "hparams_search=bottles_thesis",
        *TINY,
        *TINY_SYNTHETIC,
        *FAST,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache}",
    ]


def sweep(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m anomaly_lab.train --multirun <args>`, in this process."""
    monkeypatch.setattr(sys, "argv", ["anomaly_lab.train", "--multirun", *args])
    main()


def load(tmp_path: Path) -> optuna.Study:
    """The one study of the sweep under tmp_path, named as STUDY says."""
    storage = f"sqlite:///{tmp_path}/outputs/sweeps/optuna.db"
    (name,) = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    assert STUDY.fullmatch(name), name
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> list[TrialState]:
    return [trial.state for trial in study.get_trials()]


@pytest.mark.slow
def test_three_trials_persist_a_rerun_adds_none_and_the_report_shows_them(
    sweep_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep([*sweep_args, "hydra.sweeper.n_trials=3"], monkeypatch)
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        assert trial.value is not None and math.isfinite(trial.value)
        assert set(trial.params) == {"optimizer.lr", "masking.grid_sizes", "masking.ratio"}
        metrics = json.loads((Path(trial.user_attrs["output_dir"]) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/wasserstein"])
    assert len({tuple(sorted(t.params.items())) for t in trials}) > 1  # the sampler explores

    sweep([*sweep_args, "hydra.sweeper.n_trials=3"], monkeypatch)  # resumes a finished study
    assert [t.number for t in load(tmp_path).get_trials()] == [0, 1, 2]

    sweep_report.main([f"storage=sqlite:///{tmp_path}/outputs/sweeps/optuna.db", f"out={tmp_path / 'rep'}"])
    table = capsys.readouterr().out
    best = load(tmp_path).best_trial
    assert f"best trial {best.number}: objective {best.value:.6g}" in table
    assert table.count("COMPLETE") == 3 and "optimizer.lr" in table
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / "rep" / plot).stat().st_size > 1000


HANG_GUARD_S = 600  # only stops a hung sweep: no assertion depends on how long a trial takes


def kill_sweep_during_job(args: list[str], tmp_path: Path, job: int) -> int:
    """Run `--multirun <args>` in a subprocess, SIGKILL it while job number `job` trains, return its pid.

    A test-only callback holds that job's trial at its first training batch (tests/fault_helpers.py), so the
    kill lands mid-trial however busy the machine is.
    """
    marker = tmp_path / "held"
    hold = f"_target_: tests.fault_helpers.HoldInEpoch, epoch: 0, batch: 0, marker: {marker}, occurrence: {job + 1}"
    with (tmp_path / "killed.log").open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "anomaly_lab.train", "--multirun", *args, f"+callbacks.hold={{{hold}}}"],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            hang_deadline = time.monotonic() + HANG_GUARD_S
            while not marker.exists():
                if process.poll() is not None or time.monotonic() > hang_deadline:
                    pytest.fail(f"job {job} never started (exit code {process.poll()}, see {output.name})")
                time.sleep(0.2)
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    return process.pid


@pytest.mark.slow
def test_killed_sweep_resumes_to_n_trials(
    sweep_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*sweep_args, "hydra.sweeper.n_trials=3"]
    kill_sweep_during_job(args, tmp_path, job=1)
    before = load(tmp_path).get_trials()
    first = next(t for t in before if t.state == TrialState.COMPLETE)
    killed = next(t for t in before if t.state == TrialState.RUNNING)

    sweep(args, monkeypatch)
    after = {t.number: t for t in load(tmp_path).get_trials()}
    assert after[first.number].state == TrialState.COMPLETE
    assert after[first.number].value == first.value
    assert after[killed.number].state == TrialState.FAIL  # its worker is gone: failed, not left running
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 3
    assert TrialState.RUNNING not in {t.state for t in after.values()}


@pytest.mark.slow
def test_a_redrawn_point_is_not_trained_again_and_a_finished_space_ends_the_sweep(
    sweep_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a 2-point space (mask ratio 0.25 or 0.5) and up to 6 trials: each point trains once, redraws are told
    sweep([*sweep_args, "optimizer.lr=1e-3", "masking.grid_sizes=[2]", "hydra.sweeper.n_trials=6"], monkeypatch)
    trials = load(tmp_path).get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    trained = {t.number: t for t in trials if "duplicate_of" not in t.user_attrs}
    assert sorted(t.params["masking.ratio"] for t in trained.values()) == [0.25, 0.5]
    for trial in trials:
        if trial.number not in trained:
            twin = trained[trial.user_attrs["duplicate_of"]]
            assert trial.params == twin.params and trial.value == twin.value
            assert "output_dir" not in trial.user_attrs  # no run of its own
    assert len(trials) == max(trained) + 1  # nothing asked once both points had completed


NAN = ["model.net.output_activation=none", "trainer.max_epochs=2", "scheduler=none"]


@pytest.mark.slow
def test_nan_trial_is_failed_and_the_next_runs(
    sweep_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sampler seed 4 draws lr=1e30 first, then 1e-3; the per-trial assertions hold for any order
    nan_first = ["hydra.sweeper.sampler.seed=4", "hydra.sweeper.max_failure_rate=0.5"]
    sweep([*sweep_args, *NAN, *nan_first, "hydra.sweeper.n_trials=2", "optimizer.lr=choice(1e30,1e-3)"], monkeypatch)
    trials = load(tmp_path).get_trials()
    assert len(trials) == 2
    for trial in trials:
        exploded = trial.params["optimizer.lr"] > 1
        assert trial.state == (TrialState.FAIL if exploded else TrialState.COMPLETE)
        if exploded:
            assert trial.value is None
            assert "NonFiniteLossError" in trial.user_attrs["error"]
            log = (Path(trial.user_attrs["output_dir"]) / "train.log").read_text()
            # the trial's own log says why it failed
            assert re.search(r"\]\[anomaly_lab.train\]\[ERROR\] - NonFiniteLossError: \w+ loss is nan", log)
    assert states(load(tmp_path)) == [TrialState.FAIL, TrialState.COMPLETE]  # the sweep went on


@pytest.mark.slow
def test_too_many_failures_stop_the_sweep(
    sweep_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*sweep_args, *NAN, "optimizer.lr=1e30", "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.25"]
    with pytest.raises(SystemExit):  # hydra reports the RuntimeError and exits 1
        sweep(args, monkeypatch)
    assert states(load(tmp_path)) == [TrialState.FAIL] * 2  # 2 > 0.25 * 4 failures: stop


@pytest.mark.slow
def test_validation_and_test_anomalies_are_disjoint(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["hparams_search=bottles_thesis", "dataset.n_test_per_defect=4"])
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    val = {s.path for s in datamodule.splits["val"].samples if s.label == 1}
    test = {s.path for s in datamodule.splits["test"].samples if s.label == 1}
    assert val and test
    assert val.isdisjoint(test)
    assert len(val) + len(test) == 3 * 4  # every anomaly is in exactly one of them


def study_name(overrides: list[str]) -> str:
    """hydra.sweeper.study_name as a `--multirun hparams_search=bottles_thesis <overrides>` sweep resolves it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", ["hparams_search=bottles_thesis", *TINY, *overrides], return_hydra_config=True)
    return str(cfg.hydra.sweeper.study_name)


@pytest.mark.slow
def test_the_study_name_identifies_the_data_wherever_the_path_is_given_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative paths are relative to the directory the command runs in

    def folder(normal_dir: str, *overrides: str) -> str:
        return study_name(["dataset=folder", f"dataset.normal_dir={normal_dir}", *overrides])

    a = folder(str(tmp_path / "a"))
    assert re.fullmatch(r"bottles_thesis-folder-[0-9a-f]{8}-unet_small-32px", a), a
    assert folder(str(tmp_path / "b")) != a
    assert folder("../a") == a == folder(f"{work}/../a")
    assert folder("a") != a  # work/a: another folder
    assert folder("../a", "dataset.mask_dir=../masks") != a
    # loader, split and preprocessing settings are not the data: the same study
    assert folder("../a", "dataset.batch_size=2", "dataset.val_anomalous=1", "dataset.preprocessing.tiled=true") == a

    bottle = study_name(["dataset=mvtec", "dataset.root=../mvtec/bottle"])
    assert bottle != study_name(["dataset=mvtec", "dataset.root=../mvtec/screw"])
    assert bottle == study_name(["dataset=mvtec", f"dataset.root={tmp_path}/mvtec/bottle"])
    csv = study_name(["dataset=csv_list", "dataset.csv=../a.csv"])
    assert csv != study_name(["dataset=csv_list", "dataset.csv=b.csv"])

    # generated data: the generator's settings are the data, the cache folder is not
    synthetic = study_name(["dataset=synthetic_bottles"])
    assert synthetic == study_name(["dataset=synthetic_bottles", f"paths.cache_dir={tmp_path}/cache"])
    assert synthetic != study_name(["dataset=synthetic_bottles", "dataset.data_seed=1"])
    pages = study_name(["dataset=synthetic_notes"])
    assert pages != study_name(["dataset=synthetic_notes", "dataset.write_pages.seed=1"])

    assert study_name(["dataset=folder", "hydra.sweeper.study_name=my_study"]) == "my_study"  # still overridable


def test_the_data_digest_is_stable() -> None:
    """A new digest for the same data would leave every stored study behind: the rule must not drift."""
    # a folder that is nowhere, so no symbolic link on the machine running the test changes the path
    mvtec = "anomaly_lab.data.datamodules.MVTecDataModule"
    dataset = OmegaConf.create(
        {"_target_": mvtec, "root": "/no_such_dir/mvtec/bottle", "batch_size": 8, "cache_dir": "/tmp/x"}
    )
    assert data_digest(dataset, "/elsewhere") == "7b1b03bc"
    assert data_digest(OmegaConf.create({"_target_": mvtec, "root": "bottle"}), "/no_such_dir/mvtec") == "7b1b03bc"


SECRET_URL = "postgresql://optuna:pa%40ss:w0rd@db.example:5432/studies?sslmode=require"
SECRET = "pa%40ss:w0rd"


def test_passwords_in_urls_are_masked_in_text_files_and_log_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert (
        mask_secrets(f"storage: {SECRET_URL}")
        == "storage: postgresql://optuna:***@db.example:5432/studies?sslmode=require"
    )
    assert mask_secrets("- +x='mysql+pymysql://u:p@h/db',+y=1") == "- +x='mysql+pymysql://u:***@h/db',+y=1"
    assert (
        mask_secrets("postgresql://u@h/db?sslmode=x&password=p&a=1") == "postgresql://u@h/db?sslmode=x&password=***&a=1"
    )
    for unchanged in ("sqlite:////tmp/optuna.db", "postgresql://u@h/db", "https://host:8080/path", "no url"):
        assert mask_secrets(unchanged) == unchanged

    config, other = tmp_path / "config.yaml", tmp_path / "overrides.yaml"
    config.write_text(f"sweep_trial:\n  storage: {SECRET_URL}\n")
    config.chmod(0o640)
    other.write_text("- seed=1\n")
    mask_secrets_in_files([config, other])
    assert (
        config.read_text()
        == "sweep_trial:\n  storage: postgresql://optuna:***@db.example:5432/studies?sslmode=require\n"
    )
    assert config.stat().st_mode & 0o777 == 0o640 and other.read_text() == "- seed=1\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml", "overrides.yaml"]

    factory = logging.getLogRecordFactory()
    mask_secrets_in_logs()
    mask_secrets_in_logs()  # once per process, however often it is called
    try:
        logger = logging.getLogger("tests.secrets")
        with caplog.at_level(logging.INFO, logger="tests.secrets"):
            logger.info("study in %s", SECRET_URL)
            try:
                raise ValueError(f"cannot reach {SECRET_URL}")
            except ValueError:
                logger.exception("the storage failed")
        assert SECRET not in caplog.text
        assert caplog.text.count("postgresql://optuna:***@db.example:5432") == 2  # the message and the traceback
    finally:
        logging.setLogRecordFactory(factory)


@pytest.mark.parametrize("name", ["bottle/screw", "../up", "..", ".", "", "a\\b"])
def test_a_study_name_that_is_not_one_folder_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.study_name=.*: a study name also names the sweep's folder"):
        check_study_name(name)


def test_a_study_of_other_data_is_refused_naming_both_unless_allowed() -> None:
    bottle, screw = {"root": "/data/mvtec_bottle", "csv": None}, {"root": "/data/mvtec_screw", "csv": None}
    study = optuna.create_study(study_name="shared")
    assert check_same_data(study, bottle, "memory", allow_other_data=False) is None
    assert study.user_attrs["data"] == bottle  # a new study records its data
    assert check_same_data(study, dict(bottle), "memory", allow_other_data=False) is None
    with pytest.raises(ConfigError) as refused:
        check_same_data(study, screw, "memory", allow_other_data=False)
    assert str(refused.value).startswith(
        "hydra.sweeper.study_name='shared' in memory holds trials of other data (root='/data/mvtec_bottle') than this "
        "sweep's (root='/data/mvtec_screw'): choose another hydra.sweeper.study_name"
    )
    assert "hydra.sweeper.allow_other_data=true" in str(refused.value)
    assert check_same_data(study, screw, "memory", allow_other_data=True) == bottle
    assert study.user_attrs["data"] == bottle  # joining does not rewrite what the study is of

    # a study made before studies recorded their data: its trials' records decide
    older = optuna.create_study(study_name="older")
    trial = older.ask()
    trial.set_user_attr("data", bottle)
    older.tell(trial, 1.0)
    with pytest.raises(ConfigError, match="other data"):
        check_same_data(older, screw, "memory", allow_other_data=False)

    # a study whose trials record no data (an older release's): unknown data, joined only when the user says so
    unrecorded = optuna.create_study(study_name="unrecorded")
    unrecorded.tell(unrecorded.ask(), 1.0)
    with pytest.raises(ConfigError) as refused:
        check_same_data(unrecorded, screw, "memory", allow_other_data=False)
    assert "holds 1 trials that record no data (a study made by an older anomaly_lab)" in str(refused.value)
    assert "root='/data/mvtec_screw'" in str(refused.value)
    assert check_same_data(unrecorded, screw, "memory", allow_other_data=True) is None
    assert unrecorded.user_attrs["data"] == screw


def test_the_report_and_the_trials_record_show_the_chosen_scorings_validation_auroc(tmp_path: Path) -> None:
    """Under scoring=auto a run logs the trained scoring's val/image_auroc every validation and the chosen one's
    (val/chosen/image_auroc) at its end: the model is the chosen one's, so the report and run_outcome read that."""
    from anomaly_lab.sweeps.resumable_optuna import run_outcome

    study = optuna.create_study(direction="maximize")
    runs = {"auto": {"val/image_auroc": 0.61, "val/chosen/image_auroc": 0.93}, "fixed": {"val/image_auroc": 0.72}}
    for name, metrics in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        trial = study.ask()
        trial.set_user_attr("output_dir", str(tmp_path / name))
        study.tell(trial, 1.0)
    rows = sweep_report.trials_table(study.trials).splitlines()[2:]
    assert [row.split()[3] for row in rows] == ["0.93", "0.72"]
    assert [run_outcome(tmp_path / name)["val_image_auroc"] for name in runs] == [0.93, 0.72]
