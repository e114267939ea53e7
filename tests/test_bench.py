"""`bn bench --tiny` end to end: the structure of bench.json and bench.md (not the timings);
every target's status against its threshold on made-up results."""

import copy
import json

import numpy as np
import pytest

from bn import cli
from bn.bench import cases as bench_cases, core as bench

from bn.bench import suite

CPU_TARGETS = ("bn_layer_vs_flax", "bn_overhead_ioffe", "ioffe_vs_matmul_only", "vmapped_seeds",
               "vmapped_seeds_shared", "compile_time", "runs_devices_vs_one_device", "runs_devices_vs_reference_scan")
RETIRED_ON_CPU = ("ioffe_vs_reference_scan",)  # measured (a row of section 2), not a target on CPU (issue 24)
FULL_ONLY = ("ledger_devices",)  # the quick ledger on one device and on all: only with the full bench
NOT_TINY = ("ledger_slice_devices",)  # a slice of the quick ledger in two fresh processes: quick and full, not tiny (~40 s)
TARGETS = set(CPU_TARGETS) | set(RETIRED_ON_CPU) | set(FULL_ONLY) | set(NOT_TINY) | {"gpu_bn_bandwidth", "gpu_resnet20_vs_torch", "gpu_airbench_vs_torch"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  assert cli.main(["bench", "--tiny", "--out", str(out)]) == 0
  return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def _is_timing(t):
  return t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"] and len(t["times_s"]) == t["repeats"] == bench.TINY.repeats


def test_json_sections_and_meta(tiny):
  res, _ = tiny
  assert {"meta", "bn_layer", "train_step", "roofline", "seeds", "devices", "ledger_slice", "e2e", "gpu", "targets"} <= set(res)
  assert res["ledger_slice"]["status"] == "not run" and res["ledger_slice"]["note"] == bench_cases.TINY_SLICE_NOTE
  assert res["devices"]["status"] == "run" and res["devices"]["devices"] == 3  # 3 runs over 3 of the 8 devices (capped at the runs)
  m = res["meta"]
  assert m["mode"] == "tiny" and m["backend"] == "cpu" and m["jax"] and m["flax"] and m["runtime_s"] > 0
  assert len(m["load_avg_start"]) == 3 and len(m["load_avg_end"]) == 3


def test_every_target_has_a_status(tiny):
  res, _ = tiny
  ts = {t["id"]: t for t in res["targets"]}
  assert set(ts) == TARGETS
  for t in ts.values():
    assert t["status"] in ("met", "not met", "not run"), t
    assert (t["measured"] is None) == (t["status"] == "not run") or t["id"] in RETIRED_ON_CPU, t
  for tid in CPU_TARGETS:
    assert ts[tid]["status"] != "not run", ts[tid]
  for tid in RETIRED_ON_CPU + FULL_ONLY + NOT_TINY:
    assert ts[tid]["status"] == "not run", ts[tid]
  assert "SLICE" in ts["ledger_slice_devices"]["target"] and "skipped in tiny mode" in ts["ledger_slice_devices"]["note"]
  assert ts["ioffe_vs_reference_scan"]["note"].startswith("retired on CPU")
  for tid in ("gpu_bn_bandwidth", "gpu_resnet20_vs_torch", "gpu_airbench_vs_torch"):  # no GPU in the tests
    assert ts[tid]["status"] == "not run" and "not run" in ts[tid]["note"]


def test_layer_cases_cover_the_grid(tiny):
  res, _ = tiny
  cases = res["bn_layer"]["cases"]
  assert {(c["dtype"], c["mode"], c["pass"]) for c in cases} == {
      (d, m, p) for d in ("float32", "bfloat16") for m in ("train", "eval") for p in ("fwd", "fwd+bwd")}
  assert res["bn_layer"]["default_variance"] == "shifted"  # the core's default, timed as "bn"
  for c in cases:
    impls = {"flax", "bn", "none"} | ({"bn_fast", "bn_two_pass"} if c["mode"] == "train" else set())
    assert set(c["time"]) == set(c["compile_s"]) == impls
    assert {k for k in c if k.startswith("ratio_")} == {f"ratio_{i}_vs_flax" for i in impls - {"flax"}}
    assert all(_is_timing(t) for t in c["time"].values())
    r = c["ratio_bn_vs_flax"]
    assert r["ratio"] == pytest.approx(c["time"]["bn"]["median_s"] / c["time"]["flax"]["median_s"])
    assert r["paired_min"] <= r["paired_max"]


def test_train_roofline_and_seeds(tiny):
  res, _ = tiny
  io = res["train_step"]["ioffe"]
  assert set(io["time_per_step"]) == {"engine", "engine_none", "matmul_only", "reference", "reference_scan"}
  assert all(_is_timing(t) for t in io["time_per_step"].values())
  assert {"engine_vs_reference", "engine_vs_engine_none", "engine_vs_matmul_only", "engine_vs_reference_scan"} <= set(io["ratios"])
  assert "resnet20" not in res["train_step"]  # tiny skips it
  r = res["roofline"]
  assert r["peak_flops"] > 0 and r["flops_per_step"]["engine"] > r["flops_per_step"]["matmul_only"] > 0
  assert 0 < r["fraction_of_peak"]["engine"]
  sd = res["seeds"]
  seq = sd["sequential"]["time_per_run_step"]
  assert _is_timing(seq) and sd["sequential"]["runs_per_call"] == 2
  assert set(sd["modes"]) == {"independent", "shared"} and sd["target_n"] == bench.TINY.seeds[-1]
  for m in sd["modes"].values():
    assert [x["n"] for x in m["rows"]] == list(bench.TINY.seeds)
    for x in m["rows"]:  # per run-step = per step / N; the ratio is against the measured sequential runs, not N = 1
      assert x["time_per_run_step"]["median_s"] == pytest.approx(x["time_per_step"]["median_s"] / x["n"])
      assert x["ratio_vs_sequential"]["ratio"] == pytest.approx(x["time_per_run_step"]["median_s"] / seq["median_s"])
    assert m["ratio_at_target_n"] == m["rows"][-1]["ratio_vs_sequential"]
  assert res["e2e"]["status"] == "not run" and res["gpu"]["status"] == "not run"


def test_markdown_has_the_tables(tiny):
  res, md = tiny
  assert md.startswith("# bn bench (tiny)")
  for heading in ("## Targets", "## 1. One BN layer", "## 2. Training step", "## 3. Roofline", "## 4. Many runs at once",
                  "## 5a. A slice of the ledger", "## 5. End to end", "## 6. GPU"):
    assert heading in md, heading
  assert "| target | threshold | measured | status | note |" in md
  for t in res["targets"]:
    assert f"| {t['target']} | {t['threshold']} |" in md
  assert "not run (no torch/GPU)" in md


def test_measure_is_round_robin_and_ratio_is_paired():
  calls = []
  fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  s = bench.TINY
  t = bench.measure(fns, s)
  assert calls[4:] == ["a", "b"] * s.repeats  # 2 warm-up calls each, then alternating repeats of one call
  r = bench.ratio({"median_s": 2.0, "times_s": [2.0, 4.0]}, {"median_s": 1.0, "times_s": [1.0, 1.0]})
  assert r == {"ratio": 2.0, "paired_min": 2.0, "paired_max": 4.0}
  assert set(t) == {"a", "b"} and t["a"]["calls"] == 1


def test_host_batches_are_shuffled_epochs():
  hb = bench_cases.HostBatches(10, 3, seed=0)
  first = np.concatenate([hb.next() for _ in range(3)])
  assert sorted(first) == sorted(set(first)) and len(first) == 9  # no repeats within an epoch
  assert hb.many(4).shape == (4, 3)


# ----------------------------------------------------------------------------- target statuses


def _made_up(r: float) -> dict:
  """A ratio summary as the bench writes it, with every paired ratio equal to ``r``."""
  return {"ratio": r, "paired_min": r, "paired_max": r}


def made_up_results(value: float) -> dict:
  """Results in which every measured quantity a CPU target reads equals ``value``."""
  layer = [{"case": f"c{i}", "ratio_bn_vs_flax": _made_up(value if i == 2 else value / 2)} for i in range(4)]  # the worst case decides
  ratios = {k: _made_up(value) for k in ("engine_vs_reference_scan", "engine_vs_engine_none", "engine_vs_matmul_only")}
  modes = {m: {"ratio_at_target_n": _made_up(value)} for m in ("independent", "shared")}
  devices = {"runs": 8, "devices": 2, "ratios": {k: _made_up(value) for k in ("all_devices_vs_one_device", "all_devices_vs_reference_scan")}}
  return {"bn_layer": {"cases": layer}, "train_step": {"ioffe": {"ratios": ratios, "compile_s": {"engine": value}}},
          "seeds": {"target_n": 8, "modes": modes}, "devices": devices, "e2e": {"devices": {"ratio": value, "note": ""}},
          "ledger_slice": {"ratio": value, "note": ""}}


def _expected(t: dict) -> str:
  """The status a target must have: from its threshold and measurement, read independently of bn.bench."""
  op, bound = t["threshold"].split()[:2]
  bound = float(bound.rstrip("x"))
  v = t["measured"]
  return "met" if {"<=": v <= bound, ">=": v >= bound}[op] else "not met"


@pytest.mark.parametrize("value", [0.3, 0.5, 0.50001, 0.9, 1.0, 1.05, 1.06, 1.2, 1.21, 9.99, 10.0, 10.5, 50.0])
def test_every_cpu_target_status_follows_its_threshold(value):
  ts = {t["id"]: t for t in suite.targets(made_up_results(value))}
  assert set(ts) == TARGETS
  for tid in CPU_TARGETS + FULL_ONLY + NOT_TINY:
    t = ts[tid]
    assert t["measured"] == pytest.approx(value), t
    assert t["status"] == _expected(t), t
  assert ts["ioffe_vs_reference_scan"]["status"] == "not run" and ts["ioffe_vs_reference_scan"]["measured"] == pytest.approx(value)
  for tid in TARGETS - set(CPU_TARGETS) - set(FULL_ONLY) - set(NOT_TINY) - set(RETIRED_ON_CPU):
    assert ts[tid]["status"] == "not run" and ts[tid]["measured"] is None


def test_target_statuses_at_known_points():
  ts = {t["id"]: t for t in suite.targets(made_up_results(0.65))}
  assert ts["runs_devices_vs_one_device"]["status"] == ts["runs_devices_vs_reference_scan"]["status"] == "met"  # <= 0.65x, on the bound
  assert ts["ledger_devices"]["status"] == ts["ledger_slice_devices"]["status"] == "met"  # <= 0.70x
  ts = {t["id"]: t for t in suite.targets(made_up_results(0.9))}
  assert ts["runs_devices_vs_one_device"]["status"] == "not met" and ts["ledger_devices"]["status"] == "not met"
  assert ts["ledger_slice_devices"]["status"] == "not met"
  assert ts["vmapped_seeds"]["status"] == "not met"  # <= 0.50x
  assert ts["bn_layer_vs_flax"]["status"] == "met" and ts["compile_time"]["status"] == "met"
  ts = {t["id"]: t for t in suite.targets(made_up_results(1.1))}
  assert ts["bn_layer_vs_flax"]["status"] == "not met" and ts["bn_layer_vs_flax"]["note"].startswith("3/4 cases met")
  assert ts["ioffe_vs_matmul_only"]["status"] == "met" and ts["bn_overhead_ioffe"]["status"] == "not met"


def test_missing_measurements_are_not_run():
  for res in ({}, {"train_step": {"ioffe": {}}, "seeds": {"modes": {}}}):
    for t in suite.targets(res):
      assert t["status"] == "not run" and t["measured"] is None, t
  res = made_up_results(0.4)
  del res["seeds"]["modes"]["shared"]
  ts = {t["id"]: t for t in suite.targets(res)}
  assert ts["vmapped_seeds_shared"]["status"] == "not run" and ts["vmapped_seeds"]["status"] == "met"


def test_compile_target_applies_on_cpu_only(monkeypatch):
  res = made_up_results(1.0)
  monkeypatch.setattr(suite.jax, "default_backend", lambda: "gpu")
  t = {t["id"]: t for t in suite.targets(copy.deepcopy(res))}["compile_time"]
  assert t["status"] == "not run" and t["measured"] == 1.0 and "measured on gpu" in t["note"]
  t = {t["id"]: t for t in suite.targets(copy.deepcopy(res))}["ioffe_vs_reference_scan"]
  assert t["status"] == "not met" and t["measured"] == 1.0  # off CPU the one-run target applies (1.0 > 0.90)


def test_gpu_targets_use_their_thresholds():
  res = made_up_results(1.0)
  res["gpu"] = {"targets": [bench.target("gpu_bn_bandwidth", "bandwidth", ">= 0.70x", 0.69),
                            bench.target("gpu_resnet20_vs_torch", "resnet", ">= 1.00x", 1.0),
                            bench.target("gpu_airbench_vs_torch", "airbench", ">= 1.00x", None, "not run (no torch/GPU)")]}
  ts = {t["id"]: t for t in suite.targets(res)}
  assert [ts[k]["status"] for k in ("gpu_bn_bandwidth", "gpu_resnet20_vs_torch", "gpu_airbench_vs_torch")] == ["not met", "met", "not run"]


def test_meets_reads_the_operator():
  assert bench.meets(1.0, "<= 1.00x") and not bench.meets(1.0001, "<= 1.00x")
  assert bench.meets(0.7, ">= 0.70x") and not bench.meets(0.69, ">= 0.70x")
  assert bench.meets(9.0, "<= 10 s on CPU") and not bench.meets(1.0, "< 1") and bench.meets(2.0, "> 1")
  with pytest.raises(ValueError, match="threshold"):
    bench.meets(1.0, "about 1")


def test_ledger_slice_trains_the_ledger_conditions_and_compares_them(tmp_path):
  """The slice's code in this process (8 host devices: the runs spread over them), on one tiny
  condition cut to 20 steps: the ledger's workdir files, the timings, and the comparison --
  equal to itself; a training metric changed in the last bit, or an accuracy by two images of
  1,000, is a difference."""
  from bn.bench import ledger_slice

  cond = (("c1_speed", "bn", {"train.steps": 20}),)
  t = ledger_slice.run_slice(tmp_path / "a", "tiny", cond)
  assert t["devices"] == 8 and t["total"] >= t["c1_speed/bn"] > 0 and t["compile_s"] > 0 and len(t["load_avg_end"]) == 3
  wd = tmp_path / "a" / "c1_speed" / "bn"
  assert {"config.json", "metrics.jsonl", "summary.json"} <= {f.name for f in wd.iterdir()}
  assert json.loads((wd / "summary.json").read_text())["steps"] == 20
  same = ledger_slice.compare(tmp_path / "a", tmp_path / "a", cond)
  assert same["same"] and same["checked"] > 0 and same["not_identical"] == 0
  import shutil

  shutil.copytree(tmp_path / "a", tmp_path / "b")
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  for field, change, key in (("batch_loss", lambda v: float(np.nextafter(np.float32(v), np.float32(9))), "training_identical"),
                             ("test_accuracy", lambda v: v + 0.002, "max_accuracy_diff")):
    changed = [dict(r) for r in rows]
    changed[-1][field] = change(changed[-1][field])
    (tmp_path / "b" / "c1_speed" / "bn" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    diff = ledger_slice.compare(tmp_path / "a", tmp_path / "b", cond)
    assert not diff["same"] and diff["not_identical"] == 1, (field, diff)
    assert diff[key] is False if key == "training_identical" else diff[key] > ledger_slice.ACCURACY_ATOL


def test_profile_categorizes_kernels_from_the_hlo():
  """bn.bench.profile's kernel categories come from the compiled HLO: matmuls (first layer by its
  784-wide dimension), the gather, and the rest."""
  import jax
  import jax.numpy as jnp

  from bn.bench import profile

  def f(images, idx, w1, w2):
    x = images[idx]
    return jnp.tanh(jnp.tanh(x @ w1) @ w2).sum()

  args = (jnp.ones((50, 784)), jnp.arange(6), jnp.ones((784, 16)), jnp.ones((16, 16)))
  cat = profile.categorize(jax.jit(f).lower(*args).compile().as_text(), 784)
  kinds = set(cat.values())
  assert {"matmul, first layer", "matmul, other"} <= kinds, cat
  assert all(k in profile.CATEGORIES for k in kinds)
