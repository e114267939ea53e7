"""Datasets as host NumPy arrays: local IDX files, TFDS datasets (array_record or TFRecord), synthetic.

    ds = bn.data.load("fashion_mnist", val_size=5000)
    ds.train.x   # uint8 (N, H, W, C)
    ds.train.y   # int32 (N,)
    ds.val, ds.test, ds.num_classes, ds.shape, ds.source, ds.location
    ds.files     # the files read: (path, size, sha256) each, for provenance

Sources (``source="auto"`` tries them in this order):

* ``"idx"``: MNIST-format IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``) for ``mnist`` and
  ``fashion_mnist``. Searched in ``data_dir``, then ``$BN_IDX_DIR`` (each also
  with ``NAME/`` appended, first), then the user cache
  (``$XDG_CACHE_HOME/bn/datasets/NAME``, default ``~/.cache/bn/datasets/NAME``,
  where :func:`download_idx` puts them), then the Debian/Ubuntu package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). An explicit
  ``data_dir`` or ``$BN_IDX_DIR`` that does not exist is an error, not a reason to
  fall back. Headers and file lengths are checked. :func:`download_idx` (``bn data
  prepare mnist|fashion_mnist``) fetches the four files over HTTP(S) from the
  dataset's home and checks their sizes and SHA-256 (no TensorFlow).
* ``"tfds"``: a dataset prepared in array_record or TFRecord format (``tfds.load``'s
  default) under ``data_dir`` (TFDS's default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``
  when None), read with ``tfds.data_source`` (array_record) or :class:`TFRecordSource`
  -- no TensorFlow needed to read, only to prepare.
* ``"synthetic"``: learnable class templates plus Gaussian noise, any image shape
  and class count, deterministic from ``seed``. The name ``"synthetic"`` always
  selects it; a catalog name with ``source="synthetic"`` gives a stand-in of
  that dataset's shape and class count.

Everything here is host-side NumPy (including :func:`channel_stats`, the
standardization constants); the device-side pipeline (standardization, sampler,
augmentation) is :mod:`bn.pipeline`, which builds on this module. The ``bn data``
command (:mod:`bn.cli`) prints :func:`describe_all` and :func:`describe`. The files themselves (the record of
a file read, the published IDX files and their checksummed download, TFRecord framing) are :mod:`bn._files`,
re-exported here.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import importlib.util
import math
import os
import struct
import zlib
from typing import Callable, NamedTuple, Sequence

import numpy as np

from bn._files import (IDX_FILES, IDX_MIRRORS, DataError, DataFile, TFRecordSource, download_all, file_record, is_network_error,
                       tfrecord_records)  # noqa: F401 -- re-exported: bn.data is where they are imported from
from bn.artifacts import atomic_file
from bn.errors import RunError

for _t in (DataError, DataFile, TFRecordSource):
  _t.__module__ = __name__  # defined in bn._files; their public home (messages, repr, pickles) is here
del _t

SOURCES = ("auto", "idx", "tfds", "synthetic")

# name: (image shape, number of classes)
CATALOG = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
}


def num_classes(name: str, source: str = "auto", synthetic_classes: int = 10) -> int:
  """How many classes a dataset spec has: ``synthetic_classes`` for synthetic data, else the catalog's
  (10 for a dataset it does not list)."""
  if source == "synthetic" or name == "synthetic":
    return synthetic_classes
  return CATALOG.get(name, (None, 10))[1]
IDX_DATASETS = ("mnist", "fashion_mnist")
SYSTEM_IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
IDX_PREFIX = {"train": "train", "test": "t10k"}  # split -> file-name prefix
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")

# How data directories are named in messages when the caller does not say (bn train, bn data, Python).
DATA_DIR_FLAGS = "--config.data.data_dir in bn train, --data-dir in bn data, data_dir= in Python"
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Split(NamedTuple):
  """One split: images ``x`` uint8 (N, H, W, C) and labels ``y`` int32 (N,). A pytree."""

  x: np.ndarray
  y: np.ndarray


def fixed_subset(split: Split, size: int, seed: int) -> Split:
  """A fixed random subset of ``size`` examples of ``split`` (in their original order), the same for a
  seed; all of it when ``size`` is 0 or at least its length. The engine uses it for the eval-mode
  training metrics, the evaluated test subset, ``data.train_size`` and the precise-BN sample."""
  n = len(split.y)
  if size <= 0 or size >= n:
    return split
  idx = np.sort(np.random.default_rng(seed).permutation(n)[:size])
  return Split(split.x[idx], split.y[idx])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded dataset. ``val`` is carved from the original train split (None when ``val_size=0``).

  ``source`` is ``"idx" | "tfds" | "synthetic"``; ``location`` the directory read
  (or the synthetic recipe); ``files`` the files actually read, each a :class:`DataFile`
  (path, size, sha256; empty for synthetic data), so that a run can record which bytes it
  trained on."""

  name: str
  source: str
  location: str
  num_classes: int
  train: Split
  test: Split
  val: Split | None = None
  files: tuple[DataFile, ...] = ()

  @property
  def shape(self) -> tuple[int, ...]:
    """Image shape (H, W, C)."""
    return tuple(self.train.x.shape[1:])


