"""Row-level problems found while reading or validating a table.

Every check records a boolean mask under a fixed message, so a row collects *every* reason
that applies (not only the first) and the summary counts stay grouped by reason.
Messages name the field first (``"arrival_time: before ready_time"``) so a user can act on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # imported where tables are checked: the CLI starts without pandas
    import pandas as pd

BoolArray = npt.NDArray[np.bool_]


class MissingColumnsError(ValueError):
    """A file lacks columns the contract requires: nothing can be ingested."""

    def __init__(self, missing: Iterable[str], where: str = "input") -> None:
        self.missing = sorted(missing)
        super().__init__(f"{where}: missing required column(s): {', '.join(self.missing)}")


class Issues:
    """Boolean masks of row problems keyed by message, for a table of ``n`` rows."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._masks: dict[str, BoolArray] = {}

    def add(self, message: str, mask: npt.ArrayLike) -> None:
        """Record ``message`` for the rows where ``mask`` is true (masks for one message OR)."""
        import pandas as pd

        arr = np.asarray(mask, dtype=bool)
        if isinstance(mask, pd.Series):
            arr = mask.fillna(False).to_numpy(dtype=bool)
        if arr.shape != (self.n,):
            raise ValueError(f"mask for {message!r} has shape {arr.shape}, expected ({self.n},)")
        if message in self._masks:
            self._masks[message] = self._masks[message] | arr
        else:
            self._masks[message] = arr.copy()

    def extend(self, other: Issues) -> None:
        """Merge another collection over the same rows."""
        for message, mask in other._masks.items():
            self.add(message, mask)

    def mask(self, message: str) -> BoolArray:
        """Rows recorded under ``message`` (all false when it never occurred)."""
        return self._masks.get(message, np.zeros(self.n, dtype=bool))

    @property
    def bad(self) -> BoolArray:
        """Rows with at least one problem."""
        out = np.zeros(self.n, dtype=bool)
        for mask in self._masks.values():
            out |= mask
        return out

    def counts(self) -> dict[str, int]:
        """Rows per reason (a row with two reasons counts under both), largest first."""
        pairs = ((m, int(mask.sum())) for m, mask in self._masks.items())
        return dict(sorted((p for p in pairs if p[1]), key=lambda p: (-p[1], p[0])))

    def reasons(self) -> pd.Series:
        """Per row, every reason joined by ``"; "`` (empty string for a good row)."""
        import pandas as pd

        out = np.full(self.n, "", dtype=object)
        for message, mask in self._masks.items():
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            prefix = np.where(out[idx] == "", "", out[idx].astype(str) + "; ")
            out[idx] = np.char.add(prefix.astype(str), message)
        return pd.Series(out, dtype="string")

    def subset(self, keep: BoolArray) -> Issues:
        """The same issues restricted to the rows where ``keep`` is true."""
        sub = Issues(int(np.count_nonzero(keep)))
        for message, mask in self._masks.items():
            sub._masks[message] = mask[keep]
        return sub


def flag_duplicates(
    frame: pd.DataFrame,
    key: list[str],
    issues: Issues,
    *,
    exact_message: str,
    conflict_message: str,
) -> None:
    """Rows sharing ``key``: exact copies keep the first row; keys whose rows disagree lose all.

    Nobody can tell which of two conflicting rows is right, so neither is kept; an exact copy
    carries no new information, so one is kept and the rest are reported.
    """
    import pandas as pd

    has_key = frame[key].notna().all(axis=1).to_numpy()
    shared = frame.duplicated(key, keep=False).to_numpy() & has_key
    if not shared.any():
        return
    sub = frame[shared]
    exact_copy = sub.duplicated(keep="first").to_numpy()
    versions = sub[~exact_copy].groupby(key, sort=False)[key[0]].transform("size")
    conflicting = sub[~exact_copy][(versions > 1).to_numpy()][key].drop_duplicates()
    in_conflict = pd.MultiIndex.from_frame(sub[key]).isin(pd.MultiIndex.from_frame(conflicting))
    rows = np.flatnonzero(shared)
    exact_mask = np.zeros(len(frame), dtype=bool)
    conflict_mask = np.zeros(len(frame), dtype=bool)
    exact_mask[rows] = exact_copy & ~in_conflict
    conflict_mask[rows] = in_conflict
    issues.add(exact_message, exact_mask)
    issues.add(conflict_message, conflict_mask)
