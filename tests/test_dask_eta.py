"""The Dask engine computes the pandas path's features and trains models of the same accuracy,
on a local cluster of 2 worker processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed")

from features import schema as s
from features.eta_features import EtaFeaturizer, feature_names
from features.eta_queries import queries_from_deliveries
from features.profiles import local_day
from tests.synth import make_deliveries
from tests.test_pipeline_eta import TINY
from training.dask_eta import (
    DAY,
    LABEL,
    by_route_day,
    fit_featurizer,
    fit_pair_order_dask,
    train_eta_dask,
    window_features,
)
from training.engine import EngineConfig, dask_client
from training.eta import _target, bound_rounds, day_of, train_eta

TEST_FROM = "2021-06-28"
CONFIG = dataclasses.replace(TINY, max_train_queries=10**9, num_threads=1)  # no subsampling


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries(days=34, couriers=4, stops=7, seed=11)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(EngineConfig(engine="dask", n_workers=2, memory_limit="2GiB")) as c:
        yield c


def _pandas_featurizer(deliveries: pd.DataFrame) -> EtaFeaturizer:
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < day_of(TEST_FROM)]
    return EtaFeaturizer().fit(history)


def test_partitions_hold_whole_route_days(deliveries: pd.DataFrame, client: Any) -> None:
    ddf = by_route_day(deliveries, npartitions=5)
    assert ddf.npartitions > 1
    seen: dict[str, int] = {}
    for i, part in enumerate(ddf.to_delayed()):
        for route in part.compute()[s.ROUTE_ID].unique():
            assert seen.setdefault(route, i) == i, f"route {route} straddles partitions"


def test_distributed_fit_equals_the_pandas_fit(deliveries: pd.DataFrame, client: Any) -> None:
    ddf = by_route_day(deliveries, npartitions=5)
    distributed = fit_featurizer(ddf, day_of(TEST_FROM))
    local = _pandas_featurizer(deliveries)
    assert distributed.window_ == local.window_
    assert list(distributed.vehicles_) == list(local.vehicles_)
    batch = queries_from_deliveries(deliveries)
    for mode in ("ordered", "unordered"):
        np.testing.assert_allclose(
            distributed.transform(batch, mode), local.transform(batch, mode), rtol=1e-9, atol=1e-9
        )


def test_distributed_features_equal_the_pandas_rows(deliveries: pd.DataFrame, client: Any) -> None:
    ddf = by_route_day(deliveries, npartitions=4)
    featurizer = _pandas_featurizer(deliveries)
    lo, hi = day_of("2021-06-20"), day_of(TEST_FROM)
    for mode in ("ordered", "unordered"):
        names = feature_names(mode)
        got = window_features(ddf, featurizer, mode, lo, hi, "log1p").compute()
        batch = queries_from_deliveries(deliveries)
        keep = (batch.q_route_day >= lo) & (batch.q_route_day < hi)
        want_b = batch.take_queries(keep)
        want = pd.DataFrame(featurizer.transform(want_b, mode), columns=names)
        want[LABEL] = _target(want_b.t_label_min, "log1p")
        want[DAY] = want_b.q_route_day[want_b.t_query]
        key = [*names, LABEL]
        a = got.sort_values(key).reset_index(drop=True)
        b = want.sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a[key].to_numpy(float), b[key].to_numpy(float), rtol=1e-6)


def test_dask_training_matches_pandas_accuracy(deliveries: pd.DataFrame, client: Any) -> None:
    ddf = by_route_day(deliveries, npartitions=4)
    dask_result = train_eta_dask(ddf, TEST_FROM, CONFIG, client)
    pandas_result = train_eta(deliveries, TEST_FROM, CONFIG)
    batch = queries_from_deliveries(deliveries)
    test = batch.take_queries(batch.q_route_day >= day_of(TEST_FROM))
    for mode in ("ordered", "unordered"):
        maes = {}
        for name, result in (("dask", dask_result), ("pandas", pandas_result)):
            pred = result.bundle.predict(test, mode)
            maes[name] = float(np.mean(np.abs(pred.p50 - test.t_label_min)))
            cover = np.mean((pred.p10 <= test.t_label_min) & (test.t_label_min <= pred.p90))
            assert 0.6 <= cover <= 0.97, (name, mode, cover)
        assert maes["dask"] <= maes["pandas"] * 1.15 + 0.5, maes
        for result in (dask_result, pandas_result):  # both engines: bounds get their share
            boosters, best = result.bundle.modes[mode].boosters, result.best_iterations[mode]
            assert boosters[0.5].num_trees() == best
            assert boosters[0.9].num_trees() == bound_rounds(best, CONFIG)
    assert dask_result.bundle.feature_set == pandas_result.bundle.feature_set
    assert dask_result.split == pandas_result.split


def test_the_visit_order_learned_on_the_cluster_matches_the_pandas_one(
    deliveries: pd.DataFrame, client: Any
) -> None:
    from features.pair_order import PairOrder

    order = PairOrder(refresh_days=5, min_days=5, rounds=10, rank_rounds=10, min_child_samples=20)
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < day_of(TEST_FROM)]
    local = EtaFeaturizer(pair_order=order).fit(history)
    ddf = by_route_day(deliveries, npartitions=3)
    cluster = fit_pair_order_dask(
        ddf,
        day_of(TEST_FROM),
        fit_featurizer(ddf, day_of(TEST_FROM), EtaFeaturizer(pair_order=order)),
    )
    assert (
        cluster.pair_order_.cuts_ == local.pair_order_.cuts_ and len(local.pair_order_.cuts_) >= 2
    )
    batch = queries_from_deliveries(deliveries)
    names = feature_names("unordered")
    pw = [names.index(n) for n in names if n.startswith("pw_")]
    a, b = cluster.transform(batch, "unordered")[:, pw], local.transform(batch, "unordered")[:, pw]
    assert np.isfinite(a).mean() > 0.5
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    empty = fit_featurizer(ddf, day_of(TEST_FROM))  # built without a pair order
    with pytest.raises(ValueError, match="pair_order: this featurizer was built without one"):
        fit_pair_order_dask(ddf, day_of(TEST_FROM), empty)


def test_train_eta_command_on_the_dask_engine(mlflow_uri: str, tmp_path: Any) -> None:
    """``doorstep train eta --engine dask`` trains, registers and gates like the pandas path."""
    import yaml
    from typer.testing import CliRunner

    from doorstep.cli import app
    from doorstep.config import to_dict

    config = tmp_path / "eta.yaml"
    config.write_text(yaml.safe_dump(to_dict(CONFIG)))
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        app,
        ["train", "eta", "--engine", "dask", "--workers", "2", "--config", str(config),
         "--days", "30", "--couriers", "6", "--seed", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "doorstep-eta v1" in result.output
    bad = CliRunner().invoke(app, ["train", "eta", "--engine", "spark"])
    assert bad.exit_code == 2 and "--engine" in bad.output


def test_partitioned_parquet_from_the_simulator_feeds_the_dask_path(
    tmp_path: Any, client: Any
) -> None:
    """``doorstep simulate --partitioned`` writes one folder per date; read back, each partition
    holds whole routes and the distributed fit runs on it."""
    import dataclasses as dc

    from citysim import CityConfig, simulate_to_parquet
    from training.dask_eta import read_deliveries_dask

    cfg = dc.replace(CityConfig(), days=4, couriers=3, seed=2)
    simulate_to_parquet(cfg, tmp_path, partition_by_date=True)
    ddf = read_deliveries_dask(str(tmp_path / "deliveries"))
    assert ddf.npartitions == 4
    routes = [set(p.compute()[s.ROUTE_ID]) for p in ddf.to_delayed()]
    assert sum(len(r) for r in routes) == len(set().union(*routes))  # no route in two partitions
    featurizer = fit_featurizer(ddf, day_of("2021-05-01"))
    assert len(featurizer.known_couriers()) == 3


def test_feature_rows_are_written_as_partitioned_parquet(
    deliveries: pd.DataFrame, client: Any, tmp_path: Any
) -> None:
    from training.dask_eta import write_features

    ddf = by_route_day(deliveries, npartitions=4)
    paths = write_features(ddf, TEST_FROM, str(tmp_path / "features"))
    featurizer = _pandas_featurizer(deliveries)
    batch = queries_from_deliveries(deliveries)
    before = batch.take_queries(batch.q_route_day < day_of(TEST_FROM))
    for mode, path in paths.items():
        files = list((tmp_path / "features" / mode).glob("*.parquet"))
        assert len(files) == 4  # one per partition, written by the workers
        got = pd.read_parquet(path)
        names = feature_names(mode)
        want = featurizer.transform(before, mode)
        assert len(got) == len(want)
        np.testing.assert_allclose(
            np.sort(got[names].to_numpy(float), axis=0), np.sort(want.astype(float), axis=0),
            rtol=1e-6,
        )  # fmt: skip


def test_features_command_on_simulated_partitioned_parquet(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from doorstep.cli import app

    runner = CliRunner(env={"COLUMNS": "250"})
    sim = runner.invoke(app, ["simulate", "--days", "25", "--couriers", "3", "--seed", "4",
                              "--out", str(tmp_path / "city"), "--partitioned"])  # fmt: skip
    assert sim.exit_code == 0, sim.output
    result = runner.invoke(app, ["features", "eta", "--data", str(tmp_path / "city" / "deliveries"),
                                 "--test-from", "2021-05-01", "--out", str(tmp_path / "f")])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "f" / "ordered")
    assert len(rows) > 100 and set(feature_names("ordered")) <= set(rows.columns)
    missing = runner.invoke(app, ["features", "eta", "--data", str(tmp_path / "nope"),
                                  "--test-from", "2021-05-01", "--out", str(tmp_path / "g")])  # fmt: skip
    assert missing.exit_code == 2 and "--data" in missing.output


def test_dask_without_refit_keeps_the_early_stopped_median(
    deliveries: pd.DataFrame, client: Any
) -> None:
    config = dataclasses.replace(CONFIG, refit_full=False, modes=("unordered",))
    result = train_eta_dask(by_route_day(deliveries, npartitions=4), TEST_FROM, config, client)
    boosters, best = result.bundle.modes["unordered"].boosters, result.best_iterations["unordered"]
    assert sorted(boosters) == [0.1, 0.5, 0.9]
    assert boosters[0.5].num_trees() == best  # the validation fit, truncated at its best round
    assert boosters[0.1].num_trees() == boosters[0.9].num_trees() == bound_rounds(best, config)
