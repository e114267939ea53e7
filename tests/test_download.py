"""``bn data prepare mnist|fashion_mnist``: the IDX download over HTTP, against a local server.

The server (``http.server`` on 127.0.0.1, in a thread) serves small IDX files made here; the
expected sizes and checksums are theirs. No test reaches the internet: the built-in mirrors
are replaced by a closed local port. The recorded checksums of the real files are checked
offline against the Debian package's copies.
"""

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import subprocess
import threading

import numpy as np
import pytest

from bn import cli, data
from bn.errors import RunError

FMNIST = "/usr/share/datasets/fashion-mnist"


def idx_gz(arr: np.ndarray) -> bytes:
  raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
  return gzip.compress(raw, mtime=0)


def make_files(seed=0, n_train=40, n_test=10):
  rng = np.random.default_rng(seed)
  arrays = {"train": (rng.integers(0, 256, (n_train, 6, 5), np.uint8), rng.integers(0, 10, n_train, np.uint8)),
            "t10k": (rng.integers(0, 256, (n_test, 6, 5), np.uint8), rng.integers(0, 10, n_test, np.uint8))}
  files = {}
  for prefix, (x, y) in arrays.items():
    files[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(x)
    files[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(y)
  return arrays, files


class Server:
  """A local HTTP server of ``files`` (name -> bytes) under ``/good/``, and whatever tests put in ``/bad/``."""

  def __init__(self):
    self.routes, self.requests, self.send_length = {}, [], True
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        outer.requests.append(self.path)
        body = outer.routes.get(self.path)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        if outer.send_length:  # else HTTP/1.0: the body ends when the connection closes
          self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.close()


@pytest.fixture
def served(server, monkeypatch, tmp_path):
  """mnist served under /good/ with its expected sizes and checksums; a clean environment."""
  arrays, files = make_files()
  for name, body in files.items():
    server.routes[f"/good/{name}"] = body
  monkeypatch.setitem(data.IDX_FILES, "mnist", {n: (len(b), hashlib.sha256(b).hexdigest()) for n, b in files.items()})
  return arrays, files


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
  monkeypatch.delenv("BN_IDX_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_empty"))
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {})
  monkeypatch.setattr(data, "IDX_MIRRORS", {k: (closed_port_url(),) for k in data.IDX_MIRRORS})


def closed_port_url() -> str:
  with socket.socket() as s:  # a port nobody listens on (bound, then released)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"


def listing(directory):
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# ----------------------------------------------------------------------------- downloads


def test_prepare_downloads_into_the_user_cache_and_bn_finds_it(server, served, tmp_path, capsys):
  arrays, files = served
  assert cli.main(["data", "prepare", "mnist", "--mirror", server.url + "/good/"]) == 0
  out = tmp_path / "cache" / "bn" / "datasets" / "mnist"
  assert listing(out) == sorted(files)  # the four files, no temp files
  for name, body in files.items():
    assert (out / name).read_bytes() == body
    assert (out / name).stat().st_mode & 0o777 == 0o666 & ~data_umask()  # not mkstemp's 0600
  assert f"the four IDX files are in {out}" in capsys.readouterr().out
  ds = data.load("mnist")  # found without any flag
  assert (ds.source, ds.location) == ("idx", str(out))
  np.testing.assert_array_equal(ds.train.x[..., 0], arrays["train"][0])
  np.testing.assert_array_equal(ds.test.y, arrays["t10k"][1])
  assert {os.path.basename(f.path): f.sha256 for f in ds.files} == {n: data.IDX_FILES["mnist"][n][1] for n in files}
  # A second prepare checks the files and downloads nothing.
  before = len(server.requests)
  assert cli.main(["data", "prepare", "mnist", "--mirror", server.url + "/good/"]) == 0
  assert len(server.requests) == before and "already in" in capsys.readouterr().err


def data_umask():
  from bn import artifacts

  return artifacts.current_umask()


def test_prepare_places_files_where_bn_looks(server, served, tmp_path, monkeypatch, capsys):
  d = tmp_path / "mine"
  assert cli.main(["data", "prepare", "mnist", "--data-dir", str(d), "--mirror", server.url + "/good"]) == 0
  assert listing(d / "mnist") == sorted(served[1])
  assert f"--config.data.data_dir={d} (bn train)" in capsys.readouterr().out
  assert cli.main(["data", "info", "mnist", "--data-dir", str(d)]) == 0
  assert f"source idx, {d / 'mnist'}" in capsys.readouterr().out
  monkeypatch.setenv("BN_IDX_DIR", str(tmp_path / "env"))  # created by prepare
  assert data.download_idx("mnist", mirrors=[server.url + "/good/"]) == str(tmp_path / "env" / "mnist")
  assert data.load("mnist").location == str(tmp_path / "env" / "mnist")