def how_to_get(name: str, flag: str | None = None) -> str:
  """One paragraph on how to obtain ``name`` on this machine. ``flag``: how the caller names
  the data directory (e.g. ``--data-dir``); by default every way is named."""
  where = f"a directory passed as {flag}, or in $BN_IDX_DIR" if flag else \
      f"a directory given as the data directory ({DATA_DIR_FLAGS}), or in $BN_IDX_DIR"
  tfds_way = (f"`bn data prepare {name}` (TFDS download + conversion; needs `pip install tensorflow` "
              "and internet), then load it with the same data directory")
  if name in IDX_FILES:
    mb = sum(size for size, _ in IDX_FILES[name].values()) / 1e6
    way = (f"Get it with `bn data prepare {name}`: it downloads the four IDX files ({mb:.0f} MB) over HTTPS "
           f"into {idx_download_dir(name)} and checks their SHA-256 (needs network, not TensorFlow)")
    if name == "fashion_mnist":
      way += (". Offline on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
              "(IDX files in /usr/share/datasets/fashion-mnist)")
    return f"{way}. Or put the four files ({', '.join(IDX_NAMES)}) in {where}."
  return f"Get it with {tfds_way}."


def user_cache_dir() -> str:
  """Where ``bn`` keeps downloaded datasets: ``$XDG_CACHE_HOME/bn/datasets`` (default ``~/.cache/bn/datasets``)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bn", "datasets")


def idx_download_dir(name: str, data_dir: str | None = None) -> str:
  """Where :func:`download_idx` puts ``name``'s files: ``data_dir/NAME``, else ``$BN_IDX_DIR/NAME``,
  else the user cache (``user_cache_dir()/NAME``) -- each a place :func:`idx_dirs` searches."""
  base = data_dir or os.environ.get("BN_IDX_DIR")
  return os.path.join(base or user_cache_dir(), name)


def check_data_dir(data_dir: str | None, flag: str | None = None, *, idx: bool = True) -> None:
  """An explicit location must exist: raises :class:`DataError` naming the path and the flag
  when ``data_dir`` (or, with ``idx``, ``$BN_IDX_DIR``) is set but is not a directory."""
  if data_dir and not os.path.isdir(data_dir):
    given = f"given as {flag}" if flag else f"the data directory: {DATA_DIR_FLAGS}"
    raise DataError(f"data directory {data_dir} ({given}) does not exist. Fix the path, or leave it out to use "
                    "the default locations.")
  env = os.environ.get("BN_IDX_DIR")
  if idx and env and not os.path.isdir(env):
    raise DataError(f"$BN_IDX_DIR={env} does not exist. Fix the path, or unset BN_IDX_DIR to use the default "
                    "locations.")


# ----------------------------------------------------------------------------- IDX files


def _read_bytes(path: str, name: str) -> tuple[bytes, DataFile]:
  """The (decompressed) content of ``path`` and the record of the file as stored (hashed once, from memory)."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found. {how_to_get(name)}") from None
  record = file_record(path, raw)
  if raw[:2] != b"\x1f\x8b":
    return raw, record
  try:
    return gzip.decompress(raw), record
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(f"{path}: truncated or corrupt gzip file ({e}). {how_to_get(name)}") from None


