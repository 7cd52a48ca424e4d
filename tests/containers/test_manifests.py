"""Static checks of the deployment files: compose files against the compose
specification, Kubernetes manifests against the Kubernetes schemas (offline, strict),
yamllint, and what the files must say (capabilities, users, probes, options that
really exist). No engine or cluster needed; `kubectl kustomize` renders the overlays."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from nflog_pipe import config, query, receiver, relay, sender, shard

BIN = Path(sys.executable).parent
COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "compose.curve.yaml",
                 ROOT / "tests/containers/compose.ci.yaml"]
K8S = ROOT / "deploy/kubernetes"
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
RESOURCES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
YAML_FILES = COMPOSE_FILES + sorted(K8S.rglob("*.yaml")) + [ROOT / ".yamllint.yaml"]
#: the option environment variables each command reads
ENV = {
    "sender": {o.env for o in sender.OPTIONS},
    "receiver": {o.env for o in receiver.OPTIONS},
    "compress": {o.env for o in relay.COMPRESS_OPTIONS},
    "decompress": {o.env for o in relay.DECOMPRESS_OPTIONS},
    "query": {o.env for o in query.OPTIONS},
}
#: compose service -> the command whose options its NFLOG_PIPE_* variables are
COMPOSE_COMMAND = {"sender": "sender", "sender-relayed": "sender", "receiver": "receiver",
                   "receiver-snort": "receiver", "receiver-shards": "receiver",
                   "compress": "compress",
                   "decompress": "decompress", "query": "query"}
NET_ADMIN_ONLY = {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def tool(name: str, *args, check: bool = False) -> subprocess.CompletedProcess:
    exe = BIN / name
    assert exe.exists(), f"{exe} missing: pip install -e '.[test]'"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, check=check)


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize(directory: Path) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the overlays"
    p = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """`kubectl kustomize` of the base and every overlay, as files."""
    out = {}
    tmp = tmp_path_factory.mktemp("kustomize")
    for d in KUSTOMIZATIONS:
        name = str(d.relative_to(K8S)).replace("/", "-")
        out[name] = tmp / f"{name}.yaml"
        out[name].write_text(kustomize(d))
    return out


def objects(path: Path) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in load_all(path)}


# -- validators ---------------------------------------------------------------------------

def test_compose_files_validate_against_the_compose_spec(tmp_path):
    p = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES)
    assert p.returncode == 0, p.stdout + p.stderr
    # and the check can fail: a misspelt key is refused
    bad = tmp_path / "compose.yaml"
    bad.write_text((ROOT / "compose.yaml").read_text().replace("network_mode:", "netwrk_mode:"))
    assert tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad).returncode


def test_yamllint():
    p = tool("yamllint", "--strict", "-c", ROOT / ".yamllint.yaml", *YAML_FILES)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("version", ["1.25", "1.37"])
def test_kubernetes_manifests_validate_strict(rendered, version, tmp_path):
    """Every manifest file, and what each kustomization renders, against the Kubernetes
    schemas of the oldest and newest version kubernetes-validate carries (offline)."""
    assert RESOURCES and len(rendered) >= 2
    files = RESOURCES + list(rendered.values())
    p = tool("kubernetes-validate", "--strict", "-k", version, *files)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(" passed ") == sum(len(load_all(f)) for f in files), p.stdout
    # and the check can fail: an unknown field is refused
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "base/sender-daemonset.yaml").read_text()
                   .replace("hostNetwork:", "hostNetwrk:"))
    assert tool("kubernetes-validate", "--strict", "-k", version, bad).returncode


# -- what the Kubernetes manifests say -----------------------------------------------------

def test_sender_daemonset(rendered):
    objs = objects(rendered["base"])
    ds = objs["DaemonSet/nflog-pipe-sender"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] and spec["tolerations"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == NET_ADMIN_ONLY
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsUser"] == 0  # the documented user: root holding only NET_ADMIN
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and \
        {"cpu", "memory"} <= set(c["resources"]["limits"])
    probe = " ".join(c["livenessProbe"]["exec"]["command"])
    assert "NFLOG_PIPE_HEALTH_FILE" in probe
    config = objs["ConfigMap/nflog-pipe-sender"]["data"]
    assert config["NFLOG_PIPE_HEALTH_FILE"].startswith("/run/nflog-pipe/")
    assert {"configMapRef": {"name": "nflog-pipe-sender"}} in c["envFrom"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NFLOG_PIPE_SENDER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # the health file's directory is writable (read-only root), the keys come from a Secret
    assert "emptyDir" in volumes[mounts["/run/nflog-pipe"]]
    assert volumes[mounts["/etc/nflog-pipe/curve"]]["secret"]["secretName"] == "nflog-pipe-curve"
    # the receiver's Service is where the senders send
    svc = objs["Service/nflog-pipe-receiver"]
    assert config["NFLOG_PIPE_DST"] == \
        f"tcp://nflog-pipe-receiver.nflog-pipe.svc.cluster.local:{svc['spec']['ports'][0]['port']}"


def test_receiver_and_ids_share_the_fifo(rendered):
    objs = objects(rendered["base"])
    dep = objs["Deployment/nflog-pipe-receiver"]
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    cons = {c["name"]: c for c in spec["containers"]}
    assert set(cons) == {"receiver", "ids"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    fifo = objs["ConfigMap/nflog-pipe-receiver"]["data"]["NFLOG_PIPE_DST"]
    where = {}
    for name, c in cons.items():
        sc = c["securityContext"]
        assert sc["runAsUser"] >= 1000 and sc["capabilities"] == {"drop": ["ALL"]}, name
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert c["resources"]["requests"] and c["resources"]["limits"], name
        assert c["livenessProbe"], name
        where[name] = {m["name"] for m in c["volumeMounts"]
                       if fifo.startswith(m["mountPath"].rstrip("/") + "/")}
    (shared,) = where["receiver"] & where["ids"]
    assert "emptyDir" in volumes[shared]
    assert objs["ConfigMap/nflog-pipe-receiver"]["data"]["NFLOG_PIPE_FIFO_CREATE"] == "1"
    # the Service selects this pod and targets the receiver's port
    svc = objs["Service/nflog-pipe-receiver"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    ports = {p["name"] for p in cons["receiver"]["ports"]}
    assert {p["targetPort"] for p in svc["ports"]} <= ports


def test_curve_overlay_points_the_options_at_the_secret(rendered):
    base, curve = objects(rendered["base"]), objects(rendered["overlays-curve"])
    for cm in ("ConfigMap/nflog-pipe-sender", "ConfigMap/nflog-pipe-receiver"):
        added = set(curve[cm]["data"]) - set(base[cm]["data"])
        assert added and all(k.startswith("NFLOG_PIPE_CURVE_") for k in added), added
        assert all(curve[cm]["data"][k].startswith("/etc/nflog-pipe/curve/") for k in added)


def test_sharded_overlay(rendered):
    """Receiver + IDS as a StatefulSet with stable names behind a headless Service; the
    senders' destination list names exactly its pods, in order; the pod template is the
    base Deployment's."""
    base, sharded = objects(rendered["base"]), objects(rendered["overlays-sharded"])
    assert "Deployment/nflog-pipe-receiver" not in sharded
    sts = sharded["StatefulSet/nflog-pipe-receiver"]
    svc = sharded["Service/nflog-pipe-receiver"]
    assert sts["metadata"]["namespace"] == "nflog-pipe"
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "nflog-pipe-receiver"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    n = sts["spec"]["replicas"]
    assert n >= 2
    port = svc["spec"]["ports"][0]["port"]
    dst = sharded["ConfigMap/nflog-pipe-sender"]["data"]["NFLOG_PIPE_DST"].split()
    assert dst == [f"tcp://nflog-pipe-receiver-{i}.nflog-pipe-receiver.nflog-pipe.svc.cluster.local:"
                   f"{port}" for i in range(n)]
    # what the sender will parse: n destinations, a valid shard key
    args = config.parse_args("nflog-zmq-send", "", sender.OPTIONS, [],
                             {k: str(v) for k, v in sharded["ConfigMap/nflog-pipe-sender"]["data"]
                              .items()})
    assert len(args.dst) == n and args.shard_key in shard.KEYS
    assert sts["spec"]["template"]["spec"] == \
        base["Deployment/nflog-pipe-receiver"]["spec"]["template"]["spec"]


