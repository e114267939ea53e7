"""The claims ledger end to end in tiny mode (synthetic data, a few steps), including resume and `bn report`;
and the deep linear network's stability edge against the exact Hessian. The verdict rule on made-up results is
test_analysis.py; the report's pieces test_report.py."""

import json

import numpy as np
import pytest

from bn import analysis, artifacts, claims, cli, ledger, measure, prereg

CLAIM_IDS = ["C1", "C1'", "C2", "C2'", "C3", "C4", "C5", "C6", "C7"]


# ----------------------------------------------------------------------------- the whole ledger, tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("ledger")
  assert cli.main(["reproduce", "--tiny", "--out", str(out), "--no-progress"]) == 0
  return out


def test_tiny_ledger_report_has_every_claim(tiny):
  claims = artifacts.read_json(tiny / "claims.json")
  assert [c["id"] for c in claims["claims"]] == CLAIM_IDS
  for c in claims["claims"]:
    assert c["verdict"] in analysis.VERDICTS
    assert c["tests"] and all(t["outcome"] in ("as predicted", "opposite", "unclear") for t in c["tests"])
    assert c["parts"] and c["verdict"] == analysis.claim_verdict([p["verdict"] for p in c["parts"]])
    for p in c["parts"]:  # one primary per tested part; an untested part says why
      n = [t.get("part") for t in c["tests"] if t["role"] == "primary"].count(p["id"])
      assert (n == 0 and p["untested"] and p["verdict"] == "not tested here") or (n == 1 and p["test"]["part"] == p["id"]), p
      assert p["registration"] == "pre-registered", p  # bn reproduce wrote preregistration.json before training
    assert c["table"] and all(len(row) == 3 for row in c["table"])  # paper vs here
  assert claims["seed_base"] == prereg.CONFIRMATORY_SEED_BASE and claims["preregistered"]  # confirmatory seeds, disjoint from the pilots' 0, 1, ...
  reg = artifacts.read_json(tiny / "preregistration.json")
  base = prereg.CONFIRMATORY_SEED_BASE
  assert reg["seed_base"] == base and all(min(s) >= base for conds in reg["experiments"].values() for s in conds.values())
  text = (tiny / "report.md").read_text()
  assert "**A smoke test, not a result**" in text and text.index("## What was found") < text.index("## Summary")
  assert f"| **C1** {claims['claims'][0]['claim']} — claim verdict **{claims['claims'][0]['verdict']}** | secondary tests | " in text
  assert text.index("## Summary") < text.index("## Settings") < text.index("## C1 ") < text.index("## Provenance")
  for cid in CLAIM_IDS:
    assert f"## {cid} " in text
  pngs = sorted(p.name for p in tiny.glob("*.png"))
  assert len(pngs) >= len(CLAIM_IDS)
  for png in pngs:
    assert (tiny / png).stat().st_size > 1000
    assert f"]({png})" in text
  assert "../shared" not in text and "EXPERIMENTS.md" not in text
  prov = claims["provenance"]  # where the numbers came from
  assert prov["packages"]["jax"] and prov["datasets"] and prov["machine"]
  assert prov["command"] == f"bn reproduce --tiny --out {tiny} --no-progress"  # what was run, not the test runner's argv
  assert "- packages: " in text and "- command: " in text


def test_tiny_ledger_workdirs(tiny):
  for name in claims.experiments():
    for cond in ledger.config_module(name).conditions("tiny"):
      d = tiny / name / cond
      assert (d / ("results.json" if measure.measured(name) else "summary.json")).exists(), d
  # every JSON file a run wrote parses
  for p in tiny.rglob("*.json"):
    json.loads(p.read_text())
  for p in tiny.rglob("*.jsonl"):
    [json.loads(line) for line in p.read_text().splitlines()]


