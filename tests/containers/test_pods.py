"""The Kubernetes manifests, run as the kubelet would run them (tests/containers/kubelet.py).

For the base and the CURVE overlay: `kubectl kustomize`, then the receiver Deployment's
pod (receiver + Suricata sharing the FIFO volume) and the sender DaemonSet's pod on a
"node" (a network namespace of its own, the sender in it with hostNetwork), each
container under docker with exactly its pod's settings. A test namespace joined to the
node by a veth pair sends datagrams that the node's NFLOG rules log (IPv4 group 0,
IPv6 group 1, as the sender's ConfigMap says); Suricata in the receiver pod must alert
on each address family, and every liveness probe must pass while the chain works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIGURES, IMAGES, PREFIX, ROOT, TAG
from kubelet import Node, Pod, docker

K8S = ROOT / "deploy/kubernetes"
MARKER = b"NFLOG-PIPE-SELFTEST"
SID = 9000001
PAUSE = f"{PREFIX}/test-trafficgen:{TAG}"
NODE4, PEER4 = "10.79.0.1", "10.79.0.2"
NODE6, PEER6 = "fd00:79::1", "fd00:79::2"
KEYGEN = Path(sys.executable).parent / "nflog-pipe-keygen"


def render(overlay: str, tmp: Path) -> dict[str, dict]:
    """`kubectl kustomize` of the overlay with the images this run built: a kustomization
    of its own on top, as an operator's `kustomize edit set image` (docs/deployment.md);
    the manifests say :dev, NFLOG_PIPE_TEST_TAG builds another tag."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the manifests"
    d = tmp / "kustomize"
    d.mkdir()
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes no absolute path here
        "resources": [os.path.relpath(K8S / overlay, d)],
        "images": [{"name": f"{PREFIX}/{n}", "newTag": TAG} for n in ("sender", "receiver", "ids")],
    }))
    p = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(p.stdout) if o}


def curve_secret(tmp: Path) -> dict[str, bytes]:
    """The Secret the CURVE overlay's comment tells operators to create."""
    for name in ("sender", "receiver"):
        subprocess.run([str(KEYGEN), name, "-d", str(tmp)], check=True, capture_output=True)
    return {f: (tmp / f).read_bytes() for f in
            ("sender.key", "sender.key_secret", "receiver.key", "receiver.key_secret")}


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60, **kw)


def send_markers(peer: str, count: int) -> None:
    code = ("import socket,sys\n"
            f"for fam, dst in ((socket.AF_INET, {NODE4!r}), (socket.AF_INET6, {NODE6!r})):\n"
            "    s = socket.socket(fam, socket.SOCK_DGRAM)\n"
            f"    for i in range({count}):\n"
            f"        s.sendto({MARKER!r} + b' %d' % i, (dst, 7))\n")
    sh("ip", "netns", "exec", peer, sys.executable, "-c", code)


def alerts(pod: Pod) -> list[dict]:
    eve = pod.volume("alerts") / "eve.json"
    if not eve.exists():
        return []
    out = []
    for line in eve.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event_type") == "alert":
            out.append(e)
    return out


