"""The images of services/: how their Dockerfiles are made, that they build, and what
is (and is not) inside them."""

from __future__ import annotations

import json
import re

import pytest
from conftest import IMAGES, ROOT, run

PACKAGE_SERVICES = ("sender", "receiver", "compressor", "query")
#: image -> the commands it must run
COMMANDS = {
    "sender": ["nflog-zmq-send"],
    "receiver": ["nflog-pcap-recv"],
    "compressor": ["nflog-zmq-compress", "nflog-zmq-decompress"],
    "query": ["nflog-pcap-query"],
}
#: image -> the compiled modules (and so the shared libraries) it must load
NATIVE = {
    "sender": ["_nflog", "_records"],
    "receiver": ["_records", "_bpf"],
    "compressor": ["_records"],
    "query": ["_records", "_bpf"],
}
#: image -> documented user (Dockerfile USER): see the comments in each Dockerfile
USERS = {"sender": "0:0", "receiver": "10001:10001", "compressor": "10001:10001",
         "query": "10001:10001", "ids": "10002"}


def dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text()


def stages(text: str) -> list[str]:
    """The Dockerfile split at each FROM (the text before the first FROM dropped)."""
    parts = re.split(r"(?m)^(?=FROM )", text)
    return [p for p in parts if p.startswith("FROM ")]


def strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# -- the Dockerfiles (no engine needed) -------------------------------------------------

def test_build_stage_identical_in_the_four_images():
    """The wheel is built by one stage, written the same way in every Dockerfile, so the
    layer cache builds it once and the four images carry the same package."""
    builds = {s: strip_comments(stages(dockerfile(s))[0]) for s in PACKAGE_SERVICES}
    assert all(b.startswith("FROM ${BASE_IMAGE} AS build") for b in builds.values()), builds
    assert len(set(builds.values())) == 1, "build stages differ between Dockerfiles"
    build = builds["sender"]
    # compiler and -dev headers only there; pip never reaches the network
    assert "gcc" in build and "libnetfilter-log-dev" in build and "libpcap-dev" in build
    for line in re.findall(r"pip (?:wheel|install)[^\n]*", build):
        assert "--no-index" in line, line


def test_runtime_stages():
    shared = None
    for s in PACKAGE_SERVICES:
        text = dockerfile(s)
        assert re.search(r"(?m)^ARG BASE_IMAGE=debian:trixie-slim$", text), s
        parts = stages(text)
        assert len(parts) == 2, f"{s}: a build stage and a runtime stage"
        runtime = parts[1]
        assert runtime.startswith("FROM ${BASE_IMAGE}\n"), s
        assert not re.search(r"\b(gcc|-dev\b|python3-pip)", strip_comments(runtime)), s
        assert "COPY --from=build /staging/usr/local /usr/local" in runtime, s
        assert "PYTHONUNBUFFERED=1" in runtime and "HEALTHCHECK" in runtime, s
        assert re.search(r"(?m)^USER ", runtime), s
        # the Debian packages of the Python dependencies: one identical layer
        first_run = re.search(r"(?ms)^RUN apt-get update.*?rm -rf /var/lib/apt/lists/\*$",
                              runtime).group(0)
        assert shared in (None, first_run), f"{s}: the Python layer differs"
        shared = first_run
    for dep in ("python3-zmq", "python3-cffi-backend", "python3-pythonjsonlogger",
                "python3-statsd", "python3-zstandard"):
        assert dep in shared


def test_ids_dockerfiles():
    suricata = (ROOT / "services/ids/Dockerfile").read_text()
    # Suricata 7 from Debian 13's main suite; backports only on a Debian 12 base
    assert "suricata" in suricata and 'if [ "$VERSION_CODENAME" = bookworm ]' in suricata
    assert "-k none" in suricata and "ids-run" in suricata
    snort = (ROOT / "services/ids/snort/Dockerfile").read_text()
    # pinned versions, and an honest statement of what building it needs
    assert re.search(r"ARG SNORT_VERSION=3\.\d+\.\d+\.\d+", snort)
    assert re.search(r"ARG LIBDAQ_VERSION=3\.\d+\.\d+", snort)
    assert "NEEDS INTERNET ACCESS" in snort
    assert "--treat-drop-as-alert" in snort and "-k none" in snort


