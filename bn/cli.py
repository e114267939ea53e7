"""The ``bn`` command: every sub-command, one exit-code convention.

    bn train --config NAME|PATH[:ARG] [--config.KEY=VALUE ...] --workdir DIR
    bn reproduce [--tiny|--quick|--full] --out DIR
    bn report DIR
    bn bench [--quick] --out DIR
    bn data list | info NAME | prepare NAME

Exit codes: 0 success; 2 a usage or config problem (bad flag, key or value, missing
dataset, a workdir of another run: :class:`bn.errors.UsageError`, ``ValueError``);
1 a runtime failure (:class:`bn.errors.RunError`, ``OSError``). Errors print one line
``bn COMMAND: error: ...`` naming the problem and the fix, without a traceback.
Sub-commands import their modules lazily, so ``bn --help`` is instant.
"""

from __future__ import annotations

import os
import sys


def host_device_flags(environ=os.environ, argv=()) -> str | None:
  """The ``XLA_FLAGS`` that give XLA:CPU one device per core, or None to leave them as they are.

  XLA:CPU runs a small program's matmuls on one core; several host devices run several runs
  at once (``parallel.runs_devices``, docs/scale-out.md). So ``bn`` asks for as many CPU
  devices as this process may use cores -- unless the user set
  ``--xla_force_host_platform_device_count`` already, ``BN_HOST_DEVICES`` says how many
  (``BN_HOST_DEVICES=1``: one device, the opt-out), or the launch has several processes
  (each then keeps one CPU device, as JAX gives). GPU/TPU devices do not change: the flag only
  makes the host platform's devices. Read when the backend starts, so set before any
  computation (this module sets it on import, before JAX's first use)."""
  flags = environ.get("XLA_FLAGS", "")
  if "--xla_force_host_platform_device_count" in flags:
    return None
  want = environ.get("BN_HOST_DEVICES", "").strip()
  if not want:
    multi = any(environ.get(k, "") not in ("", "0", "1") for k in ("BN_NUM_PROCESSES", "JAX_NUM_PROCESSES"))
    multi = multi or any(a.startswith(("--config.parallel.num_processes", "--config.parallel.coordinator",
                                       "--config.parallel.cluster_detect")) for a in argv)
    if multi:
      return None
    try:
      want = str(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
      want = str(os.cpu_count() or 1)
  if not want.isdigit() or int(want) < 1:
    raise SystemExit(f"bn: error: BN_HOST_DEVICES={want!r} must be a device count >= 1 (1: one CPU device).")
  return f"{flags} --xla_force_host_platform_device_count={want}".strip()


if (_flags := host_device_flags(argv=sys.argv[1:])) is not None:
  os.environ["XLA_FLAGS"] = _flags

import argparse  # noqa: E402

from bn.errors import RunError, UsageError

COMMANDS = {
    "train": "train one experiment config into a workdir (resumes if interrupted)",
    "reproduce": "run the claims ledger and write the report",
    "report": "rebuild a report from the JSON files of a reproduce run",
    "bench": "performance suite -> DIR/bench.json, DIR/bench.md",
    "data": "list, inspect and prepare datasets",
}


def usage() -> str:
  lines = ["usage: bn COMMAND [ARGS...]", "", "commands:"]
  lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
  lines += ["", "`bn COMMAND --help` shows a command's options. Exit codes: 0 ok, 2 usage/config error, 1 runtime failure."]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- train


def train(argv: list[str]) -> int:
  try:
    from bn import config as bn_config
  except ModuleNotFoundError as e:  # no [train] extra: --help still prints, anything else names the extra
    if not {"-h", "--help"} & set(argv):
      raise
    bn_config, missing, rest, overrides, names = None, e, [a for a in argv if not a.startswith("--config.")], [], []
  else:
    rest, overrides = bn_config.split_overrides(argv)
    names = bn_config.available()
  p = argparse.ArgumentParser(
      prog="bn train", description="Train one experiment config into a workdir (resumes if interrupted).",
      epilog=(f"configs: {', '.join(names)}. " if names else "") + "Show a config's keys and values with --print-config; "
             "override any of them with --config.KEY=VALUE (e.g. --config.optimizer.lr=0.1).")
  p.add_argument("--config", required=True, help="a config name (e.g. ioffe_mlp) or file (experiments/configs/NAME.py), optionally :ARG")
  p.add_argument("--workdir", help="output directory (config.json, metrics.jsonl, summary.json, checkpoints/)")
  p.add_argument("--print-config", action="store_true", help="print the resolved config (after overrides) and exit")
  p.add_argument("--no-progress", action="store_true", help="no progress output")
  p.add_argument("--extend", action="store_true", help="train a finished (or interrupted) run in --workdir on to a larger "
                 "--config.train.steps; the result equals one longer run (refused where it would not, e.g. a cosine schedule)")
  p.add_argument("--no-compile-cache", action="store_true", help=COMPILE_CACHE_HELP)
  a = p.parse_args(rest)
  if bn_config is None:
    raise missing
  c = bn_config.load(a.config, overrides)
  if a.print_config:
    print(c)
    return 0
  if not a.workdir:
    raise UsageError("--workdir is required (the directory the run writes to).")
  from bn import experiment, loop

  if not a.no_compile_cache:
    from bn import compile_cache

    compile_cache.enable()
  summary = loop.train_workdir(experiment.from_config(c), a.workdir, progress=not a.no_progress, extend=a.extend,
                               log=lambda line: print(f"bn train: {line}", file=sys.stderr, flush=True))
  for r in summary["runs"]:
    status = f"diverged at step {r['diverged_step']}" if r["diverged"] else f"test acc {r['test_accuracy']:.4f}, train acc {r['train_accuracy']:.4f}"
    print(f"run {r['run']} seed {r['seed']} lr {r['lr']:g}: {status}")
  rate = f", {summary['steps_per_s']:.0f} steps/s" if summary.get("steps_per_s") else ""
  print(f"wall {summary['wall_time_s']:.1f}s (+{compile_line(summary)}){rate}; artifacts in {a.workdir}")
  return 0


COMPILE_CACHE_HELP = ("do not use JAX's persistent compilation cache (default: on, in $BN_COMPILE_CACHE, "
                      "$XDG_CACHE_HOME/bn/jax or ~/.cache/bn/jax; a second run of the same shapes loads its programs from it)")


def compile_line(summary: dict) -> str:
  """``"4.2s compile"``, the probe program's share named when there is one (both summed over resumes)."""
  probe = summary.get("probe_compile_time_s") or 0.0
  total = (summary.get("compile_time_s") or 0.0) + probe
  return f"{total:.1f}s compile" + (f", {probe:.1f}s of it the probe program's" if probe else "")


# ----------------------------------------------------------------------------- reproduce, report


def reproduce(argv: list[str]) -> int:
  from bn import claims, ledger

  p = argparse.ArgumentParser(prog="bn reproduce", description="Run the claims ledger and write DIR/report.md, DIR/claims.json and plots. Re-running resumes.")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", dest="mode", action="store_const", const="quick", help=f"the quick ledger (default; {ledger.EXPECTED['quick']})")
  g.add_argument("--full", dest="mode", action="store_const", const="full", help=f"paper-scale ({ledger.EXPECTED['full']})")
  g.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="synthetic data, a few steps (for tests)")
  p.add_argument("--out", required=True, help="output directory (experiment workdirs, report.md, claims.json, plots)")
  p.add_argument("--dataset", default=None, help="dataset for every experiment (default fashion_mnist; e.g. mnist once prepared via `bn data prepare mnist`)")
  p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(claims.experiments())}")
  p.add_argument("--seed-base", type=int, default=ledger.CONFIRMATORY_SEED_BASE,
                 help=f"first seed (default {ledger.CONFIRMATORY_SEED_BASE}, the confirmatory range; pilots: "
                      f"--seed-base {ledger.PILOT_SEED_BASE}, a disjoint range)")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--no-compile-cache", action="store_true", help=COMPILE_CACHE_HELP)
  a = p.parse_args(argv)
  from pathlib import Path

  if a.seed_base < 0 or a.seed_base > 2**31 - 10_000:
    raise UsageError(f"--seed-base {a.seed_base}: give a seed base in [0, {2**31 - 10_000}].")
  mode, out = a.mode or "quick", Path(a.out)
  only = check_reproduce_args(mode, a.dataset, a.only)
  from bn import artifacts

  artifacts.check_local_path(a.out, "--out")
  import matplotlib  # noqa: F401  (the report needs it: fail now, not after the training)

  if not a.no_compile_cache:
    from bn import compile_cache

    compile_cache.enable()
  if mode in ledger.EXPECTED and not a.no_progress:
    print(f"bn reproduce --{mode}: expected {ledger.EXPECTED[mode]}; re-running the same command resumes.", file=sys.stderr)
  ledger.run_ledger(out, mode, only=only, dataset=a.dataset, progress=not a.no_progress,
                    log=lambda line: print(f"bn reproduce: {line}", file=sys.stderr, flush=True),  # records OUT/timings.json as it goes
                    command=["reproduce", *argv], seed_base=a.seed_base)
  from bn import distributed, report as bn_report

  if distributed.is_writer():  # many processes: process 0 writes the one report
    print(f"report: {bn_report.build(out)}")
  return 0


