"""Container tests: the images of services/, compose.yaml end to end, the manifests.

The image and compose tests need root and a Docker engine; they start one with
tools/docker/ensure-engine.sh and make the base image with
tools/docker/ensure-base-image.sh (a local debootstrap when no registry answers).
Without root or when the engine cannot be started they fail, they never skip.

Images are built once per session with `docker compose build` (the same command as
`make images`) under the tag NFLOG_PIPE_TAG (dev; NFLOG_PIPE_TEST_TAG sets another, so that
two checkouts can run these tests side by side), from the working tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TAG = os.environ.get("NFLOG_PIPE_TEST_TAG", "dev")
PREFIX = "nflog-pipe"
#: compose service -> image (the four package images, the IDS, the test's traffic generator)
IMAGES = {
    "sender": f"{PREFIX}/sender:{TAG}",
    "receiver": f"{PREFIX}/receiver:{TAG}",
    "compressor": f"{PREFIX}/compressor:{TAG}",
    "query": f"{PREFIX}/query:{TAG}",
    "ids": f"{PREFIX}/ids:{TAG}",
}
COMPOSE_FILES = ["-f", str(ROOT / "compose.yaml"), "-f", str(HERE / "compose.ci.yaml")]
#: measured figures, printed at the end of the run (image sizes, durations, the alert)
FIGURES: dict[str, object] = {}


def run(cmd: list[str], timeout: float, check: bool = True, env: dict | None = None,
        text: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure (or timeout) an AssertionError with its output."""
    def show(out) -> str:
        out = out or ""
        return (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=text,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(map(str, cmd))} took more than {timeout}s:\n"
                             f"{show(e.stdout)}\n{show(e.stderr)}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n"
                             f"{show(p.stdout)}\n{show(p.stderr)}")
    return p


def compose_env(**extra: str) -> dict:
    """The environment of a compose command: the caller's, less any NFLOG_PIPE_*/COMPOSE_*
    setting that would change the project (and no DOCKER_BUILDKIT: the 28.x CLI refuses
    it without buildx), plus the CI settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NFLOG_PIPE_", "COMPOSE_")) and k != "DOCKER_BUILDKIT"}
    env.update({"NFLOG_PIPE_TAG": TAG, "NFLOG_PIPE_IMAGE_PREFIX": PREFIX,
                # published ports on random loopback ports: no clash, nothing exposed
                "NFLOG_PIPE_RECV_PUBLISH": "127.0.0.1:",
                "NFLOG_PIPE_COMPRESS_PUBLISH": "127.0.0.1:",
                "NFLOG_PIPE_SNORT_RECV_PUBLISH": "127.0.0.1:"})
    env.update(extra)
    return env


def compose(*args: str, project: str | None = None, timeout: float = 120, check: bool = True,
            env: dict | None = None, profiles: tuple[str, ...] = (),
            text: bool = True) -> subprocess.CompletedProcess:
    """`docker compose` on compose.yaml + the CI override, ignoring any .env of the tree."""
    cmd = ["docker", "compose", *COMPOSE_FILES, "--env-file", str(HERE / "empty.env")]
    if project:
        cmd += ["-p", project]
    for p in profiles:
        cmd += ["--profile", p]
    return run(cmd + list(args), timeout=timeout, check=check, env=env or compose_env(),
               text=text)


def image_inspect(image: str) -> dict:
    return json.loads(run(["docker", "image", "inspect", image], timeout=60).stdout)[0]


@pytest.fixture(scope="session")
def docker_engine():
    """A running dockerd, `docker compose`, and the base image: made by the project's
    own scripts, exactly as CI does."""
    if os.geteuid() != 0:
        pytest.fail("container tests need root: they start dockerd (tools/docker/ensure-engine.sh)")
    t0 = time.monotonic()
    for script in ("ensure-engine.sh", "ensure-base-image.sh"):
        run(["bash", ROOT / "tools" / "docker" / script], timeout=1200)
    FIGURES["engine and base image ready (s)"] = round(time.monotonic() - t0, 1)


@pytest.fixture(scope="session")
def images(docker_engine) -> dict[str, dict]:
    """Every image built from the working tree (`docker compose build`, as `make images`),
    with `docker image inspect` of each."""
    t0 = time.monotonic()
    compose("build", profiles=("relays", "tools"), timeout=2400)
    FIGURES["image build (s)"] = round(time.monotonic() - t0, 1)
    out = {}
    for name, image in IMAGES.items():
        out[name] = image_inspect(image)
        FIGURES[f"image size {image} (MB)"] = round(out[name]["Size"] / 1e6, 1)
    return out


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("container figures")
        for k, v in FIGURES.items():
            terminalreporter.write_line(f"{k}: {v}")
