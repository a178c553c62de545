"""backend=openvino's settings and bench-predict's backends=, checked without openvino installed (the fast tier:
`make test` runs before `make test-all` installs the openvino extra; tests/test_openvino.py needs it)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import ConfigError
from anomaly_lab.predict import checked_settings


def config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        extra = ["progress=false", "device=cpu"] if name == "predict" else []
        return compose(config_name=name, overrides=[*extra, *overrides])


def test_backend_openvino_runs_on_the_cpu_and_takes_no_torch_options() -> None:
    base = ["ckpt_path=x.ckpt", "input=x", "output=out", "backend=openvino"]
    assert checked_settings(config("predict", base)).device == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='cuda' is not valid with backend=openvino"):
        checked_settings(config("predict", [*base, "device=cuda"]))
    with pytest.raises(ConfigError, match="stack_passes=true is not valid with backend=openvino"):
        checked_settings(config("predict", [*base, "stack_passes=true"]))


def test_bench_backends_setting_is_checked() -> None:
    from anomaly_lab.tools.bench_predict import split_args

    assert split_args(["backends=all", "batch_size=4"]) == (
        {"repeats": 3, "warmup": 1, "backends": ["torch", "onnxruntime", "openvino"]},
        ["batch_size=4"],
    )
    assert split_args(["backends=openvino,torch"])[0]["backends"] == ["openvino", "torch"]
    with pytest.raises(ConfigError, match="backends='tflite' is not valid"):
        split_args(["backends=tflite"])
    with pytest.raises(ConfigError, match="backend= and backends= together"):
        split_args(["backends=all", "backend=torch"])


def test_without_openvino_the_backend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from anomaly_lab.openvino_backend import openvino_module

    monkeypatch.setitem(sys.modules, "openvino", None)  # as where the extra is not installed
    with pytest.raises(ConfigError, match=r"need openvino \(the openvino extra\): pip install -e '\.\[openvino\]'"):
        openvino_module()
