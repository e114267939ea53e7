"""Experiment configs: ml_collections files with a ``get_config()``, overridable from the command line.

``--config.optimizer.lr=0.1`` sets a nested key; the value is parsed as a
Python literal (numbers, booleans ``true/false/True/False``, tuples/lists,
``None``) and checked against the type of the value it replaces. A
config file may take an argument: ``--config path.py:ARG`` calls
``get_config("ARG")``.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from bn.errors import UsageError

# The experiment configs of a checkout (``bn`` installed editable from it, or run from it).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"


class ConfigError(UsageError):
  """A config file or override that cannot be used; the message says how to fix it."""


def available() -> list[str]:
  """Names of the experiment configs in :data:`CONFIG_DIR` (empty outside a checkout)."""
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_")) if CONFIG_DIR.is_dir() else []


def resolve_path(path: str) -> Path:
  """A config file path; a bare name such as ``ioffe_mlp`` means ``experiments/configs/ioffe_mlp.py``
  of this checkout."""
  p = Path(path)
  if p.is_file():
    return p
  if not p.suffix and p.parent == Path(".") and (CONFIG_DIR / f"{path}.py").is_file():
    return CONFIG_DIR / f"{path}.py"
  names = available()
  known = f" Available: {', '.join(names)} (in {CONFIG_DIR})." if names else ""
  raise ConfigError(f"config file {path!r} does not exist; pass a path such as experiments/configs/ioffe_mlp.py or a config name.{known}")


def load_file(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of ``PATH[:ARG]``: ``get_config(ARG)`` (or ``get_config()``) of the file. A file
  that fails to run, an argument it refuses and a result that is not a ConfigDict raise ConfigError."""
  path, _, arg = spec.partition(":")
  p = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location(f"bn_config_{p.stem}", p)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 -- a user's file: any error it raises is the file's
    raise ConfigError(f"config file {p} failed to load: {_where(e, p)}; fix the file.") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config().")
  try:
    cfg = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001
    call = f"get_config({arg!r})" if arg else "get_config()"
    hint = f" ({spec!r}: the part after ':' is passed to get_config; check which arguments the file takes)" if arg else ""
    raise ConfigError(f"config file {p}: {call} failed: {_where(e, p)}{hint}.") from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"config file {p}: get_config() returned a {type(cfg).__name__}, not an ml_collections.ConfigDict; "
                      "start from bn.config.base() and return it.")
  return cfg


def _where(e: BaseException, path: Path) -> str:
  """``"SyntaxError: ... (line 3)"``: an exception raised by a config file, with its line in that file."""
  line, tb = None, None if isinstance(e, SyntaxError) else e.__traceback__  # a SyntaxError names its line itself
  while tb is not None:
    if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
      line = tb.tb_lineno
    tb = tb.tb_next
  text = " ".join(str(e).split()) or "(no message)"
  return f"{type(e).__name__}: {text}" + (f" (line {line})" if line else "")


def _parse_value(raw: str) -> Any:
  low = raw.strip()
  if low in ("true", "True"):
    return True
  if low in ("false", "False"):
    return False
  if low in ("none", "None", "null"):
    return None
  try:
    return ast.literal_eval(low)
  except (ValueError, SyntaxError):
    return raw


def _coerce(key: str, old: Any, new: Any, raw: Any) -> Any:
  if isinstance(old, str) and isinstance(raw, str):
    return raw  # strings are taken verbatim ("none" stays the string "none")
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
  elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
    return new
  elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
    return float(new)
  elif isinstance(old, str) and isinstance(new, str):
    return new
  elif isinstance(old, (tuple, list)):
    if isinstance(new, (int, float, str)) and not isinstance(new, bool):
      new = (new,)
    if isinstance(new, (tuple, list)):
      return tuple(new)
  raise ConfigError(f"--config.{key}={new!r}: expected a value of type {type(old).__name__} (it was {old!r}).")


def all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      out += all_keys(v, f"{prefix}{k}.")
    else:
      out.append(prefix + k)
  return out


def override(cfg: ml_collections.ConfigDict, key: str, raw: str) -> None:
  """Set ``cfg.<key>`` from the string ``raw``; unknown keys and bad types raise ConfigError."""
  assign(cfg, key, _parse_value(raw), raw)


def assign(cfg: ml_collections.ConfigDict, key: str, value: Any, raw: str | None = None) -> None:
  """Set the dotted ``key`` to a Python ``value`` (type-checked like an override)."""
  parts = key.split(".")
  node = cfg
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(key, all_keys(cfg), n=3)
      hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
      raise ConfigError(f"unknown config key --config.{key}.{hint}")
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, ml_collections.ConfigDict):
    raise ConfigError(f"--config.{key} is a group of settings; set one of its keys, e.g. --config.{all_keys(old, key + '.')[0]}=...")
  with node.unlocked():
    node[parts[-1]] = _coerce(key, old, value, value if raw is None else raw)