def check_reproduce_args(mode: str, dataset: str | None, only: str | None) -> list[str] | None:
  """``--only`` as a list (None: every experiment); UsageError for a ``--dataset`` that ``--tiny``
  would ignore (it trains synthetic data) and for an empty ``--only`` or an empty name in it."""
  if mode == "tiny" and dataset is not None:
    raise UsageError(f"--dataset {dataset} does not apply to --tiny (synthetic data); drop --dataset, or use --quick/--full.")
  if only is None:
    return None
  names = [n.strip() for n in only.split(",")]
  if not all(names):
    raise UsageError(f"--only {only!r} names an empty experiment; give comma-separated names, e.g. --only ioffe,alone "
                     "(or leave --only out to run every experiment).")
  return names


def report(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="bn report", description="Rebuild DIR/report.md, DIR/claims.json and the plots from the JSON "
                                                            "files of `bn reproduce --out DIR`; trains nothing.")
  p.add_argument("dir", help="the --out directory of a `bn reproduce` run")
  a = p.parse_args(argv)
  from pathlib import Path

  if not Path(a.dir).is_dir():
    raise UsageError(f"{a.dir} is not a directory; give the --out directory of `bn reproduce`.")
  from bn import artifacts, report as bn_report

  manifest = Path(a.dir) / bn_report.MANIFEST
  if manifest.is_file() and not isinstance(artifacts.read_json(manifest), dict):
    raise UsageError(f"{manifest} is not a ledger record (bn writes a JSON object); give the --out directory of `bn reproduce`.")

  print(bn_report.build(a.dir))
  return 0


