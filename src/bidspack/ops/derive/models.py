"""Patch classifiers for ``bidspack derive classify``: one small interface, three kinds.

A classifier scores a batch of patches, ``(b, h, w)`` uint8, with one number per patch
(``(b,)`` float64, higher = better), and a patch is **kept** when its score is
**greater than** the classifier's threshold (CEM500K's rule ``sigmoid(logit) > 0.5``).
Every classifier says what it is for the provenance (:meth:`Classifier.describe`),
including a sha256 that identifies the model.

The kinds:

- ``rules`` (:class:`RulesClassifier`, the default, no model file): documented image
  features of each patch (:func:`patch_features`: contrast, entropy, saturated and
  empty fraction) against documented thresholds (:class:`RuleThresholds`); the reason
  of a rejection names the failing rule(s).
- ``sklearn`` (:class:`LinearClassifier`): a logistic regression on the feature vector
  of :data:`FEATURE_NAMES`, trained with ``bidspack derive train-classifier``
  (:func:`train_linear`). It is stored as plain JSON numbers (feature means and scales,
  coefficients, intercept): loading it executes nothing (no pickle, no joblib), and
  scoring is a dot product in numpy.
- ``torch`` (:class:`TorchResNet34`): a user-supplied PyTorch ``state_dict`` in the
  layout of CEM500K's ``patch_quality_classifier_nn.pth`` (torchvision ResNet34 with
  ``fc = Linear(512, 1)``), loaded with ``torch.load(..., weights_only=True)`` and a
  strict key and shape check, with CEM's preprocessing (:func:`cem_preprocess`).
  PyTorch and torchvision are an optional extra: ``pip install 'bidspack[classify]'``.

Sources: Conrad & Narayan, "CEM500K, a large-scale heterogeneous unlabeled cellular
electron microscopy image dataset for deep learning", eLife 2021 (10:e65894), and the
scripts of ``github.com/volume-em/cem-dataset``: ``dataset/train_patch_classifier.py``
(training: ResNet34, ``fc = nn.Linear(512, 1)``, ``BCEWithLogitsLoss``, held-out split
``train_test_split(..., test_size=0.15)`` after ``np.random.seed(1227)``) and
``dataset/classify_patches.py`` (inference: ``cv2.cvtColor(image, COLOR_GRAY2RGB)``,
albumentations ``Resize(224, 224)`` then ``Normalize()`` (ImageNet mean and std,
``max_pixel_value`` 255), ``ToTensorV2``, ``nn.Sigmoid()(model.eval()(x)) > 0.5``);
torchvision's ``resnet34`` (``torchvision.models.resnet``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bidspack.errors import PlanError, SourceError, ToolError

MODEL_KINDS = ("rules", "sklearn", "torch")
#: ``format`` value of a bidspack linear classifier file (kind ``sklearn``).
LINEAR_FORMAT = "bidspack-linear-classifier"
LINEAR_VERSION = 1
#: The install hint of the optional extra.
INSTALL_HINT = "pip install 'bidspack[classify]'"

#: The per-patch feature vector (kind ``sklearn``); the first four are the rule features.
#: Grey levels are uint8 values 0..255; fractions are of the patch's pixels.
FEATURE_NAMES: tuple[str, ...] = (
    "contrast",  # standard deviation of the grey levels (population, ddof 0)
    "entropy",  # Shannon entropy of the 256-bin grey-level histogram, bits (0..8)
    "saturated",  # fraction of pixels == 255
    "empty",  # fraction of pixels <= empty_level
    "mean",  # mean grey level
    "p05",  # 5th percentile grey level (lowest v with >= 5% of pixels <= v)
    "p50",  # median grey level (same definition, 50%)
    "p95",  # 95th percentile grey level (same definition, 95%)
    "gradient_y",  # mean |difference of vertically adjacent pixels|, grey levels
    "gradient_x",  # mean |difference of horizontally adjacent pixels|, grey levels
)

#: CEM500K's network input side and ImageNet normalisation (albumentations ``Normalize``
#: defaults; ``torchvision`` ImageNet weights use the same numbers).
CEM_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torch intra-op threads used on the CPU unless told otherwise (fixed: determinism).
DEFAULT_THREADS = 4


# -- features ------------------------------------------------------------------------------


def _as_batch(batch: np.ndarray) -> np.ndarray:
    """Check a ``(b, h, w)`` uint8 batch.

    Raises:
        ValueError: another shape or dtype.
    """
    arr = np.asarray(batch)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"a batch of patches is (b, h, w) uint8, not {arr.shape} {arr.dtype}")
    return arr


def histograms(batch: np.ndarray) -> np.ndarray:
    """Grey-level histograms of a ``(b, h, w)`` uint8 batch: ``(b, 256)`` int64 counts.

    Raises:
        ValueError: *batch* is not ``(b, h, w)`` uint8.
    """
    arr = _as_batch(batch)
    out = np.zeros((arr.shape[0], 256), np.int64)
    for i in range(arr.shape[0]):
        out[i] = np.bincount(arr[i].ravel(), minlength=256)
    return out


def patch_features(batch: np.ndarray, *, empty_level: int = 10) -> np.ndarray:
    """The feature vector of :data:`FEATURE_NAMES` for each patch of a batch.

    Args:
        batch: ``(b, h, w)`` uint8 patches (the whole patch counts, zero padding of
            ``derive patches --edge pad`` included).
        empty_level: grey level up to which a pixel counts as empty (``<=``).

    Returns:
        ``(b, len(FEATURE_NAMES))`` float64. Every feature is computed from integer
        counts and sums (the histogram, the sums of absolute neighbour differences),
        so a patch's features do not depend on the batch it is in, and are the same
        on every machine.

    Raises:
        ValueError: *batch* is not ``(b, h, w)`` uint8, or *empty_level* not in 0..255.
    """
    arr = _as_batch(batch)
    if not 0 <= empty_level <= 255:
        raise ValueError(f"empty level {empty_level}: a grey level 0..255")
    b, h, w = arr.shape
    n = h * w
    hist = histograms(arr)
    levels = np.arange(256, dtype=np.int64)
    s1 = hist @ levels  # exact int64 sums
    s2 = hist @ (levels * levels)
    mean = s1 / n
    var = np.array([(n * int(a) - int(c) * int(c)) / (n * n) for a, c in zip(s2, s1, strict=True)])
    contrast = np.sqrt(np.maximum(var, 0.0))
    p = hist / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(hist > 0, p * np.log2(np.where(hist > 0, p, 1.0)), 0.0)
    entropy = -terms.sum(axis=1) + 0.0  # + 0.0: no negative zero
    saturated = hist[:, 255] / n
    empty = hist[:, : empty_level + 1].sum(axis=1) / n
    cum = np.cumsum(hist, axis=1)

    def pct(q: int) -> np.ndarray:
        need = -((-q * n) // 100)  # ceil(q * n / 100), exact
        return (cum >= need).argmax(axis=1).astype(np.float64)

    ints = arr.astype(np.int16)
    gy = np.abs(np.diff(ints, axis=1)).reshape(b, -1).sum(axis=1, dtype=np.int64)
    gx = np.abs(np.diff(ints, axis=2)).reshape(b, -1).sum(axis=1, dtype=np.int64)
    grad_y = gy / max(1, (h - 1) * w)
    grad_x = gx / max(1, h * (w - 1))
    cols = [contrast, entropy, saturated, empty, mean, pct(5), pct(50), pct(95), grad_y, grad_x]
    return np.stack([np.asarray(c, np.float64) for c in cols], axis=1)


# -- the interface ------------------------------------------------------------------------------


@runtime_checkable
class Classifier(Protocol):
    """What ``derive classify`` needs of a model.

    Attributes:
        kind: ``rules``, ``sklearn``, ``torch`` (or a user's own name).
        sha256: identifies the model: the sha256 of the model file's bytes, or (rules)
            of the canonical JSON of the rule thresholds.
        threshold: a patch is kept when its score is greater than this.
    """

    kind: str
    sha256: str
    threshold: float

    def score(self, batch: np.ndarray) -> np.ndarray:
        """Scores of a ``(b, h, w)`` uint8 batch: ``(b,)`` float64, higher = better."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON description for the provenance (kind, sha256, threshold, parameters,
        device, library versions)."""
        ...


class BaseClassifier:
    """Shared behaviour: :meth:`score` is :meth:`infer` of :meth:`prepare` (so a
    pipeline can prepare the next batch in another thread while one is inferred), and
    :meth:`explain` turns scores into decisions and reasons."""

    kind = "base"
    sha256 = ""
    threshold = 0.5

    def prepare(self, batch: np.ndarray) -> Any:
        """CPU-side work on a ``(b, h, w)`` uint8 batch (features, tensors)."""
        return _as_batch(batch)

    def infer(self, prepared: Any) -> np.ndarray:
        """``(b,)`` float64 scores of a prepared batch."""
        raise NotImplementedError

    def score(self, batch: np.ndarray) -> np.ndarray:
        """``(b,)`` float64 scores of a ``(b, h, w)`` uint8 batch.

        Raises:
            ValueError: *batch* is not ``(b, h, w)`` uint8.
        """
        return self.infer(self.prepare(batch))

    def explain(self, prepared: Any, scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``(kept (b,) bool, reasons)`` for *scores*: kept when ``score > threshold``."""
        return threshold_decisions(scores, self.threshold)

    def describe(self) -> dict[str, Any]:
        """JSON description for the provenance."""
        return {"kind": self.kind, "sha256": self.sha256, "threshold": self.threshold}