def test_compose_shards_profile():
    svc = compose_doc()["services"]
    recv = svc["receiver-shards"]
    assert recv["profiles"] == svc["ids-0"]["profiles"] == svc["ids-1"]["profiles"] == ["shards"]
    fifos = recv["environment"]["NFLOG_PIPE_DST"].split()
    assert len(fifos) == 2
    args = config.parse_args("nflog-pcap-recv", "", receiver.OPTIONS, [],
                             {k: str(v) for k, v in recv["environment"].items() if v is not None
                              and "$" not in str(v)})
    assert args.dst == fifos
    for i, fifo in enumerate(fifos):
        ids = svc[f"ids-{i}"]
        assert ids["environment"]["IDS_FIFO"] == fifo
        assert "pcap-shards:/pcap:ro" in ids["volumes"]
        assert f"alerts-{i}:/var/log/suricata" in ids["volumes"]
    assert "pcap-shards:/pcap" in recv["volumes"]


@pytest.mark.parametrize("name", ["base", "overlays-curve", "overlays-sharded"])
def test_configmap_keys_are_options_of_the_daemons(rendered, name):
    """A misspelt variable would be silently ignored: every key is an option's variable."""
    objs = objects(rendered[name])
    for cm, command in (("ConfigMap/nflog-pipe-sender", "sender"),
                        ("ConfigMap/nflog-pipe-receiver", "receiver")):
        unknown = set(objs[cm]["data"]) - ENV[command]
        assert not unknown, f"{cm}: not options of {command}: {sorted(unknown)}"