def load(spec: str, overrides: list[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  cfg = load_file(spec)
  for key, raw in overrides:
    override(cfg, key, raw)
  return cfg


def to_dict(cfg) -> dict:
  """A JSON-safe plain dict (tuples become lists)."""
  return json.loads(cfg.to_json()) if isinstance(cfg, ml_collections.ConfigDict) else json.loads(json.dumps(cfg))


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      body = a[len("--config."):]
      if "=" in body:
        k, v = body.split("=", 1)
      elif i + 1 < len(argv):
        k, v = body, argv[i + 1]
        i += 1
      else:
        raise ConfigError(f"{a} needs a value: {a}=VALUE")
      overrides.append((k, v))
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def base() -> ml_collections.ConfigDict:
  """The schema of every experiment config, with defaults. Config files start from it."""
  c = ml_collections.ConfigDict()
  c.name = "experiment"
  c.seeds = (0,)
  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", source="auto", data_dir="", val_size=0, split_seed=0,
      train_size=0,  # >0: train on a fixed random subset of this many examples (to study overfitting quickly)
      train_eval_size=10000,  # fixed train subset evaluated in eval mode (the gap's train side)
      test_eval_size=0,  # >0: evaluate on a fixed random subset of this many test images (cheaper evaluations); 0: all
      synthetic_shape=(8, 8, 1), synthetic_classes=10, synthetic_sizes=(2048, 512),  # source="synthetic" only
  ))
  c.model = ml_collections.ConfigDict(dict(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1))
  c.norm = ml_collections.ConfigDict(dict(
      kind="batch", position="pre", momentum=0.99, epsilon=1e-5, variance="two_pass",
      ghost_batch_size=0, num_groups=8, r_max=3.0, d_max=5.0, renorm_warmup=5000,
      stats_gradient=True,  # False: no gradient through the batch mean/variance
      population_noise=0,  # kind="population" (or reference > 0): >0 adds the sampling noise of batch statistics of this many examples
      reference=0,  # kind="batch": >0 normalizes with the statistics of this many fixed training examples (the first of the training
      # set, appended to every batch; gradient through them): BN without batch-statistics noise ("full-batch BN")
      affine=True,  # False: frozen scale 1 and bias 0
      skip_nonfinite=False,  # True: a batch statistic that is not finite leaves that feature's running statistics as they were
      drift=0.0,  # > 0: a slow drift of this RMS added after the normalizer (bn.models.Drift: ICS put back, C1's "because")
      drift_period=200.0,  # the drift's shortest period in training steps (periods span [P, 2P))
      # kind="noisy" (Santurkar et al. 2018, Alg. 1): per unit mu ~ U(mean_range), sigma ~ U(scale_range);
      # per sample m ~ U(mu +- mean_halfwidth), s ~ N(sigma, scale_std); y -> s*y + m; dose scales every deviation
      noise=ml_collections.ConfigDict(dict(mean_range=(-0.5, 0.5), scale_range=(1.0, 1.25), mean_halfwidth=0.1, scale_std=0.1,
                                           per_sample=True, dose=1.0)),
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.5, momentum=0.9, weight_decay=0.0, schedule="constant", warmup=0, decay_steps=(),
  ))
  c.sweep = ml_collections.ConfigDict(dict(lr=(), weight_decay=()))  # vmapped with the seeds
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=60, eval_every=100, checkpoint_every=1000, sampling="epoch", augment=False,
      target_accuracy=0.8, eval_chunk=1000,
      precise_bn=0,  # >0: evaluate after re-estimating BN statistics on this many training examples (precise BN; bn.train.recalibrate;
                     # kinds batch/ghost/renorm/noisy -- population BN is evaluated with the running statistics it trained with)
      tensorboard=False,  # also write TensorBoard event files to WORKDIR/tensorboard/ (needs the [tensorboard] extra)
      loop="auto",  # "scan" | "host" (a Python loop over a jitted step) | "auto": host for conv models on CPU, see bn.experiment.choose_layout
      runs="auto",  # "vmap" | "unroll" (one copy of the step per run) | "auto": unroll for conv models on CPU
      shared_order=False,  # True: every run of a program sees run 0's batches in run 0's order (removes data-order variance between seeds; bn.programs.share_order)
  ))
  c.probes = ml_collections.ConfigDict(dict(
      every=0, batch_size=512, landscape_scales=(0.5, 1.0, 2.0, 4.0),
      kinds=(),  # which probes (bn.run_probes.KINDS); empty: all
      rho=1e-3,  # relative step (||dW|| / ||W||) of the matched gradient ICS and the relative-units landscape
      hessian_probes=2,  # random vectors per layer for the Hessian-block norms
      eval_batch_size=1000,  # test examples for the eval-mode layer-input percentiles
      lrs=(),  # probe only the runs of these swept learning rates; empty: every run
  ))
  c.parallel = ml_collections.ConfigDict(dict(  # data parallelism, see docs/scale-out.md
      devices="1",  # "1" (no mesh), "all", or a count N: the global batch is split over a 'data' mesh axis
      bn_stats="sync",  # "sync": global batch statistics; "local": per-device statistics (ghost BN, ghost = shard)
      runs_devices="auto",  # runs spread over a 'runs' mesh axis: "auto" (CPU: every device the data axis leaves; else 1), "all", or N
      coordinator="", num_processes=0, process_id=-1,  # many hosts; empty: env BN_*/JAX_* (COORDINATOR[_ADDRESS], NUM_PROCESSES, PROCESS_ID)
      cluster_detect=False,  # jax.distributed.initialize() auto-detection (TPU pod slice, SLURM, Open MPI)
      init_timeout=300,  # seconds to wait for every process to reach the coordinator
  ))
  return c
