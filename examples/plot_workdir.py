"""Plot a finished ``bn train`` workdir from its JSON-lines files, with nothing but the
standard reader ``bn.artifacts.read_jsonl`` and matplotlib.

    python examples/plot_workdir.py runs/ioffe_bn                      # -> runs/ioffe_bn/curves.png
    python examples/plot_workdir.py runs/ioffe_bn --metric test_loss --probe act.layer2.p50 --out fig.png

Left: an evaluation metric of ``metrics.jsonl`` (one row per evaluation per run) against
the step, one line per run. Right: a probe of ``probes.jsonl`` (written when the config has
``probes.every > 0``), addressed by a dotted path into its rows -- e.g. ``loss``,
``act.LAYER.std`` (a layer input's std), ``bn_gap.LAYER/norm/bn.mean``; the keys of the
first row are printed when the path is not there. Needs matplotlib (``pip install -e '.[report]'``).
"""

import argparse
from collections import defaultdict
from pathlib import Path

from bn.artifacts import read_json, read_jsonl

try:
  import matplotlib
except ModuleNotFoundError:
  raise SystemExit("this example needs matplotlib: pip install 'bn-lab[report]' (in a clone: pip install -e '.[report]')")
matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def lookup(row: dict, path: str):
  """``row["a"]["b/c"]["d"]`` for ``path="a.b/c.d"``: dots separate keys (layer names keep their slashes)."""
  value = row
  for key in path.split("."):
    value = value[key]
  return value


def curves(rows, value):
  """``{run: (steps, values)}`` from rows with ``step`` and ``run`` fields; ``value(row)`` picks the y value."""
  out = defaultdict(lambda: ([], []))
  for r in sorted(rows, key=lambda r: (r["run"], r["step"])):
    v = value(r)
    if v is not None:  # NaN/inf are stored as null
      out[r["run"]][0].append(r["step"])
      out[r["run"]][1].append(float(v))
  return dict(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("workdir")
  ap.add_argument("--metric", default="test_accuracy", help="a field of metrics.jsonl (default test_accuracy)")
  ap.add_argument("--probe", default="loss", help="dotted path into probes.jsonl rows (default loss)")
  ap.add_argument("--out", help="PNG to write (default WORKDIR/curves.png)")
  a = ap.parse_args(argv)
  workdir = Path(a.workdir)
  metrics, probes = read_jsonl(workdir / "metrics.jsonl"), read_jsonl(workdir / "probes.jsonl")
  if not metrics:
    raise SystemExit(f"{workdir / 'metrics.jsonl'}: no rows; is {workdir} a bn train workdir?")
  config = read_json(workdir / "config.json")["config"] if (workdir / "config.json").exists() else {}
  if probes:
    try:
      lookup(probes[0], a.probe)
    except (KeyError, TypeError):
      raise SystemExit(f"--probe {a.probe}: not in probes.jsonl; its rows have keys {sorted(probes[0])}") from None

  fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(10 if probes else 5, 3.6), squeeze=False)
  for run, (steps, values) in curves(metrics, lambda r: r.get(a.metric)).items():
    axes[0, 0].plot(steps, values, marker=".", label=f"run {run}")
  title = f"{config.get('name', workdir.name)}: norm {config.get('norm', {}).get('kind', '?')}"
  axes[0, 0].set(xlabel="step", ylabel=a.metric, title=title)
  axes[0, 0].legend(fontsize="small")
  if probes:
    for run, (steps, values) in curves(probes, lambda r: lookup(r, a.probe)).items():
      axes[0, 1].plot(steps, values, marker=".", label=f"run {run}")
    axes[0, 1].set(xlabel="step", ylabel=a.probe, title="probe")
  fig.tight_layout()
  out = Path(a.out) if a.out else workdir / "curves.png"
  fig.savefig(out, dpi=120)
  last = {r["run"]: r for r in metrics}  # the last evaluation of each run
  for run, r in sorted(last.items()):
    print(f"run {run}: step {r['step']}, {a.metric} {r.get(a.metric)}")
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  main()
