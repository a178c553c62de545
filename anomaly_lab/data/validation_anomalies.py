"""Where validation anomalies come from: the data's own anomalous images, synthetic ones, or both.

Most inspection projects start with good parts only. The objective of a sweep (the Wasserstein distance between
normal and anomalous validation scores) and a defect-aware threshold need anomalous validation images; when the
data has none (or on request), they are synthesised from the normal validation images (anomaly_synthesis:
DRAEM-style Perlin blends or CutPaste scars, exact masks, seeded), one anomalous copy of each per generator.
With several generators (or real and synthetic anomalies together), validation also logs the separation of each
kind on its own (`val/<kind>/wasserstein`, e.g. `val/synthetic_cutpaste/wasserstein`, `val/real/image_auroc`), so
a sweep can show which synthetic objective ranks trials as the real anomalies do.

source: auto (real where the data has anomalous validation images, else synthetic), real, synthetic (real
anomalies are then never used for validation: they all go to the test set), both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from anomaly_lab.data.anomaly_synthesis import GENERATORS, synthesise
from anomaly_lab.data.images import DecodedImages, Sample
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX

log = logging.getLogger(__name__)
SOURCES = ("auto", "real", "synthetic", "both")
PLACEMENTS = ("anywhere", "part")


@dataclass(frozen=True)
class ValidationAnomalies:
    source: str = "auto"
    # a name of anomaly_synthesis.GENERATORS (perlin | cutpaste) or a list of them: one anomaly per generator
    generator: str | Sequence[str] = ("perlin", "cutpaste")
    seed: int = 0
    # anywhere | part: each synthetic anomaly on the image's part (anomaly_synthesis.part_region), for a part on a
    # plain ground, whose defects are on the part
    placement: str = "anywhere"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"dataset.validation_anomalies.placement={self.placement!r}: choose one of {', '.join(PLACEMENTS)}"
            )
        if self.source not in SOURCES:
            raise ValueError(f"dataset.validation_anomalies.source={self.source!r}: choose one of {', '.join(SOURCES)}")
        if not self.generators or not all(isinstance(name, str) and name in GENERATORS for name in self.generators):
            raise ValueError(
                f"dataset.validation_anomalies.generator={self.generator!r}: "
                f"choose one or a list of {', '.join(sorted(GENERATORS))}"
            )
        if len(set(self.generators)) != len(self.generators):
            raise ValueError(f"dataset.validation_anomalies.generator={self.generator!r} names a generator twice")

    @property
    def generators(self) -> tuple[str, ...]:
        return (self.generator,) if isinstance(self.generator, str) else tuple(self.generator)

    @property
    def uses_real(self) -> bool:
        return self.source != "synthetic"

    def split(self, val: DecodedImages) -> tuple[DecodedImages, DecodedImages, str]:
        """The validation split's normal samples, its anomalous ones (real and/or synthetic) and their kind:
        "real", "synthetic", "real+synthetic" or "none" (source=real on data without anomalies)."""
        normal = val.subset([i for i, s in enumerate(val.samples) if s.label == 0])
        real = val.subset([i for i, s in enumerate(val.samples) if s.label == 1])
        if self.source == "real" or (self.source == "auto" and real.samples):
            return normal, real, "real" if real.samples else "none"
        parts = []
        for name in self.generators:
            images, masks = synthesise(normal.images, GENERATORS[name](), self.seed, self.placement == "part")
            defect = f"{SYNTHETIC_DEFECT_PREFIX}{name}"
            samples = [
                Sample(f"{s.path}#{defect}", 1, defect, None, s.page or s.path, s.row, s.col) for s in normal.samples
            ]
            parts.append(DecodedImages(samples, images, masks))
            log.info(
                "validation anomalies: %d synthetic (%s%s) from the normal validation images",
                len(samples),
                defect,
                ", on the part" if self.placement == "part" else "",
            )
        synthetic = DecodedImages.concat(parts)
        if self.source == "both" and real.samples:
            return normal, DecodedImages.concat([real, synthetic]), "real+synthetic"
        return normal, synthetic, "synthetic"
