"""The Kubernetes manifests, run as the kubelet would run them (tests/containers/kubelet.py).

For the base and the CURVE overlay: `kubectl kustomize`, then the receiver Deployment's
pod (receiver + Suricata sharing the FIFO volume) and the sender DaemonSet's pod on a
"node" (a network namespace of its own, the sender in it with hostNetwork), each
container under docker with exactly its pod's settings. A test namespace joined to the
node by a veth pair sends datagrams that the node's NFLOG rules log (IPv4 group 0,
IPv6 group 1, as the sender's ConfigMap says); Suricata in the receiver pod must alert
on each address family, and every liveness probe must pass while the chain works.

For the sharded overlay: every pod of the receiver StatefulSet (receiver-0, receiver-1,
each with its stable name, which the node resolves as the cluster DNS would through the
headless Service), and the sender with the overlay's shard list. The peer sends several
flows from several addresses of each family, chosen so that the flow hash puts some on
every shard; each flow must raise alerts in exactly the Suricata of its shard (the
position of the pod in the sender's list is the pod's ordinal), none in another.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import FIGURES, IMAGES, PREFIX, ROOT, TAG
from kubelet import Node, Pod, cluster_dns, docker, replicas

from nflog_pipe import shard

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
    objs = {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(p.stdout) if o}
    for name in ("sender", "receiver", "ids"):  # the manifests name the images this run built
        assert IMAGES[name] in json.dumps(objs), f"{IMAGES[name]} not in the rendered manifests"
    return objs


def curve_secret(tmp: Path) -> dict[str, bytes]:
    """The Secret the CURVE overlay's comment tells operators to create."""
    for name in ("sender", "receiver"):
        subprocess.run([str(KEYGEN), name, "-d", str(tmp)], check=True, capture_output=True)
    return {f: (tmp / f).read_bytes() for f in
            ("sender.key", "sender.key_secret", "receiver.key", "receiver.key_secret")}


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60, **kw)


def alerts(pod: Pod) -> list[dict]:
    """The self-test marker's alerts in the pod's eve.json."""
    eve = pod.volume("alerts") / "eve.json"
    if not eve.exists():
        return []
    out = []
    for line in eve.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event_type") == "alert" and e["alert"]["signature_id"] == SID:
            out.append(e)
    return out


