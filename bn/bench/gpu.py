"""The GPU section of ``bn bench``: bf16 training throughput, BN-layer bandwidth, PyTorch baseline.

Runs only when ``jax.default_backend() == "gpu"`` (``BN_BENCH_FORCE_GPU=1`` runs it on
any backend, to check the code path; its numbers then mean nothing). Nets:

* ResNet-20 (:class:`bn.models.ResNet20`) and an airbench-style net (frozen
  2x2 whitening convolution, then three conv-pool-BN-GELU / conv-BN-GELU
  groups of widths 64/256/256, global max-pool, linear head) in bfloat16
  compute with float32 BN statistics and float32 master weights
  (:class:`CastModel`), trained by the engine (``bn.train`` chunks).
* The same nets in PyTorch (``torch.compile``, channels-last, bf16 autocast,
  SGD with Nesterov momentum), when ``torch`` imports and sees the device.

Images/s are timed round-robin with the PyTorch program in one group.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import bn
from bn import models, programs, train
from bn.bench.core import compile_timed, load_avg, log, measure, ratio, target


@dataclasses.dataclass(frozen=True)
class CastModel:
  """Mixed precision around a Linen model: for the forward pass, float parameters and the
  input are cast to ``dtype``; ``batch_stats`` stay float32 (bn.linen computes statistics in
  float32 anyway); the logits come back as float32. Gradients reach the float32 parameters."""

  module: Any
  dtype: Any = jnp.bfloat16

  def init(self, rngs, x, **kwargs):
    return self.module.init(rngs, x, **kwargs)

  def apply(self, variables, x, **kwargs):
    cast = lambda p: p.astype(self.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p  # noqa: E731
    variables = {**variables, "params": jax.tree.map(cast, variables["params"])}
    out = self.module.apply(variables, x.astype(self.dtype), **kwargs)
    if isinstance(out, tuple):
      return out[0].astype(jnp.float32), out[1]
    return out.astype(jnp.float32)


def whitening_filters(x: np.ndarray, eps: float = 5e-4) -> np.ndarray:
  """Frozen 2x2 whitening filters (HWIO, 2 x 2 x C x 8C) from the patch covariance of ``x`` (N, H, W, C):
  the eigenvectors scaled by 1/sqrt(eigenvalue + eps), and their negatives (as in airbench)."""
  c = x.shape[-1]
  p = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))  # N, H-1, W-1, C, 2, 2
  p = p.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 4 * c).astype(np.float64)
  p = p - p.mean(0)
  vals, vecs = np.linalg.eigh(p.T @ p / len(p))
  f = (vecs / np.sqrt(vals + eps)).T.reshape(4 * c, 2, 2, c)  # filter i over (h, w, c)
  f = np.concatenate([f, -f]).transpose(1, 2, 3, 0)
  return f.astype(np.float32)


class AirbenchNet(nn.Module):
  """airbench-style CIFAR net (Keller Jordan's cifar10-airbench), in the models' calling convention."""

  whiten: Callable  # initializer returning the (frozen) whitening filters
  widths: tuple[int, ...] = (64, 256, 256)
  num_classes: int = 10
  momentum: float = 0.6

  @nn.compact
  def __call__(self, x, train: bool = True, renorm=None):
    k = jax.lax.stop_gradient(self.param("whiten", self.whiten, None)).astype(x.dtype)
    x = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = nn.gelu(x)
    for i, w in enumerate(self.widths):
      norm = functools.partial(bn.linen.BatchNorm, use_running_average=not train, momentum=self.momentum, epsilon=1e-5)
      x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}a")(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
      x = nn.gelu(norm(name=f"bn{i}a")(x))
      x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}b")(x)
      x = nn.gelu(norm(name=f"bn{i}b")(x))
    x = jnp.max(x, axis=(1, 2))
    return nn.Dense(self.num_classes, use_bias=False, name="head")(x)


def _gpu_task(model, batch: int, weight_decay: float):
  return train.Task(
      model=CastModel(model), direction=train.make_direction("nesterov", momentum=0.9), schedule=train.make_schedule("constant", 1),
      decoupled_wd=False, batch_size=batch, sampling="epoch", augment=False, renorm=None,
  ), weight_decay


def _engine_fn(s, task, wd, x, y, steps):
  state = programs.init(task, x.shape[0])(np.zeros(1, np.int32), np.full(1, 0.05, np.float32), np.full(1, wd, np.float32), x[:2])
  compiled, secs = compile_timed(s, programs.chunk(task, steps), state, x, y)
  box = [state]

  def step():
    box[0], m = compiled(box[0], x, y)
    return m

  return step, secs


# ----------------------------------------------------------------------------- PyTorch


def _torch():
  try:
    import torch
  except Exception:  # not installed, or a broken install
    return None
  return torch


def _torch_nets(torch, whiten: np.ndarray, resnet_widths, resnet_blocks, air_widths):
  tnn, F = torch.nn, torch.nn.functional

  class Res(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c0, self.b0 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout, momentum=0.1)
      self.c1, self.b1 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout, momentum=0.1)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout, momentum=0.1))

    def forward(self, x):
      y = self.b1(self.c1(F.relu(self.b0(self.c0(x)))))
      return F.relu(y + (x if self.proj is None else self.proj(x)))

  class ResNet20(tnn.Module):
    def __init__(self):
      super().__init__()
      w0 = resnet_widths[0]
      self.stem = tnn.Sequential(tnn.Conv2d(3, w0, 3, 1, 1, bias=False), tnn.BatchNorm2d(w0, momentum=0.1), tnn.ReLU())
      layers, cin = [], w0
      for i, w in enumerate(resnet_widths):
        for b in range(resnet_blocks):
          layers.append(Res(cin, w, 2 if (i > 0 and b == 0) else 1))
          cin = w
      self.blocks, self.head = tnn.Sequential(*layers), tnn.Linear(cin, 10)

    def forward(self, x):
      return self.head(self.blocks(self.stem(x)).mean((2, 3)))

  class Airbench(tnn.Module):
    def __init__(self):
      super().__init__()
      self.whiten = tnn.Conv2d(3, whiten.shape[-1], 2, bias=False)
      self.whiten.weight.data = torch.from_numpy(whiten.transpose(3, 2, 0, 1).copy())
      self.whiten.weight.requires_grad = False
      layers, cin = [], whiten.shape[-1]
      for w in air_widths:
        layers += [tnn.Conv2d(cin, w, 3, 1, 1, bias=False), tnn.MaxPool2d(2), tnn.BatchNorm2d(w, momentum=0.4), tnn.GELU(),
                   tnn.Conv2d(w, w, 3, 1, 1, bias=False), tnn.BatchNorm2d(w, momentum=0.4), tnn.GELU()]
        cin = w
      self.body, self.head = tnn.Sequential(*layers), tnn.Linear(cin, 10, bias=False)

    def forward(self, x):
      return self.head(self.body(F.gelu(self.whiten(x))).amax((2, 3)))

  return {"resnet20": ResNet20, "airbench": Airbench}


def _torch_fn(torch, net_cls, x_nhwc: np.ndarray, y: np.ndarray, batch: int, steps: int, weight_decay: float):
  """``(fn, warmup_s, note)``: ``fn()`` runs ``steps`` compiled bf16-autocast SGD steps and synchronizes."""
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  F = torch.nn.functional
  model = net_cls().to(dev).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, nesterov=True, weight_decay=weight_decay)
  note = ""
  try:
    fwd = torch.compile(model)
  except Exception as e:  # torch.compile unavailable on this platform
    fwd, note = model, f"torch.compile failed ({type(e).__name__}); eager"
  xs = torch.from_numpy(x_nhwc).to(dev).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  ys = torch.from_numpy(y.astype(np.int64)).to(dev)
  n = xs.shape[0]
  pos = [n]
  perm = [None]

  def one():
    if pos[0] + batch > n:
      perm[0], pos[0] = torch.randperm(n, device=dev), 0
    idx = perm[0][pos[0]:pos[0] + batch]
    pos[0] += batch
    with torch.autocast(dev, dtype=torch.bfloat16):
      loss = F.cross_entropy(fwd(xs[idx]), ys[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def sync():
    if dev == "cuda":
      torch.cuda.synchronize()

  def fn():
    for _ in range(steps):
      one()
    sync()

  t0 = time.perf_counter()
  for _ in range(3):  # compile + autotune
    one()
  sync()
  return fn, time.perf_counter() - t0, note


# ----------------------------------------------------------------------------- bandwidth


def _bandwidth(s) -> dict:
  """Effective bandwidth of one BN layer vs an elementwise copy (``-x``: one read, one write).

  Bytes counted: eval forward 2|x| (read, write); train forward 3|x| (statistics pass,
  then normalize: two reads, one write)."""
  out = {}
  shape = s.layer_shapes[0]
  for dtype in ("bfloat16", "float32"):
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32).astype(dtype)
    params, state = bn.init(shape[-1])
    progs = {
        "copy": (jax.jit(lambda x: -x), (x,), 2),
        "train_fwd": (jax.jit(lambda x, p, st: bn.batch_norm(x, p, st, train=True, variance="fast")), (x, params, state), 3),
        "eval_fwd": (jax.jit(lambda x, p, st: bn.batch_norm(x, p, st, train=False)), (x, params, state), 2),
    }
    fns, nbytes = {}, {}
    for name, (f, args, k) in progs.items():
      compiled, _ = compile_timed(s, f, *args)
      fns[name], nbytes[name] = functools.partial(compiled, *args), k * x.size * x.dtype.itemsize
    t = measure(fns, s)
    gbps = {k: nbytes[k] / t[k]["median_s"] / 1e9 for k in fns}
    for k in ("train_fwd", "eval_fwd"):
      out[f"{k} {dtype}"] = {"gbps": gbps[k], "vs_copy": gbps[k] / gbps["copy"], "time": t[k]}
    out[f"copy {dtype}"] = {"gbps": gbps["copy"], "vs_copy": 1.0, "time": t["copy"]}
  return out


# ----------------------------------------------------------------------------- the section


def gpu_section(s, res) -> dict:
  forced = os.environ.get("BN_BENCH_FORCE_GPU") == "1"
  backend = jax.default_backend()
  if backend != "gpu" and not forced:
    return {"status": "not run", "note": f"not run (no GPU: backend is {backend})", "targets": None}
  from bn.bench.cases import _data

  out: dict[str, Any] = {"status": "run", "forced": forced, "load_avg": load_avg(), "nets": []}
  steps = s.gpu_steps
  img = max(s.resnet_image, 16)  # airbench's three 2x2 pools after the 2x2 stem need >= 16 pixels
  xh, yh, xd, yd = _data(s.resnet_train_size, (img, img, 3))
  whiten = whitening_filters(xh[:1000])
  air_widths = (64, 256, 256) if s.mode != "tiny" else (8, 16, 16)
  batches = {"resnet20": 4 * s.resnet_batch, "airbench": 8 * s.resnet_batch}
  nets = {
      "resnet20": _gpu_task(models.ResNet20(widths=tuple(s.resnet_widths), blocks_per_stage=s.resnet_blocks, norm=models.norm_spec(momentum=0.9)), batches["resnet20"], 5e-4),
      "airbench": _gpu_task(AirbenchNet(lambda key, shape, dtype=jnp.float32: jnp.asarray(whiten, dtype), air_widths), batches["airbench"], 0.0),
  }
  torch = _torch()
  torch_ok = torch is not None and (torch.cuda.is_available() or forced)
  out["torch_note"] = (f"PyTorch {torch.__version__}: torch.compile, channels-last, bf16 autocast, SGD Nesterov." if torch_ok
                       else "PyTorch: not run (no torch/GPU).")
  tnets = _torch_nets(torch, whiten, s.resnet_widths, s.resnet_blocks, air_widths) if torch_ok else {}
  ratios = {}
  for name, (task, wd) in nets.items():
    fns, comp, notes = {}, {}, {}
    fns["jax"], comp["jax"] = _engine_fn(s, task, wd, xd, yd, steps)
    if torch_ok:
      fns["torch"], comp["torch"], notes["torch"] = _torch_fn(torch, tnets[name], xh, yh, batches[name], steps, wd)
    la = load_avg()
    t = measure(fns, s, per_call=steps)
    for prog, tt in t.items():
      out["nets"].append({"net": name, "program": prog, "batch": batches[name], "images_per_s": batches[name] / tt["median_s"],
                          "time_per_step": tt, "compile_s": comp[prog], "note": notes.get(prog, ""), "load_avg": la})
    if "torch" in t:
      ratios[name] = ratio(t["torch"], t["jax"])  # time ratio torch/jax == images/s ratio jax/torch
    log(f"gpu {name}: " + ", ".join(f"{p} {batches[name] / tt['median_s']:.4g} img/s" for p, tt in t.items()))
  out["ratios_jax_vs_torch_images_per_s"] = ratios
  out["bandwidth"] = _bandwidth(s)
  bw = out["bandwidth"].get("train_fwd bfloat16")
  out["targets"] = [target("gpu_bn_bandwidth", "GPU: BN layer (train forward, bf16) bandwidth vs device copy bandwidth", ">= 0.70x",
                           bw["vs_copy"], "3 bytes moved per byte of x (statistics, then normalize)")]
  for name, label in (("resnet20", "ResNet-20"), ("airbench", "airbench-style net")):
    r = ratios.get(name)
    out["targets"].append(target(f"gpu_{name}_vs_torch", f"GPU: {label} images/s, JAX engine vs PyTorch", ">= 1.00x",
                                 r["ratio"] if r else None, "" if r else "not run (no torch/GPU)"))
  if forced and backend != "gpu":
    for t in out["targets"]:
      t["note"] = (t["note"] + "; " if t["note"] else "") + f"forced on {backend}: numbers meaningless"
  return out