# -- what the compose files say ------------------------------------------------------------

def compose_doc(path: Path = ROOT / "compose.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def test_compose_services():
    svc = compose_doc()["services"]
    s = svc["sender"]
    assert s["network_mode"] == "host"
    assert s["cap_add"] == ["NET_ADMIN"] and s["cap_drop"] == ["ALL"]
    assert s["user"] == "0:0" and "privileged" not in s
    for name, c in svc.items():
        assert not c.get("privileged"), name
        if name != "sender":
            assert "cap_add" not in c and c["cap_drop"] == ["ALL"], name
    # the receiver writes the FIFO into a named volume the IDS reads
    assert "pcap:/pcap" in svc["receiver"]["volumes"]
    assert "pcap:/pcap:ro" in svc["ids"]["volumes"]
    assert "alerts:/var/log/suricata" in svc["ids"]["volumes"]
    assert svc["receiver"]["environment"]["NFLOG_PIPE_FIFO_CREATE"] == "1"
    assert svc["receiver"]["environment"]["NFLOG_PIPE_DST"].startswith("/pcap/")
    # default services, and the profiles
    assert {n for n, c in svc.items() if "profiles" not in c} == {"sender", "receiver", "ids"}
    assert svc["compress"]["profiles"] == svc["decompress"]["profiles"] == ["relays"]
    assert svc["query"]["profiles"] == ["tools"]
    assert svc["snort"]["profiles"] == svc["receiver-snort"]["profiles"] == ["snort"]
    # one reader per FIFO: Snort has its own receiver and its own FIFO
    assert svc["receiver-snort"]["environment"]["NFLOG_PIPE_DST"] != \
        svc["receiver"]["environment"]["NFLOG_PIPE_DST"]
    assert "pcap-snort:/pcap:ro" in svc["snort"]["volumes"]


def test_compose_builds_exist():
    for path in COMPOSE_FILES:
        for name, c in compose_doc(path).get("services", {}).items():
            if "build" in c:
                ctx = ROOT / c["build"]["context"]
                dockerfile = ctx / c["build"].get("dockerfile", "Dockerfile")
                assert dockerfile.is_file(), name
                if "target" in c["build"]:
                    target = re.escape(c["build"]["target"])
                    assert re.search(rf"(?m)^FROM \S+ AS {target}$", dockerfile.read_text()), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_variables_are_options_of_the_daemons(path):
    for name, c in compose_doc(path).get("services", {}).items():
        env = {k for k in (c.get("environment") or {}) if k.startswith("NFLOG_PIPE_")}
        if name == "sender-relayed" or name in COMPOSE_COMMAND:
            unknown = env - ENV[COMPOSE_COMMAND[name]]
            assert not unknown, f"{path.name}: {name}: not options: {sorted(unknown)}"
        else:
            assert not env, name
