"""The leg travel-time bundle: ``leg_v1`` featurizer + LightGBM booster, and its prediction rule.

Routing solvers ask for minutes of *travel* between points (service time excluded: the solver
adds its own per stop) at a departure time. Training builds the bundle, MLflow stores it, the
matrix endpoint loads it; none of them re-implements predict. It lives outside ``training/``
because the service must never import training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from doorstep.compat import FeatureSetMismatch
from features.leg_features import FEATURE_SET, LegFeaturizer, PairFeatures, feature_names

FloatArray = npt.NDArray[np.float64]
Target = Literal["minutes", "log1p_minutes"]
TARGETS: tuple[Target, ...] = ("minutes", "log1p_minutes")
DIST_COLUMN = feature_names().index("dist_km")


def to_target(minutes: npt.ArrayLike, target: Target) -> FloatArray:
    """Minutes on the booster's scale (log1p keeps tiny labels finite and errors relative)."""
    values = np.asarray(minutes, dtype=np.float64)
    return np.log1p(values) if target == "log1p_minutes" else values


def from_target(raw: npt.ArrayLike, target: Target) -> FloatArray:
    values = np.asarray(raw, dtype=np.float64)
    return np.expm1(values) if target == "log1p_minutes" else values


def offset_for(featurizer: LegFeaturizer, X: npt.NDArray[np.float32], target: Target) -> FloatArray:
    """Training and serving share this: the booster's init score is the reference line."""
    reference = featurizer.reference_minutes(X[:, DIST_COLUMN])
    return to_target(reference, target)


@dataclass
class LegBundle:
    """Everything needed to answer travel-time queries; picklable, MLflow-loggable."""

    featurizer: LegFeaturizer
    booster: lgb.Booster
    target: Target = "minutes"
    feature_set: str = FEATURE_SET
    training_window: tuple[str, str] = ("", "")
    num_threads: int = 1
    # a compiled copy of the booster (doorstep.fast_trees), attached by serving; never pickled
    fast: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "fast"}

    def predict_features(self, features: PairFeatures) -> FloatArray:
        """Minutes for a featurised batch: never negative, exactly 0 between identical points
        (a solver's diagonal must be 0, and a pair at the same point has nothing to travel)."""
        fast = self.__dict__.get("fast")  # absent in bundles pickled before it existed
        if fast is not None:
            raw = fast.predict(features.X)
        else:
            raw = self.booster.predict(features.X, num_threads=self.num_threads)
        raw = raw + self.offset(features.X)
        minutes = np.maximum(from_target(raw, self.target), 0.0)
        minutes[features.same_point] = 0.0
        return minutes.reshape(features.shape)

    def offset(self, X: npt.NDArray[np.float32]) -> FloatArray:
        """The reference line on the booster's scale: the booster learns a correction to it."""
        return offset_for(self.featurizer, X, self.target)

    def predict_minutes(
        self,
        o_lat: npt.ArrayLike,
        o_lng: npt.ArrayLike,
        d_lat: npt.ArrayLike,
        d_lng: npt.ArrayLike,
        departure: object,
        vehicle: object = None,
    ) -> FloatArray:
        """Travel minutes for paired points (arrays of one length).

        ``departure``: a tz-aware Timestamp (one for all pairs), tz-aware timestamps or epoch
        seconds (one per pair). ``vehicle``: a vehicle type for all pairs, one per pair, or None
        (unknown). Unknown zones and vehicles fall back to pooled statistics.
        """
        f = self.featurizer.pairs(o_lat, o_lng, d_lat, d_lng, departure, vehicle)
        return self.predict_features(f)

    def predict_matrix(
        self,
        origins_lat: npt.ArrayLike,
        origins_lng: npt.ArrayLike,
        dest_lat: npt.ArrayLike,
        dest_lng: npt.ArrayLike,
        departure: object,
        vehicle: object = None,
    ) -> FloatArray:
        """An (n_origins, n_destinations) matrix of travel minutes, in one vectorised pass.

        A 1-d ``departure`` or ``vehicle`` array is read per origin (each row of the matrix
        leaves at its own time); a scalar applies to the whole matrix.
        """
        f = self.featurizer.pairs(
            origins_lat, origins_lng, dest_lat, dest_lng, departure, vehicle, matrix=True
        )
        return self.predict_features(f)


def check_feature_set(bundle: LegBundle) -> None:
    """Serving refuses a bundle whose feature set it does not compute."""
    if bundle.feature_set != FEATURE_SET:
        raise FeatureSetMismatch(
            f"feature_set: model uses {bundle.feature_set!r}, this code computes {FEATURE_SET!r}"
        )
    if bundle.booster.feature_name() != feature_names():
        raise FeatureSetMismatch(f"feature_set: the booster's features differ from {FEATURE_SET}")
    if bundle.target not in TARGETS:
        raise ValueError(f"target: must be one of {', '.join(TARGETS)}, got {bundle.target!r}")
