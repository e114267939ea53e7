"""Tests for bn.data: loading (IDX, TFDS, synthetic), splits, the ``bn data`` command (the device side is test_pipeline.py).

References are independent of the code under test: bytes written here by hand
(IDX files), per-record reads of the TFDS source, NumPy statistics, brute force.
"""

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bn import cli, data

FMNIST = "/usr/share/datasets/fashion-mnist"
HAVE_FMNIST = all(
    os.path.exists(os.path.join(FMNIST, f"{p}-{k}-ubyte.gz"))
    for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
  """No stray BN_IDX_DIR / cache; an empty TFDS data dir and user cache; downloads go nowhere
  (a closed local port: no test reaches the internet)."""
  monkeypatch.delenv("BN_IDX_DIR", raising=False)
  monkeypatch.delenv("BN_CACHE_DIR", raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_empty"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
  monkeypatch.setattr(data, "IDX_MIRRORS", {k: ("http://127.0.0.1:9/",) for k in data.IDX_MIRRORS})


# ----------------------------------------------------------------------------- IDX fixtures


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
  return bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(directory, *, gz: bool, n_train=50, n_test=20, h=5, w=4, seed=0):
  """Four IDX files with known content (non-square images catch H/W swaps)."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    x = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    y = rng.integers(0, 10, (n,), dtype=np.uint8)
    arrays[prefix] = (x, y)
    for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
      name = os.path.join(directory, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
      raw = idx_bytes(arr)
      with open(name, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  arrays = write_idx_set(tmp_path, gz=gz)
  ds = data.load("mnist", source="idx", data_dir=str(tmp_path))
  assert (ds.source, ds.location, ds.num_classes, ds.shape) == ("idx", str(tmp_path), 10, (5, 4, 1))
  for split, prefix in ((ds.train, "train"), (ds.test, "t10k")):
    x, y = arrays[prefix]
    assert split.x.dtype == np.uint8 and split.y.dtype == np.int32
    np.testing.assert_array_equal(split.x, x[..., None])
    np.testing.assert_array_equal(split.y, y)


def test_idx_auto_finds_name_subdir_and_env(tmp_path, monkeypatch):
  write_idx_set(tmp_path / "fashion_mnist", gz=True)
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  assert data.resolve_source("fashion_mnist", "auto", str(tmp_path)) == "idx"
  assert data.load("fashion_mnist", data_dir=str(tmp_path)).location == str(tmp_path / "fashion_mnist")
  monkeypatch.setenv("BN_IDX_DIR", str(tmp_path))
  assert data.load("fashion_mnist").source == "idx"
  assert data.find_idx("cifar10", str(tmp_path)) is None  # IDX only for mnist-like sets


def test_idx_truncated_names_file(tmp_path):
  write_idx_set(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(data.DataError, match="truncated") as e:
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))
  assert str(path) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)


def test_idx_truncated_gzip_names_file(tmp_path):
  write_idx_set(tmp_path, gz=True)
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-12])
  with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz") as e:
    data.load("mnist", source="idx", data_dir=str(tmp_path))
  assert "bn data prepare mnist" in str(e.value)


@pytest.mark.parametrize("header", [b"\x12\x34\x08\x03", b"\x00\x00\x0c\x03", b"\x00\x00\x08\x02"])
def test_idx_wrong_magic_names_file(tmp_path, header):
  write_idx_set(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  raw = path.read_bytes()
  path.write_bytes(header + raw[4:])
  with pytest.raises(data.DataError) as e:
    data.load("mnist", source="idx", data_dir=str(tmp_path))
  assert str(path) in str(e.value)


def test_idx_missing_file_and_label_mismatch(tmp_path):
  write_idx_set(tmp_path, gz=True)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: file not found"):
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))
  (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
  with pytest.raises(data.DataError, match="20 images but .* has 3 labels"):
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))


def test_read_idx_other_dtypes(tmp_path):
  arr = np.arange(12, dtype=">i4").reshape(3, 4)
  (tmp_path / "a.idx").write_bytes(idx_bytes(arr, 0x0C))
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "a.idx")), arr)


def test_missing_dataset_message(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist") as e:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "`bn data prepare fashion_mnist`: it downloads" in msg and "not TensorFlow" in msg
  assert "(--config.data.data_dir in bn train, --data-dir in bn data, data_dir= in Python)" in msg  # real flags only
  assert str(tmp_path / "xdg_cache" / "bn" / "datasets" / "fashion_mnist") in msg  # where prepare puts it
  with pytest.raises(data.DataError, match="passed as --config.data.data_dir, or in .BN_IDX_DIR"):
    data.load("mnist", data_dir=str(tmp_path), flag="--config.data.data_dir")
  with pytest.raises(data.DataError, match="bn data prepare cifar10"):
    data.load("cifar10", source="tfds", data_dir=str(tmp_path))


def test_explicit_location_that_does_not_exist_is_an_error(tmp_path, monkeypatch, capsys):
  missing = str(tmp_path / "nowhere")
  for source in ("auto", "idx", "tfds"):
    with pytest.raises(data.DataError, match=f"data directory {missing} .*does not exist"):
      data.load("fashion_mnist", source=source, data_dir=missing)
  with pytest.raises(data.DataError, match=r"given as --config.data.data_dir\)"):
    data.load("fashion_mnist", data_dir=missing, flag="--config.data.data_dir")
  assert cli.main(["data", "info", "fashion_mnist", "--data-dir", missing]) == 2
  assert f"data directory {missing} (given as --data-dir) does not exist" in capsys.readouterr().err
  assert cli.main(["data", "list", "--data-dir", missing]) == 2
  monkeypatch.setenv("BN_IDX_DIR", missing)
  with pytest.raises(data.DataError, match=f"BN_IDX_DIR={missing} does not exist"):
    data.load("fashion_mnist")
  data.load("synthetic", synthetic_sizes=(20, 10))  # nothing to read: no check
  data.load("cifar10", source="synthetic", synthetic_sizes=(20, 10), data_dir=missing)


def test_user_cache_dir_is_searched(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  cache = tmp_path / "xdg_cache" / "bn" / "datasets" / "mnist"
  write_idx_set(cache, gz=True)
  assert data.idx_download_dir("mnist") == str(cache)
  assert data.load("mnist").location == str(cache)
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.user_cache_dir() == str(tmp_path / "home" / ".cache" / "bn" / "datasets")
  # order: data_dir, $BN_IDX_DIR (each NAME/ first), the user cache, the Debian package
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"mnist": "/usr/share/x"})
  monkeypatch.setenv("BN_IDX_DIR", "/env")
  assert data.idx_dirs("mnist", "/d") == ["/d/mnist", "/d", "/env/mnist", "/env",
                                         str(tmp_path / "home" / ".cache" / "bn" / "datasets" / "mnist"), "/usr/share/x"]
  assert data.idx_download_dir("mnist", "/d") == "/d/mnist" and data.idx_download_dir("mnist") == "/env/mnist"


def test_dataset_files_record_what_was_read(tmp_path):
  write_idx_set(tmp_path, gz=True)
  ds = data.load("mnist", data_dir=str(tmp_path), val_size=5)
  names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
           "t10k-labels-idx1-ubyte.gz"]
  assert [os.path.basename(f.path) for f in ds.files] == names  # val split kept them
  for f in ds.files:
    raw = open(f.path, "rb").read()
    assert os.path.isabs(f.path) and f.size == len(raw) and f.sha256 == hashlib.sha256(raw).hexdigest()
    assert f._asdict() == {"path": f.path, "size": f.size, "sha256": f.sha256}  # JSON-ready
  assert data.file_record(ds.files[0].path) == ds.files[0]  # streamed == from memory
  assert data.load("synthetic", synthetic_sizes=(20, 10)).files == ()


# ----------------------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
  ds = data.load("fashion_mnist")
  assert (ds.source, ds.location) == ("idx", FMNIST)
  assert ds.train.x.shape == (60000, 28, 28, 1) and ds.test.x.shape == (10000, 28, 28, 1)
  assert ds.train.x.dtype == np.uint8 and ds.num_classes == 10
  np.testing.assert_array_equal(data.class_counts(ds.train, 10), np.full(10, 6000))
  np.testing.assert_array_equal(data.class_counts(ds.test, 10), np.full(10, 1000))
  stats = data.channel_stats(ds.train.x)
  rows = ds.train.x.reshape(60, -1).astype(np.float64) / 255  # float64 sums in 60 chunks
  s1, s2 = sum(r.sum() for r in rows), sum(r @ r for r in rows)
  mean = s1 / ds.train.x.size
  np.testing.assert_allclose(stats.mean, [mean], rtol=1e-6)
  np.testing.assert_allclose(stats.std, [np.sqrt(s2 / ds.train.x.size - mean**2)], rtol=1e-6)


# ----------------------------------------------------------------------------- TFDS


def test_tfds_mock_data_source():
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load("mnist", source="tfds")
    source = tfds.data_source("mnist", split="train")
    ref = [source[i] for i in range(len(source))]  # record-by-record reference
    cifar = data.load("cifar100", source="tfds")
  assert (ds.source, ds.num_classes, ds.shape) == ("tfds", 10, (28, 28, 1))
  assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int32
  np.testing.assert_array_equal(ds.train.x, np.stack([r["image"] for r in ref]))
  np.testing.assert_array_equal(ds.train.y, [r["label"] for r in ref])
  assert (cifar.num_classes, cifar.shape, len(cifar.test.y)) == (100, (32, 32, 3), 12)


def test_read_source_batched_and_list():
  records = [{"image": np.full((2, 3, 1), i, np.uint8), "label": i % 3} for i in range(10)]

  class Batched(list):
    def __getitems__(self, keys):
      return [self[k] for k in keys]

  for src in (records, Batched(records)):
    split = data.read_source(src, chunk=4)
    np.testing.assert_array_equal(split.x[:, 0, 0, 0], np.arange(10))
    np.testing.assert_array_equal(split.y, np.arange(10) % 3)


def test_tfds_cache_is_atomic_and_reused(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  with tfds.testing.mock_data(num_examples=8):
    first = data.load("mnist", source="tfds", cache_dir=str(cache))
    assert sorted(os.listdir(cache)) == ["mnist-3.0.1-test.npz", "mnist-3.0.1-train.npz"]  # no temp files
    monkeypatch.setattr(data, "read_source", lambda *a, **k: pytest.fail("cache not used"))
    second = data.load("mnist", source="tfds", cache_dir=str(cache))
  np.testing.assert_array_equal(first.train.x, second.train.x)


def test_find_tfds_prepared_layout(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  version = tmp_path / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text("{}")
  assert data.find_tfds("mnist", str(tmp_path)) is None  # no array_record files: not usable
  (version / "mnist-train.array_record-00000-of-00001").write_bytes(b"")
  assert data.find_tfds("mnist", str(tmp_path)) == str(version)
  assert data.resolve_source("mnist", "auto", str(tmp_path)) == "tfds"


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: the TFRecord checksum, written here independently of any reader."""
  crc = 0xFFFFFFFF
  for b in data:
    crc ^= b
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def tfrecord_bytes(records) -> bytes:
  """Records framed as TensorFlow's TFRecordWriter writes them (masked CRC-32C of the length and the data)."""
  mask = lambda c: ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF  # noqa: E731
  out = b""
  for r in records:
    n = struct.pack("<Q", len(r))
    out += n + struct.pack("<I", mask(crc32c(n))) + r + struct.pack("<I", mask(crc32c(r)))
  return out


@pytest.fixture(scope="module")
def tiny_images_builder():
  """A small image dataset built by TFDS's own builder machinery (PIL images, so no TensorFlow)."""
  import PIL.Image

  class TinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"image": PIL.Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="L"), "label": i % 3}

  return TinyImages