class Cluster:
    """What one test runs: a docker network (the cluster's), the pods, the node, and the
    peer namespace joined to the node by a veth pair; all removed by close()."""

    def __init__(self, tag: str, objs: dict[str, dict], tmp: Path, secrets: dict | None = None):
        self.tag, self.objs, self.tmp, self.secrets = tag, objs, tmp, secrets or {}
        self.network = f"{tag}-cluster"
        self.peer = f"{tag}-peer"
        self.pods: list[Pod] = []
        self.node: Node | None = None
        docker("image", "inspect", PAUSE)
        docker("network", "create", self.network)

    def pod(self, workload: str, name: str, **kw) -> Pod:
        p = Pod(self.objs[workload], self.objs, name=f"{self.tag}-{name}", network=self.network,
                pause_image=PAUSE, workdir=self.tmp, secrets=self.secrets, **kw)
        self.pods.append(p)
        p.start()
        return p

    def start_node(self, hosts: dict[str, list[str]], peer4: list[str], peer6: list[str]) -> None:
        """The node (its resolver answering `hosts`), the peer with these addresses, and
        the NFLOG rules of the sender's ConfigMap groups on the node's side of the link."""
        for url in self.objs["ConfigMap/nflog-pipe-sender"]["data"]["NFLOG_PIPE_DST"].split():
            host = urlsplit(url).hostname
            assert host in hosts, f"the sender's destination {host} is no name the cluster DNS has"
        self.node = Node(f"{self.tag}-node", self.network, PAUSE, hosts=hosts)
        self.node.start()
        tag, peer = self.tag, self.peer
        sh("ip", "netns", "add", peer)
        sh("ip", "link", "add", f"{tag}a", "netns", peer, "type", "veth", "peer", "name",
           f"{tag}b", "netns", str(self.node.pid))
        nsn = ["nsenter", "-t", str(self.node.pid), "-n"]
        for pre, dev, a4s, a6s in ((["ip", "netns", "exec", peer], f"{tag}a", peer4, peer6),
                                   (nsn, f"{tag}b", [NODE4], [NODE6])):
            for a4 in a4s:
                sh(*pre, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            for a6 in a6s:
                sh(*pre, "ip", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            sh(*pre, "ip", "link", "set", dev, "up")
        groups = self.objs["ConfigMap/nflog-pipe-sender"]["data"]["NFLOG_PIPE_GROUPS"].split(",")
        sh(*nsn, "iptables", "-I", "INPUT", "-i", f"{tag}b", "-p", "udp", "--dport", "7",
           "-j", "NFLOG", "--nflog-group", groups[0])
        sh(*nsn, "ip6tables", "-I", "INPUT", "-i", f"{tag}b", "-p", "udp", "--dport", "7",
           "-j", "NFLOG", "--nflog-group", groups[1])

    def send(self, flows: list[tuple[str, int]], count: int) -> None:
        """`count` marker datagrams from each (source address, source port) to the node."""
        code = ("import socket\n"
                f"for i, (src, sport) in enumerate({flows!r}):\n"
                "    v6 = ':' in src\n"
                "    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)\n"
                "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "    s.bind((src, sport))\n"
                f"    for j in range({count}):\n"
                f"        s.sendto({MARKER!r} + b' %d %d' % (i, j), "
                f"({NODE6!r} if v6 else {NODE4!r}, 7))\n"
                "    s.close()\n")
        sh("ip", "netns", "exec", self.peer, sys.executable, "-c", code)

    def check_running(self) -> None:
        for p in self.pods:
            for c in p.cids:
                assert p.running(c), f"{p.pod_name} {c} exited:\n{p.logs(c)[-3000:]}"

    def check_probes(self) -> None:
        """Every liveness probe passes while it works, as the kubelet would run it."""
        for p in self.pods:
            for c in p.cids:
                r = p.probe(c)
                assert r.returncode == 0, \
                    f"{p.pod_name} {c}: liveness probe failed: {r.stdout}{r.stderr}"

    def logs(self) -> str:
        return "".join(f"\n--- {p.pod_name} {c}\n{p.logs(c)[-2000:]}" for p in self.pods
                       for c in p.cids)

    def close(self) -> None:
        # the pods stop together, as the kubelet's would (each waits its grace period)
        with ThreadPoolExecutor() as pool:
            list(pool.map(Pod.stop, self.pods))
        if self.node:
            self.node.stop()
        sh("ip", "netns", "del", self.peer, check=False)
        docker("network", "rm", self.network, check=False)


@pytest.mark.parametrize("overlay", ["base", "overlays/curve"])
def test_manifests_run_as_the_kubelet_would(images, tmp_path, overlay):
    objs = render(overlay, tmp_path)
    secrets = {"nflog-pipe-curve": curve_secret(tmp_path / "keys")} if "curve" in overlay else {}
    t0 = time.monotonic()
    cluster = Cluster(f"nzpk{os.getpid()}{'c' if secrets else 'b'}", objs, tmp_path, secrets)
    try:
        # the receiver pod first: its address is what the Service name resolves to
        assert replicas(objs["Deployment/nflog-pipe-receiver"]) == 1
        recv = cluster.pod("Deployment/nflog-pipe-receiver", "recv", node=None)
        cluster.start_node(cluster_dns(objs, [recv]), [PEER4], [PEER6])
        cluster.pod("DaemonSet/nflog-pipe-sender", "send", node=cluster.node)

        # traffic until Suricata has alerted on both families (bounded: 90 s, 30 rounds)
        seen: set[str] = set()
        deadline = time.monotonic() + 90
        rounds = 0
        while time.monotonic() < deadline and rounds < 30 and seen != {"4", "6"}:
            cluster.check_running()
            cluster.send([(PEER4, 0), (PEER6, 0)], 3)
            rounds += 1
            time.sleep(2)
            seen = {"6" if ":" in a["src_ip"] else "4" for a in alerts(recv)}
        assert seen == {"4", "6"}, \
            f"alerts for {seen or 'no family'} after {rounds} rounds{cluster.logs()}"
        a = alerts(recv)[0]
        FIGURES[f"k8s {overlay}: first alert"] = (
            f"[{a['alert']['signature_id']}] {a['alert']['signature']} "
            f"{a['src_ip']} -> {a['dest_ip']}:{a['dest_port']}")
        FIGURES[f"k8s {overlay}: pods up to alerts on both families (s)"] = \
            round(time.monotonic() - t0, 1)

        cluster.check_probes()
        if secrets:  # the keys were really used: the receiver authenticated the sender
            logs = recv.logs("receiver")
            assert '"curve": true' in logs or '"curve":true' in logs, logs[-2000:]
    finally:
        cluster.close()


def udp_packet(src: str, sport: int, dst: str, dport: int = 7) -> bytes:
    """The datagram as the node's NFLOG rule logs it (what the sender's flow hash reads)."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(MARKER), 0) + MARKER
    if a.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                           a.packed, b.packed) + udp
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, a.packed, b.packed) + udp


def flow_of(alert: dict) -> tuple[str, int]:
    """(source address, source port) of an alert: the flow, as the peer sent it."""
    return str(ipaddress.ip_address(alert["src_ip"])), alert["src_port"]


def test_sharded_overlay_runs_as_the_kubelet_would(images, tmp_path):
    objs = render("overlays/sharded", tmp_path)
    sts = objs["StatefulSet/nflog-pipe-receiver"]
    n = replicas(sts)
    assert n >= 2
    key = objs["ConfigMap/nflog-pipe-sender"]["data"].get("NFLOG_PIPE_SHARD_KEY", "addr")
    # flows of each family for every shard (2 each), by the hash the sender uses with n
    # destinations: with the key `addr` the source address decides, so several of them
    flows: dict[tuple[str, int], int] = {}
    for net, node in ((ipaddress.ip_network("10.79.0.0/24"), NODE4),
                      (ipaddress.ip_network("fd00:79::/64"), NODE6)):
        per: dict[int, int] = dict.fromkeys(range(n), 0)
        for host in itertools.islice(net.hosts(), 1, 200):  # .1 is the node
            for sport in (40001, 40002):
                i = shard.shard_of(udp_packet(str(host), sport, node), n, key)
                if per[i] < 2:
                    per[i] += 1
                    flows[str(host), sport] = i
            if min(per.values()) == 2:
                break
        assert min(per.values()) == 2, f"no address of {net} puts 2 flows on each shard: {per}"
    peer4 = sorted({a for a, _ in flows if ":" not in a})
    peer6 = sorted({a for a, _ in flows if ":" in a})

    t0 = time.monotonic()
    cluster = Cluster(f"nzpk{os.getpid()}s", objs, tmp_path)
    try:
        # the StatefulSet's pods (Parallel: all at once), then the node that resolves them
        recv = [cluster.pod("StatefulSet/nflog-pipe-receiver", f"r{i}", node=None, ordinal=i)
                for i in range(n)]
        assert [p.pod_name for p in recv] == [f"nflog-pipe-receiver-{i}" for i in range(n)]
        hosts = cluster_dns(objs, recv)
        cluster.start_node(hosts, peer4, peer6)
        cluster.pod("DaemonSet/nflog-pipe-sender", "send", node=cluster.node)

        # traffic until every flow has raised an alert (bounded: 90 s, 60 rounds)
        first: dict[int, float] = {}
        every = None
        deadline = time.monotonic() + 90
        rounds = 0
        last_send = 0.0
        while time.monotonic() < deadline and rounds < 60:
            if time.monotonic() - last_send >= 1:
                cluster.check_running()
                cluster.send(list(flows), 3)
                rounds += 1
                last_send = time.monotonic()
            time.sleep(0.2)
            got = [alerts(p) for p in recv]
            for i, a in enumerate(got):
                if a and i not in first:
                    first[i] = round(time.monotonic() - t0, 1)
            if {flow_of(a) for al in got for a in al} >= set(flows):
                every = round(time.monotonic() - t0, 1)
                break
        time.sleep(1)  # what is still on its way, to be judged too
        got = [alerts(p) for p in recv]
        where: dict[tuple[str, int], set[int]] = {}
        for i, al in enumerate(got):
            for a in al:
                where.setdefault(flow_of(a), set()).add(i)
        missing = set(flows) - set(where)
        assert not missing, \
            f"no alert after {rounds} rounds for the flows {sorted(missing)}{cluster.logs()}"
        assert set(where) == set(flows), f"alerts for flows never sent: {set(where) - set(flows)}"
        split = {f: s for f, s in where.items() if len(s) > 1}
        assert not split, f"flows seen by more than one shard: {split}"
        wrong = {f: (s, flows[f]) for f, s in where.items() if s != {flows[f]}}
        assert not wrong, f"flows on another shard than the hash's (seen, expected): {wrong}"
        for i, al in enumerate(got):  # every shard, each family
            fams = {ipaddress.ip_address(a["src_ip"]).version for a in al}
            assert fams == {4, 6}, f"{recv[i].pod_name}: alerts for IPv{fams} only"
        FIGURES["k8s overlays/sharded: flows (IPv4 + IPv6) per shard"] = \
            [sum(1 for s in flows.values() if s == i) for i in range(n)]
        FIGURES["k8s overlays/sharded: pods up to first alert per shard (s)"] = \
            [first.get(i) for i in range(n)]
        FIGURES["k8s overlays/sharded: pods up to alerts on every flow (s)"] = every
        FIGURES["k8s overlays/sharded: alerts per shard"] = [len(al) for al in got]

        cluster.check_probes()
    finally:
        cluster.close()