def read_idx(path: str, name: str = "this dataset") -> np.ndarray:
  """Reads one IDX file, gzipped or raw, into an array of the header's shape and dtype.

  The header is ``00 00 TYPE NDIM`` then NDIM big-endian uint32 dims; the data
  must be exactly ``prod(dims)`` items long. Raises :class:`DataError` naming
  ``path`` (and how to get ``name``) if the file is missing, truncated or corrupt."""
  return _read_idx(path, name)[0]


def _read_idx(path: str, name: str) -> tuple[np.ndarray, DataFile]:
  raw, record = _read_bytes(path, name)
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex()!r}; expected 0000 08 0N for uint8 "
                    f"data of N dims). {how_to_get(name)}")
  ndim, header = raw[3], 4 + 4 * raw[3]
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header. {how_to_get(name)}")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  count = math.prod(dims)
  expected = header + count * dtype.itemsize
  if len(raw) != expected:
    raise DataError(f"{path}: {'truncated' if len(raw) < expected else 'trailing bytes'}: the header promises "
                    f"{'x'.join(map(str, dims))} items ({expected} bytes uncompressed) but the file holds "
                    f"{len(raw)}. {how_to_get(name)}")
  return np.frombuffer(raw, dtype, count, offset=header).reshape(dims), record


def idx_files(directory: str, split: str) -> tuple[str, str]:
  """Paths of ``split``'s (images, labels) files in ``directory``: the standard names,
  gzipped or raw (``train-images.idx3-ubyte`` spelling accepted); the ``.gz`` name when none exists."""
  def find(kind: str, ndim: int) -> str:
    stem = f"{IDX_PREFIX[split]}-{kind}"
    for base in (f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"):
      for path in (os.path.join(directory, base + ".gz"), os.path.join(directory, base)):
        if os.path.exists(path):
          return path
    return os.path.join(directory, f"{stem}-idx{ndim}-ubyte.gz")
  return find("images", 3), find("labels", 1)


def idx_dirs(name: str, data_dir: str | None = None) -> list[str]:
  """Directories searched for ``name``'s IDX files, in order."""
  dirs = []
  for base in (data_dir, os.environ.get("BN_IDX_DIR")):
    if base:
      dirs += [os.path.join(base, name), base]
  dirs.append(os.path.join(user_cache_dir(), name))
  if name in SYSTEM_IDX_DIRS:
    dirs.append(SYSTEM_IDX_DIRS[name])
  return dirs


def find_idx(name: str, data_dir: str | None = None) -> str | None:
  """The first directory of :func:`idx_dirs` holding any of ``name``'s IDX files, or None."""
  if name not in IDX_DATASETS:
    return None
  for d in idx_dirs(name, data_dir):
    if any(os.path.exists(p) for s in IDX_PREFIX for p in idx_files(d, s)):
      return d
  return None


def _read_idx_split(directory: str, split: str, name: str, num_classes: int) -> tuple[Split, tuple[DataFile, ...]]:
  """Reads and cross-checks one split: images (N, H, W) uint8 and labels (N,) in [0, num_classes), and the files read."""
  images_path, labels_path = idx_files(directory, split)
  (images, images_file), (labels, labels_file) = _read_idx(images_path, name), _read_idx(labels_path, name)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DataError(f"{images_path}: expected uint8 images with 3 dims (magic 0x00000803), got {images.dtype} "
                    f"{images.shape}. {how_to_get(name)}")
  if labels.ndim != 1 or labels.dtype != np.uint8:
    raise DataError(f"{labels_path}: expected uint8 labels with 1 dim (magic 0x00000801), got {labels.dtype} "
                    f"{labels.shape}. {how_to_get(name)}")
  if len(images) != len(labels):
    raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels. "
                    f"{how_to_get(name)}")
  if labels.size and labels.max() >= num_classes:
    raise DataError(f"{labels_path}: label {labels.max()} is not below {num_classes}. {how_to_get(name)}")
  return Split(images[..., None], labels.astype(np.int32)), (images_file, labels_file)


