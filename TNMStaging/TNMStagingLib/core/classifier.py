"""Stage classifier: mutual-information + XGBoost-importance feature selection, then XGBoost.

``StageClassifier`` follows the scikit-learn estimator contract (parameters in ``__init__``, learned
state in attributes ending with ``_``, ``fit`` / ``predict`` / ``predict_proba`` / ``classes_``), so
``sklearn.base.clone`` and the model-selection tools work with it.

Feature selection (on the training data only): features are ranked by mutual information with the stage
(``mutual_info_classif``, seeded; NaN replaced by the column median for this ranking only) and by the
gain importance of a first XGBoost fit on all features; the two ranks are averaged and the
``n_features`` best (ties: lower column index first) are kept. The final ``XGBClassifier`` is fitted on
those columns; XGBoost handles NaN (an absent tumor's HU statistics) natively.

Stages are strings (``"0"``, ``"I"``, ``"IIIA"``, or ``"2"`` for an integer stage) ordered by stage
group (0 < I < IA < IB < II < ... < IVB); ``label_map_`` maps them to the contiguous class indices
0..K-1 of the booster. ``merge_stage0_into_1`` maps stage 0 to the lowest stage-I label of the training
data (``"I"``, ``"IA"``, ``"1"``; ``"I"`` if there is none), as the reference report's 4-class variant.

``cross_validate`` runs patient-level stratified k-fold cross-validation; ``save_model`` / ``load_model``
write and read the single-file model artifact (a zip: ``staging_model.json`` with the label map, selected
features, feature/encoder configuration, cross-validation metrics and demo flag, plus ``booster.ubj``,
the XGBoost booster in its own UBJSON format; no pickle).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin

ARTIFACT_FORMAT = "tnmstaging-model"
ARTIFACT_VERSION = 1
_MANIFEST_NAME, _BOOSTER_NAME = "staging_model.json", "booster.ubj"
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}
_STAGE_RE = re.compile(r"^(IV|III|II|I|[0-9]+)([A-C]?)$")


def normalize_stage(value: Any) -> str:
    """Canonical stage string: ``3`` / ``3.0`` -> ``"3"``, ``" iiia "`` -> ``"IIIA"``, ``"Stage II"`` -> ``"II"``."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"stage {value!r} is not a stage")
    if isinstance(value, float):
        if not np.isfinite(value) or value != int(value):
            raise ValueError(f"stage {value!r} is not a stage")
        value = int(value)
    text = str(value).strip().upper()
    text = re.sub(r"^STAGE\s*", "", text)
    if not text:
        raise ValueError(f"stage {value!r} is empty")
    return text


def stage_sort_key(stage: str) -> tuple:
    """Order of stage groups: 0, I/1, IA, IB, II/2, ..., IVB; unknown strings last, alphabetically."""
    match = _STAGE_RE.match(stage)
    if not match:
        return (99, stage)
    major = int(match.group(1)) if match.group(1).isdigit() else _ROMAN[match.group(1)]
    return (major, match.group(2))


def merge_stage0(stages: Sequence[str]) -> list[str]:
    """Stage labels with ``"0"`` replaced by the lowest stage-I label present (``"I"`` if none)."""
    first = sorted({s for s in stages if stage_sort_key(s)[0] == 1}, key=stage_sort_key)
    target = first[0] if first else "I"
    return [target if s == "0" else s for s in stages]


