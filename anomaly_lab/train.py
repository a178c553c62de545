"""Entry point: `python -m anomaly_lab.train dataset=... model=... masking=...`.

run(cfg) is the one place where config becomes objects; it trains, tests and returns the
validation objective that Optuna sweeps maximise.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from anomaly_lab.callbacks import WithoutNaNFill
from anomaly_lab.checkpoint_loading import load_weights_only, model_spec
from anomaly_lab.checkpointing import (
    AtomicCheckpointIO,
    RandomState,
    check_same_model,
    random_state,
    resume_checkpoint,
    rewrite_model,
    set_random_state,
)
from anomaly_lab.cli import USER_ERRORS, one_line, run_cli, user_errors_exit
from anomaly_lab.config_checks import (
    check_train_config,
    keyed_refusal,
    needs_validation_anomalies,
    option_of,
)
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.deprecations import warn_deprecated_options
from anomaly_lab.errors import ConfigError, SplitError, UserError, as_typed
from anomaly_lab.lightning_model import InpaintingModule
from anomaly_lab.metrics import wasserstein_separation
from anomaly_lab.model import InpaintingModel
from anomaly_lab.results import validation_key
from anomaly_lab.scoring_choice import (
    MapRule,
    ScoringSearch,
    ValidationChoice,
    apply_validation_choice,
    choose_on_validation,
)
from anomaly_lab.thresholds import AutoThreshold, F1Threshold, FixedThreshold, ThresholdRule
from anomaly_lab.training_end import (
    TrainingHealth,
    ValidateLastEpoch,
    collapse_reasons,
    smoke_run_batches,
    stopped_early_by,
)

log = logging.getLogger(__name__)


@contextmanager
def config_group(name: str, option: Callable[[str], str | None] | None = None) -> Iterator[None]:
    """An error while building `name` from its config becomes a ConfigError naming the group; with `option`
    (config_checks.option_of), a class's refusal of one of its values names the option the user sets it through."""
    try:
        yield
    except (
        ValueError,
        TypeError,
        RuntimeError,
        KeyError,
        AttributeError,
        HydraException,
        MisconfigurationException,
    ) as error:
        if isinstance(error, UserError):
            raise
        if isinstance(error, HydraException) and isinstance(error.__cause__, UserError):
            raise error.__cause__ from None  # the class's own refusal, which names its key (threshold.value=nan)
        keyed = keyed_refusal(error, option) if option is not None else None
        if keyed is not None:
            raise ConfigError(keyed) from error
        raise ConfigError(f"{name}: {one_line(error)}") from error


def build_scoring(
    cfg: DictConfig, option: Callable[[str], str | None] | None = None
) -> tuple[torch.nn.Module, ThresholdRule | None]:
    """The training loss (scoring.loss) and the threshold rule (threshold, if any), each error naming its group."""
    with config_group("scoring", option):
        loss = instantiate(cfg.scoring.loss)
    threshold_rule = None
    if cfg.get("threshold"):
        with config_group("threshold", option):
            threshold_rule = instantiate(cfg.threshold)
    return loss, threshold_rule


