"""Good images only (issue 15): train, threshold, test and sweep with no defect image, on synthetic validation
anomalies; the data's own anomalies where it has some; clear errors for folders too small to split.

Training runs are one epoch on tiny generated 32px bottles (one torch thread: tests/conftest.py): the user's
commands run as real `python -m anomaly_lab.train` processes, the rest through train.run or a datamodule's setup.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hydra.utils import instantiate
from optuna.trial import TrialState

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.config_checks import check_train_config
from anomaly_lab.data.images import BadImageError, DecodedImages
from anomaly_lab.data.validation_anomalies import ValidationAnomalies
from anomaly_lab.errors import ConfigError, SplitError
from anomaly_lab.metrics import image_auroc, wasserstein_separation
from anomaly_lab.thresholds import AutoThreshold, F1Threshold, PercentileThreshold
from anomaly_lab.train import run
from scripts.objective_agreement import agreement_rows, load_runs, rescored_objective, study_runs
from scripts.objective_agreement import main as objective_agreement_main
from tests.conftest import FAST_SWEEP, TINY, ComposeFn, compose_config

REPO = Path(__file__).resolve().parents[1]
BOTH_GENERATORS = {"synthetic_perlin", "synthetic_cutpaste"}  # the default validation_anomalies.generator
HANG_GUARD_S = 600  # only stops a hung process: no assertion depends on how long a run takes
NO_ANOMALY_LINE = "the test set holds no anomalous image (good images only)"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def normal_dir(tiny_bottles_root: Path) -> Path:
    """A folder of 8 good images and nothing else (the issue's `mvtec_bottle/train/good`, in small)."""
    return tiny_bottles_root / "train" / "good"


def folder_only_good(normal: Path) -> list[str]:
    """The issue's user command: a plain folder of good images, no anomalous folder, no masks."""
    return ["dataset=folder", f"dataset.normal_dir={normal}", "dataset.abnormal_dir=null", "dataset.mask_dir=null"]


def train_cli(
    args: list[str], cache: Path, run_dir: Path | None = None, multirun: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.train [--multirun] <tiny settings> <args>` as a user runs it."""
    flags = ["--multirun"] if multirun else []  # Hydra's flags come before the overrides
    command = [sys.executable, "-m", "anomaly_lab.train", *flags, *TINY, f"paths.cache_dir={cache}"]
    if run_dir is not None:
        command.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)  # the user's view: one line for a user error
    return subprocess.run(
        [*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )


def user_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user error prints (exit code 2), checked to be the only error output."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("[HYDRA_FULL_ERROR=1 shows the traceback]")
    return last


def synthetic_masks_are_exact(val: DecodedImages, defects: set[str]) -> int:
    """Every synthetic validation anomaly is its normal source image changed exactly where its mask is True;
    returns how many there are."""
    normal = {s.path: i for i, s in enumerate(val.samples) if s.label == 0}
    synthetic = [i for i, s in enumerate(val.samples) if s.label == 1 and s.defect.startswith("synthetic_")]
    for i in synthetic:
        sample = val.samples[i]
        assert sample.defect in defects
        source, _, suffix = sample.path.partition("#")
        assert suffix == sample.defect
        changed = (val.images[i] != val.images[normal[source]]).any(axis=-1)  # (H,W)
        mask = val.masks[i]
        assert mask.any() and not mask.all(), sample.path
        assert np.array_equal(mask, changed), f"{sample.path}: mask differs from the changed pixels"
    return len(synthetic)


# 1. the issue's folder command ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_issues_folder_command_trains_and_tests_on_good_images_only(
    normal_dir: Path, cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result = train_cli([*folder_only_good(normal_dir), "threshold=percentile"], cache, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert NO_ANOMALY_LINE in result.stdout + result.stderr

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation_anomalies"] == "synthetic"
    assert math.isfinite(metrics["val/wasserstein"])
    assert math.isfinite(metrics["val/threshold"])
    assert "test/image_auroc" not in metrics and "test/aupro" not in metrics and "test/pixel_auroc" not in metrics
    with (run_dir / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    n_images = len(list(normal_dir.glob("*.png")))
    assert len(rows) == math.ceil(0.2 * n_images)  # dataset.test_fraction=0.2 of the normal images
    assert {row["label"] for row in rows} == {"0"}
    assert metrics["test/fp"] + metrics["test/tn"] == len(rows)
    # no anomalous test image: only the normal images' calls, no precision, recall, F1, tp or fn
    assert not {"test/tp", "test/fn", "test/f1", "test/precision", "test/recall"} & set(metrics)
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


# 2. where validation anomalies come from (datamodule setup only) -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "kind", "synthetic_defects"),
    [
        (["validation_anomalies=auto"], "real", None),
        (["validation_anomalies=real"], "real", None),
        (["validation_anomalies=synthetic"], "synthetic", BOTH_GENERATORS),
        (["validation_anomalies=both"], "real+synthetic", BOTH_GENERATORS),
        (
            ["validation_anomalies=synthetic", "dataset.validation_anomalies.generator=cutpaste"],
            "synthetic",
            {"synthetic_cutpaste"},
        ),
    ],
    ids=["auto", "real", "synthetic", "both", "synthetic-cutpaste"],
)
def test_validation_anomalies_on_data_with_real_anomalies(
    overrides: list[str],
    kind: str,
    synthetic_defects: set[str] | None,
    compose_tiny: ComposeFn,
    tiny_bottles_root: Path,
) -> None:
    real_defects = {d.name for d in (tiny_bottles_root / "test").iterdir() if d.is_dir() and d.name != "good"}
    real_anomalies = {str(p) for d in real_defects for p in (tiny_bottles_root / "test" / d).glob("*.png")}
    assert len(real_anomalies) == 6  # 3 defect types x 2 images
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={tiny_bottles_root}", "dataset.val_fraction=0.25", *overrides])
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    assert datamodule.validation_anomaly_kind == kind

    val, test = datamodule.splits["val"], datamodule.splits["test"]
    n_normal_val = sum(s.label == 0 for s in val.samples)
    assert n_normal_val == 2  # ceil(0.25 * 8)
    val_real = {s.path for s in val.samples if s.label == 1 and s.defect in real_defects}
    test_real = {s.path for s in test.samples if s.label == 1}
    assert {s.defect for s in test.samples if s.label == 1} <= real_defects
    assert val_real.isdisjoint(test_real) and val_real | test_real == real_anomalies  # each in one split
    if "real" in kind:
        assert val_real and test_real
    else:  # source=synthetic: every real anomaly is tested, none validated
        assert test_real == real_anomalies
    n_synthetic = synthetic_masks_are_exact(val, synthetic_defects or set())
    assert n_synthetic == n_normal_val * len(synthetic_defects or ())  # one copy of each normal per generator
    n_anomalous_val = sum(s.label == 1 for s in val.samples)
    assert n_anomalous_val == len(val_real) + n_synthetic  # nothing else is anomalous in validation


def test_synthetic_validation_anomalies_are_seeded(compose_tiny: ComposeFn, normal_dir: Path) -> None:
    images = []
    for seed in (0, 0, 1):
        cfg = compose_tiny([*folder_only_good(normal_dir), "dataset.val_fraction=0.5", f"seed={seed}"])
        datamodule = instantiate(cfg.dataset)
        datamodule.setup("fit")
        assert datamodule.validation_anomaly_kind == "synthetic"  # auto on a folder of good images only
        val = datamodule.splits["val"]
        assert sum(s.label == 0 for s in val.samples) == 3
        assert synthetic_masks_are_exact(val, BOTH_GENERATORS) == 2 * 3  # the default: Perlin and CutPaste
        assert not [s for s in datamodule.splits["test"].samples if s.label == 1]
        images.append(val.images[[s.label == 1 for s in val.samples]])
    assert np.array_equal(images[0], images[1])  # same seed, same anomalies
    assert not np.array_equal(images[0], images[2])


@pytest.mark.slow
def test_each_kind_of_validation_anomaly_is_also_measured_on_its_own(
    compose_tiny: ComposeFn, tiny_bottles_root: Path
) -> None:
    generators = "dataset.validation_anomalies.generator=[perlin,cutpaste]"
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={tiny_bottles_root}", "validation_anomalies=both", generators])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_anomalies"] == "real+synthetic"

    # score validation again with the checkpoint (one epoch: the one validated) and measure each kind by hand
    model = load_model(out / "checkpoints" / "best.ckpt")
    datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
    datamodule.setup("fit")
    scores, defects, labels = [], [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            scores.append(model(batch["image"])[1].double())
            defects += batch["defect"]
            labels.append(batch["label"])
    score, label = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    kind_of = {d: d if d.startswith("synthetic_") else "real" for d in defects}
    kinds = np.array([kind_of[d] if y == 1 else "" for d, y in zip(defects, label, strict=True)])
    assert sorted(set(kinds) - {""}) == ["real", "synthetic_cutpaste", "synthetic_perlin"]
    n_normal = int((label == 0).sum())
    for kind in ("real", "synthetic_cutpaste", "synthetic_perlin"):
        of_kind = kinds == kind
        if kind != "real":
            assert of_kind.sum() == n_normal  # one anomaly per normal validation image and generator
        expected = wasserstein_separation(score[label == 0], score[of_kind], normalise=True, signed=True)
        assert metrics[f"val/{kind}/wasserstein"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        keep = of_kind | (label == 0)
        assert metrics[f"val/{kind}/image_auroc"] == pytest.approx(image_auroc(score[keep], label[keep]), abs=1e-6)
    everything = wasserstein_separation(score[label == 0], score[label == 1], normalise=True, signed=True)
    assert metrics["val/wasserstein"] == pytest.approx(everything, rel=1e-4, abs=1e-6)


def test_a_generator_list_must_name_known_generators_once() -> None:
    assert ValidationAnomalies(generator=["perlin", "cutpaste"]).generators == ("perlin", "cutpaste")
    for bad in (["perlin", "perlin"], ["perlin", "dream"], []):
        with pytest.raises(ValueError, match=r"dataset\.validation_anomalies\.generator"):
            ValidationAnomalies(generator=bad)


# 3. threshold=auto ---------------------------------------------------------------------------------------------


def test_auto_threshold_is_f1_on_real_anomalies_else_the_99th_percentile() -> None:
    rng = np.random.default_rng(0)
    scores = torch.tensor(np.concatenate([rng.normal(1.0, 0.3, 40), rng.normal(2.0, 0.5, 12)]))
    labels = torch.cat([torch.zeros(40), torch.ones(12)]).long()
    rule = AutoThreshold()
    assert rule.for_validation(real_anomalies=True) is rule  # as train.run chooses it once the data is known
    assert rule(scores, labels) == F1Threshold(cap_percentile=99)(scores, labels)
    assert AutoThreshold(cap=False)(scores, labels) == F1Threshold()(scores, labels)
    synthetic = rule.for_validation(real_anomalies=False)
    percentile = PercentileThreshold(99)(scores, labels)
    assert synthetic(scores, labels) == percentile == pytest.approx(np.percentile(scores[:40].numpy(), 99))
    assert percentile != F1Threshold()(scores, labels)  # the two rules differ here: the checks above can fail
    assert rule(scores[:40], labels[:40]) == percentile  # no anomaly at all: the percentile, not an error
    assert AutoThreshold(percentile=90)(scores[:40], labels[:40]) == pytest.approx(np.percentile(scores[:40], 90))


@pytest.mark.slow
def test_auto_threshold_on_synthetic_anomalies_is_the_99th_percentile_of_normal_scores(
    compose_tiny: ComposeFn, normal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_tiny([*folder_only_good(normal_dir), "dataset.val_fraction=0.5", "threshold=auto"])
    run(cfg)
    assert NO_ANOMALY_LINE in caplog.text
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_anomalies"] == "synthetic"
    assert math.isfinite(metrics["val/wasserstein"])

    # score the normal validation images again with the checkpoint the run tested
    model = load_model(out / "checkpoints" / "best.ckpt")
    assert float(model.threshold) == pytest.approx(metrics["val/threshold"], rel=1e-6)
    datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
    datamodule.setup("fit")
    scores, labels = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            scores.append(model(batch["image"])[1])
            labels.append(batch["label"])
    normal = torch.cat(scores)[torch.cat(labels) == 0].double().numpy()
    assert len(normal) == 3
    assert metrics["val/threshold"] == pytest.approx(np.percentile(normal, 99), rel=1e-5)
    assert metrics["val/threshold"] < normal.max()  # interpolated: not just the largest normal score


# 4. MVTec layout with train/good only ---------------------------------------------------------------------------


@pytest.fixture
def mvtec_train_only(tiny_bottles_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "x"
    shutil.copytree(tiny_bottles_root / "train" / "good", root / "train" / "good")
    return root


@pytest.mark.slow
def test_mvtec_layout_with_train_good_only_trains_on_synthetic_anomalies(
    compose_tiny: ComposeFn, mvtec_train_only: Path
) -> None:
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={mvtec_train_only}", "test=false"])
    objective = run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["validation_anomalies"] == "synthetic"
    assert objective == metrics["val/wasserstein"] and math.isfinite(objective)
    assert metrics["train/epochs"] == 1
    assert not any(key.startswith("test/") for key in metrics)


@pytest.mark.slow
def test_mvtec_layout_with_train_good_only_and_test_names_the_way_out(
    mvtec_train_only: Path, cache: Path, tmp_path: Path
) -> None:
    result = train_cli(["dataset=mvtec", f"dataset.root={mvtec_train_only}"], cache, tmp_path / "run")
    line = user_error_line(result)
    assert line.startswith("SplitError: the test split is empty")
    assert "test=false" in line and "test/good" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


# 5. a good-images-only sweep ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_good_images_only_sweep_runs_end_to_end(normal_dir: Path, cache: Path, tmp_path: Path) -> None:
    args = [
        "hparams_search=bottles_thesis",
        "hydra.sweeper.n_trials=2",
        *folder_only_good(normal_dir),
        *FAST_SWEEP,
        f"paths.root_dir={tmp_path}",
    ]
    result = train_cli(args, cache, multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/outputs/sweeps/optuna.db"
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]  # the sweep's one study
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        metrics = json.loads((Path(trial.user_attrs["output_dir"]) / "metrics.json").read_text())
        assert metrics["validation_anomalies"] == "synthetic"
        assert trial.value is not None and math.isfinite(trial.value)
        assert trial.value == pytest.approx(metrics["val/wasserstein"])


# 6. bad input keeps its clear errors ----------------------------------------------------------------------------


def small_folder(normal_dir: Path, tmp_path: Path, n_images: int) -> Path:
    small = tmp_path / "small"
    small.mkdir()
    for png in sorted(normal_dir.glob("*.png"))[:n_images]:
        shutil.copy(png, small / png.name)
    return small


@pytest.mark.slow
def test_a_folder_of_one_good_image_is_one_line_naming_the_key(normal_dir: Path, cache: Path, tmp_path: Path) -> None:
    small = small_folder(normal_dir, tmp_path, 1)
    line = user_error_line(train_cli(folder_only_good(small), cache, tmp_path / "run"))
    assert line.startswith(
        "BadImageError: dataset.test_fraction=0.2 and dataset.val_fraction=0.1 leave no training image of 1 normal "
        "image: they need at least 3 (1 to test, 1 to validate, 1 to train)"
    )  # says how many normal images these fractions need
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("n_images", "test_fraction", "error", "message"),
    [
        (
            1,
            0.0,
            BadImageError,
            r"^dataset\.val_fraction=0\.1 leaves no training image of 1 normal image: it needs "
            r"at least 2 \(1 to validate, 1 to train\)",
        ),
        # the issue's case: 2 images, the default fractions; the error said "at least 2"
        (
            2,
            0.2,
            BadImageError,
            r"^dataset\.test_fraction=0\.2 and dataset\.val_fraction=0\.1 leave no training image "
            r"of 2 normal images: they need at least 3 \(1 to test, 1 to validate, 1 to train\)",
        ),
        (2, 0.0, SplitError, r"^the test split is empty; .*dataset\.test_fraction.*or set test=false$"),
    ],
    ids=["1-image-no-test", "2-images", "2-images-no-test"],
)
def test_a_folder_too_small_to_split_names_the_key(
    n_images: int,
    test_fraction: float,
    error: type[Exception],
    message: str,
    compose_tiny: ComposeFn,
    normal_dir: Path,
    tmp_path: Path,
) -> None:
    small = small_folder(normal_dir, tmp_path, n_images)
    cfg = compose_tiny([*folder_only_good(small), f"dataset.test_fraction={test_fraction}"])
    with pytest.raises(error, match=message):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.slow
def test_with_test_false_no_normal_image_is_held_out_for_testing(
    compose_tiny: ComposeFn, normal_dir: Path, tmp_path: Path
) -> None:
    small = small_folder(normal_dir, tmp_path, 2)  # with the default test_fraction=0.2 one would be tested
    cfg = compose_tiny([*folder_only_good(small), "test=false"])
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["train/epochs"] == 1 and metrics["validation_anomalies"] == "synthetic"
    assert not any(key.startswith("test/") for key in metrics)


def test_real_validation_anomalies_on_good_images_only_point_at_synthetic_ones(
    compose_tiny: ComposeFn, normal_dir: Path
) -> None:
    cfg = compose_tiny([*folder_only_good(normal_dir), "validation_anomalies=real"])
    # raising dataset.val_anomalous cannot help where there is no anomalous image: the advice is synthetic ones
    cannot_help = r"source=real leaves no anomalous validation image: the data holds no anomalous image, so raising"
    with pytest.raises(SplitError, match=rf"{cannot_help} dataset\.val_anomalous cannot help.*=synthetic\)"):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


# 7. does the synthetic objective rank trials as the real anomalies do (scripts/objective_agreement) ---------------


def write_trials(sweep: Path, rows: list[dict[str, float]]) -> None:
    for number, metrics in enumerate(rows):
        (sweep / str(number)).mkdir(parents=True)
        (sweep / str(number) / "metrics.json").write_text(json.dumps({**metrics, "validation_anomalies": "both"}))


def test_objective_agreement_ranks_each_objective_against_the_test_auroc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_auroc = [0.6, 0.9, 0.7, 0.8]
    write_trials(
        tmp_path / "sweep",
        [
            {
                "test/image_auroc": auroc,
                "val/real/wasserstein": 10 * auroc,  # the same order as the test AUROC
                "val/synthetic_perlin/wasserstein": -auroc,  # the reverse order
                "val/synthetic_cutpaste/wasserstein": [0.3, 0.1, 0.4, 0.2][i],  # picks trial 2 (test 0.7)
                "val/image_auroc": 0.5,  # not an objective of this table
            }
            for i, auroc in enumerate(test_auroc)
        ],
    )
    rows = {row["objective"]: row for row in agreement_rows(load_runs([tmp_path / "sweep"]))}
    assert sorted(rows) == [
        "val/real/wasserstein",
        "val/synthetic_cutpaste/wasserstein",
        "val/synthetic_perlin/wasserstein",
    ]
    assert rows["val/real/wasserstein"]["spearman"] == pytest.approx(1.0)
    assert rows["val/real/wasserstein"]["picked_test_auroc"] == 0.9
    assert rows["val/synthetic_perlin/wasserstein"]["spearman"] == pytest.approx(-1.0)
    assert rows["val/synthetic_perlin/wasserstein"]["picked_test_auroc"] == 0.6
    assert rows["val/synthetic_cutpaste/wasserstein"]["spearman"] == pytest.approx(
        -0.8
    )  # ranks 3142 against 1423: 1 - 6*18/(4*15)
    assert rows["val/synthetic_cutpaste/wasserstein"]["picked_test_auroc"] == 0.7
    assert all(row["best_test_auroc"] == 0.9 and row["trials"] == 4 for row in rows.values())

    objective_agreement_main([str(tmp_path / "sweep")])
    table = capsys.readouterr().out
    assert "| val/synthetic_cutpaste/wasserstein | 4 | -0.80 | 0.700 (sweep/2) | 0.900 |" in table


def test_objective_agreement_on_a_folder_without_trials_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        objective_agreement_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"objective_agreement: {tmp_path}: no metrics.json in it or in its trial folders"
    )


ONLY_PERLIN = "dataset.validation_anomalies.generator=perlin"
TWO_GENERATORS_METRIC = "objective.metric=val/synthetic_cutpaste/image_auroc"


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["validation_anomalies=both", "objective.metric=val/real/wasserstein"], True),
        (["validation_anomalies=both", "objective.metric=val/synthetic_perlin/image_auroc"], True),
        (["validation_anomalies=both", ONLY_PERLIN, "objective.metric=val/synthetic_cutpaste/wasserstein"], False),
        (["validation_anomalies=synthetic", ONLY_PERLIN, "objective.metric=val/synthetic_perlin/wasserstein"], False),
        (["validation_anomalies=synthetic", "objective.metric=val/synthetic_perlin/wasserstein"], True),
        (
            [
                "dataset.validation_anomalies.generator=[perlin,cutpaste]",
                "objective.metric=val/synthetic_cutpaste/wasserstein",
            ],
            True,
        ),
        (["validation_anomalies=real", "objective.metric=val/real/wasserstein"], False),
    ],
    ids=[
        "both-real",
        "both-perlin-auroc",
        "both-cutpaste-not-generated",
        "one-kind",
        "default-two-generators",
        "two-generators",
        "real-only",
    ],
)
def test_an_objective_of_one_kind_of_anomaly_needs_that_kind_beside_another(
    overrides: list[str], allowed: bool, compose_tiny: ComposeFn
) -> None:
    cfg = compose_tiny(overrides)
    if allowed:
        check_train_config(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^objective\.metric='val/"):
            check_train_config(cfg)


@pytest.mark.filterwarnings("ignore:(create|add)_trial is experimental:optuna.exceptions.ExperimentalWarning")
def test_objective_agreement_reads_a_studys_trained_trials(tmp_path: Path) -> None:
    write_trials(tmp_path / "sweep", [{"test/image_auroc": a, "val/wasserstein": a} for a in (0.5, 0.7, 0.6)])
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for number in range(3):
        study.add_trial(
            optuna.trial.create_trial(value=0.1, user_attrs={"output_dir": str(tmp_path / "sweep" / str(number))})
        )
    twin = {"output_dir": str(tmp_path / "sweep" / "1"), "duplicate_of": 1}  # a point drawn again: nothing trained
    study.add_trial(optuna.trial.create_trial(value=0.1, user_attrs=twin))
    (row,) = agreement_rows(study_runs(storage, "s"))
    assert row["trials"] == 3 and row["spearman"] == pytest.approx(1.0) and row["picked_test_auroc"] == 0.7


@pytest.mark.slow
def test_rescoring_a_run_on_its_own_validation_gives_its_logged_objective(
    tiny_bottles_root: Path, cache: Path, tmp_path: Path
) -> None:
    """objective_agreement --rescore composes a run's recorded options (plus others) and scores its checkpoint
    again: on the run's own options that is the objective the run logged; on other anomalies it differs."""
    options = [*TINY, f"paths.cache_dir={cache}", "dataset=mvtec", f"dataset.root={tiny_bottles_root}"]
    options += ["dataset.val_fraction=0.5", "validation_anomalies=both", "callbacks.model_checkpoint.monitor=null"]
    folder = tmp_path / "run"
    run(compose_config([*options, f"paths.output_dir={folder}"]))
    (folder / ".hydra").mkdir()  # what Hydra records for a command-line run
    (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(options))
    logged = json.loads((folder / "metrics.json").read_text())["val/wasserstein"]
    assert rescored_objective(folder, ["seed=0"]) == pytest.approx(logged, rel=1e-5)
    cutpaste = rescored_objective(
        folder, ["validation_anomalies=synthetic", "dataset.validation_anomalies.generator=cutpaste"]
    )
    assert math.isfinite(cutpaste) and cutpaste != pytest.approx(logged, rel=1e-3)
