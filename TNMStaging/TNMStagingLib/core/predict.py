"""The learned stage of one case: image and measured features of a CT + labelmap, then the staging model.

Used by the background staging worker and ``tnmstaging predict``. Heavy imports (torch, Segment Anything,
XGBoost) stay inside the functions.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

RANDOM_INIT_NOTE = "randomly initialised encoder: its image features carry no learned meaning"


def build_encoder(spec, checkpoint: Path | None, random_init: bool, seed: int | None):
    """Built encoder: the given checkpoint, a seeded random init, or the manifest's verified checkpoint."""
    from TNMStagingLib.core import features

    if checkpoint is None and random_init:
        return features.build_encoder(spec, None, seed=seed)
    return features.build_encoder(spec, checkpoint or features.resolve_checkpoint(spec))


def model_columns(model, table):
    """Feature matrix of ``table`` in the model's column order; ``ValueError`` when incompatible."""
    import numpy as np

    missing = [name for name in model.feature_names if name not in table.feature_names]
    if missing:
        raise ValueError(
            f"the feature table lacks {len(missing)} of the model's features ({', '.join(missing[:5])}...)"
        )
    if table.encoder["weights"] != model.encoder["weights"] or table.feature_config != model.feature_config:
        raise ValueError(
            "the feature table was computed with another encoder, weights or feature settings than the model "
            f"(table {table.encoder['weights']}, model {model.encoder['weights']})"
        )
    index = [table.feature_names.index(name) for name in model.feature_names]
    return np.asarray(table.X)[:, index]


def predict_case(
    model,
    ct,
    labels,
    *,
    checkpoint: Path | None = None,
    device: str = "auto",
    progress=None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Stage probabilities of one CT + 0/1/2 labelmap (``sitk.Image`` on one grid) with a loaded model.

    The encoder runs only when the model selected image features: a random-init model rebuilds its seeded
    encoder; otherwise ``checkpoint`` (or the manifest's) must have the SHA-256 the model was trained with.
    """
    from dataclasses import replace

    from TNMStagingLib.core import features

    config = features.FeatureConfig.from_dict(model.feature_config)
    encoder = None
    if config.image_features and model.needs_image_features():
        random_init = model.encoder["weights"] == features.RANDOM_INIT
        encoder = build_encoder(config.encoder, checkpoint, random_init, model.encoder.get("seed"))
        if encoder.weights != model.encoder["weights"]:
            raise ValueError(
                f"encoder weights {encoder.weights} differ from the model's {model.encoder['weights']}"
            )
    else:
        config = replace(config, image_features=False)
    result = features.case_features(
        ct, labels, config, encoder, device=device, progress=progress, cancel=cancel
    )
    probabilities = model.predict_values(result.values)
    cv = model.cv or {}
    keys = ("accuracy", "balanced_accuracy", "auc_ovr_macro", "n", "n_patients", "n_splits")
    output = {
        "stage": max(probabilities, key=probabilities.get),
        "probabilities": probabilities,
        "demo_only": model.demo_only,
        "cv_metrics": {key: cv.get(key) for key in keys},
        "training_data": model.training_data,
        "encoder": dict(model.encoder) | {"used": encoder is not None},
        "measured": {name: result.values[name] for name in features.MEASURED_FEATURES},
    }
    if model.encoder.get("weights") == features.RANDOM_INIT:
        output["encoder"]["note"] = RANDOM_INIT_NOTE
    return output
