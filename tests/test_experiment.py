"""Tests for bn.experiment, the one place a ConfigDict is read: every value of the schema is checked (a wrong type or
a value out of range raises ConfigError naming the key, fuzzed over every leaf), the run table is seeds x swept LRs x
swept weight decays in that order, the fingerprint ignores the launch keys only, the config's norm section becomes
the BNOptions it names, "auto" picks the program layout by model and backend, and ``train_size`` cuts a fixed subset.
References are written independently: ``itertools.product``, SHA-256 of the sorted JSON, the values set.
"""

import dataclasses
import hashlib
import itertools
import json

import numpy as np
import pytest

import bn
from bn import config, experiment, models


def tiny():
  c = config.base()
  c.model.update(widths=(4,))
  return c


# ----------------------------------------------------------------------------- every value checked (fuzz)

FREE_TEXT = {"name", "data.name", "data.data_dir", "parallel.devices", "parallel.coordinator"}  # any string goes (checked later)
MAY_BE_EMPTY = {"sweep.lr", "sweep.weight_decay", "optimizer.decay_steps", "probes.landscape_scales", "probes.kinds", "probes.lrs"}


def bad_values(key, default):
  """Values of the wrong type and out of range for a leaf of ``config.base()``, from its default."""
  if isinstance(default, bool):
    return [2, "yes", 1.0]
  if isinstance(default, int):
    return ["abc", 1.5, True, -10**12, 2**31]
  if isinstance(default, float):
    return ["abc", -1e9, float("nan"), float("inf")]  # (ml_collections turns True into 1.0 in a float field)
  if isinstance(default, str):
    return [3, 1.5] if key in FREE_TEXT else [3, "bogus"]
  if isinstance(default, tuple):
    out = ["abc", 5, ("abc",), (None,), (float("nan"),), (-10**12,)]
    return out if key in MAY_BE_EMPTY else out + [()]
  if default is None:  # optional numbers
    return ["abc", -1.0, 0.0]
  raise AssertionError(f"no bad values for {key}={default!r}")


def set_unchecked(c, key, value):
  """Sets ``key`` to ``value`` past ml_collections' own type check (as a config file can)."""
  *path, last = key.split(".")
  node = c
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[last] = value


def leaf(c, key):
  for part in key.split("."):
    c = c[part]
  return c


LEAVES = [(k, v) for k in config.all_keys(config.base()) for v in bad_values(k, leaf(config.base(), k))]
LEAVES += [("model.init_std", v) for v in bad_values("model.init_std", None)]  # optional: None is a valid value
LEAVES += [("norm.momentum", 1.0), ("seeds", (3, 3)), ("seeds", (0.5, 1.7)), ("train.target_accuracy", 5.0),
           ("norm.r_max", 0.5), ("norm.d_max", -1.0), ("norm.renorm_warmup", -1), ("data.split_seed", -1),
           ("optimizer.momentum", 5.0), ("norm.noise.mean_range", (0.0,)), ("model.widths", (0,)), ("sweep.lr", (0.1, 0.1))]


def test_every_leaf_of_the_schema_has_a_rule():
  assert sorted(experiment.schema()) == sorted(config.all_keys(config.base()))
  experiment.from_config(config.base())  # the defaults pass


@pytest.mark.parametrize("key, value", LEAVES, ids=[f"{k}={v!r}" for k, v in LEAVES])
def test_every_config_value_is_checked_naming_its_key(key, value):
  """A wrong-typed or out-of-range value of any key: ConfigError naming the key (before any
  device, file or dataset is touched: from_config does not write)."""
  c = config.base()
  set_unchecked(c, key, value)
  with pytest.raises(config.ConfigError) as e:
    experiment.from_config(c)
  assert f"--config.{key}=" in str(e.value), str(e.value)


def test_a_config_missing_a_key_names_it():
  c = config.base()
  del c.train["eval_chunk"]
  with pytest.raises(config.ConfigError, match=r"--config\.train\.eval_chunk is missing .*base\(\)"):
    experiment.from_config(c)