def load_idx(name: str, directory: str) -> Dataset:
  """``name`` (mnist or fashion_mnist) from the IDX files in ``directory``."""
  num_classes = CATALOG.get(name, (None, 10))[1]
  (train, train_files), (test, test_files) = (_read_idx_split(directory, s, name, num_classes) for s in ("train", "test"))
  return Dataset(name, "idx", directory, num_classes, train, test, files=train_files + test_files)


# ----------------------------------------------------------------------------- TFDS


def tfds_default_dir() -> str:
  """TFDS's default data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def find_tfds(name: str, data_dir: str | None = None) -> str | None:
  """The newest version directory of ``name`` prepared as array_record or TFRecord under ``data_dir``, or None."""
  def version(d):
    return tuple(int(p) if p.isdigit() else -1 for p in os.path.basename(d).split("."))
  infos = glob.glob(os.path.join(data_dir or tfds_default_dir(), name, "*", "dataset_info.json"))
  for d in sorted((os.path.dirname(i) for i in infos), key=version, reverse=True):
    if any(glob.glob(os.path.join(d, f"{name}-train.{fmt}*")) for fmt in TFDS_FORMATS):
      return d
  return None


# The TFDS file formats bn reads: array_record through tfds.data_source, tfrecord (what
# tfds.load prepares by default) with the reader below; neither needs TensorFlow.
TFDS_FORMATS = ("array_record", "tfrecord")


def _tfrecord_source(tfds, name: str, split: str, data_dir: str | None) -> TFRecordSource | None:
  """The split as a :class:`TFRecordSource` when ``name`` is prepared in TFRecord format under
  ``data_dir``; None when it is not."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    info = builder.info
  except Exception:  # noqa: BLE001 -- unknown or unprepared: not this format
    return None
  files = sorted(glob.glob(os.path.join(str(builder.data_path), f"{name}-{split}.tfrecord*")))
  return TFRecordSource(files, info) if files else None


def _batched_get(source):
  """``keys -> records`` reading a batch at a time when the source supports ``__getitems__``.

  tfds 4.9.10's ``mock_data`` installs an unbound ``__getitems__`` (TypeError when
  called); then, and for sources without it (lists), records are read one by one."""
  try:
    source.__getitems__([0])
    return source.__getitems__
  except (TypeError, AttributeError):
    return lambda keys: [source[k] for k in keys]


def read_source(source: Sequence, *, image_key: str = "image", label_key: str = "label",
                chunk: int = 4096) -> Split:
  """All records of a random-access source of ``{image: (H, W, C) uint8, label: int}`` dicts."""
  n = len(source)
  if n == 0:
    raise DataError(f"{source!r} has no records.")
  first = source[0]
  x = np.empty((n, *np.shape(first[image_key])), np.uint8)
  y = np.empty((n,), np.int32)
  get = _batched_get(source)
  for start in range(0, n, chunk):
    records = get(list(range(start, min(n, start + chunk))))
    x[start:start + len(records)] = np.stack([r[image_key] for r in records])
    y[start:start + len(records)] = [r[label_key] for r in records]
  return Split(x, y)


def _write_npz(path: str, split: Split):
  """Writes ``split`` to ``path`` atomically (temp file in the same directory + os.replace)."""
  with atomic_file(path, "wb", suffix=".npz") as f:
    np.savez(f, x=split.x, y=split.y)


def _read_cached(path: str, read) -> Split:
  if os.path.exists(path):
    with np.load(path) as z:
      return Split(z["x"], z["y"])
  split = read()
  _write_npz(path, split)
  return split


