"""The trained model: one torch object that is trained, scored, saved, predicted with and exported.

InpaintingModel holds the backbone net, the masking, the anomaly map, the image-score reduction and the
preprocessing, plus the image-score and pixel thresholds chosen on validation. It is built from config by one
`instantiate(cfg.model)`; the LightningModule (anomaly_lab.lightning_model) wraps it for training, and
anomaly_lab.checkpoint_loading rebuilds it from a checkpoint for predict and export. Any nn.Module that maps
(B,3,H,W) to (B,3,H,W) is a backbone: the size check is a test forward pass.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn

from anomaly_lab.errors import as_typed
from anomaly_lab.masking import GridMasking, Masking, inpaint_for_training
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.registry import checkpoint_class
from anomaly_lab.scoring import REDUCTIONS, AnomalyMap, full_coverage_scores


class NetShapeError(ValueError):
    """A backbone that does not map (B,3,H,W) images to (B,3,H,W)."""


def net_shape_error(named: str, error: Exception) -> NetShapeError:
    """The net's refusal of (1,3,H,W) images; one that names its option (`image_size=50: must be a multiple of ...`,
    nets.unet.check_divisible) as it is, so that the config key leads."""
    keyed = isinstance(error, ValueError) and re.match(r"[\w.]+=", str(error))
    return NetShapeError(str(error) if keyed else f"the net cannot take {named} images: {error}")


def check_net_shape(net: nn.Module, height: int, width: int) -> None:
    """One blank (1,3,height,width) image through the net (eval mode, no grad): its output must have that shape.

    The pass runs on a copy of the net on the meta device (shapes only), so a large size (a typo, a crafted
    checkpoint) costs no memory; a net with an op the meta device lacks is tried for real.
    """
    shape = (1, 3, height, width)
    named = f"(1,3,{height},{width})"
    out: object = None
    try:
        probe = copy.deepcopy(net).to("meta").eval()
        with torch.no_grad():
            out = probe(torch.zeros(shape, device="meta"))
    except NotImplementedError:  # an op without a meta kernel: the real pass below
        pass
    except (RuntimeError, ValueError) as error:
        raise net_shape_error(named, error) from error
    except Exception:  # what only the meta device trips on (batch norm over 0 channels): the real pass below
        pass
    if out is None:
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = net(torch.zeros(shape))
        except (RuntimeError, ValueError) as error:
            raise net_shape_error(named, error) from error
        finally:
            net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NetShapeError(f"the net maps {named} images to {got}, not the same shape")


MAX_COVERAGE_MASK_BYTES = 2**31  # 2 GiB: 16 masks (RIAD's 4 grid sizes) at 2048 px take 256 MiB, at 4096 px 1 GiB


def check_grid_sizes(masking: Masking, height: int, width: int) -> None:
    """Refuse grid sizes above the input's longer side (cells smaller than a pixel), before their grid x grid cells
    are drawn."""
    if isinstance(masking, GridMasking):
        side = max(height, width)
        for key in ("grid_sizes", "score_grid_sizes"):
            if max(getattr(masking, key)) > side:
                raise ValueError(
                    f"masking.{key}={as_typed(getattr(masking, key))}: each must be an integer from 1 to "
                    f"image_size={side} (a larger grid has cells smaller than a pixel)"
                )


def check_coverage_mask_memory(masking: Masking, height: int, width: int) -> None:
    """Refuse a masking and input size whose full-coverage masks would take more than MAX_COVERAGE_MASK_BYTES
    (counted before any is drawn): such a model is a typo or a crafted checkpoint."""
    count = masking.coverage_mask_count()
    needed = count * height * width * 4  # float32
    if needed > MAX_COVERAGE_MASK_BYTES:
        raise ValueError(
            f"{count} full-coverage masks of {height}x{width} px would take {needed / 2**30:.1f} GiB "
            f"(at most {MAX_COVERAGE_MASK_BYTES / 2**30:.0f} GiB): lower image_size or the number of masks"
        )


@checkpoint_class
class InpaintingModel(nn.Module):
    """images (B,3,H,W) in [0, 1] -> anomaly maps (B,1,H,W) and image scores (B,), by full-coverage inpainting.

    The full-coverage mask sets are computed once for the input shape (H,W: preprocessing.input_shape) and kept
    as a buffer, so the forward graph is static (ONNX export) and no batch recomputes them.
    """

    def __init__(
        self,
        image_size: int,
        net: nn.Module,
        masking: Masking,
        anomaly_map: AnomalyMap,
        preprocessing: Preprocessing,
        reduce: str = "mean",
        topk_fraction: float = 0.01,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce={as_typed(reduce)}: must be one of {', '.join(REDUCTIONS)}")
        if not isinstance(channels_last, bool) or not isinstance(compile, bool):
            raise ValueError("channels_last and compile must be true or false")
        if isinstance(topk_fraction, bool) or not isinstance(topk_fraction, int | float) or not 0 < topk_fraction <= 1:
            raise ValueError(f"topk_fraction={as_typed(topk_fraction)}: must be in (0, 1]")
        if preprocessing.image_size != image_size:
            raise ValueError(
                f"preprocessing.image_size={preprocessing.image_size} differs from image_size={image_size}"
            )
        height, width = preprocessing.input_shape
        check_grid_sizes(masking, height, width)
        check_coverage_mask_memory(masking, height, width)
        check_net_shape(net, height, width)
        # channels_last: net weights and input images in NHWC memory order (faster convolutions on GPUs
        # with tensor cores, bf16 especially); results are the same up to rounding.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format) if channels_last else net  # type: ignore[call-overload]
        if compile:
            self.net.compile()  # in place: parameter names and checkpoints stay those of the plain net
        self.masking = masking
        self.anomaly_map = anomaly_map
        self.preprocessing = preprocessing
        self.reduce = reduce
        self.topk_fraction = topk_fraction
        mask_sets = masking.coverage_masks(height, width)  # per grid size (n,1,H,W)
        self.set_sizes = [len(masks) for masks in mask_sets]
        self.coverage_masks: torch.Tensor
        self.register_buffer("coverage_masks", torch.cat(mask_sets), persistent=False)  # (sum n,1,H,W)
        # Image-score threshold chosen on validation (NaN: none); a buffer, so checkpoints carry it.
        self.threshold: torch.Tensor
        self.register_buffer("threshold", torch.tensor(float("nan")))
        # Anomaly-map value from which predict marks a pixel, chosen on validation (thresholds.PixelThreshold;
        # NaN: none, as in checkpoints written before it existed).
        self.pixel_threshold: torch.Tensor
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.setdefault(prefix + "pixel_threshold", torch.tensor(float("nan")))  # an older checkpoint
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def input_shape(self) -> tuple[int, int]:
        """(H, W) of the images the model takes: (image_size, image_size), or the band preprocessing crops."""
        return self.preprocessing.input_shape

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B,1,H,W) and image scores (B,) of images (B,3,H,W)."""
        if tuple(images.shape[-2:]) != self.input_shape:
            raise ValueError(f"expected {'x'.join(map(str, self.input_shape))} images, got {tuple(images.shape)}")
        images = images.contiguous(memory_format=self.memory_format)
        mask_sets = self.coverage_masks.split(self.set_sizes)
        return full_coverage_scores(
            self.net, images, self.masking, self.anomaly_map, self.reduce, self.topk_fraction, mask_sets
        )

    def predict(
        self,
        inputs: Any,
        score_threshold: float | None = None,
        pixel_threshold: float | None = None,
        mask_peak_share: float | None = 0.9,
        batch_size: int = 16,
    ) -> Any:
        """Score image files, PIL images or (H,W,3) uint8 arrays (one, or a list) as `anomaly_lab.predict` does:
        a Prediction each (score, anomalous, anomaly_map and mask at the input's size); see anomaly_lab/api.py."""
        from anomaly_lab.api import predict_images  # the CLI's pipeline (decoding, preprocessing, maps on the file)

        return predict_images(self, inputs, score_threshold, pixel_threshold, mask_peak_share, batch_size)

    def training_reconstruction(self, images: torch.Tensor) -> torch.Tensor:
        """The inpainting the training loss sees (random masks, or the stitched disjoint set).  # (B,3,H,W)"""
        return inpaint_for_training(self.net, images.contiguous(memory_format=self.memory_format), self.masking)

    def masked_inpainting(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One random masking of images (B,3,H,W) and the net's inpainting of it, for pictures: (masked, recon)."""
        height, width = images.shape[-2:]
        masks = self.masking.random_masks(len(images), height, width, device=images.device)  # (B,1,H,W)
        masked = self.masking.apply(images, masks)
        return masked, self.net(masked.contiguous(memory_format=self.memory_format))
