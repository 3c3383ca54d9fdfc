"""Compiled tree ensembles for serving (lleaves): the same predictions, several times faster.

LightGBM's ``predict`` on a 50-row matrix spends most of its time walking trees through generic
code (~1.8 ms per 374-tree booster here); lleaves compiles a booster to machine code with LLVM
and predicts the same numbers (equal to ~1e-14) in ~0.3 ms. Compiling takes seconds per booster,
so it happens once per (booster, CPU) and is cached on disk: the training machine fills the
cache at registration (``accelerate(..., compile_missing=True)``) and ``doorstep models compile``
fills it on a new serving machine. A service that finds no compiled copy serves with LightGBM,
never with a guess: a binary is only used on the CPU it was compiled for (a wrong instruction
set would crash the process, not raise).

Optional: without ``lleaves`` installed everything runs on LightGBM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

log = logging.getLogger("doorstep.fast_trees")

ENV_CACHE = "DOORSTEP_TREE_CACHE"
Predict = Callable[[npt.NDArray[Any]], npt.NDArray[np.float64]]


def cache_dir() -> Path:
    """``$DOORSTEP_TREE_CACHE`` or ``~/.cache/doorstep/trees``."""
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "doorstep" / "trees"))


def available() -> bool:
    try:
        import lleaves  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def host_key() -> str:
    """The CPU the binaries are compiled for: name and feature flags of this host."""
    import llvmlite.binding as llvm

    return f"{llvm.get_host_cpu_name()}|{llvm.get_host_cpu_features().flatten()}"


def key_tag() -> str:
    """What a binary depends on besides the trees: the CPU, lleaves' version, the flags."""
    import lleaves

    return f"{host_key()}|lleaves-{getattr(lleaves, '__version__', '?')}|noinline"


def _key(booster: lgb.Booster) -> str:
    text = booster.model_to_string()  # ~0.2 s for a 600-tree booster: see known_keys
    return hashlib.sha256((key_tag() + "\n" + text).encode()).hexdigest()[:24]


def read_known_keys(path: Path, fingerprint: str) -> dict[str, str]:
    """Cache keys recorded beside an immutable model copy (``save_known_keys``) for this
    CPU and this exact bundle file, else none. A worker then skips serialising every booster
    to find its binary: a second or more of start-up."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entry = raw.get(key_tag()) if isinstance(raw, dict) else None
    if not isinstance(entry, dict) or entry.get("bundle") != fingerprint:
        return {}
    keys = entry.get("keys")
    return {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}


def save_known_keys(path: Path, fingerprint: str, keys: dict[str, str]) -> None:
    try:
        raw = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    raw[key_tag()] = {"bundle": fingerprint, "keys": keys}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(raw, indent=1) + "\n")
        os.replace(tmp, path)  # atomic: two workers may write at once
    except OSError as exc:  # a read-only model copy: the keys are recomputed next time
        log.info("could not record the tree cache keys in %s: %s", path, exc)


@dataclass(frozen=True)
class Compiled:
    """A compiled booster: ``predict(X)`` equals ``booster.predict(X)``."""

    model: Any  # lleaves.Model
    key: str = ""  # its cache key

    def predict(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        return np.asarray(self.model.predict(np.asarray(X, dtype=np.float64), n_jobs=1))


def _paths(booster: lgb.Booster, directory: Path, key: str | None = None) -> tuple[Path, Path]:
    key = key or _key(booster)
    return directory / f"{key}.so", directory / f"{key}.txt"


def _compile_file(txt: str, so: str) -> str:
    """Compile one saved booster to ``so`` (a top-level function: runs in a worker process)."""
    import lleaves

    tmp = f"{so}.{os.getpid()}.tmp"
    # inlining makes prediction ~15% faster but compiling ~10x slower (minutes per booster)
    lleaves.Model(model_file=txt).compile(cache=tmp, finline=False)
    os.replace(tmp, so)  # atomic: a concurrent worker never loads half a binary
    return so


def compile_boosters(
    boosters: dict[str, lgb.Booster], directory: Path | None = None, workers: int = 1
) -> list[str]:
    """Compile every booster not yet in the cache (LLVM is single-threaded: ``workers``
    processes compile side by side). Returns the names compiled now."""
    if not available():
        raise RuntimeError("lleaves is not installed: pip install lleaves")
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    todo: dict[str, tuple[str, str]] = {}
    for name, booster in boosters.items():
        so, txt = _paths(booster, directory)
        if so.exists():
            continue
        if not txt.exists():
            booster.save_model(str(txt))
        todo[name] = (str(txt), str(so))
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo))) as pool:
            list(pool.map(_compile_file, *zip(*todo.values(), strict=True)))
    else:
        for txt_path, so_path in todo.values():
            _compile_file(txt_path, so_path)
    return list(todo)


def compiled(
    booster: lgb.Booster,
    directory: Path | None = None,
    compile_missing: bool = True,
    key: str | None = None,
) -> Compiled | None:
    """The cached compiled copy of ``booster`` for this CPU; compiled now if missing and
    ``compile_missing``, else None. ``key``: the booster's cache key if already known."""
    if not available():
        return None
    import lleaves

    directory = directory or cache_dir()
    so, txt = _paths(booster, directory, key)
    if key is not None and not (so.exists() and txt.exists()):
        key = None  # a recorded key without its binary: look the trees' own key up
        so, txt = _paths(booster, directory)
    if not so.exists():
        if not compile_missing:
            return None
        compile_boosters({"booster": booster}, directory)
    model = lleaves.Model(model_file=str(txt))
    model.compile(cache=str(so))  # loads the cached binary, compiles nothing
    return Compiled(model, so.stem)


