"""Property-based: random configs and random Parquet inputs end in a valid result or a
clean, one-line error — never another exception."""

import decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config
from gd_dask.config import RunConfig, parse_config
from gd_dask.errors import ConfigError, GdDaskError
from gd_dask.jobs.training import fit

KEYS = ["name", "data", "path", "features", "target", "filters", "missing", "model", "optimizer",
        "learning_rate", "epochs", "tol", "momentum", "strategy", "cluster", "address", "output", "dir",
        "standardize", "fit_intercept", "registry", "promote", "metric", "tls", "weight", "n_workers"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["auto", "tcp://x:1", "1e-9", "gram", "drop"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5)), max_leaves=20)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)

BASE = {"name": "f", "data": {"path": "p", "features": ["a"], "target": "y"}}


def _outcome(fn):
    try:
        assert isinstance(fn(), RunConfig)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_yaml_documents_give_a_config_or_a_clean_error(doc):
    _outcome(lambda: parse_config(yaml.safe_dump(doc)))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_a_config_or_a_clean_error(text):
    _outcome(lambda: parse_config(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(KEYS + ["x"]), min_size=1, max_size=3),
                          st.one_of(st.text(max_size=10), scalars.map(lambda v: yaml.safe_dump(v).strip()))),
                max_size=4))
def test_random_set_overrides_give_a_config_or_a_clean_error(overrides):
    items = [".".join(k) + "=" + v for k, v in overrides]
    _outcome(lambda: parse_config(yaml.safe_dump(BASE), items))


column_kinds = st.sampled_from(["float", "int", "bool", "string", "float_with_bad", "decimal", "int_with_null",
                                "bool_with_null"])


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(kinds=st.lists(column_kinds, min_size=2, max_size=3), n_files=st.integers(1, 3),
       rows=st.one_of(st.integers(1, 40), st.integers(8190, 8200)),  # a chunk's slices are 8192 rows
       seed=st.integers(0, 2**16), missing=st.sampled_from(["error", "drop"]))
def test_random_parquet_inputs_give_a_model_or_a_clean_error(client, tmp_path_factory, kinds, n_files, rows, seed, missing):
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("fuzz")
    names = [f"c{j}" for j in range(len(kinds))]
    for f in range(n_files):
        cols = {}
        for name, kind in zip(names, kinds):
            if kind == "int":
                cols[name] = rng.integers(-5, 5, rows)
            elif kind == "bool":
                cols[name] = rng.random(rows) > 0.5
            elif kind == "string":
                cols[name] = [str(v) for v in rng.integers(0, 9, rows)]
            elif kind == "decimal":
                cols[name] = pa.array([decimal.Decimal(int(v)).scaleb(-2) for v in rng.integers(-999, 999, rows)],
                                      type=pa.decimal128(6, 2))
            elif kind in ("int_with_null", "bool_with_null"):
                v = rng.integers(-5, 5, rows) if kind == "int_with_null" else rng.random(rows) > 0.5
                cols[name] = pa.array([None if bad else x.item() for x, bad in zip(v, rng.random(rows) < 0.1)])
            else:
                v = rng.normal(size=rows)
                if kind == "float_with_bad":
                    v[rng.random(rows) < 0.2] = rng.choice([np.nan, np.inf, -np.inf])
                cols[name] = v
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")
    data = {"path": str(root), "features": names[:-1], "target": names[-1], "missing": missing}
    try:
        res = fit(make_config(data, root, optimizer={"epochs": 20}), client)
        assert np.all(np.isfinite(res.m)) and np.isfinite(res.b)
    except GdDaskError as e:
        assert str(e) and "\n" not in str(e)