def test_corrupted_file_is_refused_by_checksum(server, served, tmp_path, capsys):
  _, files = served
  for name, body in files.items():
    server.routes[f"/bad/{name}"] = body
  bad = "train-labels-idx1-ubyte.gz"
  body = bytearray(files[bad])
  body[len(body) // 2] ^= 0xFF  # same size, one byte flipped
  server.routes[f"/bad/{bad}"] = bytes(body)
  assert cli.main(["data", "prepare", "mnist", "--mirror", server.url + "/bad/"]) == 1  # a failed download
  err = capsys.readouterr().err
  assert f"cannot download mnist's {bad}; nothing was saved for it" in err and "refused, SHA-256" in err
  assert data.IDX_FILES["mnist"][bad][1] in err and "Traceback" not in err
  out = tmp_path / "cache" / "bn" / "datasets" / "mnist"
  assert listing(out) == ["train-images-idx3-ubyte.gz"]  # the good file before it; no partial file
  # A good mirror after a bad one: the bad copy is refused, the good one kept.
  assert cli.main(["data", "prepare", "mnist", "--mirror", server.url + "/bad/", "--mirror", server.url + "/good/"]) == 0
  assert listing(out) == sorted(files)
  assert (out / bad).read_bytes() == files[bad]


def test_truncated_oversized_and_missing_files_are_refused(server, served, tmp_path):
  _, files = served
  name = "train-images-idx3-ubyte.gz"
  for label, body in (("short", files[name][:-10]), ("long", files[name] + b"\0" * 10)):
    server.routes[f"/{label}/{name}"] = body
    with pytest.raises(RunError, match=f"announces {len(body)} bytes, expected {len(files[name])}"):
      data.download_idx("mnist", str(tmp_path / "d"), mirrors=[f"{server.url}/{label}/"])
  with pytest.raises(RunError, match="Not Found"):
    data.download_idx("mnist", str(tmp_path / "d"), mirrors=[server.url + "/nothing/"])
  assert not (tmp_path / "d").exists()  # made for the download, removed when nothing came


def test_wrong_length_without_content_length_is_refused(server, served, tmp_path):
  _, files = served
  server.send_length = False
  name = "train-images-idx3-ubyte.gz"
  size = len(files[name])
  for label, body, message in (("short", files[name][:-10], f"{size - 10} bytes, expected {size}"),
                               ("long", files[name] + b"\0" * (2 << 20), f"more than the expected {size} bytes")):
    server.routes[f"/{label}/{name}"] = body
    with pytest.raises(RunError, match=message):
      data.download_idx("mnist", str(tmp_path / "d"), mirrors=[f"{server.url}/{label}/"])
    assert not (tmp_path / "d").exists()


def test_file_mirror(tmp_path, served):
  """A mirror may be a local directory (file:// URL), e.g. files copied from a connected machine."""
  _, files = served
  src = tmp_path / "src"
  src.mkdir()
  for name, body in files.items():
    (src / name).write_bytes(body)
  (src / "t10k-labels-idx1-ubyte.gz").write_bytes(files["t10k-labels-idx1-ubyte.gz"][:-1])
  with pytest.raises(RunError, match="t10k-labels-idx1-ubyte.gz.*refused"):
    data.download_idx("mnist", str(tmp_path / "d"), mirrors=[src.as_uri()])
  assert listing(tmp_path / "d") == sorted(set(files) - {"t10k-labels-idx1-ubyte.gz"})
  (src / "t10k-labels-idx1-ubyte.gz").write_bytes(files["t10k-labels-idx1-ubyte.gz"])
  assert data.download_idx("mnist", str(tmp_path / "d"), mirrors=[src.as_uri()]) == str(tmp_path / "d")
  assert listing(tmp_path / "d") == sorted(files)


def test_unreachable_server_is_a_run_error(tmp_path, capsys):
  url = closed_port_url()
  assert cli.main(["data", "prepare", "fashion_mnist", "--mirror", url]) == 1
  err = capsys.readouterr().err
  assert "cannot download fashion_mnist's train-images-idx3-ubyte.gz" in err and url in err
  assert "Connection refused" in err and "needs network access" in err and "apt-get install dataset-fashion-mnist" in err
  assert not (tmp_path / "cache" / "bn" / "datasets" / "fashion_mnist").exists()
  assert cli.main(["data", "prepare", "mnist"]) == 1  # the (replaced) built-in mirrors: same error, no internet


def test_no_download_for_other_datasets():
  with pytest.raises(data.DataError, match="goes through TFDS"):
    data.download_idx("cifar10")


# ----------------------------------------------------------------------------- the recorded checksums


def upstream_fashion_mnist() -> dict[str, bytes]:
  """The published Fashion-MNIST files, rebuilt offline from the Debian package's copies: those are
  the published files with the gzip header's file name dropped and its time stamp changed."""
  if not all(os.path.exists(os.path.join(FMNIST, n)) for n in data.IDX_NAMES):
    pytest.skip("apt-get install dataset-fashion-mnist")
  mtimes = {"train": 1504176606, "t10k": 1504176627}  # 2017-08-31, as published
  files = {}
  for name in data.IDX_NAMES:
    raw = open(os.path.join(FMNIST, name), "rb").read()
    assert raw[3] == 0  # FLG: no file name
    files[name] = (raw[:3] + b"\x08" + struct.pack("<I", mtimes[name[:name.index("-")]]) + raw[8:10]
                   + name[:-3].encode() + b"\0" + raw[10:])
  return files


def test_recorded_checksums_are_those_of_the_real_files():
  """Putting the file name and time stamp back must give exactly the recorded sizes and SHA-256s
  (which are also TFDS's, and match the MD5s in Fashion-MNIST's README)."""
  for name, body in upstream_fashion_mnist().items():
    assert (len(body), hashlib.sha256(body).hexdigest()) == data.IDX_FILES["fashion_mnist"][name], name
  assert set(data.IDX_FILES["mnist"]) == set(data.IDX_NAMES) and all(len(s) == 64 for _, s in data.IDX_FILES["mnist"].values())


def test_real_fashion_mnist_round_trip(server, tmp_path, capsys):
  """The real files through the real checks: served locally, downloaded, found and read by bn."""
  for name, body in upstream_fashion_mnist().items():
    server.routes[f"/fm/{name}"] = body
  assert cli.main(["data", "prepare", "fashion_mnist", "--mirror", server.url + "/fm/"]) == 0
  ds = data.load("fashion_mnist")
  assert ds.location == str(tmp_path / "cache" / "bn" / "datasets" / "fashion_mnist")
  assert (len(ds.train.y), len(ds.test.y)) == (60000, 10000)
  np.testing.assert_array_equal(data.class_counts(ds.train, 10), np.full(10, 6000))
  assert [(f.size, f.sha256) for f in ds.files] == [data.IDX_FILES["fashion_mnist"][n] for n in data.IDX_NAMES]


# ----------------------------------------------------------------------------- what a failure is blamed on


def test_a_mirror_of_other_files_is_not_blamed_on_the_network(tmp_path, served, monkeypatch):
  """--mirror file:///usr/share/datasets/fashion-mnist: the Debian copies (another gzip header) are refused as
  not the published files, and the message says bn reads them where they are; nothing about the network."""
  _, files = served
  src = tmp_path / "debian"
  src.mkdir()
  for name, body in files.items():
    (src / name).write_bytes(body[:4] + struct.pack("<I", 1591315200) + body[8:])  # another gzip time stamp: another SHA-256
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"mnist": str(src)})
  with pytest.raises(RunError) as e:
    data.download_idx("mnist", str(tmp_path / "d"), mirrors=[src.as_uri()])
  msg = str(e.value)
  assert "refused, SHA-256" in msg and "not the published one" in msg and f"copies ({src}) differ from them in the gzip header" in msg
  assert "network" not in msg
  with pytest.raises(RunError) as e:  # a directory without the files
    data.download_idx("mnist", str(tmp_path / "d"), mirrors=[(tmp_path / "empty").as_uri()])
  assert "A file:// mirror is a directory that must hold the four files" in str(e.value) and "network" not in str(e.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_an_unverifiable_https_certificate_is_named(tmp_path, served, server):
  """A Python without CA certificates (or a proxy's certificate) fails HTTPS verification: the message says
  so and how to fix it, instead of blaming the network. Here: a real TLS server with a self-signed certificate."""
  import ssl

  subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                  "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
  server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
  with pytest.raises(RunError) as e:
    data.download_idx("mnist", str(tmp_path / "d"), mirrors=[server.url.replace("http:", "https:") + "/good/"])
  msg = str(e.value)
  assert "CERTIFICATE_VERIFY_FAILED" in msg and "The HTTPS certificate could not be verified" in msg
  assert "SSL_CERT_FILE" in msg and "network access" not in msg