class StageClassifier(ClassifierMixin, BaseEstimator):
    """Feature selection (mutual information + XGBoost importance) then an XGBoost classifier.

    ``X``: (n_cases, n_features) float array (NaN allowed); ``y``: stage labels (strings or ints).
    Learned: ``classes_`` (stage strings, class index order), ``label_map_`` ({stage: index}),
    ``selected_features_`` (column indices, best first), ``feature_names_in_`` (when given),
    ``mi_scores_``, ``importance_scores_``, ``model_`` (the fitted ``xgboost.XGBClassifier``).
    """

    def __init__(
        self,
        n_features: int = 50,
        merge_stage0_into_1: bool = False,
        n_estimators: int = 200,
        max_depth: int = 3,
        learning_rate: float = 0.05,
        subsample: float = 0.9,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_features = n_features
        self.merge_stage0_into_1 = merge_stage0_into_1
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _xgb(self, n_estimators: int | None = None):
        import xgboost

        return xgboost.XGBClassifier(
            n_estimators=n_estimators or self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            tree_method="hist",
            importance_type="total_gain",
        )

    def prepare_labels(self, y: Sequence[Any]) -> list[str]:
        """Stage strings of ``y`` after normalisation and the optional stage-0 merge."""
        stages = [normalize_stage(v) for v in y]
        return merge_stage0(stages) if self.merge_stage0_into_1 else stages

    def fit(self, X, y, feature_names: Sequence[str] | None = None) -> StageClassifier:
        X = _as_matrix(X)
        stages = self.prepare_labels(y)
        if len(stages) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(stages)} labels")
        self.classes_ = np.array(sorted(set(stages), key=stage_sort_key), dtype=object)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least two stages to train, got only {list(self.classes_)}")
        self.label_map_ = {stage: index for index, stage in enumerate(self.classes_)}
        target = np.array([self.label_map_[s] for s in stages])
        self.n_features_in_ = X.shape[1]
        if feature_names is not None:
            if len(feature_names) != X.shape[1]:
                raise ValueError(f"{len(feature_names)} feature names for {X.shape[1]} columns")
            self.feature_names_in_ = np.array(feature_names, dtype=object)
        self.selected_features_ = self._select(X, target)
        self.model_ = self._xgb().fit(X[:, self.selected_features_], target)
        return self

    def _select(self, X: np.ndarray, target: np.ndarray) -> np.ndarray:
        from sklearn.feature_selection import mutual_info_classif
        from threadpoolctl import threadpool_limits

        medians = np.nan_to_num(np.nanmedian(np.where(np.isnan(X).all(axis=0), 0.0, X), axis=0))
        filled = np.where(np.isnan(X), medians, X)
        # Its nearest-neighbour search uses OpenMP threads that crawl on a busy machine: n_jobs threads.
        with threadpool_limits(limits=max(1, int(self.n_jobs))):
            self.mi_scores_ = mutual_info_classif(filled, target, random_state=self.random_state)
        self.importance_scores_ = self._xgb(n_estimators=100).fit(X, target).feature_importances_
        mean_rank = (rankdata(-self.mi_scores_) + rankdata(-self.importance_scores_)) / 2.0
        keep = min(int(self.n_features), X.shape[1])
        if keep < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        return np.lexsort((np.arange(X.shape[1]), mean_rank))[:keep]

    def predict_proba(self, X) -> np.ndarray:
        """(n_cases, n_classes) probabilities, columns in ``classes_`` order."""
        X = _as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, the classifier was fitted on {self.n_features_in_}"
            )
        return self.model_.predict_proba(X[:, self.selected_features_])

    def predict(self, X) -> np.ndarray:
        """Stage label (string) of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def selected_feature_names_(self) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return [f"x{i}" for i in self.selected_features_]
        return [str(names[i]) for i in self.selected_features_]


def _as_matrix(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (cases, features), got shape {X.shape}")
    return X


def classification_metrics(stages_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, one-vs-rest macro AUC and confusion matrix (rows true, columns predicted).

    ``proba`` columns follow ``classes``. The AUC averages the binary AUC of each class that occurs in
    ``stages_true`` without being all of it (None when no class qualifies); ``auc_classes`` lists them.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

    classes = list(classes)
    truth = np.asarray(list(stages_true), dtype=object)
    predicted = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    scored = [c for c in classes if 0 < np.sum(truth == c) < len(truth)]
    aucs = [roc_auc_score(truth == c, proba[:, classes.index(c)]) for c in scored]
    return {
        "n": len(truth),
        "accuracy": float(accuracy_score(truth, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "auc_ovr_macro": float(np.mean(aucs)) if aucs else None,
        "auc_classes": scored,
        "classes": classes,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=classes).tolist(),
    }


def _align_proba(proba: np.ndarray, fold_classes: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Probabilities of a fold model (its own classes) placed in the columns of all ``classes`` (0 elsewhere)."""
    out = np.zeros((proba.shape[0], len(classes)))
    for column, stage in enumerate(fold_classes):
        out[:, list(classes).index(stage)] = proba[:, column]
    return out