# -- the built images --------------------------------------------------------------------

def test_images_build(images):
    """All images build (compose build, as `make images`); their size is reported."""
    assert set(images) == set(IMAGES)
    for name, info in images.items():
        assert info["Size"] > 0, name
        # a slim Debian base: nothing near a full distribution or a dev toolchain
        assert info["Size"] < 400e6, (name, info["Size"])


@pytest.mark.parametrize("name", sorted(USERS))
def test_image_config(images, name):
    cfg = images[name]["Config"]
    assert cfg["User"] == USERS[name]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    health = (cfg.get("Healthcheck") or {}).get("Test")
    if name == "query":  # a one-shot client
        assert health == ["NONE"]
    else:
        assert health and health[0] == "CMD-SHELL", health
    if name in PACKAGE_SERVICES:
        assert env.get("PYTHONUNBUFFERED") == "1"
    if name in ("sender", "receiver", "compressor"):
        # the daemons touch this file every second; the check wants it fresh
        assert env["NFLOG_PIPE_HEALTH_FILE"] == "/run/nflog-pipe/health"
        assert '"$NFLOG_PIPE_HEALTH_FILE"' in health[1]


@pytest.mark.parametrize("name", PACKAGE_SERVICES)
def test_no_toolchain_in_runtime_images(images, name):
    """Multi-stage: compiler, headers and pip stayed in the build stage."""
    probe = ("for f in /usr/bin/gcc /usr/bin/cc /usr/include/python3.* "
             "/usr/include/libnetfilter_log /usr/include/pcap /usr/lib/python3/dist-packages/pip; "
             "do [ -e $f ] && echo $f; done; true")
    out = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", IMAGES[name],
               "-c", probe], timeout=60).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("name,command",
                         [(n, c) for n, cmds in COMMANDS.items() for c in cmds])
def test_commands_run(images, name, command):
    """Every command of the image starts (imports all it needs) and documents its env."""
    p = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", command, IMAGES[name],
             "--help"], timeout=60)
    assert p.stdout.startswith(f"usage: {command}"), p.stdout[:200]
    assert "NFLOG_PIPE_" in p.stdout


@pytest.mark.parametrize("name", PACKAGE_SERVICES)
def test_native_modules_load(images, name):
    """The shared libraries each image needs are there (libnetfilter_log for the sender,
    libpcap for the receiver and query)."""
    mods = NATIVE[name]
    code = ("import importlib, json; "
            f"print(json.dumps([importlib.import_module('nflog_pipe.' + m).__name__ "
            f"for m in {mods!r}]))")
    p = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
             IMAGES[name], "-c", code], timeout=60)
    assert json.loads(p.stdout) == [f"nflog_pipe.{m}" for m in mods]


def test_ids_image_loads_the_bundled_rules(images):
    rules = [line for line in (ROOT / "services/ids/rules/nflog-pipe.rules").read_text()
             .splitlines() if line.startswith("alert ")]
    p = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "suricata",
             IMAGES["ids"], "-T", "-v", "-k", "none", "-S", "/etc/nflog-pipe/rules/nflog-pipe.rules",
             "-l", "/tmp", "--set", "unix-command.enabled=no"], timeout=120)
    out = p.stdout + p.stderr
    m = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", out)
    assert m, out[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (len(rules), 0)
    assert not re.search(r"(?m)^(E|W|Error|Warning|Warn): ", out), out[-2000:]
    assert run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "suricata",
                IMAGES["ids"], "-V"], timeout=60).stdout.startswith("This is Suricata version 7")
