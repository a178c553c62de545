"""Where validation anomalies come from: the data's own anomalous images, synthetic ones, or both.

Most inspection projects start with good parts only. The objective of a sweep (the Wasserstein distance between
normal and anomalous validation scores) and a defect-aware threshold need anomalous validation images; when the
data has none (or on request), they are synthesised from the normal validation images (anomaly_synthesis:
DRAEM-style Perlin blends or CutPaste scars, exact masks, seeded), one anomalous copy of each.

source: auto (real where the data has anomalous validation images, else synthetic), real, synthetic (real
anomalies are then never used for validation: they all go to the test set), both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from anomaly_lab.data.anomaly_synthesis import GENERATORS, synthesise
from anomaly_lab.data.images import DecodedImages, Sample

log = logging.getLogger(__name__)
SOURCES = ("auto", "real", "synthetic", "both")


@dataclass(frozen=True)
class ValidationAnomalies:
    source: str = "auto"
    generator: str = "perlin"  # a name of anomaly_synthesis.GENERATORS: perlin | cutpaste
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"dataset.validation_anomalies.source={self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.generator not in GENERATORS:
            raise ValueError(
                f"dataset.validation_anomalies.generator={self.generator!r}: "
                f"choose one of {', '.join(sorted(GENERATORS))}"
            )

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
        images, masks = synthesise(normal.images, GENERATORS[self.generator](), self.seed)
        defect = f"synthetic_{self.generator}"
        samples = [
            Sample(f"{s.path}#{defect}", 1, defect, None, s.page or s.path, s.row, s.col) for s in normal.samples
        ]
        synthetic = DecodedImages(samples, images, masks)
        log.info("validation anomalies: %d synthetic (%s) from the normal validation images", len(samples), defect)
        if self.source == "both" and real.samples:
            return normal, DecodedImages.concat([real, synthetic]), "real+synthetic"
        return normal, synthetic, "synthetic"