def build_module(cfg: DictConfig) -> InpaintingModule:
    """The trained model (one instantiate of `model`) in its LightningModule, every part built and checked before
    any data is read: a ConfigError names the option of a value the class built from it refuses (or its group)."""
    option = option_of(cfg)
    cfg = copy.deepcopy(cfg)  # instantiate resolves the interpolations it follows in place: the caller's cfg stays
    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.WARNING  # no "GPU available" lines for a check
    try:
        with warnings.catch_warnings():  # torch's warnings about an odd net are not the point here
            warnings.simplefilter("ignore")
            with config_group("model", option):
                model: InpaintingModel = instantiate(cfg.model)
                spec = model_spec(OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
            with config_group("dataset", option):  # its settings refused before the run folder (it reads no file yet)
                instantiate(cfg.dataset, preprocessing=model.preprocessing)
            loss, threshold_rule = build_scoring(cfg, option)
            pixel_threshold_rule = None
            if cfg.get("pixel_threshold_rule"):
                with config_group("pixel_threshold_rule", option):
                    pixel_threshold_rule = instantiate(cfg.pixel_threshold_rule)
            with config_group("optimizer", option):
                optimizer = instantiate(cfg.optimizer)
                trial = optimizer(params=model.parameters())  # a refused setting (weight decay, betas, ...) fails here
            scheduler = None
            if cfg.get("scheduler"):
                with config_group("scheduler", option):
                    scheduler = instantiate(cfg.scheduler)
                    scheduler(optimizer=trial)
            with config_group("trainer", option):
                accelerator = OmegaConf.select(cfg, "trainer.accelerator")
                if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # Lightning: "no gpu backend"
                    raise ConfigError(
                        f"trainer.accelerator={accelerator}: torch sees no CUDA GPU on this machine; use trainer=cpu, "
                        f"or trainer=auto (the default: the GPU when there is one, else the CPU)"
                    )
                instantiate(cfg.trainer, default_root_dir=None, logger=False, callbacks=[], enable_checkpointing=False)
    finally:
        quiet.level = level
    return InpaintingModule(
        model=model,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        normalise_wasserstein=cfg.objective.normalise,
        threshold_rule=threshold_rule,
        spec=spec,
        pixel_threshold_rule=pixel_threshold_rule,
    )


# Models the run folder guard built before Hydra created the run folder, for run() of the same config (its YAML, the
# hydra node left out): the model and the random state that seeding and building it left.
BUILT: dict[str, tuple[InpaintingModule, dict[str, Any]]] = {}


def task_yaml(cfg: DictConfig) -> str:
    """The config as the task function gets it (the hydra node left out), unresolved: BUILT's key."""
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"]))


def prepare_module(cfg: DictConfig, keep: bool = False) -> InpaintingModule:
    """The config checked (config_checks) and the model seeded by cfg.seed and built (build_module): every value
    refused before anything is read or written. keep: the run folder guard's, kept in BUILT for run()."""
    check_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=not keep)  # the guard: a config error stays the one line
    module = build_module(cfg)
    if keep:
        BUILT[task_yaml(cfg)] = module, random_state()
    return module


def take_built(cfg: DictConfig) -> InpaintingModule | None:
    """The model the run folder guard built for this config, with the random state it left (None: none built), so
    a run builds its model once and draws as a run without the guard does."""
    module, state = BUILT.pop(task_yaml(cfg), (None, {}))
    if module is not None:
        set_random_state(state)
    return module


def check_splits(datamodule: L.LightningDataModule, cfg: DictConfig) -> None:
    """Every split the run will use holds what it needs, checked before the first training step."""
    splits = getattr(datamodule, "splits", None)
    if not splits:
        return  # a datamodule of another kind: Lightning's own checks apply
    counts = {name: [s.label for s in split.samples] for name, split in splits.items()}
    if not counts["train"]:
        raise SplitError("the training split is empty; lower dataset.val_fraction (or dataset.test_fraction)")
    if needs_validation_anomalies(cfg) and counts["val"].count(1) == 0:
        if not any(1 in labels for labels in counts.values()):  # no split holds a real anomaly to take
            raise SplitError(
                f"dataset.validation_anomalies.source={OmegaConf.select(cfg, 'dataset.validation_anomalies.source')} "
                f"leaves no anomalous validation image: the data holds no anomalous image, so raising "
                f"dataset.val_anomalous cannot help; objective.metric={cfg.objective.metric} needs some: use "
                f"synthetic ones (validation_anomalies=synthetic), or set objective.metric=val/loss"
            )
        raise SplitError(
            f"dataset.val_anomalous={cfg.dataset.get('val_anomalous')} leaves no anomalous validation image; "
            f"objective.metric={cfg.objective.metric} needs some: raise it (a share or a count), "
            f"use synthetic ones (validation_anomalies=synthetic), or set objective.metric=val/loss"
        )
    if cfg.test and not counts["test"]:
        hold_out = "dataset.test_fraction" if "test_fraction" in cfg.dataset else "a test/good folder"
        raise SplitError(
            f"the test split is empty; hold out normal images ({hold_out}), lower dataset.val_anomalous, "
            f"or set test=false"
        )


