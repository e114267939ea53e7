"""Experiment configs: command-line overrides (nesting, type coercion, errors), loading, every config file building.

That every value of the schema is checked, naming its key, is test_experiment.py (bn.experiment reads the config)."""

import json
from pathlib import Path

import pytest

from bn import config, experiment

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.py"))


def set_(c, key, raw):
  config.override(c, key, raw)
  node = c
  for part in key.split("."):
    node = node[part]
  return node


# ----------------------------------------------------------------------------- overrides: values and types


@pytest.mark.parametrize("key, raw, want", [
    ("optimizer.lr", "0.1", 0.1),
    ("optimizer.lr", "1e-3", 1e-3),
    ("optimizer.lr", "1", 1.0),  # an int literal into a float field becomes a float
    ("train.steps", "20", 20),
    ("train.augment", "true", True),
    ("train.augment", "False", False),
    ("seeds", "(1, 2, 3)", (1, 2, 3)),
    ("seeds", "[4, 5]", (4, 5)),  # lists become tuples
    ("seeds", "7", (7,)),  # a scalar into a tuple field becomes a 1-tuple
    ("model.widths", "(8,)", (8,)),
    ("norm.noise.scale_std", "0.25", 0.25),  # three levels deep
    ("model.init_std", "0.05", 0.05),  # a None default takes any literal
    ("norm.kind", "none", "none"),  # strings stay strings: not None
    ("norm.kind", "None", "None"),
    ("name", "123", "123"),
    ("name", "true", "true"),
    ("data.data_dir", "/tmp/some dir", "/tmp/some dir"),
])
def test_override_parses_and_coerces(key, raw, want):
  got = set_(config.base(), key, raw)
  assert got == want and type(got) is type(want)


def test_override_none_into_optional_field():
  c = config.base()
  config.override(c, "model.init_std", "none")
  assert c.model.init_std is None
  config.override(c, "model.init_std", "0.1")
  assert c.model.init_std == 0.1


def test_override_leaves_other_keys_alone():
  c, ref = config.base(), config.base()
  config.override(c, "optimizer.lr", "0.125")
  a, b = config.to_dict(c), config.to_dict(ref)
  assert a["optimizer"].pop("lr") == 0.125 and b["optimizer"].pop("lr") != 0.125
  assert a == b


@pytest.mark.parametrize("key, raw", [
    ("train.steps", "abc"),
    ("train.steps", "1.5"),
    ("train.steps", "true"),  # bool is not an int here
    ("optimizer.lr", "fast"),
    ("optimizer.lr", "true"),
    ("train.augment", "1"),
    ("train.augment", "yes"),
    ("seeds", "true"),
])
def test_override_bad_type_raises(key, raw):
  with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
    config.override(config.base(), key, raw)


@pytest.mark.parametrize("key, suggestion", [
    ("optimizer.lrr", "--config.optimizer.lr"),
    ("optimiser.lr", "--config.optimizer.lr"),
    ("train.step", "--config.train.steps"),
    ("norm.knd", "--config.norm.kind"),
])
def test_override_unknown_key_names_it_and_suggests(key, suggestion):
  with pytest.raises(config.ConfigError) as e:
    config.override(config.base(), key, "1")
  msg = str(e.value)
  assert f"--config.{key}" in msg and "unknown" in msg and suggestion in msg


def test_override_unknown_key_without_close_match():
  with pytest.raises(config.ConfigError, match="unknown config key --config.zzzzzz"):
    config.override(config.base(), "zzzzzz", "1")


def test_override_of_a_group_raises():
  with pytest.raises(config.ConfigError, match="group"):
    config.override(config.base(), "optimizer", "1")
  with pytest.raises(config.ConfigError, match="unknown"):  # a key below a leaf
    config.override(config.base(), "optimizer.lr.x", "1")


# ----------------------------------------------------------------------------- command-line splitting, files


def test_split_overrides():
  rest, ov = config.split_overrides(
      ["--config", "x.py", "--config.optimizer.lr=0.1", "--config.norm.kind", "none", "--workdir", "w", "--config.name=a=b"])
  assert rest == ["--config", "x.py", "--workdir", "w"]
  assert ov == [("optimizer.lr", "0.1"), ("norm.kind", "none"), ("name", "a=b")]
  with pytest.raises(config.ConfigError, match="needs a value"):
    config.split_overrides(["--config.optimizer.lr"])


def test_load_file_with_argument_and_overrides(tmp_path):
  p = tmp_path / "cfg.py"
  p.write_text(
      "from bn.config import base\n"
      "def get_config(mode='a'):\n"
      "  c = base(); c.name = 'cfg_' + mode; c.train.steps = 7\n"
      "  return c\n")
  assert config.load(str(p)).name == "cfg_a"
  c = config.load(f"{p}:b", [("train.steps", "9"), ("norm.kind", "none")])
  assert (c.name, c.train.steps, c.norm.kind) == ("cfg_b", 9, "none")


def test_load_errors(tmp_path):
  with pytest.raises(config.ConfigError, match="does not exist"):
    config.load(str(tmp_path / "missing.py"))
  p = tmp_path / "empty.py"
  p.write_text("x = 1\n")
  with pytest.raises(config.ConfigError, match="get_config"):
    config.load(str(p))
  p = tmp_path / "ok.py"
  p.write_text("from bn.config import base\ndef get_config():\n  return base()\n")
  with pytest.raises(config.ConfigError, match="optimizer.lrr"):
    config.load(str(p), [("optimizer.lrr", "0.1")])


def test_to_dict_is_json_and_round_trips():
  c = config.base()
  d = config.to_dict(c)
  assert json.loads(json.dumps(d)) == d
  assert d["seeds"] == [0] and d["model"]["widths"] == [100, 100, 100]  # tuples become lists
  assert sorted(config.all_keys(c)) == sorted(_flat_keys(d))


def _flat_keys(d, prefix=""):
  out = []
  for k, v in d.items():
    out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
  return out


# ----------------------------------------------------------------------------- the experiment configs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_builds(path):
  """Every experiment config loads, keeps the schema's keys, and builds its model and run table."""
  c = config.load(str(path))
  missing = set(config.all_keys(config.base())) - set(config.all_keys(c)) - {"model.widths", "model.act", "model.init_std"}
  assert not missing, f"{path.name} lacks {sorted(missing)}"
  assert path.read_text().lstrip().startswith('"""'), f"{path.name} has no docstring with its command"
  exp = experiment.from_config(c)
  task = exp.make_task(10)
  runs = exp.run_table
  assert runs and [r["run"] for r in runs] == list(range(len(runs)))
  assert task.batch_size == c.train.batch_size


@pytest.mark.parametrize("text, arg, match", [
    ("def get_config(:\n", "", r"failed to load: SyntaxError"),
    ("import ml_collections\n\ndef get_config():\n  return ml_collections.nope\n", "", r"get_config\(\) failed: AttributeError: .*nope.* \(line 4\)"),
    ("def get_config():\n  return {}\n", "", r"returned a dict, not an ml_collections\.ConfigDict"),
    ("from bn.config import base\n\ndef get_config():\n  return base()\n", "foo", r"get_config\('foo'\) failed: TypeError.*passed to get_config"),
    ("from bn.config import base\n\ndef get_config(mode):\n  return {'a': base()}[mode]\n", "bogus", r"get_config\('bogus'\) failed: KeyError"),
])
def test_a_config_file_that_fails_is_a_config_error(tmp_path, text, arg, match):
  p = tmp_path / "user.py"
  p.write_text(text)
  with pytest.raises(config.ConfigError, match=match):
    config.load(f"{p}:{arg}" if arg else str(p))
