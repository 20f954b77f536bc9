"""Config errors: exit status 2 and one line naming the key path."""

import pytest

from gd_dask.interfaces.cli import main
from gd_dask.config import load_config, parse_config
from gd_dask.errors import ConfigError

MINIMAL = """
name: students
data:
  path: data/students
  features: [height_cm]
  target: weight_kg
"""


def test_the_smallest_config_needs_four_keys_and_gets_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.optimizer.learning_rate == "auto" and cfg.optimizer.epochs == "auto"
    assert cfg.optimizer.tol == 1e-9 and cfg.optimizer.refine == "auto"
    assert cfg.model.standardize and cfg.model.fit_intercept
    assert cfg.cluster.address is None and cfg.output_dir == "runs/students"


def test_set_overrides_any_key_with_a_yaml_value():
    cfg = parse_config(MINIMAL, ["optimizer.learning_rate=0.05", "model.standardize=false",
                                 "data.features=[a, b]", "cluster.address=tcp://127.0.0.1:8786"])
    assert cfg.optimizer.learning_rate == 0.05
    assert cfg.model.standardize is False
    assert cfg.data.features == ["a", "b"]
    assert cfg.cluster.address == "tcp://127.0.0.1:8786"


BAD = [
    ("not: [valid", "not valid YAML"),
    ("- a\n- b", "must be a mapping"),
    (MINIMAL + "optimiser: {}", "unknown key 'optimiser' (did you mean 'optimizer'?)"),
    (MINIMAL + "optimizer: {learnig_rate: 0.1}",
     "unknown key 'optimizer.learnig_rate' (did you mean 'optimizer.learning_rate'?)"),
    (MINIMAL + "optimizer: {epochs: ten}", "optimizer.epochs"),
    (MINIMAL + "optimizer: {epochs: true}", "optimizer.epochs"),
    (MINIMAL + "optimizer: {epochs: 0}", "optimizer.epochs: input should be greater than or equal to 1"),
    (MINIMAL + "optimizer: {learning_rate: -0.1}", "optimizer.learning_rate"),
    (MINIMAL + "optimizer: {learning_rate: 0}", "optimizer.learning_rate"),
    (MINIMAL + "optimizer: {refine: -1}", "optimizer.refine"),
    (MINIMAL + "optimizer: {tol: -1}", "optimizer.tol"),
    (MINIMAL + "optimizer: {method: sgd}", "optimizer.method: input should be 'batch'"),
    (MINIMAL + "optimizer: {strategy: magic}", "optimizer.strategy: input should be 'auto', 'stream', 'gram' or 'newton'"),
    ("name: 'bad name!'\ndata: {path: p, features: [a], target: y}", "name: string should match pattern"),
    ("name: n\ndata: {path: p, features: [], target: y}", "data.features: list should have at least 1 item"),
    ("name: n\ndata: {path: p, features: [a, y], target: y}", "target 'y' is also listed among features"),
    ("name: n\ndata: {path: p, features: [a, a], target: y}", "features: 'a' is listed twice"),
    ("name: n\ndata: {path: p, features: [a]}", "data.target: required key is missing"),
    ("data: {path: p, features: [a], target: y}", "name: required key is missing"),
    ("name: n\ndata: {path: p, features: [a], target: y, missing: maybe}",
     "data.missing: input should be 'error' or 'drop'"),
]


@pytest.mark.parametrize("text,message", [b for b in BAD if b[1]])
def test_bad_config_is_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text, source="c.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("c.yaml")


@pytest.mark.parametrize("override,message", [
    ("optimizer.learnig_rate=0.1", "unknown key (did you mean 'optimizer.learning_rate'?)"),
    ("optimizer=3", "optimizer"),
    ("nope.x=1", "unknown key"),
    ("optimizer.epochs", "expected key.path=value"),
    ("optimizer.epochs.deeper=1", "has no sub-keys"),
])
def test_set_on_a_missing_key_is_an_error(override, message):
    with pytest.raises(ConfigError) as e:
        parse_config(MINIMAL, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("text,key", [(b[0], b[1]) for b in BAD if b[1]][:6])
def test_config_errors_exit_with_status_2(tmp_path, capsys, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for command in ("train", "config-check"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert key.split(" (")[0].split(":")[0] in err and len(err.strip().splitlines()) == 1


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_config_schema_is_json_schema_with_all_sections(capsys):
    import json

    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"name", "data", "model", "optimizer", "cluster", "output", "registry"}


def test_floats_without_a_dot_are_numbers_as_in_yaml_1_2():
    cfg = parse_config(MINIMAL + "optimizer: {tol: 1e-12, learning_rate: 5e-2}")
    assert cfg.optimizer.tol == 1e-12 and cfg.optimizer.learning_rate == 0.05
    assert parse_config(MINIMAL, ["optimizer.tol=1e-20"]).optimizer.tol == 1e-20


def test_a_weight_column_may_not_be_a_feature_or_the_target():
    for weight in ("a", "y"):
        with pytest.raises(ConfigError, match="weight column .* is also a feature or the target"):
            parse_config(f"name: n\ndata: {{path: p, features: [a], target: y, weight: {weight}}}")


def test_the_readme_config_reference_is_a_valid_config():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Run config.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert parse_config(block, source="README").name == "students"


HOSTILE = {
    "alias bomb": "name: n\ndata:\n  path: p\n  features: [a]\n  target: y\n  storage_options:\n"
                  + "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                  + "".join(f"    {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
    "deep nesting": MINIMAL + "model: " + "[" * 10000 + "]" * 10000 + "\n",
    "huge file": MINIMAL + "#" + "x" * 5_000_000 + "\n",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_yaml_is_refused_at_once_naming_the_file(tmp_path, kind):
    """Each of these used to climb past 1.5 GiB, crash with RecursionError, or take 40 s."""
    import time

    from conftest import run_cli

    path = tmp_path / "c.yaml"
    path.write_text(HOSTILE[kind])
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c\.yaml: refused: "):
        load_config(path)
    assert time.perf_counter() - t < 5  # a hang guard, not a benchmark
    res = run_cli("config-check", path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and str(path) in res.stderr


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_names_that_are_not_plain_folders_are_refused(name):
    with pytest.raises(ConfigError, match="name: string should match pattern"):
        parse_config(MINIMAL.replace("name: students", f"name: '{name}'"))
