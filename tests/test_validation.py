"""A validation split (data.val_size > 0) is carved from the training data and evaluated with the
test split; its metrics agree with an independent evaluation of the trained weights."""

import numpy as np
import optax

from bn import config as bn_config, data, experiment, loop


def test_validation_metrics_are_the_trained_model_on_the_held_out_split(tmp_path):
  c = bn_config.base()
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(256, 64), train_eval_size=64, val_size=48)
  c.model.update(widths=(8,))
  c.train.update(steps=6, batch_size=16, eval_every=3, checkpoint_every=3)
  exp = experiment.from_config(c)
  loop.train_workdir(exp, tmp_path / "w", progress=False)
  r = loop.restore(tmp_path / "w")
  rows = [x for x in r.metrics if x["step"] == 6]
  assert all({"val_loss", "val_accuracy"} <= set(x) for x in r.metrics)
  ds = experiment.load_dataset(exp.data)
  assert len(ds.val.y) == 48 and len(ds.train.y) == 256 - 48  # carved out of the training split
  stats = data.channel_stats(ds.train.x)
  x = (ds.val.x.astype(np.float32) / 255.0 - stats.mean) / stats.std
  model = exp.make_task(ds.num_classes).model
  for i, row in enumerate(sorted(rows, key=lambda x: x["run"])):
    logits = model.apply({"params": r.params[i], "batch_stats": r.batch_stats[i]}, x, train=False)
    loss = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ds.val.y)))
    acc = float(np.mean(np.argmax(logits, -1) == ds.val.y))
    np.testing.assert_allclose(row["val_loss"], loss, rtol=1e-5)
    assert row["val_accuracy"] == np.float32(acc) or abs(row["val_accuracy"] - acc) < 1e-6  # counts over 48 examples, in float32


def test_test_eval_size_evaluates_a_fixed_subset_of_the_test_split(tmp_path):
  c = bn_config.base()
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(128, 64), train_eval_size=32, test_eval_size=20)
  c.model.update(widths=(8,))
  c.train.update(steps=4, batch_size=16, eval_every=2, checkpoint_every=2)
  loop.train_workdir(experiment.from_config(c), tmp_path / "w", progress=False)
  rows = loop.restore(tmp_path / "w").metrics
  assert all(abs(r["test_accuracy"] * 20 - round(r["test_accuracy"] * 20)) < 1e-4 for r in rows)  # counts over 20 images