def load_tfds(name: str, data_dir: str | None = None, *, cache_dir: str | None = None) -> Dataset:
  """``name``'s train and test splits via ``tfds.data_source`` (array_record) or :class:`TFRecordSource`
  (TFRecord); no TensorFlow needed.

  With ``cache_dir`` (or ``$BN_CACHE_DIR``) the decoded arrays are kept there as
  ``NAME-VERSION-SPLIT.npz``, written atomically."""
  import tensorflow_datasets as tfds  # slow import; only this path needs it

  cache_dir = cache_dir or os.environ.get("BN_CACHE_DIR")
  where = data_dir or tfds_default_dir()
  splits, files = {}, []
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      fmt = "array_record"
    except Exception as e:  # TFDS raises assorted types (NotImplementedError, DatasetNotFoundError, ...)
      source, fmt = _tfrecord_source(tfds, name, split, data_dir), "tfrecord"
      if source is None:
        raise DataError(f"{name}: no {split} split prepared as array_record or tfrecord under {where} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {how_to_get(name)}") from e
    info = source.dataset_info
    read = lambda: read_source(source)  # noqa: E731
    version_dir = os.path.join(where, name, str(info.version))
    if cache_dir:
      cached = os.path.join(cache_dir, f"{name}-{info.version}-{split}.npz")
      splits[split] = _read_cached(cached, read)
      files.append(cached)
    else:
      splits[split] = read()
      files += sorted(glob.glob(os.path.join(version_dir, f"{name}-{split}.{fmt}*")))
  num_classes = int(info.features["label"].num_classes)
  return Dataset(name, "tfds", version_dir, num_classes, splits["train"], splits["test"],
                 files=tuple(file_record(f) for f in files))


# ----------------------------------------------------------------------------- synthetic