def cross_validate(
    X,
    y: Sequence[Any],
    groups: Sequence[Any],
    *,
    estimator: StageClassifier | None = None,
    n_splits: int = 5,
    seed: int = 0,
    feature_names: Sequence[str] | None = None,
) -> dict:
    """Patient-level stratified k-fold cross-validation (``StratifiedGroupKFold``, shuffled with ``seed``).

    ``groups``: patient id of each row; no patient is in two folds. Each fold fits a clone of
    ``estimator`` (default ``StageClassifier()``) on the other folds, feature selection included.
    Returns pooled out-of-fold metrics (``classification_metrics`` plus ``auc_ovr_macro_sklearn``:
    ``roc_auc_score(multi_class="ovr", average="macro")`` on the pooled probabilities), ``folds`` (the
    same per fold, with ``test_patients``), and the fold means.
    """
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    estimator = estimator if estimator is not None else StageClassifier()
    X = _as_matrix(X)
    stages = np.array(estimator.prepare_labels(y), dtype=object)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(set(groups)) < n_splits:
        raise ValueError(f"{len(set(groups))} patients cannot fill {n_splits} folds (use fewer folds)")
    classes = sorted(set(stages), key=stage_sort_key)
    oof = np.zeros((len(stages), len(classes)))
    folds = []
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for index, (train, test) in enumerate(splitter.split(X, stages, groups)):
        model = clone(estimator).fit(X[train], stages[train], feature_names=feature_names)
        oof[test] = _align_proba(model.predict_proba(X[test]), list(model.classes_), classes)
        fold = classification_metrics(stages[test], oof[test], classes)
        fold |= {"fold": index, "test_patients": sorted(set(groups[test]))}
        folds.append(fold)
    result = classification_metrics(stages, oof, classes)
    try:
        sk_auc = roc_auc_score(stages, oof, labels=classes, multi_class="ovr", average="macro")
    except ValueError:  # fewer than three classes, or a class never predicted apart
        sk_auc = None
    result |= {
        "auc_ovr_macro_sklearn": None if sk_auc is None else float(sk_auc),
        "n_splits": n_splits,
        "seed": seed,
        "n_patients": len(set(groups)),
        "folds": folds,
    }
    for key in ("accuracy", "balanced_accuracy", "auc_ovr_macro"):
        values = [f[key] for f in folds if f[key] is not None]
        result[f"fold_mean_{key}"] = float(np.mean(values)) if values else None
    return result