def test_tiny_ledger_resumes_without_training(tiny):
  summaries = sorted(tiny.rglob("summary.json"))
  before = {p: p.stat().st_mtime_ns for p in summaries}
  first = artifacts.read_json(tiny / "timings.json")
  assert cli.main(["reproduce", "--tiny", "--out", str(tiny), "--no-progress"]) == 0
  assert {p: p.stat().st_mtime_ns for p in summaries} == before  # no condition ran again
  t = artifacts.read_json(tiny / "timings.json")
  assert t["previous"] == first["last_invocation_s"]
  assert first["conditions"]["skipped"] == [] and first["conditions"]["trained"]  # the first run trained (or measured) everything
  assert t["conditions"] == {"trained": [], "skipped": first["conditions"]["trained"]}  # the second nothing
  assert t["cumulative_s"]["total"] == pytest.approx(first["cumulative_s"]["total"] + t["last_invocation_s"]["total"])


def test_bn_report_rebuilds_from_json(tiny):
  (tiny / "report.md").unlink()
  (tiny / "claims.json").unlink()
  assert cli.main(["report", str(tiny)]) == 0
  assert [c["id"] for c in artifacts.read_json(tiny / "claims.json")["claims"]] == CLAIM_IDS


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
  assert cli.main(["reproduce", "--tiny", "--out", str(tmp_path), "--only", "nope", "--no-progress"]) == 2
  assert "unknown experiment" in capsys.readouterr().err


def test_deep_linear_stability_edge_matches_the_exact_hessian():
  """bn.measure.deep_linear.stability_edge (power iteration on HVPs) against 2 / the top eigenvalue of the
  loss Hessian that jax.hessian builds for a tiny no-BN deep linear net; and runs at 0.1, 0.25 and 0.5 of it (one
  runner call) stay finite, each the same as that fraction's run alone."""
  import jax
  import jax.flatten_util
  import jax.numpy as jnp

  from bn import config as bn_config
  from bn.measure import deep_linear as dl

  c = ledger.condition_configs("deep_linear", "tiny", seed_base=0)["none"]
  edge = dl.stability_edge(c, c.seeds, iterations=300)
  model = dl._deep_model(c, "none")
  for i, seed in enumerate(c.seeds):
    (p, s), xy = dl._setup(c, model, seed)
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    f = lambda v: dl._loss(model)(unravel(v), s, xy)[0]  # noqa: E731
    top = float(jnp.max(jnp.linalg.eigvalsh(jax.hessian(f)(flat))))
    assert edge[i] == pytest.approx(2.0 / top, rel=1e-3)
  r = dl.measure_deep_linear(c)
  assert np.all(np.isfinite(np.array(r["loss"]))) and r["lr"] == pytest.approx(list(0.25 * edge), rel=1e-5)
  # every fraction of the edge in one call (one batch of fractions x seeds), each sliced out as its own run
  assert c.deep.lr_fractions == (0.1, 0.25, 0.5) and r["lr_fractions"] == [0.1, 0.25, 0.5] and sorted(r["by_fraction"]) == ["0.1", "0.25", "0.5"]
  for key in ("lr", "steps", "cos_raw", "cos_matched", "loss"):
    assert r[key] == r["by_fraction"]["0.25"][key]  # the top level is the run at deep.lr_fraction
  for f in (0.1, 0.5):
    run = r["by_fraction"][f"{f:g}"]
    alone = dl.deep_linear(c, c.seeds, "none", f * edge)  # the same seeds at that fraction, without the other fractions
    assert run["lr"] == pytest.approx(list(f * edge), rel=1e-5) and np.all(np.isfinite(np.array(run["loss"])))
    np.testing.assert_allclose(run["loss"], [a["loss"] for a in alone], rtol=1e-4)
    np.testing.assert_allclose(run["cos_matched"], [a["cos_matched"] for a in alone], rtol=1e-4, atol=1e-6)
  assert r["by_fraction"]["0.5"]["loss"][0][-1] < r["by_fraction"]["0.1"]["loss"][0][-1]  # a larger LR: further in the same steps
  c.deep.lr_fraction = 0.3
  with pytest.raises(bn_config.ConfigError, match=r"deep.lr_fraction=0.3 must be one of deep.lr_fractions"):
    dl.measure_deep_linear(c)