def test_a_tfrecord_prepared_tfds_dataset_is_read(tmp_path, tiny_images_builder):
  """tfds.load prepares TFRecord files by default. TFDS writes them only with TensorFlow installed, so the
  dataset is prepared as array_record by TFDS and its records (the same serialized tf.train.Example bytes)
  are written as TFRecord files with dataset_info.json saying so, as a TensorFlow install would have."""
  import json

  from array_record.python.array_record_module import ArrayRecordReader

  ar, tr = tmp_path / "ar", tmp_path / "tr"
  tiny_images_builder(data_dir=str(ar), file_format="array_record").download_and_prepare()
  want = data.load("tiny_images", source="tfds", data_dir=str(ar))
  src, dst = ar / "tiny_images" / "1.0.0", tr / "tiny_images" / "1.0.0"
  dst.mkdir(parents=True)
  (dst / "features.json").write_text((src / "features.json").read_text())
  info = json.loads((src / "dataset_info.json").read_text())
  (dst / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
  for split in ("train", "test"):
    (f,) = src.glob(f"tiny_images-{split}.array_record-*")
    reader = ArrayRecordReader(str(f))
    records = reader.read_all()
    reader.close()
    (dst / f.name.replace("array_record", "tfrecord")).write_bytes(tfrecord_bytes(records))
  assert data.find_tfds("tiny_images", str(tr)) == str(dst)
  got = data.load("tiny_images", source="auto", data_dir=str(tr))
  assert (got.source, got.num_classes, got.shape, got.location) == ("tfds", 3, (4, 4, 1), str(dst))
  for a, b in ((got.train, want.train), (got.test, want.test)):
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
  assert [os.path.basename(f.path) for f in got.files] == ["tiny_images-train.tfrecord-00000-of-00001",
                                                          "tiny_images-test.tfrecord-00000-of-00001"]
  f = dst / "tiny_images-test.tfrecord-00000-of-00001"
  f.write_bytes(f.read_bytes()[:-3])
  with pytest.raises(data.DataError, match="truncated TFRecord file"):
    data.load("tiny_images", source="tfds", data_dir=str(tr))


# ----------------------------------------------------------------------------- synthetic, val split


def test_synthetic_deterministic_and_learnable():
  a = data.load("synthetic", synthetic_shape=(8, 6, 2), synthetic_classes=3, synthetic_sizes=(300, 90), seed=1)
  b = data.load("synthetic", synthetic_shape=(8, 6, 2), synthetic_classes=3, synthetic_sizes=(300, 90), seed=1)
  c = data.load("synthetic", synthetic_shape=(8, 6, 2), synthetic_classes=3, synthetic_sizes=(300, 90), seed=2)
  assert a.source == "synthetic" and a.shape == (8, 6, 2) and a.train.x.dtype == np.uint8
  np.testing.assert_array_equal(a.train.x, b.train.x)
  assert not np.array_equal(a.train.x, c.train.x)
  np.testing.assert_array_equal(data.class_counts(a.train, 3), [100, 100, 100])
  ds = data.load("cifar10", source="synthetic", synthetic_sizes=(2000, 500))
  assert (ds.shape, ds.num_classes) == ((32, 32, 3), 10)
  # nearest class mean, fit on train, scores far above chance (0.1) on test
  xtr, xte = (s.x.reshape(len(s.x), -1).astype(np.float64) for s in (ds.train, ds.test))
  means = np.stack([xtr[ds.train.y == k].mean(0) for k in range(10)])
  pred = np.argmin(((xte[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert (pred == ds.test.y).mean() > 0.9


def test_val_split_disjoint_and_deterministic():
  n = 100
  base = data.Dataset("ids", "synthetic", "", n, data.Split(np.zeros((n, 1, 1, 1), np.uint8), np.arange(n)),
                      data.Split(np.zeros((1, 1, 1, 1), np.uint8), np.zeros(1, np.int32)))
  a, b, c = data.split_val(base, 30, 0), data.split_val(base, 30, 0), data.split_val(base, 30, 1)
  assert len(a.val.y) == 30 and len(a.train.y) == 70
  assert not set(a.val.y) & set(a.train.y) and set(a.val.y) | set(a.train.y) == set(range(n))
  np.testing.assert_array_equal(a.val.y, b.val.y)
  assert not np.array_equal(a.val.y, c.val.y)
  with pytest.raises(ValueError, match="val_size"):
    data.split_val(base, n, 0)
  ds = data.load("synthetic", val_size=500, synthetic_sizes=(2000, 10))
  assert (len(ds.train.y), len(ds.val.y)) == (1500, 500)


# ----------------------------------------------------------------------------- CLI


def test_cli_list(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  write_idx_set(tmp_path / "fashion_mnist", gz=True)
  assert cli.main(["data", "list", "--data-dir", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  fashion = next(l for l in lines if l.startswith("fashion_mnist"))
  assert "idx" in fashion and str(tmp_path / "fashion_mnist") in fashion
  cifar = lines.index(next(l for l in lines if l.startswith("cifar10 ")))
  assert "missing" in lines[cifar] and "bn data prepare cifar10" in lines[cifar + 1]
  assert any(l.startswith("synthetic") for l in lines)


def test_cli_info_generated(tmp_path, capsys):
  write_idx_set(tmp_path, gz=True)
  assert cli.main(["data", "info", "mnist", "--data-dir", str(tmp_path), "--val-size", "10"]) == 0
  out = capsys.readouterr().out
  assert "source idx" in out and "5x4x1" in out and "uint8" in out
  assert "train        40" in out and "val          10" in out and "test         20" in out


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_cli_info_fashion_mnist(capsys):
  assert cli.main(["data", "info", "fashion_mnist"]) == 0
  out = capsys.readouterr().out
  assert "28x28x1" in out and "uint8" in out and "10 classes" in out
  assert "train     60000  " + " ".join(["6000"] * 10) in out
  assert "test      10000  " + " ".join(["1000"] * 10) in out


def test_cli_prepare_without_tensorflow(capsys, monkeypatch):
  monkeypatch.setattr(data, "_has_tensorflow", lambda: False)
  assert cli.main(["data", "prepare", "cifar10"]) == 2
  err = capsys.readouterr().err
  assert "TensorFlow is not installed" in err and "pip install tensorflow" in err and "Traceback" not in err
  assert cli.main(["data", "prepare", "mnist", "--tfds"]) == 2  # IDX datasets need no TensorFlow without --tfds
  assert "`bn data prepare mnist` (no --tfds) downloads the IDX files" in capsys.readouterr().err


@pytest.mark.skipif(data._has_tensorflow(), reason="TensorFlow is installed here")
def test_cli_prepare_real_environment(capsys):
  assert cli.main(["data", "prepare", "cifar10"]) == 2  # a set-up problem: TensorFlow is missing
  assert "pip install tensorflow" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
  assert cli.main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 2
  assert "bn data prepare cifar10" in capsys.readouterr().err
  assert cli.main(["data", "bogus"]) == 2
  assert cli.main(["data", "--help"]) == 0