def format_cv_table(cv: dict, pooled_label: str = "pooled") -> str:
    """Markdown table of per-fold and pooled metrics, then the pooled confusion matrix."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| fold | n | accuracy | balanced accuracy | AUC (OvR macro) |", "|---|---|---|---|---|"]
    for fold in cv["folds"]:
        metrics = (cell(fold[k]) for k in ("accuracy", "balanced_accuracy", "auc_ovr_macro"))
        lines.append(f"| {fold['fold'] + 1} | {fold['n']} | " + " | ".join(metrics) + " |")
    pooled = (cell(cv[k]) for k in ("accuracy", "balanced_accuracy", "auc_ovr_macro"))
    lines.append(f"| {pooled_label} | {cv['n']} | " + " | ".join(pooled) + " |")
    lines += ["", "Confusion matrix (rows: true stage, columns: predicted):", ""]
    lines.append("| true \\ predicted | " + " | ".join(cv["classes"]) + " |")
    lines.append("|---" * (len(cv["classes"]) + 1) + "|")
    for stage, row in zip(cv["classes"], cv["confusion_matrix"], strict=True):
        lines.append(f"| {stage} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


@dataclass
class StagingModel:
    """A trained stage classifier with what it needs to be applied and judged.

    ``feature_config``: ``features.FeatureConfig.to_dict()`` of the training features; ``encoder``:
    ``{"name", "input_mode", "weights", "seed"}`` of the image encoder (weights ``"random-init"`` or
    ``"sha256:..."``); ``cv``: the ``cross_validate`` result; ``demo_only``: trained on phantoms.
    """

    classifier: StageClassifier
    feature_config: dict[str, Any]
    encoder: dict[str, Any]
    cv: dict[str, Any] | None = None
    demo_only: bool = False
    training_data: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [str(n) for n in self.classifier.feature_names_in_]

    def needs_image_features(self) -> bool:
        """Whether any selected feature is an image (encoder) feature."""
        return any(name.startswith("img_") for name in self.classifier.selected_feature_names_)

    def predict_values(self, values: dict[str, float]) -> dict[str, float]:
        """Stage probabilities ``{stage: p}`` of one case from its features by name (missing -> NaN)."""
        row = np.array([[values.get(name, np.nan) for name in self.feature_names]], dtype=np.float64)
        proba = self.classifier.predict_proba(row)[0]
        return {str(stage): float(p) for stage, p in zip(self.classifier.classes_, proba, strict=True)}


def save_model(path: str | Path, model: StagingModel) -> Path:
    """Write ``model`` as one zip file at ``path`` (parent folders created). Returns the path."""
    clf = model.classifier
    if not hasattr(clf, "model_") or getattr(clf, "feature_names_in_", None) is None:
        raise ValueError("save_model needs a StageClassifier fitted with feature_names")
    document = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "demo_only": bool(model.demo_only),
        "training_data": model.training_data,
        "classes": [str(c) for c in clf.classes_],
        "label_map": {str(k): int(v) for k, v in clf.label_map_.items()},
        "params": clf.get_params(),
        "feature_names": [str(n) for n in clf.feature_names_in_],
        "selected_features": [int(i) for i in clf.selected_features_],
        "selected_feature_names": clf.selected_feature_names_,
        "mi_scores": [float(v) for v in clf.mi_scores_],
        "importance_scores": [float(v) for v in clf.importance_scores_],
        "feature_config": model.feature_config,
        "encoder": model.encoder,
        "cv": model.cv,
        "metadata": model.metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    booster = bytes(clf.model_.get_booster().save_raw("ubj"))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_MANIFEST_NAME, json.dumps(document, indent=1, default=_json_default))
        archive.writestr(_BOOSTER_NAME, booster)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_model(path: str | Path) -> StagingModel:
    """Read a model written by ``save_model``; ``ValueError`` naming the file when it is not one."""
    import xgboost

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            document = json.loads(archive.read(_MANIFEST_NAME))
            booster = archive.read(_BOOSTER_NAME)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such staging model file") from None
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a TNMStaging model artifact ({error})") from None
    if document.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{path} is not a TNMStaging model artifact (format {document.get('format')!r})")
    if document.get("format_version") != ARTIFACT_VERSION:
        raise ValueError(
            f"{path}: model format version {document.get('format_version')!r} is not supported "
            f"(this version reads {ARTIFACT_VERSION})"
        )
    clf = StageClassifier(**document["params"])
    clf.classes_ = np.array(document["classes"], dtype=object)
    clf.label_map_ = dict(document["label_map"])
    clf.feature_names_in_ = np.array(document["feature_names"], dtype=object)
    clf.n_features_in_ = len(document["feature_names"])
    clf.selected_features_ = np.array(document["selected_features"], dtype=int)
    clf.mi_scores_ = np.array(document["mi_scores"])
    clf.importance_scores_ = np.array(document["importance_scores"])
    clf.model_ = xgboost.XGBClassifier()
    clf.model_.load_model(bytearray(booster))
    return StagingModel(
        classifier=clf,
        feature_config=document["feature_config"],
        encoder=document["encoder"],
        cv=document["cv"],
        demo_only=bool(document["demo_only"]),
        training_data=document["training_data"],
        metadata=document.get("metadata", {}) | {"created": document.get("created")},
    )