def check_threshold_rule(rule: ThresholdRule | None, datamodule: L.LightningDataModule, cfg: DictConfig) -> None:
    """The threshold rule, run once on the validation split's labels (placeholder scores), accepts them: a rule that
    needs more validation images than the split holds fails now, not after training."""
    splits = getattr(datamodule, "splits", None)
    if rule is None or not splits or isinstance(rule, FixedThreshold):  # a fixed value needs no validation image
        return
    labels = [s.label for s in splits["val"].samples]
    if getattr(datamodule, "validation_anomaly_kind", "real") in ("synthetic", "both"):
        labels.append(1)  # validation adds synthetic anomalies to the split
    try:
        rule(torch.arange(len(labels), dtype=torch.float64), torch.tensor(labels))
    except ValueError as error:
        raise SplitError(
            f"{error}; dataset.val_fraction={cfg.dataset.get('val_fraction')} leaves {labels.count(0)} normal and "
            f"{labels.count(1)} anomalous validation images"
        ) from error


def held_and_scored_test_labels(
    datamodule: L.LightningDataModule, module: InpaintingModule
) -> tuple[list[int] | None, list[int]]:
    """The labels of the test split's images (None for a datamodule without splits) and of those the test scored
    (fewer under trainer.fast_dev_run or trainer.limit_test_batches)."""
    splits = getattr(datamodule, "splits", None)
    held = [s.label for s in splits["test"].samples] if splits and "test" in splits else None
    scored = module.results.get("test")
    return held, [] if scored is None else scored.labels.tolist()


def missing_auroc_note(held: list[int] | None, scored: list[int], cfg: DictConfig) -> str:
    """Why the test logged no image AUROC: what the test set holds, not what the scored part of it held."""
    if held is None:
        held = scored
    if 1 not in held:
        return (
            "the test set holds no anomalous image (good images only): no AUROC, AUPRO or F1; test/fp and "
            "test/tn count the normal test images called anomalous or normal at the threshold"
        )
    if 0 not in held:
        return "the test set holds no normal image (anomalous images only): no AUROC or AUPRO"
    kind = "anomalous" if 1 in scored else "normal"
    limit = as_typed(OmegaConf.select(cfg, "trainer.limit_test_batches"))
    return (
        f"the test scored {len(scored)} of the {len(held)} test images (trainer.limit_test_batches={limit}), all "
        f"{kind}: no AUROC, AUPRO or F1; the whole test set holds {held.count(1)} anomalous and "
        f"{held.count(0)} normal images"
    )


def smoke_run_note(batches: int, steps: int, held: list[int] | None, scored: list[int]) -> str:
    """What a trainer.fast_dev_run run is: a check that the command runs, not a measurement."""
    tested = f", {len(scored)} of the {len(held)} test images scored" if held else ""
    return (
        f"trainer.fast_dev_run: a smoke run of {batches} batch{'es' if batches > 1 else ''} per stage ({steps} "
        f"training step{'s' if steps != 1 else ''}{tested}): it shows that the command runs; its metrics are not "
        f"meaningful and the model is not checked for collapse"
    )