# ----------------------------------------------------------------------------- bench


def bench(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="bn bench", description="Performance suite: BN layer, training steps, roofline, vmapped seeds, end to end, GPU.")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="smaller shapes and fewer repeats (a few minutes on a 2-core CPU)")
  g.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help=argparse.SUPPRESS)  # tests: structure only
  p.add_argument("--out", required=True, help="output directory for bench.json and bench.md")
  a = p.parse_args(argv)
  from pathlib import Path

  from bn import artifacts
  from bn.bench import suite

  artifacts.check_local_path(a.out, "--out")
  from bn.workdir import check_writable

  check_writable(Path(a.out), "--out")  # a file or a read-only directory: refused before the suite runs
  res = suite.run_bench(suite.MODES[a.mode or "full"], a.out)
  for t in res["targets"]:
    shown = "-" if t["measured"] is None else f"{t['measured']:.3g}"
    print(f"{t['status']:>8}  {t['id']:<24} {shown:>8} ({t['threshold']})")
  print(f"bench: {Path(a.out) / 'bench.md'} ({res['meta']['runtime_s']:.0f}s)")
  return 0


# ----------------------------------------------------------------------------- data


def data(argv: list[str]) -> int:
  from bn import data as bn_data

  p = argparse.ArgumentParser(
      prog="bn data", description="List, inspect and prepare datasets.",
      epilog="Sources: idx (MNIST-format files; --data-dir, $BN_IDX_DIR, ~/.cache/bn/datasets, "
             "/usr/share/datasets/fashion-mnist), tfds (array_record or TFRecord under $TFDS_DATA_DIR or "
             "~/tensorflow_datasets), synthetic (generated).")
  sub = p.add_subparsers(dest="command", required=True)
  ls = sub.add_parser("list", help="which datasets are available, from which source and where")
  ls.add_argument("--data-dir", help="also look here (IDX files or a TFDS data dir)")
  info = sub.add_parser("info", help="split sizes, image shape, dtype, class balance of one dataset")
  info.add_argument("name", help=f"one of {', '.join(bn_data.CATALOG)}, or synthetic")
  info.add_argument("--source", default="auto", choices=bn_data.SOURCES, help="where to read it from (default: auto)")
  info.add_argument("--data-dir", help="directory with IDX files, or a TFDS data dir")
  info.add_argument("--val-size", type=int, default=0, help="examples to move from train to val")
  info.add_argument("--seed", type=int, default=0, help="seed for the val split and synthetic data")
  prep = sub.add_parser(
      "prepare", help="mnist, fashion_mnist: download the IDX files (HTTPS, checksums, no TensorFlow); "
                      "others: download + convert with TFDS (needs TensorFlow)",
      description="mnist and fashion_mnist: download the four IDX files from the dataset's home and check "
                  "their sizes and SHA-256, into DATA_DIR/NAME, else $BN_IDX_DIR/NAME, else "
                  "~/.cache/bn/datasets/NAME ($XDG_CACHE_HOME), where bn looks for them. Needs network "
                  "access. Other datasets: TFDS download + conversion (needs TensorFlow and network).")
  prep.add_argument("name", help=f"a dataset, e.g. {', '.join(bn_data.CATALOG)}")
  prep.add_argument("--data-dir", help="put the files here (IDX: in DATA_DIR/NAME; TFDS: the TFDS data dir, "
                                       "default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  prep.add_argument("--tfds", action="store_true", help="mnist/fashion_mnist: go through TFDS instead")
  prep.add_argument("--mirror", action="append", metavar="URL",
                    help="IDX download: base URL to fetch the files from instead of the built-in ones "
                         "(repeatable; the checksums still apply)")
  a = p.parse_args(argv)
  if a.command == "list":
    print(bn_data.describe_all(a.data_dir, "--data-dir"))
  elif a.command == "info":
    print(bn_data.describe(bn_data.load(a.name, source=a.source, data_dir=a.data_dir, val_size=a.val_size,
                                        seed=a.seed, flag="--data-dir")))
  else:
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    where = bn_data.prepare(a.name, a.data_dir, tfds=a.tfds, mirrors=a.mirror, log=log)
    if a.name in bn_data.IDX_FILES and not a.tfds:
      print(f"{a.name}: the four IDX files are in {where} (sizes and SHA-256 checked).")
      if a.data_dir:
        print(f"Use them with --data-dir {a.data_dir} (bn data) or --config.data.data_dir={a.data_dir} (bn train).")
      elif bn_data.find_idx(a.name) != where:
        print(f"Note: bn reads {bn_data.find_idx(a.name)} first (see `bn data list`).")
    else:
      print(f"prepared {a.name} under {where}; read it with `bn data info {a.name} --source tfds"
            + (f" --data-dir {a.data_dir}`" if a.data_dir else "`"))
  return 0


# Optional dependencies and the extra of the distribution that installs each.
DISTRIBUTION = "bn-lab"
EXTRAS = {
    "flax": "train", "optax": "train", "ml_collections": "train", "orbax": "train", "tqdm": "train",
    "matplotlib": "report", "tensorflow_datasets": "tfds", "importlib_resources": "tfds",
    "array_record": "tfds", "tensorboardX": "tensorboard",
}


def missing_extra(e: ImportError) -> str | None:
  """For a missing optional dependency, the line saying which extra installs it; else None."""
  top = (getattr(e, "name", None) or "").split(".")[0]
  if not isinstance(e, ModuleNotFoundError) or top not in EXTRAS:
    return None
  extra = EXTRAS[top]
  return f"{top} is missing: pip install '{DISTRIBUTION}[{extra}]' (in a clone of bn: pip install -e '.[{extra}]')"


def one_line(e: BaseException) -> str:
  """An error as one line; an OSError as ``FILE: reason`` (not ``[Errno 28] ...``)."""
  if isinstance(e, OSError) and e.strerror:
    text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
      text += "; check the path"
    else:
      text += "; free disk space or fix the permissions, then re-run the same command (runs resume from their last checkpoint)"
  else:
    text = str(e)
  return " ".join(text.split())


HANDLERS = {"train": train, "reproduce": reproduce, "report": report, "bench": bench, "data": data}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in HANDLERS:
    print(f"bn: error: unknown command {name!r}; choose one of {', '.join(HANDLERS)} (`bn --help` says what each does).", file=sys.stderr)
    return 2
  try:
    return int(HANDLERS[name](rest) or 0)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
    return int(e.code or 0) if not isinstance(e.code, str) else 2
  except (UsageError, ValueError) as e:
    print(f"bn {name}: error: {one_line(e)}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # the output was piped into e.g. `head`, which closed it: not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  except (RunError, OSError) as e:
    print(f"bn {name}: error: {one_line(e)}", file=sys.stderr)
    return 1
  except ImportError as e:  # an optional dependency this command needs is not installed
    if (line := missing_extra(e)) is None:
      raise
    print(f"bn {name}: error: {line}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"bn {name}: interrupted; re-run the same command to resume.", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
