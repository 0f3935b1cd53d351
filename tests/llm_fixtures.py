"""Helpers for the generation-backend tests: a tiny model whose output depends on its prompt, local servers.

- ``build_chatty_model``: the conftest tiny model re-initialised with larger weights. Its greedy continuations
  differ from prompt to prompt (the stock tiny model repeats one token whatever it is asked), so batching, padding,
  stop strings and seeds are really exercised.
- ``ThreadedServer``: a real uvicorn server running an in-process ASGI app in a thread, on a pre-bound free port.
- ``ModelServerProcess``: ``python -m components.llm.server`` in a subprocess, waited on until it answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers import REPO_ROOT


def build_chatty_model(source: Path, output: Path, *, std: float = 0.3, seed: int = 1) -> Path:
    """Copy the model folder ``source`` to ``output`` with its matrices redrawn from N(0, std²), seeded."""
    import torch

    from components.llm.model_assets import load_model_folder

    model, tokenizer = load_model_folder(source, "float32")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def bound_socket() -> socket.socket:
    """A listening-ready TCP socket on a free localhost port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A localhost port that was free a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """``with ThreadedServer(app) as server:`` serves ``app`` at ``server.url`` until the block ends."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = bound_socket()
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the threaded test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class ModelServerProcess:
    """``python -m components.llm.server`` serving ``model_dir`` on a free port; always terminated on exit."""

    def __init__(self, model_dir: Path, log_file: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._log_file = log_file
        self._cmd = [
            sys.executable,
            "-m",
            "components.llm.server",
            "--model",
            str(model_dir),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        self._env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ModelServerProcess:
        import httpx

        with self._log_file.open("wb") as log:
            self._proc = subprocess.Popen(self._cmd, cwd=REPO_ROOT, env=self._env, stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"the model server exited ({self._proc.returncode}):\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the model server did not become ready:\n{self.log_tail()}")
                try:
                    if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise

    def log_tail(self, chars: int = 4000) -> str:
        return self._log_file.read_text(errors="replace")[-chars:] if self._log_file.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
