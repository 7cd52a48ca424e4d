"""The images of services/: how services/Dockerfile makes them, that they build, and what
is (and is not) inside them."""

from __future__ import annotations

import json
import re

import pytest
import yaml
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
#: image -> documented user (Dockerfile USER): see the comments of each target
USERS = {"sender": "0:0", "receiver": "10001:10001", "compressor": "10001:10001",
         "query": "10001:10001", "ids": "10002"}


#: the one Dockerfile of the four package images: a target per image
DOCKERFILE = ROOT / "services" / "Dockerfile"
#: its stages, in order: the build stage, the shared runtime bases, a target per image
STAGES = ("build", "runtime", "runtime-nflog", *PACKAGE_SERVICES)
#: image -> the runtime base stage its target starts from
RUNTIME_BASE = {"sender": "runtime", "receiver": "runtime-nflog",
                "compressor": "runtime-nflog", "query": "runtime-nflog"}
TOOLCHAIN = re.compile(r"\b(gcc|-dev\b|python3-pip)")


def strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def stages(text: str) -> dict[str, tuple[str, str]]:
    """The Dockerfile's stages: name -> (what it starts FROM, its text without comments),
    in file order (the text before the first FROM dropped)."""
    out = {}
    for part in re.split(r"(?m)^(?=FROM )", strip_comments(text)):
        m = re.match(r"FROM (\S+) AS (\S+)\n", part)
        if part.startswith("FROM "):
            assert m, f"every stage is named: {part.splitlines()[0]}"
            assert m.group(2) not in out, f"stage {m.group(2)} twice"
            out[m.group(2)] = (m.group(1), part)
    return out


def lineage(all_stages: dict[str, tuple[str, str]], name: str) -> list[str]:
    """The stage and the stages it starts from, up to the base image."""
    chain = [name]
    while all_stages[chain[-1]][0] in all_stages:
        chain.append(all_stages[chain[-1]][0])
    return chain


# -- the Dockerfile (no engine needed) ---------------------------------------------------

def test_one_dockerfile_for_the_four_images():
    """One definition: a single build stage compiles the wheel, a single runtime stage
    installs the Python layer, and each image is a target of the same file -- nothing
    is copied between Dockerfiles any more (issue 16, item 6)."""
    for s in PACKAGE_SERVICES:
        assert not (ROOT / "services" / s / "Dockerfile").exists(), s
    text = DOCKERFILE.read_text()
    assert re.search(r"(?m)^ARG BASE_IMAGE=debian:trixie-slim$", text)
    all_stages = stages(text)
    assert tuple(all_stages) == STAGES
    # only the build stage and the runtime base start from the base image
    assert {n for n, (base, _) in all_stages.items() if base == "${BASE_IMAGE}"} == \
        {"build", "runtime"}
    assert all_stages["runtime-nflog"][0] == "runtime"
    for s in PACKAGE_SERVICES:
        assert all_stages[s][0] == RUNTIME_BASE[s], s
        assert lineage(all_stages, s)[-1] == "runtime", s
        # the package comes from the one build stage, and from nothing else
        assert re.findall(r"(?m)^COPY --from=.*$", all_stages[s][1]) == \
            ["COPY --from=build /staging/usr/local /usr/local"], s
        # the operators' command: docker build -f services/Dockerfile --target <image> .
        assert re.search(rf"docker build -f services/Dockerfile --target {s} +-t nflog-pipe/{s} \.",
                         text), s
    # no other stage copies from anywhere
    assert len(re.findall(r"(?m)^COPY --from=", strip_comments(text))) == len(PACKAGE_SERVICES)
    # compiler and -dev headers only in the build stage; pip never reaches the network
    build = all_stages["build"][1]
    assert "gcc" in build and "libnetfilter-log-dev" in build and "libpcap-dev" in build
    for line in re.findall(r"pip (?:wheel|install)[^\n]*", build):
        assert "--no-index" in line, line


def test_compose_builds_each_image_from_its_target():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    built = {}
    for name, c in doc["services"].items():
        if "build" not in c:
            continue
        image = c["image"].rsplit("/", 1)[1].split(":")[0]
        if image in PACKAGE_SERVICES:
            assert image not in built, f"{image} built again by {name}"
            built[image] = c["build"]
    assert set(built) == set(PACKAGE_SERVICES)
    for image, build in built.items():
        assert build == {"context": ".", "dockerfile": "services/Dockerfile",
                         "target": image}, image


def test_runtime_stages():
    all_stages = stages(DOCKERFILE.read_text())
    # the Debian packages of the Python dependencies: one layer, in the runtime stage only
    python_layers = {n: re.findall(r"(?ms)^RUN apt-get update.*?rm -rf /var/lib/apt/lists/\*$",
                                   t) for n, (_, t) in all_stages.items()}
    shared = python_layers["runtime"]
    assert len(shared) == 1
    for dep in ("python3-zmq", "python3-cffi-backend", "python3-pythonjsonlogger",
                "python3-statsd", "python3-zstandard"):
        assert dep in shared[0]
    for s in PACKAGE_SERVICES:
        assert shared[0] not in python_layers[s], f"{s}: a Python layer of its own"
        for stage in lineage(all_stages, s):
            assert not TOOLCHAIN.search(all_stages[stage][1]), (s, stage)
        runtime = all_stages[s][1]
        assert "PYTHONUNBUFFERED=1" in runtime and "HEALTHCHECK" in runtime, s
        assert re.search(r"(?m)^USER ", runtime), s


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


def test_images_carry_one_package(images):
    """Every image holds the package of the one build stage: /usr/local is the same,
    file by file, in all four. Left out: the byte-compiled caches and the wheel's archive
    hash (direct_url.json, and RECORD, which lists that file's hash), which embed the
    time of a build -- compose builds the four targets side by side, and a cold build
    may compile the same wheel more than once."""
    probe = ("cd /usr/local && find . -type f ! -path '*/__pycache__/*' "
             "! -name direct_url.json ! -name RECORD -exec sha256sum {} + | sort -k 2")
    listing = {}
    for name in PACKAGE_SERVICES:
        listing[name] = run(["docker", "run", "--rm", "--network", "none", "--entrypoint",
                             "sh", IMAGES[name], "-c", probe], timeout=60).stdout
        # the compiled modules and every command of every image are there
        for mod in {m for mods in NATIVE.values() for m in mods}:
            assert f"/dist-packages/nflog_pipe/{mod}." in listing[name], (name, mod)
        for command in [c for cmds in COMMANDS.values() for c in cmds]:
            assert f" ./bin/{command}\n" in listing[name], (name, command)
        files = {line.split("  ", 1)[1] for line in listing[name].splitlines()}
        assert not [f for f in files if not f.startswith(("./bin/", "./lib/python3"))], name
    assert len(set(listing.values())) == 1, "the images carry different packages"


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