def test_the_run_table_is_seeds_by_lrs_by_weight_decays():
  c = tiny()
  c.seeds, c.sweep.lr, c.sweep.weight_decay = (3, 1), (0.1, 0.2, 0.4), (0.0, 1e-4)
  runs = experiment.from_config(c).runs
  want = list(itertools.product((3, 1), (0.1, 0.2, 0.4), (0.0, 1e-4)))
  assert [(r.seed, r.lr, r.weight_decay) for r in runs] == want and [r.run for r in runs] == list(range(12))
  c.sweep.lr, c.sweep.weight_decay = (), ()  # no sweep: the optimizer's own values
  c.optimizer.update(lr=0.7, weight_decay=0.01)
  assert [(r.seed, r.lr, r.weight_decay) for r in experiment.from_config(c).runs] == [(3, 0.7, 0.01), (1, 0.7, 0.01)]


def test_the_fingerprint_is_the_recorded_config_without_launch_keys():
  c = tiny()
  exp = experiment.from_config(c)
  want = {**config.to_dict(c)}
  want["parallel"] = {k: v for k, v in want["parallel"].items() if k not in experiment.LAUNCH_KEYS}
  assert exp.config == want and "coordinator" not in exp.config["parallel"]
  assert exp.fingerprint == hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()
  moved = config.to_dict(c)
  moved["parallel"].update(coordinator="10.0.0.1:1234", process_id=3, num_processes=4)  # another process of the same run
  assert experiment.fingerprint(moved) == exp.fingerprint
  moved["optimizer"]["lr"] = 0.25  # another run
  assert experiment.fingerprint(moved) != exp.fingerprint


def test_the_norm_section_becomes_the_options_it_names():
  c = tiny()
  c.norm.update(kind="ghost", momentum=0.9, epsilon=1e-3, variance="fast", ghost_batch_size=16, unbiased=True)
  c.norm.noise.update(mean_range=(-0.25, 0.25), dose=0.5)
  o = experiment.bn_options(c.norm)
  assert isinstance(o, bn.BNOptions)
  assert (o.momentum, o.epsilon, o.variance, o.ghost_batch_size, o.unbiased) == (0.9, 1e-3, "fast", 16, True)
  assert o.noise == bn.Noise((-0.25, 0.25), (1.0, 1.25), 0.1, 0.1, True, 0.5)
  c.norm.update(kind="batch", ghost_batch_size=0, population_noise=0)  # 0 in a config: off
  o = experiment.bn_options(c.norm)
  assert o.ghost_batch_size is None and o.population_noise is None
  assert experiment.from_config(c).ghost_batch_size is None


def test_auto_layout_by_model_and_backend():
  model = lambda name: models.create(name, norm=models.NormSpec(), num_classes=10)  # noqa: E731
  assert experiment.choose_layout("auto", "auto", model("cnn"), "cpu") == ("host", "unroll")
  assert experiment.choose_layout("auto", "auto", model("resnet20"), "cpu") == ("host", "unroll")
  assert experiment.choose_layout("auto", "auto", model("mlp"), "cpu") == ("scan", "vmap")
  assert experiment.choose_layout("auto", "auto", model("cnn"), "gpu") == ("scan", "vmap")
  assert experiment.choose_layout("scan", "vmap", model("cnn"), "cpu") == ("scan", "vmap")
  assert all(models.is_convolutional(model(n)) for n in ("cnn", "vgg", "resnet20")) and not models.is_convolutional(model("mlp"))


def test_train_size_is_a_fixed_subset_of_the_training_split():
  c = tiny()
  c.data.update(name="synthetic", source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(50, 10), train_size=20)
  spec = experiment.from_config(c).data
  full = experiment.load_dataset(dataclasses.replace(spec, train_size=0))
  a, b = experiment.load_dataset(spec), experiment.load_dataset(spec)
  assert len(a.train.y) == 20 and len(full.train.y) == 50
  np.testing.assert_array_equal(a.train.x, b.train.x)  # the same subset every time
  rows = {r.tobytes() for r in full.train.x}
  assert all(r.tobytes() in rows for r in a.train.x)  # examples of the full split
  assert experiment.dataset_key(spec) == experiment.dataset_key(dataclasses.replace(spec, train_size=0))  # shareable
  np.testing.assert_array_equal(a.test.x, full.test.x)  # the test split is not cut
