"""Tests for bn.prereg: the pre-registration record written before the first step, read back, and the status
each primary test gets from it -- pre-registered, not registered, or changed after the run, naming what changed
(the part's declaration, the claim module's code, a claim added later); a resumed ledger keeps the first record.
"""

import dataclasses

from bn import prereg
from bn.claims import c6_depth


def test_preregistration_status(tmp_path):
  claim = c6_depth.CLAIM
  (part,) = claim.parts
  record = prereg.registration([claim], {"depth_init": {"bn": [3000, 3001]}}, mode="quick", seed_base=3000,
                               provenance={"git_commit": "abc", "git_dirty": False, "date": "d"})
  prereg.write(tmp_path, record)
  read = prereg.read(tmp_path)
  assert read["seed_base"] == 3000 and read["commit"] == "abc" and read["experiments"]["depth_init"]["bn"] == [3000, 3001]
  assert prereg.status(read, claim, part) == "pre-registered"
  assert prereg.status(None, claim, part) == "not registered"
  moved = dataclasses.replace(part, margin=0.5)  # the declaration changed after the run
  assert prereg.status(read, claim, moved) == "changed after the run: its declaration (margin)"
  read["claims"][claim.id]["sha256"] = "0" * 64  # the module's code changed after the run
  assert prereg.status(read, claim, part) == f"changed after the run: the code of {claim.analyze.__module__}"
  assert prereg.status({"claims": {}}, claim, part).startswith("changed after the run: the claim was added")
  # a resumed ledger keeps the first record
  prereg.write(tmp_path, {**record, "commit": "later"})
  assert prereg.read(tmp_path)["commit"] == "abc"