def synthetic(shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, *, num_train: int = 6000,
              num_test: int = 1000, seed: int = 0, noise: float = 64.0, name: str = "synthetic") -> Dataset:
  """A learnable stand-in dataset: ``x = clip(template[y] + noise * N(0, 1))`` as uint8.

  Each class template is uniform in [0, 255] on a 4x-coarser grid, upsampled by
  repetition (so it has spatial structure for convolutions). Labels are balanced
  (``i % num_classes``, shuffled). Everything is deterministic from ``seed``."""
  h, w, c = shape
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (num_classes, -(-h // 4), -(-w // 4), c)).astype(np.float32)
  templates = coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w]

  def sample(n):
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    x = templates[y] + np.float32(noise) * rng.standard_normal((n, h, w, c), np.float32)
    return Split(np.clip(np.rint(x), 0, 255).astype(np.uint8), y)

  train, test = sample(num_train), sample(num_test)
  recipe = f"synthetic(shape={tuple(shape)}, num_classes={num_classes}, seed={seed}, noise={noise})"
  return Dataset(name, "synthetic", recipe, num_classes, train, test)


# ----------------------------------------------------------------------------- load


def split_val(ds: Dataset, val_size: int, seed: int = 0) -> Dataset:
  """Moves ``val_size`` examples, chosen by ``seed``, from train to ``val``; both keep the original order."""
  if val_size == 0:
    return ds
  n = len(ds.train.y)
  if not 0 < val_size < n:
    raise ValueError(f"val_size={val_size} must be in [0, {n}) for {ds.name}'s {n} training examples.")
  perm = np.random.default_rng(seed).permutation(n)
  val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
  take = lambda idx: Split(ds.train.x[idx], ds.train.y[idx])  # noqa: E731
  return dataclasses.replace(ds, train=take(train_idx), val=take(val_idx))


def resolve_source(name: str, source: str = "auto", data_dir: str | None = None, *, flag: str | None = None) -> str:
  """The source ``load`` would use: idx if its files are found, else tfds if prepared, else an error.

  ``flag`` names the data directory in messages (e.g. ``--data-dir``)."""
  if source not in SOURCES:
    raise ValueError(f"source={source!r} is not one of {SOURCES}.")
  if source == "synthetic" or (source == "auto" and name == "synthetic"):
    return "synthetic"
  check_data_dir(data_dir, flag, idx=name in IDX_DATASETS and source in ("auto", "idx"))
  if source != "auto":
    return source
  if find_idx(name, data_dir):
    return "idx"
  if find_tfds(name, data_dir):
    return "tfds"
  searched = idx_dirs(name, data_dir) if name in IDX_DATASETS else []
  searched.append(os.path.join(data_dir or tfds_default_dir(), name))
  raise DataError(f"{name}: not found (looked in {', '.join(searched)}). {how_to_get(name, flag)}")


def load(name: str = "fashion_mnist", *, source: str = "auto", data_dir: str | None = None, val_size: int = 0,
         seed: int = 0, cache_dir: str | None = None, synthetic_shape: Sequence[int] | None = None,
         synthetic_classes: int | None = None, synthetic_sizes: tuple[int, int] = (6000, 1000),
         synthetic_noise: float = 64.0, flag: str | None = None) -> Dataset:
  """Loads ``name`` from ``source`` (see the module docstring) and carves a validation split.

  ``seed`` chooses the ``val_size`` validation examples (and the synthetic data);
  the synthetic shape/classes default to the catalog entry of ``name``, else
  (28, 28, 1) and 10. Raises :class:`DataError` with instructions when the data
  is missing or damaged, or when ``data_dir`` / ``$BN_IDX_DIR`` is set but does not
  exist; ``flag`` is how the caller's user gives ``data_dir`` (e.g.
  ``--config.data.data_dir``), named in those messages."""
  source = resolve_source(name, source, data_dir, flag=flag)
  if source == "synthetic":
    shape, classes = CATALOG.get(name, ((28, 28, 1), 10))
    ds = synthetic(synthetic_shape or shape, synthetic_classes or classes, num_train=synthetic_sizes[0],
                   num_test=synthetic_sizes[1], seed=seed, noise=synthetic_noise, name=name)
  elif source == "idx":
    directory = find_idx(name, data_dir)
    if directory is None:
      raise DataError(f"{name}: no IDX files in {', '.join(idx_dirs(name, data_dir))}. {how_to_get(name, flag)}")
    ds = load_idx(name, directory)
  else:
    ds = load_tfds(name, data_dir, cache_dir=cache_dir)
  return split_val(ds, val_size, seed)


class ChannelStats(NamedTuple):
  """Per-channel mean and (biased, population) std of the train pixels scaled to [0, 1]; float32 (C,)."""

  mean: np.ndarray
  std: np.ndarray


def channel_stats(x: np.ndarray) -> ChannelStats:
  """Exact per-channel statistics of uint8 images (N, H, W, C), from a 256-bin histogram per channel."""
  levels = np.arange(256, dtype=np.float64) / 255
  mean, std = [], []
  for c in range(x.shape[-1]):
    p = np.bincount(np.ravel(x[..., c]), minlength=256) / (x.size // x.shape[-1])
    m = p @ levels
    mean.append(m)
    std.append(np.sqrt(p @ (levels - m) ** 2))
  return ChannelStats(np.asarray(mean, np.float32), np.asarray(std, np.float32))


def class_counts(split: Split, num_classes: int) -> np.ndarray:
  """Examples per class, int64 (num_classes,)."""
  return np.bincount(split.y, minlength=num_classes)


# ----------------------------------------------------------------------------- CLI


def _has_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def prepare(name: str, data_dir: str | None = None, *, tfds: bool = False, mirrors: Sequence[str] | None = None,
            log: Callable[[str], None] | None = None) -> str:
  """Makes ``name`` available locally; returns the directory it is in.

  mnist and fashion_mnist (unless ``tfds``): :func:`download_idx` (HTTP(S), checksums,
  no TensorFlow). Others: TFDS download + conversion to array_record (needs TensorFlow).
  Raises :class:`DataError` when TensorFlow is missing, :class:`~bn.errors.RunError`
  when a download fails."""
  if name in IDX_FILES and not tfds:
    return download_idx(name, idx_download_dir(name, data_dir), mirrors=mirrors, log=log)
  no_tf = (f"cannot prepare {name}: TensorFlow is not installed, and TFDS needs it to download and convert "
           f"{name}. Install it with `pip install tensorflow` (the download also needs internet), then re-run.")
  if name in IDX_FILES:
    no_tf += f" Without TensorFlow: `bn data prepare {name}` (no --tfds) downloads the IDX files."
  if not _has_tensorflow():
    raise DataError(no_tf)
  import tensorflow_datasets as tfds_lib

  where = data_dir or tfds_default_dir()
  try:
    tfds_lib.builder(name, data_dir=data_dir).download_and_prepare(file_format="array_record")
  except ImportError as e:
    raise DataError(f"{no_tf} ({e})") from None
  except Exception as e:  # report, don't dump a traceback
    if is_network_error(e):
      raise RunError(f"cannot prepare {name}: no network: the download failed ({type(e).__name__}: {e}). "
                     "Preparing needs internet access; run it on a connected machine and copy "
                     f"{os.path.join(where, name)} here.") from None
    raise RunError(f"cannot prepare {name}: {type(e).__name__}: {e}") from None
  return where


# ----------------------------------------------------------------------------- IDX download


def download_idx(name: str, directory: str | None = None, *, mirrors: Sequence[str] | None = None,
                 timeout: float = 60.0, log: Callable[[str], None] | None = None) -> str:
  """Downloads ``name``'s (mnist or fashion_mnist) four IDX files into ``directory`` (default
  :func:`idx_download_dir`) over HTTP(S) with the standard library, no TensorFlow.

  Each file is tried from each of ``mirrors`` (base URLs; default ``IDX_MIRRORS[name]``) in
  turn and kept only if its size and SHA-256 are those of ``IDX_FILES[name]``; it is written
  to a temporary file and renamed into place, so a failed or corrupt download leaves nothing.
  Files already there with the right checksum are not downloaded again. Returns ``directory``;
  raises :class:`~bn.errors.RunError` when a file cannot be had from any mirror."""
  if name not in IDX_FILES:
    raise DataError(f"{name}: no IDX download known; `bn data prepare {name}` goes through TFDS.")
  directory = directory or idx_download_dir(name)
  mirrors = list(mirrors or IDX_MIRRORS[name])
  log = log or (lambda _: None)
  created = not os.path.isdir(directory)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise RunError(f"cannot create {directory} for {name}'s files: {e}") from None
  try:
    download_all(name, IDX_FILES[name], directory, mirrors, timeout, log, SYSTEM_IDX_DIRS.get(name))
  except BaseException:
    if created and not os.listdir(directory):
      os.rmdir(directory)
    raise
  return directory


def describe_all(data_dir: str | None = None, flag: str | None = None) -> str:
  """``bn data list``: every catalog dataset, where it was found (or how to get it)."""
  check_data_dir(data_dir, flag)
  lines = [f"{'dataset':<14} {'shape':<9} {'classes':>7}  source"]
  for name, (shape, classes) in CATALOG.items():
    found = [("idx", find_idx(name, data_dir)), ("tfds", find_tfds(name, data_dir))]
    found = [(s, d) for s, d in found if d]
    head = f"{name:<14} {'x'.join(map(str, shape)):<9} {classes:>7}  "
    for i, (s, d) in enumerate(found):
      lines.append((head if i == 0 else " " * len(head)) + f"{s:<5} {d}")
    if not found:
      lines.append(head + "missing")
      lines.append(" " * len(head) + how_to_get(name, flag))
  lines.append(f"{'synthetic':<14} {'any':<9} {'any':>7}  generated: `bn data info NAME --source synthetic`")
  return "\n".join(lines)


def describe(ds: Dataset) -> str:
  """``bn data info``: source, shapes, pixel statistics and class balance of a loaded dataset."""
  x = ds.train.x
  stats = channel_stats(x)
  lines = [f"{ds.name}: source {ds.source}, {ds.location}",
           f"image shape {'x'.join(map(str, ds.shape))} ({x.dtype}), labels {ds.train.y.dtype}, {ds.num_classes} classes",
           "train pixels in [0, 1], per channel: mean " + " ".join(f"{m:.4f}" for m in stats.mean)
           + ", std " + " ".join(f"{s:.4f}" for s in stats.std),
           f"{'split':<6} {'examples':>8}  class counts"]
  for split_name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
    if split is None:
      continue
    counts = class_counts(split, ds.num_classes)
    shown = (" ".join(map(str, counts)) if len(counts) <= 20
             else f"min {counts.min()}, max {counts.max()} over {len(counts)} classes")
    lines.append(f"{split_name:<6} {len(split.y):>8}  {shown}")
  return "\n".join(lines)