def fmt_number(value: float) -> str:
    """A number in a reason text: 4 significant digits (``0.8312``, ``4``, ``1.2e-05``)."""
    return f"{float(value):.4g}"


def threshold_decisions(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, list[str]]:
    """``(kept, reasons)``: kept when ``score > threshold``; reasons
    ``score S > threshold T`` or ``score S <= threshold T``."""
    scores = np.asarray(scores, np.float64)
    kept = scores > threshold
    t = fmt_number(threshold)
    reasons = [
        f"score {fmt_number(s)} > threshold {t}" if k else f"score {fmt_number(s)} <= threshold {t}"
        for s, k in zip(scores.tolist(), kept.tolist(), strict=True)
    ]
    return kept, reasons


def decide(classifier: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(scores (b,) float64, kept (b,) bool, reasons)`` of a ``(b, h, w)`` uint8
    batch with any :class:`Classifier` (a :class:`BaseClassifier` explains its own
    decisions; others are kept when ``score > threshold``)."""
    if isinstance(classifier, BaseClassifier):
        prepared = classifier.prepare(batch)
        scores = np.asarray(classifier.infer(prepared), np.float64)
        kept, reasons = classifier.explain(prepared, scores)
        return scores, kept, reasons
    scores = np.asarray(classifier.score(batch), np.float64)
    kept, reasons = threshold_decisions(scores, float(classifier.threshold))
    return scores, kept, reasons


def library_versions(*names: str) -> dict[str, str]:
    """Versions of Python and of the named imported libraries (those importable)."""
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            mod = __import__(name)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest."""
    return hashlib.sha256(data).hexdigest()


def _read_model(path: Path) -> bytes:
    """The bytes of a model file (read once: the sha256 and the load see the same bytes).

    Raises:
        SourceError: missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(path, "model file does not exist or is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(path, f"cannot read the model file ({exc.strerror or exc})") from exc


# -- (a) rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleThresholds:
    """The rule-based quality filter (kind ``rules``); every value is recorded.

    A patch passes when all four rules hold (strict inequalities):

    - contrast: ``std(grey levels) > min_contrast`` (grey levels, uint8 scale);
    - entropy: ``Shannon entropy of the 256-bin histogram > min_entropy`` (bits);
    - saturated: ``fraction of pixels == 255 < max_saturated``;
    - empty: ``fraction of pixels <= empty_level < max_empty``.

    Defaults (chosen on the packaged STP mouse brain, uint8 by ``derive patches``'
    percentile conversion: background tiles have a contrast below 1 grey level, an
    entropy below 1.5 bits and are almost entirely <= 10; tissue tiles have contrasts
    of 15 to 80 and entropies of 5 to 7 bits): 4 grey levels, 2 bits, a quarter of
    the pixels saturated, half of them empty at level 10.
    """

    min_contrast: float = 4.0
    min_entropy: float = 2.0
    max_saturated: float = 0.25
    max_empty: float = 0.5
    empty_level: int = 10

    def check(self) -> None:
        """Raises:
        PlanError: a negative or non-finite value, a fraction outside (0, 1], an
            entropy above 8 bits, an empty level outside 0..255.
        """
        values = asdict(self)
        for key, v in values.items():
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise PlanError(None, f"classify rules: {key} {v}: a number >= 0")
        for key in ("max_saturated", "max_empty"):
            if not 0 < values[key] <= 1:
                raise PlanError(None, f"classify rules: {key} {values[key]}: a fraction in (0, 1]")
        if self.min_entropy > 8:
            raise PlanError(None, f"classify rules: min_entropy {self.min_entropy}: at most 8 bits")
        if not (isinstance(self.empty_level, int) and 0 <= self.empty_level <= 255):
            raise PlanError(None, f"classify rules: empty_level {self.empty_level}: 0..255")

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as JSON."""
        return asdict(self)


class RulesClassifier(BaseClassifier):
    """Kind ``rules``: :class:`RuleThresholds` on :func:`patch_features`.

    Score: each rule has a margin, its distance past the threshold relative to the
    threshold, clipped to [-1, 1] (``(contrast - c) / c``, ``(entropy - e) / e``,
    ``(s - saturated) / s``, ``(m - empty) / m``; a zero threshold ``c`` or ``e`` gives
    margin +1 when the value is above it, else -1); ``score = 0.5 + 0.5 * min(margins)``
    in [0, 1]. A patch passes every rule exactly when its score is above 0.5 (a
    passing score that rounds to 0.5 is nudged to the next float up, a failing one
    never exceeds 0.5), so the default threshold 0.5 keeps the patches that pass all
    rules; a higher threshold asks for a margin (0.7: every rule passed by 40%).

    Reasons: ``passes all rules`` / the failing rules, e.g. ``contrast 0.21 <= 4;
    empty 0.999 >= 0.5``; with a threshold above 0.5, ``all rules pass but score S <=
    threshold T`` for a patch that passes with too small a margin.
    """

    kind = "rules"

    def __init__(self, rules: RuleThresholds | None = None, *, threshold: float = 0.5):
        self.rules = rules or RuleThresholds()
        self.rules.check()
        self.threshold = float(threshold)
        canonical = json.dumps(
            {"kind": "rules", **self.rules.to_dict()}, sort_keys=True, separators=(",", ":")
        )
        self.sha256 = sha256_bytes(canonical.encode("utf-8"))

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The ``(b, 4)`` rule features (contrast, entropy, saturated, empty)."""
        return patch_features(batch, empty_level=self.rules.empty_level)[:, :4]

    def _margins(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.rules
        contrast, entropy, saturated, empty = (feats[:, i] for i in range(4))

        def above(v: np.ndarray, t: float) -> np.ndarray:
            if t == 0:
                return np.where(v > 0, 1.0, -1.0)
            return (v - t) / t

        margins = np.stack(
            [
                above(contrast, r.min_contrast),
                above(entropy, r.min_entropy),
                (r.max_saturated - saturated) / r.max_saturated,
                (r.max_empty - empty) / r.max_empty,
            ],
            axis=1,
        )
        passed = np.stack(
            [
                contrast > r.min_contrast,
                entropy > r.min_entropy,
                saturated < r.max_saturated,
                empty < r.max_empty,
            ],
            axis=1,
        )
        return np.clip(margins, -1.0, 1.0), passed

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        """``(b,)`` scores in [0, 1] from the rule features (see the class docstring)."""
        margins, passed = self._margins(prepared)
        score = 0.5 + 0.5 * margins.min(axis=1)
        ok = passed.all(axis=1)
        half = np.float64(0.5)
        score = np.where(ok, np.maximum(score, np.nextafter(half, 1.0)), np.minimum(score, half))
        return score

    def explain(self, prepared: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``(kept, reasons)``: the failing rules, or ``passes all rules``."""
        _, passed = self._margins(prepared)
        r = self.rules
        kept = np.asarray(scores) > self.threshold
        reasons = []
        t = fmt_number(self.threshold)
        for i in range(len(scores)):
            c, e, s, m = (float(v) for v in prepared[i])
            failing = []
            if not passed[i, 0]:
                failing.append(f"contrast {fmt_number(c)} <= {fmt_number(r.min_contrast)}")
            if not passed[i, 1]:
                failing.append(f"entropy {fmt_number(e)} <= {fmt_number(r.min_entropy)}")
            if not passed[i, 2]:
                failing.append(f"saturated {fmt_number(s)} >= {fmt_number(r.max_saturated)}")
            if not passed[i, 3]:
                failing.append(
                    f"empty {fmt_number(m)} >= {fmt_number(r.max_empty)} (level <= {r.empty_level})"
                )
            if failing:
                reasons.append("; ".join(failing))
            elif kept[i]:
                reasons.append("passes all rules")
            else:
                reasons.append(f"all rules pass but score {fmt_number(scores[i])} <= threshold {t}")
        return kept, reasons

    def describe(self) -> dict[str, Any]:
        """Kind, sha256 (of the canonical rule JSON), threshold, the rules, the score."""
        return {
            "kind": self.kind,
            "sha256": self.sha256,
            "threshold": self.threshold,
            "rules": self.rules.to_dict(),
            "features": list(FEATURE_NAMES[:4]),
            "score": "0.5 + 0.5 * min(relative margins past each rule threshold, clipped "
            "to [-1, 1]); kept when score > threshold",
            "device": "cpu (numpy)",
            "library_versions": library_versions("numpy"),
        }


# -- (b) a linear model on the features (scikit-learn) -----------------------------------------


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return np.asarray(expit(x), np.float64)


class LinearClassifier(BaseClassifier):
    """Kind ``sklearn``: a logistic regression on the standardised feature vector.

    ``score = expit(sum_i coef_i * (f_i - mean_i) / scale_i + intercept)`` with ``f`` =
    :func:`patch_features` (the probability that the patch is good, as scikit-learn's
    ``StandardScaler`` + ``LogisticRegression.predict_proba[:, 1]`` computes it).

    Why a linear model: its whole state is a few numbers, stored as JSON
    (:data:`LINEAR_FORMAT`), so loading a model file executes nothing (scikit-learn's
    own persistence is pickle, which runs code from the file; tree ensembles would need
    skops or a format of their own), and inference needs numpy only.

    Raises:
        SourceError: the file is not a bidspack linear classifier (format, version,
            feature names, lengths, non-finite numbers).
    """

    kind = "sklearn"

    def __init__(self, path: Path, *, threshold: float | None = None):
        self.path = Path(path)
        data = _read_model(self.path)
        self.sha256 = sha256_bytes(data)
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SourceError(self.path, f"not a JSON model file ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != LINEAR_FORMAT:
            raise SourceError(
                self.path,
                f'not a bidspack linear classifier (no "format": "{LINEAR_FORMAT}")',
                hint="train one with 'bidspack derive train-classifier'",
            )
        if doc.get("version") != LINEAR_VERSION:
            raise SourceError(self.path, f"linear classifier version {doc.get('version')!r}")
        names = doc.get("features")
        if names != list(FEATURE_NAMES):
            raise SourceError(self.path, f"features {names!r} are not {list(FEATURE_NAMES)}")
        try:
            self.mean = np.asarray(doc["feature_mean"], np.float64)
            self.scale = np.asarray(doc["feature_scale"], np.float64)
            self.coef = np.asarray(doc["coef"], np.float64)
            self.intercept = float(doc["intercept"])
            self.empty_level = int(doc.get("empty_level", 10))
            stored_threshold = float(doc.get("threshold", 0.5))
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(self.path, f"bad linear classifier ({exc})") from exc
        k = len(FEATURE_NAMES)
        for name, arr in (("feature_mean", self.mean), ("feature_scale", self.scale)):
            if arr.shape != (k,) or not np.isfinite(arr).all():
                raise SourceError(self.path, f"{name}: {k} finite numbers needed")
        if self.coef.shape != (k,) or not np.isfinite(self.coef).all():
            raise SourceError(self.path, f"coef: {k} finite numbers needed")
        if (self.scale == 0).any() or not math.isfinite(self.intercept):
            raise SourceError(self.path, "a zero feature scale or a non-finite intercept")
        self.model = str(doc.get("model", "LogisticRegression"))
        self.training = doc.get("training", {})
        self.threshold = stored_threshold if threshold is None else float(threshold)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The ``(b, F)`` feature vectors."""
        return patch_features(batch, empty_level=self.empty_level)

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        """``(b,)`` probabilities (row-wise sums: a patch's score does not depend on its
        batch)."""
        z = (np.asarray(prepared, np.float64) - self.mean) / self.scale
        return _expit((z * self.coef).sum(axis=1) + self.intercept)

    def describe(self) -> dict[str, Any]:
        """Kind, file, sha256, threshold, model type, features, training summary."""
        return {
            "kind": self.kind,
            "path": self.path.absolute().as_uri(),
            "sha256": self.sha256,
            "threshold": self.threshold,
            "model": self.model,
            "format": f"{LINEAR_FORMAT}/{LINEAR_VERSION}",
            "features": list(FEATURE_NAMES),
            "empty_level": self.empty_level,
            "training": self.training,
            "device": "cpu (numpy)",
            "library_versions": library_versions("numpy", "scipy"),
        }


def split_labels(
    ids: Sequence[str], labels: Sequence[int], *, seed: int, test_size: float
) -> tuple[list[str], list[str]]:
    """The held-out split of :func:`train_linear`: ``(train ids, held-out ids)``.

    ``sklearn.model_selection.train_test_split(ids, test_size=test_size,
    random_state=seed, stratify=labels)`` over the ids in the order given (the patch
    index order): the same ids, labels and seed give the same split (recorded in the
    model's sidecar). CEM500K's training used ``test_size=0.15`` and seed 1227.

    Raises:
        PlanError: too few patches of a class for a stratified split.
    """
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(
            list(ids), test_size=test_size, random_state=seed, stratify=list(labels)
        )
    except ValueError as exc:
        raise PlanError(None, f"cannot split the labelled patches ({exc})") from exc
    return [str(i) for i in train], [str(i) for i in test]


def evaluate_scores(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """Metrics of scores against 0/1 labels (1 = good, keep): ``auroc`` (None when only
    one class is present), and at ``score > threshold``: ``precision``, ``recall``,
    ``accuracy``, ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``, ``n``,
    ``n_positive``, ``threshold`` (scikit-learn's ``roc_auc_score``,
    ``precision_score``, ``recall_score``, ``confusion_matrix``; precision 0 when
    nothing is kept)."""
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

    y = np.asarray(labels, np.int64)
    s = np.asarray(scores, np.float64)
    pred = (s > threshold).astype(np.int64)
    auroc = float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None
    cm = confusion_matrix(y, pred, labels=[0, 1])
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "threshold": float(threshold),
        "auroc": auroc,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "accuracy": float((pred == y).mean()) if y.size else None,
        "confusion_matrix": [[int(v) for v in row] for row in cm.tolist()],
        "confusion_matrix_layout": "[[tn, fp], [fn, tp]]: rows label 0, 1; columns kept "
        "false, true",
    }


@dataclass
class TrainedLinear:
    """What :func:`train_linear` returns: the model file's JSON document, the sidecar
    document (without the model sha256) and the held-out evaluation."""

    model: dict[str, Any]
    sidecar: dict[str, Any]
    metrics: dict[str, Any]


def train_linear(
    ids: Sequence[str],
    features: np.ndarray,
    labels: Sequence[int],
    *,
    seed: int = 1227,
    test_size: float = 0.15,
    c: float = 1.0,
    threshold: float = 0.5,
    empty_level: int = 10,
) -> TrainedLinear:
    """Fit ``StandardScaler`` + ``LogisticRegression(C=c, class_weight="balanced",
    solver="lbfgs", max_iter=1000)`` on the training part of the split
    (:func:`split_labels`) and evaluate it on the held-out part
    (:func:`evaluate_scores`).

    Args:
        ids: patch ids (index order), one per row of *features*.
        features: ``(n, len(FEATURE_NAMES))`` float64 (:func:`patch_features`).
        labels: 0/1 per patch (1 = good).

    Raises:
        PlanError: fewer than 2 patches of a class in either part, bad sizes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y_all = np.asarray(labels, np.int64)
    feats = np.asarray(features, np.float64)
    if feats.shape != (len(ids), len(FEATURE_NAMES)) or y_all.shape != (len(ids),):
        raise PlanError(None, "train: features, labels and ids differ in length")
    if not 0 < test_size < 1:
        raise PlanError(None, f"train: test size {test_size}: a fraction in (0, 1)")
    pos = {p: i for i, p in enumerate(ids)}
    train_ids, test_ids = split_labels(ids, y_all.tolist(), seed=seed, test_size=test_size)
    tr = np.array([pos[i] for i in train_ids], np.int64)
    te = np.array([pos[i] for i in test_ids], np.int64)
    for name, part in (("training", tr), ("held-out", te)):
        counts = np.bincount(y_all[part], minlength=2)
        if counts.min() < 2:
            raise PlanError(
                None,
                f"train: the {name} part has {counts[1]} good and {counts[0]} bad patches; "
                "at least 2 of each are needed",
                hint="label more patches of the rarer class",
            )
    scaler = StandardScaler().fit(feats[tr])
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    model = LogisticRegression(C=c, class_weight="balanced", solver="lbfgs", max_iter=1000)
    model.fit((feats[tr] - scaler.mean_) / scale, y_all[tr])
    doc: dict[str, Any] = {
        "format": LINEAR_FORMAT,
        "version": LINEAR_VERSION,
        "kind": "sklearn",
        "model": "LogisticRegression",
        "features": list(FEATURE_NAMES),
        "empty_level": empty_level,
        "feature_mean": [float(v) for v in scaler.mean_],
        "feature_scale": [float(v) for v in scale],
        "coef": [float(v) for v in model.coef_[0]],
        "intercept": float(model.intercept_[0]),
        "threshold": float(threshold),
        "score": "expit(sum(coef * (features - feature_mean) / feature_scale) + intercept)",
    }
    clf = _LinearFromDoc(doc)
    held = clf.infer(feats[te])
    metrics = evaluate_scores(y_all[te], held, threshold)
    params = {
        "C": c,
        "class_weight": "balanced",
        "solver": "lbfgs",
        "max_iter": 1000,
        "n_iter": int(model.n_iter_[0]),
    }
    doc["training"] = {"seed": seed, "test_size": test_size, "held_out_metrics": metrics}
    sidecar = {
        "features": list(FEATURE_NAMES),
        "seed": seed,
        "test_size": test_size,
        "split": "sklearn.model_selection.train_test_split(ids in patch index order, "
        "test_size, random_state=seed, stratify=labels)",
        "n_labelled": len(ids),
        "n_train": len(train_ids),
        "n_held_out": len(test_ids),
        "held_out_ids": test_ids,
        "model_parameters": params,
        "metrics": metrics,
        "library_versions": library_versions("numpy", "scipy", "sklearn"),
    }
    return TrainedLinear(doc, sidecar, metrics)


class _LinearFromDoc(LinearClassifier):
    """A :class:`LinearClassifier` from its JSON document (no file)."""

    def __init__(self, doc: dict[str, Any]):
        self.path = Path("-")
        self.mean = np.asarray(doc["feature_mean"], np.float64)
        self.scale = np.asarray(doc["feature_scale"], np.float64)
        self.coef = np.asarray(doc["coef"], np.float64)
        self.intercept = float(doc["intercept"])
        self.empty_level = int(doc["empty_level"])
        self.threshold = float(doc["threshold"])
        self.model = str(doc["model"])
        self.training = {}
        self.sha256 = ""


# -- (c) a PyTorch ResNet34 state_dict (CEM500K layout) -----------------------------------------

#: Keeps the op schemas of :func:`_import_torchvision_without_ops` alive.
_TORCHVISION_SHIM: list[Any] = []


def import_torch() -> tuple[ModuleType, ModuleType, bool]:
    """``(torch, torchvision, torchvision_ops)``.

    ``torchvision_ops`` is False when torchvision's C++ operators could not be loaded
    (a torchvision wheel built for another torch build, e.g. PyPI's CUDA torchvision
    next to a CPU-only torch). torchvision 0.28 then fails at import, because its
    ``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and
    ``torchvision::qnms`` without checking that the operators exist; their schemas are
    then defined (without kernels) and the import is retried. The models (pure
    ``torch.nn``) work either way; detection operators such as ``nms`` stay
    unavailable, as torchvision intends when its extension is missing.

    Raises:
        ToolError: torch or torchvision is not installed or cannot be imported, with
            the hint ``pip install 'bidspack[classify]'``.
    """
    try:
        import torch
    except ImportError as exc:
        raise ToolError(
            None,
            f"the torch model kind needs PyTorch and torchvision, not installed ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    try:
        import torchvision
    except ImportError as exc:
        raise ToolError(
            None,
            f"the torch model kind needs torchvision, not installed ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise ToolError(None, f"cannot import torchvision ({exc})", hint=INSTALL_HINT) from exc
        torchvision = _import_torchvision_without_ops(torch)
    ops = bool(torchvision.extension._has_ops())
    return torch, torchvision, ops


def _import_torchvision_without_ops(torch: ModuleType) -> ModuleType:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if not _TORCHVISION_SHIM:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in (
            "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        ):
            name = schema.split("(")[0]
            if not hasattr(torch.ops.torchvision, name):
                lib.define(schema)
        _TORCHVISION_SHIM.append(lib)
    try:
        import torchvision
    except Exception as exc:
        raise ToolError(
            None,
            f"cannot import torchvision: its C++ operators do not match this torch ({exc})",
            hint=f"install matching versions: {INSTALL_HINT}",
        ) from exc
    return torchvision


def cem_resnet34(torchvision: ModuleType, torch: ModuleType) -> Any:
    """The CEM500K patch-quality network: ``torchvision.models.resnet34(weights=None)``
    (nothing is downloaded) with ``fc = torch.nn.Linear(512, 1)``, randomly
    initialised."""
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(in_features=512, out_features=1)
    return model


def check_state_dict(state: Any, expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """Strict check of a loaded state_dict against the network's keys and shapes.

    Raises:
        SourceError: not a mapping of names to tensors, a missing or unexpected key, or
            a shape that differs, naming the key (and how many more differ).
    """
    import torch

    if not isinstance(state, dict):
        raise SourceError(
            path,
            f"not a state_dict: the file holds a {type(state).__name__}, not a mapping of "
            "parameter names to tensors",
            hint="save the weights with torch.save(model.state_dict(), path)",
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SourceError(path, f"state_dict entry {bad[0]!r} is not a named tensor")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        extra = f"; unexpected key {unexpected[0]!r}" if unexpected else ""
        raise SourceError(
            path,
            f"state_dict has no key {missing[0]!r}{more}{extra}: not the CEM500K ResNet34 "
            "layout (torchvision resnet34, fc = Linear(512, 1))",
        )
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise SourceError(
            path,
            f"state_dict has an unexpected key {unexpected[0]!r}{more}: not the CEM500K "
            "ResNet34 layout (strict key match)",
        )
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != shape:
            raise SourceError(
                path,
                f"state_dict key {key!r} has shape {got}, the CEM500K ResNet34 layout needs "
                f"{shape}",
            )


def cem_preprocess(batch: np.ndarray, torch: ModuleType, device: Any = "cpu") -> Any:
    """CEM500K's evaluation preprocessing of a uint8 batch, as a float32 tensor
    ``(b, 3, 224, 224)`` on *device*.

    As ``dataset/classify_patches.py``: grey to RGB (``cv2.COLOR_GRAY2RGB``: the grey
    value in all three channels); ``Resize(224, 224)`` when the patch is not 224 x 224
    (cv2 ``INTER_LINEAR``: bilinear with half-pixel centres, no antialiasing; here
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` in
    float32, rounded half up and clipped to uint8, as cv2 rounds its uint8 result;
    cv2 uses 11-bit fixed-point weights, so a resized pixel may differ
    from cv2's by one grey level, while 224 x 224 patches, the default of ``derive
    patches`` and CEM's size, are not resized and match exactly); albumentations
    ``Normalize()``: ``(x - float32(mean) * 255) * reciprocal(float32(std) * 255)`` in
    float32 with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224,
    0.225)``; ``ToTensorV2``: channels first.

    Raises:
        ValueError: *batch* is not ``(b, h, w)`` uint8.
    """
    arr = _as_batch(batch)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    x = x.unsqueeze(1).to(torch.float32)  # (b, 1, h, w)
    if arr.shape[1:] != (CEM_INPUT_SIZE, CEM_INPUT_SIZE):
        x = torch.nn.functional.interpolate(
            x,
            size=(CEM_INPUT_SIZE, CEM_INPUT_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        x = torch.clamp(torch.floor(x + 0.5), 0, 255)
    mean = np.asarray(IMAGENET_MEAN, np.float32) * np.float32(255)
    denom = np.reciprocal(np.asarray(IMAGENET_STD, np.float32) * np.float32(255), dtype=np.float32)
    m = torch.from_numpy(mean).to(device).view(1, 3, 1, 1)
    d = torch.from_numpy(denom).to(device).view(1, 3, 1, 1)
    return ((x.expand(-1, 3, -1, -1) - m) * d).contiguous()


def cem_normalize(batch: np.ndarray) -> np.ndarray:
    """:func:`cem_preprocess` without the resize, in numpy: a ``(b, 224, 224)`` (any
    size) uint8 batch as float32 ``(b, 3, h, w)``, channel ``c`` = ``(float32(x) -
    float32(mean_c) * 255) * reciprocal(float32(std_c) * 255)`` (albumentations
    ``Normalize()`` after ``cv2.COLOR_GRAY2RGB``), the same float32 operations as the
    torch version.

    Raises:
        ValueError: *batch* is not ``(b, h, w)`` uint8.
    """
    arr = _as_batch(batch)
    x = arr.astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32) * np.float32(255)
    denom = np.reciprocal(np.asarray(IMAGENET_STD, np.float32) * np.float32(255), dtype=np.float32)
    out = np.empty((arr.shape[0], 3, arr.shape[1], arr.shape[2]), np.float32)
    for c in range(3):
        np.subtract(x, mean[c], out=out[:, c])
        np.multiply(out[:, c], denom[c], out=out[:, c])
    return out


def pick_device(torch: ModuleType, device: str | None) -> Any:
    """``cuda`` when available (or asked for), else ``cpu``.

    Raises:
        PlanError: ``cuda`` asked for but not available, or an unknown device.
    """
    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PlanError(None, f"device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PlanError(None, f"device {device!r}: CUDA is not available here")
    return dev


class TorchResNet34(BaseClassifier):
    """Kind ``torch``: a ResNet34 ``state_dict`` in CEM500K's
    ``patch_quality_classifier_nn.pth`` layout.

    Loading: the file's bytes are read once (their sha256 identifies the model) and
    given to ``torch.load(..., map_location="cpu", weights_only=True)``, which
    unpickles only tensors and plain containers: a file holding any other object
    (a class instance, a function) is refused. The keys and shapes must be exactly
    those of :func:`cem_resnet34` (strict; an error names the first key that differs).

    Inference: :func:`cem_preprocess`, the network in eval mode under
    ``torch.inference_mode()``, ``sigmoid`` of the single logit; kept when the score
    is above *threshold* (0.5 as CEM). Device: CUDA when available, else CPU with
    ``torch.set_num_threads(threads)`` (default :data:`DEFAULT_THREADS`, at most the
    CPU count) for repeatable results; on CUDA, cuDNN's deterministic mode.

    Raises:
        ToolError: torch/torchvision not installed (``pip install 'bidspack[classify]'``).
        SourceError: unreadable file, a pickle with objects other than tensors, not a
            state_dict, a wrong key or shape.
        PlanError: a bad device.
    """

    kind = "torch"

    def __init__(
        self,
        path: Path,
        *,
        threshold: float | None = None,
        device: str | None = None,
        threads: int | None = None,
    ):
        torch, torchvision, ops = import_torch()
        self.torch = torch
        self.path = Path(path)
        data = _read_model(self.path)
        self.sha256 = sha256_bytes(data)
        state = load_weights(data, self.path, torch)
        self.device = pick_device(torch, device)
        if self.device.type == "cpu":
            want = threads or min(DEFAULT_THREADS, os.cpu_count() or 1)
            torch.set_num_threads(int(want))
        else:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.threads = int(torch.get_num_threads())
        model = cem_resnet34(torchvision, torch)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        check_state_dict(state, expected, self.path)
        model.load_state_dict(state, strict=True)
        self.model = model.eval().to(self.device)
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.torchvision_ops = ops
        self.versions = library_versions("numpy", "torch", "torchvision")

    def prepare(self, batch: np.ndarray) -> Any:
        """CPU work that may run beside inference (in the pipeline's reader thread): for
        224 x 224 patches the whole of :func:`cem_preprocess`, in numpy
        (:func:`cem_normalize`, bit for bit the same float32 operations), so no second
        torch thread pool competes with the forward pass; other sizes are resized and
        normalised by :func:`cem_preprocess` in :meth:`infer`."""
        arr = _as_batch(batch)
        if arr.shape[1:] == (CEM_INPUT_SIZE, CEM_INPUT_SIZE):
            return cem_normalize(arr)
        return arr

    def infer(self, prepared: Any) -> np.ndarray:
        """``(b,)`` float64: ``sigmoid(model(x))[:, 0]`` of a :meth:`prepare`'d batch
        (or a tensor from :func:`cem_preprocess`)."""
        torch = self.torch
        with torch.inference_mode():
            if isinstance(prepared, torch.Tensor):  # already cem_preprocess'ed
                x = prepared.to(self.device, non_blocking=True)
            elif prepared.dtype == np.uint8:
                x = cem_preprocess(prepared, torch, self.device)
            else:
                x = torch.from_numpy(prepared).to(self.device, non_blocking=True)
            out = torch.sigmoid(self.model(x))[:, 0]
        return out.detach().to("cpu").numpy().astype(np.float64)

    def device_name(self) -> str:
        """``cpu`` or ``cuda:0 (<GPU name>)``."""
        if self.device.type == "cuda":
            return f"{self.device} ({self.torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def describe(self) -> dict[str, Any]:
        """Kind, file, sha256, threshold, architecture, preprocessing, device, threads,
        versions."""
        return {
            "kind": self.kind,
            "path": self.path.absolute().as_uri(),
            "sha256": self.sha256,
            "threshold": self.threshold,
            "architecture": "torchvision.models.resnet34(weights=None), fc = Linear(512, 1); "
            "sigmoid of the logit (CEM500K patch_quality_classifier_nn.pth layout)",
            "preprocessing": {
                "grey_to_rgb": True,
                "resize": [CEM_INPUT_SIZE, CEM_INPUT_SIZE],
                "resize_method": "bilinear, half-pixel centres, no antialiasing, "
                "rounded half up to uint8 (cv2.INTER_LINEAR as albumentations Resize)",
                "normalize_mean": list(IMAGENET_MEAN),
                "normalize_std": list(IMAGENET_STD),
                "max_pixel_value": 255.0,
                "source": "volume-em/cem-dataset dataset/classify_patches.py",
            },
            "load": "torch.load(weights_only=True), strict key and shape match",
            "device": self.device_name(),
            "threads": self.threads,
            "cudnn_deterministic": self.device.type == "cuda",
            "torchvision_ops": self.torchvision_ops,
            "library_versions": self.versions,
        }


def load_weights(data: bytes, path: Path, torch: ModuleType) -> Any:
    """``torch.load(BytesIO(data), map_location="cpu", weights_only=True)``.

    Raises:
        SourceError: the file holds objects other than tensors and plain containers
            (refused: never unpickled), or is not a PyTorch file at all.
    """
    import pickle

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        if found:
            raise SourceError(
                path,
                "refused: the file holds Python objects other than tensors, and is not "
                f"unpickled (torch.load weights_only=True: it names {found.group(1)})",
                hint="save only the weights: torch.save(model.state_dict(), path)",
            ) from exc
        _, _, after = text.partition("WeightsUnpickler error:")
        detail = after.strip().splitlines()[0] if after.strip() else type(exc).__name__
        raise SourceError(
            path,
            f"not a PyTorch weights file (torch.load weights_only=True refused it: {detail})",
        ) from exc
    except (RuntimeError, ValueError, EOFError, OSError, KeyError, AttributeError) as exc:
        raise SourceError(path, f"not a PyTorch weights file ({exc})") from exc


# -- loading by name -------------------------------------------------------------------------


def infer_kind(model: str | Path) -> str:
    """The kind of a model given on the command line: ``rules`` for ``rules``;
    ``sklearn`` for a ``.json`` file; ``torch`` for ``.pth``/``.pt``/``.bin``.

    Raises:
        PlanError: another file name (give ``--kind``).
    """
    if str(model) == "rules":
        return "rules"
    name = Path(model).name.lower()
    if name.endswith(".json"):
        return "sklearn"
    if name.endswith((".pth", ".pt", ".bin")):
        return "torch"
    raise PlanError(
        Path(model),
        "cannot tell the model kind from the file name",
        hint="give --kind sklearn or --kind torch",
    )


def load_classifier(
    model: str | Path,
    *,
    kind: str | None = None,
    threshold: float | None = None,
    rules: RuleThresholds | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> BaseClassifier:
    """A classifier by name: ``"rules"`` or a model file (kind from *kind* or the file
    name, :func:`infer_kind`).

    Raises:
        PlanError: an unknown kind, a threshold that is not finite, a bad device.
        SourceError: a bad model file.
        ToolError: kind ``torch`` without PyTorch/torchvision.
    """
    kind = kind or infer_kind(model)
    if kind not in MODEL_KINDS:
        raise PlanError(None, f"model kind {kind!r}: one of {', '.join(MODEL_KINDS)}")
    if threshold is not None and not math.isfinite(threshold):
        raise PlanError(None, f"threshold {threshold}: a finite number")
    if kind == "rules":
        if str(model) != "rules":
            raise PlanError(Path(model), "kind rules takes no model file (use --model rules)")
        return RulesClassifier(rules, threshold=0.5 if threshold is None else threshold)
    if str(model) == "rules":
        raise PlanError(None, f"kind {kind} needs a model file (--model FILE)")
    if kind == "sklearn":
        return LinearClassifier(Path(model), threshold=threshold)
    return TorchResNet34(Path(model), threshold=threshold, device=device, threads=threads)


__all__ = [
    "CEM_INPUT_SIZE",
    "FEATURE_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_KINDS",
    "BaseClassifier",
    "Classifier",
    "LinearClassifier",
    "RuleThresholds",
    "RulesClassifier",
    "TorchResNet34",
    "cem_normalize",
    "cem_preprocess",
    "cem_resnet34",
    "check_state_dict",
    "decide",
    "evaluate_scores",
    "import_torch",
    "infer_kind",
    "load_classifier",
    "patch_features",
    "split_labels",
    "train_linear",
]