@pytest.mark.parametrize("overlay", ["base", "overlays/curve"])
def test_manifests_run_as_the_kubelet_would(images, tmp_path, overlay):
    objs = render(overlay, tmp_path)
    for name in ("sender", "receiver", "ids"):  # the manifests name the images this run built
        assert IMAGES[name] in json.dumps(objs), f"{IMAGES[name]} not in the rendered manifests"
    docker("image", "inspect", PAUSE)
    secrets = {"nflog-pipe-curve": curve_secret(tmp_path / "keys")} if "curve" in overlay else {}
    tag = f"nzpk{os.getpid()}{'c' if secrets else 'b'}"
    network = f"{tag}-cluster"
    peer = f"{tag}-peer"
    pods: list[Pod] = []
    node = None
    t0 = time.monotonic()
    docker("network", "create", network)
    try:
        # the receiver pod first: its address is what the Service name resolves to
        recv = Pod(objs["Deployment/nflog-pipe-receiver"], objs, name=f"{tag}-recv", node=None,
                   network=network, pause_image=PAUSE, workdir=tmp_path, secrets=secrets)
        pods.append(recv)
        recv.start()
        svc = objs["Service/nflog-pipe-receiver"]
        port = svc["spec"]["ports"][0]
        (cport,) = [p["containerPort"] for c in recv.spec["containers"] for p in c.get("ports", [])
                    if p["name"] == port["targetPort"]]
        assert cport == port["port"], "no kube-proxy here: the Service port must be the pod's"
        fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        assert fqdn in objs["ConfigMap/nflog-pipe-sender"]["data"]["NFLOG_PIPE_DST"]

        # the node: its own network namespace, the Service name in its hosts file
        node = Node(f"{tag}-node", network, PAUSE, hosts={fqdn: recv.ip()})
        node.start()
        sh("ip", "netns", "add", peer)
        sh("ip", "link", "add", f"{tag}a", "netns", peer, "type", "veth", "peer", "name",
           f"{tag}b", "netns", str(node.pid))
        nsn = ["nsenter", "-t", str(node.pid), "-n"]
        for pre, dev, a4, a6 in ((["ip", "netns", "exec", peer], f"{tag}a", PEER4, PEER6),
                                 (nsn, f"{tag}b", NODE4, NODE6)):
            sh(*pre, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            sh(*pre, "ip", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            sh(*pre, "ip", "link", "set", dev, "up")
        groups = objs["ConfigMap/nflog-pipe-sender"]["data"]["NFLOG_PIPE_GROUPS"].split(",")
        sh(*nsn, "iptables", "-I", "INPUT", "-i", f"{tag}b", "-p", "udp", "--dport", "7",
           "-j", "NFLOG", "--nflog-group", groups[0])
        sh(*nsn, "ip6tables", "-I", "INPUT", "-i", f"{tag}b", "-p", "udp", "--dport", "7",
           "-j", "NFLOG", "--nflog-group", groups[1])

        sender = Pod(objs["DaemonSet/nflog-pipe-sender"], objs, name=f"{tag}-send", node=node,
                     network=network, pause_image=PAUSE, workdir=tmp_path, secrets=secrets)
        pods.append(sender)
        sender.start()

        # traffic until Suricata has alerted on both families (bounded: 60 s, 20 rounds)
        seen: set[str] = set()
        deadline = time.monotonic() + 90
        rounds = 0
        while time.monotonic() < deadline and rounds < 30 and seen != {"4", "6"}:
            for p, c in ((recv, "receiver"), (recv, "ids"), (sender, "sender")):
                assert p.running(c), f"{c} exited:\n{p.logs(c)[-3000:]}"
            send_markers(peer, 3)
            rounds += 1
            time.sleep(2)
            seen = {"6" if ":" in a["src_ip"] else "4" for a in alerts(recv)
                    if a["alert"]["signature_id"] == SID}
        assert seen == {"4", "6"}, (
            f"alerts for {seen or 'no family'} after {rounds} rounds\n--- sender\n"
            f"{sender.logs('sender')[-2000:]}\n--- receiver\n{recv.logs('receiver')[-2000:]}\n"
            f"--- ids\n{recv.logs('ids')[-2000:]}")
        a = [a for a in alerts(recv) if a["alert"]["signature_id"] == SID][0]
        FIGURES[f"k8s {overlay}: first alert"] = (
            f"[{a['alert']['signature_id']}] {a['alert']['signature']} "
            f"{a['src_ip']} -> {a['dest_ip']}:{a['dest_port']}")
        FIGURES[f"k8s {overlay}: pods up to alerts on both families (s)"] = \
            round(time.monotonic() - t0, 1)

        # every liveness probe passes while it works, as the kubelet would run it
        for p, c in ((recv, "receiver"), (recv, "ids"), (sender, "sender")):
            r = p.probe(c)
            assert r.returncode == 0, f"{c}: liveness probe failed: {r.stdout}{r.stderr}"
        if secrets:  # the keys were really used: the receiver authenticated the sender
            logs = recv.logs("receiver")
            assert '"curve": true' in logs or '"curve":true' in logs, logs[-2000:]
    finally:
        for p in reversed(pods):
            p.stop()
        if node:
            node.stop()
        sh("ip", "netns", "del", peer, check=False)
        docker("network", "rm", network, check=False)
