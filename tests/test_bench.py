"""`bn bench --tiny` end to end: the structure of bench.json and bench.md (not the timings)."""

import json

import numpy as np
import pytest

from bn import cli
from bn.bench import cases as bench_cases, core as bench

TARGETS = {
    "bn_layer_vs_flax", "bn_overhead_ioffe", "ioffe_vs_matmul_only", "vmapped_seeds", "compile_time",
    "gpu_bn_bandwidth", "gpu_resnet20_vs_torch", "gpu_airbench_vs_torch",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  assert cli.main(["bench", "--tiny", "--out", str(out)]) == 0
  return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def _is_timing(t):
  return t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"] and len(t["times_s"]) == t["repeats"] == bench.TINY.repeats


def test_json_sections_and_meta(tiny):
  res, _ = tiny
  assert {"meta", "bn_layer", "train_step", "roofline", "seeds", "e2e", "gpu", "targets"} <= set(res)
  m = res["meta"]
  assert m["mode"] == "tiny" and m["backend"] == "cpu" and m["jax"] and m["flax"] and m["runtime_s"] > 0
  assert len(m["load_avg_start"]) == 3 and len(m["load_avg_end"]) == 3


def test_every_target_has_a_status(tiny):
  res, _ = tiny
  ts = {t["id"]: t for t in res["targets"]}
  assert set(ts) == TARGETS
  for t in ts.values():
    assert t["status"] in ("met", "not met", "not run"), t
    assert (t["measured"] is None) == (t["status"] == "not run"), t
  for tid in ("bn_layer_vs_flax", "bn_overhead_ioffe", "ioffe_vs_matmul_only", "vmapped_seeds", "compile_time"):
    assert ts[tid]["status"] != "not run", ts[tid]
  for tid in ("gpu_bn_bandwidth", "gpu_resnet20_vs_torch", "gpu_airbench_vs_torch"):  # no GPU in the tests
    assert ts[tid]["status"] == "not run" and "not run" in ts[tid]["note"]


def test_layer_cases_cover_the_grid(tiny):
  res, _ = tiny
  cases = res["bn_layer"]["cases"]
  assert {(c["dtype"], c["mode"], c["pass"]) for c in cases} == {
      (d, m, p) for d in ("float32", "bfloat16") for m in ("train", "eval") for p in ("fwd", "fwd+bwd")}
  for c in cases:
    impls = {"flax", "bn", "none"} | ({"bn_two_pass"} if c["mode"] == "train" else set())
    assert set(c["time"]) == set(c["compile_s"]) == impls
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
  assert [x["n"] for x in sd["rows"]] == list(bench.TINY.seeds)
  assert sd["rows"][0]["ratio_vs_sequential"]["ratio"] == pytest.approx(1.0)
  assert res["e2e"]["status"] == "not run" and res["gpu"]["status"] == "not run"


def test_markdown_has_the_tables(tiny):
  res, md = tiny
  assert md.startswith("# bn bench (tiny)")
  for heading in ("## Targets", "## 1. One BN layer", "## 2. Training step", "## 3. Roofline", "## 4. Many runs at once",
                  "## 5. End to end", "## 6. GPU"):
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
