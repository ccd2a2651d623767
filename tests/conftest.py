"""Shared fixtures: offline mode, a guard that fails any test reaching beyond loopback, tiny pipelines."""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["DO_NOT_TRACK"] = "1"

import pytest  # noqa: E402

from fixtures.tiny import TINY_PIPELINES  # noqa: E402

NETWORK_ATTEMPTS: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded(real):
    def connect(self, address):
        if not _is_local(address):
            NETWORK_ATTEMPTS.append(repr(address))
            raise ConnectionRefusedError(f"network access blocked in tests: {address!r}")
        return real(self, address)

    return connect


socket.socket.connect = _guarded(_real_connect)
socket.socket.connect_ex = _guarded(_real_connect_ex)


@pytest.fixture(autouse=True)
def no_network():
    """Fail the test if it tried to reach anything but loopback (the attempt itself is refused)."""
    before = len(NETWORK_ATTEMPTS)
    yield
    attempts = NETWORK_ATTEMPTS[before:]
    del NETWORK_ATTEMPTS[before:]
    assert not attempts, f"test tried to reach the network: {attempts}"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """Tiny pipelines saved once per session with save_pretrained: `tiny_folder(name)` -> folder."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, str] = {}

    def folder(name: str) -> str:
        if name not in cache:
            TINY_PIPELINES[name]().save_pretrained(root / name, safe_serialization=True)
            cache[name] = str(root / name)
        return cache[name]

    return folder


@pytest.fixture(scope="module")
def loaded(tiny_folder):
    """`loaded(name)`: the tiny pipeline `name` loaded with HeadHunterPipeline.from_pretrained, once per module."""
    from pipelines import HeadHunterPipeline

    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = HeadHunterPipeline.from_pretrained(tiny_folder(name))
            cache[name].set_progress_bar_config(disable=True)
        return cache[name]

    return load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_demo(folder: str):
    """The demo on the model in `folder`, launched on a free localhost port: (url, Demo, Blocks to close)."""
    import app as demo_app
    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    demo = demo_app.Demo(pipe, folder, demo_app.Limits(max_steps=4, max_size=64, queue_size=4))
    app = demo_app.build_app(demo)
    app.queue(max_size=4, default_concurrency_limit=1)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", demo, app


@pytest.fixture(scope="module")
def server(tiny_folder):
    """The demo on a tiny SD3 model (`launch_demo`): (url, Demo)."""
    url, demo, app = launch_demo(tiny_folder("sd3"))
    yield url, demo
    app.close()


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client connected to `server`."""
    from gradio_client import Client

    return Client(server[0], verbose=False)