@dataclass
class AccelerationReport:
    compiled: int = 0
    missing: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # booster name -> cache key used

    @property
    def complete(self) -> bool:
        return not self.missing


def boosters_of(bundle: Any) -> dict[str, lgb.Booster]:
    """Every booster of an ETA bundle (and its leg model), by a readable name."""
    out: dict[str, lgb.Booster] = {}
    for mode, m in bundle.modes.items():
        for q, b in m.boosters.items():
            out[f"eta.{mode}.p{round(q * 100):02d}"] = b
    if getattr(bundle, "leg", None) is not None:
        out["leg"] = bundle.leg.booster
    order = _pair_order(bundle)
    if order is not None:
        for name, b in order.serving_boosters().items():
            out[f"pair_order.{name}"] = b
    return out


def _pair_order(bundle: Any) -> Any:
    """The fitted learned visit order of an ETA bundle's featurizer, if it has one."""
    featurizer = getattr(bundle, "featurizer", None)
    return getattr(featurizer, "__dict__", {}).get("pair_order_")


def accelerate(
    bundle: Any,
    directory: Path | None = None,
    compile_missing: bool = False,
    known_keys: dict[str, str] | None = None,
) -> AccelerationReport:
    """Attach compiled copies to an ETA bundle's boosters (``fast`` maps, never pickled).

    A booster with no compiled copy keeps LightGBM; the report says which. ``known_keys``
    (booster name -> cache key, from ``read_known_keys``) skips computing those keys; the
    report's ``keys`` are the ones found, to record with ``save_known_keys``."""
    report = AccelerationReport()
    if not available():
        report.missing = list(boosters_of(bundle))
        return report
    known = known_keys or {}
    directory = directory or cache_dir()

    def one(name: str, booster: lgb.Booster) -> Compiled | None:
        c = compiled(booster, directory, compile_missing, known.get(name))
        if c is None:
            report.missing.append(name)
        else:
            report.compiled += 1
            report.keys[name] = c.key
        return c

    for mode, m in bundle.modes.items():
        fast = {}
        for q, b in m.boosters.items():
            c = one(f"eta.{mode}.p{round(q * 100):02d}", b)
            if c is not None:
                fast[q] = c
        m.fast = fast
    leg = getattr(bundle, "leg", None)
    if leg is not None:
        leg.fast = one("leg", leg.booster)
    order = _pair_order(bundle)
    if order is not None:  # the unordered mode's visit order runs two boosters per request
        order_fast = {}
        for name, b in order.serving_boosters().items():
            c = one(f"pair_order.{name}", b)
            if c is not None:
                order_fast[name] = c
        order.fast_ = order_fast
    return report