def stopped_early_note(cause: str, cfg: DictConfig, trained: int, planned: int, cut_short: bool) -> str:
    """The warning for training that ended before trainer.max_epochs: a recipe is its epochs."""
    settings = {"max_time": "trainer.max_time", "max_steps": "trainer.max_steps"}
    what = f"{settings[cause]}={as_typed(OmegaConf.select(cfg, settings[cause]))}" if cause in settings else cause
    undo = f"; {settings[cause]}=null trains every epoch" if cause in settings else ""
    return (
        f"{what} stopped training after {trained} of the {planned} planned epochs (trainer.max_epochs)"
        f"{', the last one cut short' if cut_short else ''}: this is not the model the planned epochs train "
        f"(metrics.json: stopped_early_by={cause}, epochs_trained={trained}, epochs_planned={planned}){undo}"
    )


def choose_scoring(
    trainer: L.Trainer,
    module: InpaintingModule,
    datamodule: L.LightningDataModule,
    search: ScoringSearch,
    output_dir: Path,
) -> dict[str, Any]:
    """scoring=auto: the scoring of the checkpoint test will read (best.ckpt), chosen on validation and written
    into that file with a threshold on the chosen scores; returns the val/chosen/* metrics. Reads no test image."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if best is None or module.spec is None:
        return {}
    path = Path(best)
    # resume=true of a finished run: best.ckpt may hold a previous choice's normal statistics, chosen again below
    weights = load_weights_only(path)["state_dict"]
    module.load_state_dict({k: v for k, v in weights.items() if not k.startswith("model.anomaly_map.normal_")})
    loader = datamodule.val_dataloader()
    if trainer.world_size > 1:  # DDP: each process validates a shard; process 0 chooses on the whole split
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)
    chosen: ValidationChoice | None = None
    if trainer.is_global_zero:
        recipe_map = MapRule.of(module.model.anomaly_map)  # the configured map: choose_scoring runs before any choice
        chosen = choose_on_validation(module.model, loader, search, module.pixel_threshold_rule, recipe_map)
    chosen = trainer.strategy.broadcast(chosen, src=0)  # the same choice in every process
    if chosen is None:
        raise RuntimeError("scoring=auto: process 0 sent no choice")
    module.spec["model"].update(apply_validation_choice(module.model, chosen, module.threshold_rule))
    choice, labels, pixel = chosen.choice, chosen.labels, chosen.pixel_threshold
    scores = choice.val_scores.double()  # (N,)
    normal, anomalous = scores[labels == 0].numpy(), scores[labels == 1].numpy()
    metrics: dict[str, Any] = {
        "val/chosen/image_auroc": choice.image_table[0]["image_auroc"],
        "val/chosen/wasserstein_normalised": choice.image_table[0]["wasserstein_normalised"],
        "val/chosen/wasserstein": wasserstein_separation(
            normal, anomalous, normalise=module.normalise_wasserstein, signed=True
        ),
        "val/chosen/threshold": float(module.model.threshold),
        **({"val/chosen/pixel_threshold": pixel[0]} if pixel is not None else {}),
        "scoring_chosen": choice.summary(),
    }
    if choice.pixel_table:  # the chosen map's; tune ranks tied trials by the best candidate's
        metrics["val/chosen/pixel_auroc_model_res"] = choice.map_pixel_auroc
        metrics["val/chosen/best_map_pixel_auroc_model_res"] = choice.pixel_table[0]["pixel_auroc"]
    if trainer.is_global_zero:
        rewrite_model(path, module.state_dict(), module.spec)
        table = {
            "chosen": choice.anomaly_map_node()
            | {"reduce": choice.score_rule.reduce, "topk_fraction": choice.score_rule.topk_fraction},
            "image_score": choice.image_table,
            "anomaly_map": choice.pixel_table,
            **({"anomaly_map_against_recipe": choice.map_decision} if choice.map_decision else {}),
            "validation_images": {"normal": len(normal), "anomalous": len(anomalous)},
            **({"pixel_threshold": {"value": pixel[0], "chosen_by": pixel[1]}} if pixel is not None else {}),
        }
        (output_dir / "scoring_choice.json").write_text(json.dumps(table, indent=2))
        log.info(
            "scoring=auto, chosen on validation (%d normal, %d anomalous): %s",
            len(normal),
            len(anomalous),
            choice.summary(),
        )
        for row in choice.image_table[:5]:
            log.info("  %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        add_text = getattr(getattr(trainer.logger, "experiment", None), "add_text", None)  # TensorBoard's
        if callable(add_text):
            header = "| " + " | ".join(choice.image_table[0]) + " |\n|" + "---|" * len(choice.image_table[0]) + "\n"
            rows = "".join(
                "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |\n"
                for row in choice.image_table[:20]
            )
            add_text("scoring_choice", f"{choice.summary()}\n\n{header}{rows}", trainer.global_step)
    trainer.strategy.barrier()
    return metrics


def run(cfg: DictConfig) -> float:
    """Train, test, and return the validation objective (cfg.objective.metric) as a float."""
    set_by = option_of(cfg)  # before build_module resolves cfg
    built = take_built(cfg)  # the run folder guard's (a single run), which also compared a checkpoint to resume
    module = built if built is not None else prepare_module(cfg)
    search: ScoringSearch | None = None
    if OmegaConf.select(cfg, "scoring.choose"):
        with config_group("scoring.choose"):
            search = instantiate(cfg.scoring.choose)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg.resume, output_dir)
    if ckpt_path is not None and module.spec is not None and built is None:
        check_same_model(ckpt_path, module.spec, set_by)
    data_settings: dict[str, Any] = {"preprocessing": module.model.preprocessing}
    test_fraction = OmegaConf.select(cfg, "dataset.test_fraction")
    if not cfg.test and test_fraction and not cfg.get("hold_out_test", False):  # every normal trains or validates
        data_settings["test_fraction"] = 0.0
        log.info(
            "test=false: no normal image is held out for testing (dataset.test_fraction=%s not used)", test_fraction
        )
    datamodule: L.LightningDataModule = instantiate(cfg.dataset, **data_settings)
    datamodule.setup("fit")  # decode and split now: bad data and empty splits fail before training
    check_splits(datamodule, cfg)
    validation_anomalies = str(getattr(datamodule, "validation_anomaly_kind", "real"))
    if isinstance(module.threshold_rule, AutoThreshold):  # F1 only on real anomalies, else a percentile of normals
        module.threshold_rule = module.threshold_rule.for_validation(validation_anomalies == "real")
    elif isinstance(module.threshold_rule, F1Threshold) and validation_anomalies in ("synthetic", "both"):
        log.warning("threshold=f1 fits the %s validation anomalies; threshold=auto does not", validation_anomalies)
    check_threshold_rule(module.threshold_rule, datamodule, cfg)
    source = OmegaConf.select(cfg, "dataset.validation_anomalies.source")
    if source == "both" and validation_anomalies == "synthetic":
        log.info("validation_anomalies=both: the data has no anomalous validation image, so they are synthetic only")
    health = TrainingHealth()
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [RandomState(), ValidateLastEpoch(), WithoutNaNFill(), health]
    pruning = None
    if cfg.get("sweep_trial"):  # a trial of a resumable_optuna sweep: report each validation, stop when pruned
        from anomaly_lab.sweeps.pruning import TrialPruning

        pruning = TrialPruning.from_config(cfg.sweep_trial, metric=cfg.objective.metric)
        callbacks.append(pruning)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    try:
        with warnings.catch_warnings():
            if ckpt_path is not None:  # resuming into its own folder: the checkpoints there are the point
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit(1) after its own clean-up
        log.error(
            "training interrupted; last.ckpt holds the last finished epoch: continue with "
            "`python -m anomaly_lab.train <the same options> resume=true hydra.run.dir=%s`",
            output_dir,
        )
        raise

    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    pruned_epoch = None if pruning is None else pruning.pruned_epoch
    if pruned_epoch is not None:  # the sweep drops the trial: no test
        metrics["pruned_at_epoch"] = pruned_epoch
    elif search is not None:  # scoring=auto: chosen on validation before the test reads its first image
        metrics.update(choose_scoring(trainer, module, datamodule, search, output_dir))
    if cfg.test and pruned_epoch is None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None  # none under fast_dev_run
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        selects_nothing = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor") is None
        if selects_nothing and "real" in validation_anomalies and hasattr(datamodule, "test_split"):
            # validation chose no checkpoint: also score the whole test set (the anomalies validation held out
            # too), the set published tables measure; scores.csv and the figures stay the test split's
            datamodule.test_split, module.test_prefix = "all", "test/all"
            trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
            datamodule.test_split, module.test_prefix = "test", "test"
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/all/")})
    metrics_path = output_dir / "metrics.json"
    if ckpt_path is not None and metrics_path.is_file():  # a resumed run keeps what the run recorded before
        metrics = {**json.loads(metrics_path.read_text()), **metrics}
    # a recipe is its epochs: how many ran of those planned, and what stopped training before them
    planned = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    stopped_by = pruning.stopped_by if pruning is not None and pruned_epoch is not None else stopped_early_by(trainer)
    metrics.update(epochs_trained=trainer.current_epoch, epochs_planned=planned, stopped_early_by=stopped_by)
    smoke_batches = smoke_run_batches(trainer)  # trainer.fast_dev_run: one step and a batch per stage prove nothing
    reasons = [] if smoke_batches else collapse_reasons(metrics, health.epoch_losses)
    metrics.update(collapsed=None if smoke_batches else bool(reasons), collapse_reasons=reasons)
    metrics.update(validation_anomalies=validation_anomalies)
    if smoke_batches:
        metrics["fast_dev_run"] = smoke_batches  # batches per stage: these metrics measure nothing
    held, scored = held_and_scored_test_labels(datamodule, module)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for name in sorted(metrics):
            if name.startswith("test/"):
                log.info("%s = %.4f", name, metrics[name])
        if smoke_batches:
            log.info(smoke_run_note(smoke_batches, trainer.global_step, held if cfg.test else None, scored))
        elif cfg.test and pruned_epoch is None and "test/image_auroc" not in metrics:
            log.warning(missing_auroc_note(held, scored, cfg))
        if stopped_by not in (None, "pruning", "deadline") and planned is not None:
            cut_short = health.last_epoch_cut_short
            log.warning(stopped_early_note(stopped_by, cfg, trainer.current_epoch, planned, cut_short))
        if reasons:
            log.warning(
                "THE MODEL LOOKS COLLAPSED (metrics.json: collapsed=true): %s. Lower optimizer.lr or check the data.",
                "; ".join(reasons),
            )
    if pruning is not None:
        pruning.raise_if_pruned()  # optuna.TrialPruned: the sweeper records the trial as PRUNED
    name = validation_key(metrics, cfg.objective.metric)  # scoring=auto: the chosen scoring's objective
    if name not in metrics:
        raise KeyError(f"objective.metric={name!r} was not logged (logged: {sorted(metrics)})")
    value = metrics[name]
    return value if math.isfinite(value) else -math.inf


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    torch.set_float32_matmul_precision("high")
    # the config is in the run folder (.hydra/config.yaml); the console shows it with hydra.verbose=anomaly_lab.train
    # (this logger's name also under `python -m`, where the module's own is __main__)
    logging.getLogger("anomaly_lab.train").debug("config:\n%s", OmegaConf.to_yaml(cfg, resolve=False))
    warn_deprecated_options(HydraConfig.get().runtime.choices)
    single_run = HydraConfig.get().mode == RunMode.RUN
    with user_errors_exit(enabled=single_run):
        try:
            objective = run(cfg)
        except USER_ERRORS as error:  # a sweep's trial fails; its own train.log says why, as a single run's does
            if not single_run:
                log.error("%s: %s", type(error).__name__, one_line(error))
            raise
    return objective


if __name__ == "__main__":
    run_cli(main)
