"""What the kubelet would do with our manifests, done with docker: no cluster runs here.

Offline validation proves that the manifests are well formed; it cannot prove that the
images live with the pods' settings (a read-only root, the capabilities left, the user,
the volumes the processes write to, the probes). This module starts each container of a
rendered workload under docker with exactly its pod's settings, and refuses any setting
it does not know how to apply, so a manifest cannot drift into something unverified:

- the pod's network namespace is held by an idle container (the kubelet's "pause"),
  every container joins it; `hostNetwork: true` joins the node's instead;
- runAsUser/runAsGroup, supplementalGroups + fsGroup as extra groups, runAsNonRoot
  checked, readOnlyRootFilesystem, capabilities drop/add, allowPrivilegeEscalation,
  the seccomp profile, cpu/memory limits;
- env from ConfigMaps (envFrom) and values or fieldRefs (env);
- emptyDir volumes as tmpfs of their sizeLimit, owned by fsGroup with the setgid bit
  like the kubelet's; Secret items as files with their mode; readOnly mounts;
- exec liveness probes run inside the container, as the kubelet runs them;
- a StatefulSet's pods by ordinal, each with its stable name (<set>-<i>) as host name and
  the governing Service as subdomain; `podManagementPolicy: Parallel` (all at once).

Services are what the cluster DNS would answer, in the node's hosts file (cluster_dns):
a ClusterIP Service's name points at its one pod's address (there is no kube-proxy to
balance or translate: one pod, and the Service port must equal the container port); a
headless Service (clusterIP: None) names every pod it selects, and each StatefulSet pod
it governs by <pod>.<service>.<namespace>.svc.cluster.local.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

#: securityContext fields this emulation applies (pod level / container level)
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups",
                "seccompProfile"}
CONTAINER_SECURITY = {"runAsUser", "runAsGroup", "runAsNonRoot", "allowPrivilegeEscalation",
                      "readOnlyRootFilesystem", "capabilities", "seccompProfile"}
POD_SPEC = {"containers", "volumes", "securityContext", "hostNetwork", "dnsPolicy",
            "nodeSelector", "tolerations", "automountServiceAccountToken", "enableServiceLinks",
            "terminationGracePeriodSeconds"}
CONTAINER_SPEC = {"name", "image", "imagePullPolicy", "env", "envFrom", "ports", "securityContext",
                  "resources", "livenessProbe", "volumeMounts", "command", "args"}
#: workload spec fields this emulation applies, per kind (rolling updates never happen
#: here: each test starts one generation, so the update strategies are inert)
WORKLOAD_SPEC = {
    "Deployment": {"replicas", "strategy", "selector", "template"},
    "DaemonSet": {"selector", "updateStrategy", "template"},
    "StatefulSet": {"replicas", "serviceName", "podManagementPolicy", "selector", "template"},
}
TEMPLATE_METADATA = {"labels"}
#: Service spec fields (every pod here is ready at once: publishNotReadyAddresses is inert)
SERVICE_SPEC = {"type", "clusterIP", "selector", "ports", "publishNotReadyAddresses"}
CLUSTER_DOMAIN = "svc.cluster.local"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["docker", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
    return p


def quantity(q: str | int) -> int:
    """A Kubernetes memory quantity in bytes ("1Mi", "512Mi", "2Gi", "64M", 1024)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, f"unsupported quantity {q!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * scale


def cpus(q: str | int) -> str:
    s = str(q)
    return str(int(s[:-1]) / 1000) if s.endswith("m") else s


def unknown(what: str, got: dict, known: set[str]) -> None:
    extra = set(got) - known
    assert not extra, f"{what}: this emulation does not apply {sorted(extra)}; teach it first"


@dataclass
class Node:
    """A node's network namespace: an idle container on the cluster network; `hosts` is
    what its resolver answers (a name may have several addresses, as a headless Service)."""
    name: str
    network: str
    image: str
    hosts: dict[str, str | list[str]] = field(default_factory=dict)
    cid: str = ""

    def start(self) -> None:
        add = [f"--add-host={h}:{ip}" for h, ips in self.hosts.items()
               for ip in ([ips] if isinstance(ips, str) else ips)]
        self.cid = docker("run", "-d", "--name", self.name, "--hostname", self.name,
                          "--network", self.network, "--cap-drop", "ALL", *add,
                          # a node has IPv6 (docker turns it off in containers by default)
                          "--sysctl", "net.ipv6.conf.all.disable_ipv6=0",
                          self.image).stdout.strip()

    @property
    def pid(self) -> int:
        return int(docker("inspect", "-f", "{{.State.Pid}}", self.cid).stdout)

    def ip(self) -> str:
        return ip_of(self.cid, self.network)

    def stop(self) -> None:
        if self.cid:
            docker("rm", "-f", self.cid, check=False)


def ip_of(cid: str, network: str) -> str:
    nets = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", cid).stdout)
    return nets[network]["IPAddress"]


def replicas(workload: dict) -> int:
    """How many pods the workload asks for (a DaemonSet: one per node, one node here)."""
    return 1 if workload["kind"] == "DaemonSet" else workload["spec"].get("replicas", 1)


class Pod:
    """One pod of a workload (Deployment, DaemonSet, StatefulSet), run under docker.

    `name` prefixes its docker containers (unique on a shared engine); the pod's own name
    is that name, or for a StatefulSet <set>-<ordinal>, as the controller names them."""

    def __init__(self, workload: dict, objects: dict[str, dict], *, name: str, node: Node | None,
                 network: str, pause_image: str, workdir: Path,
                 secrets: dict[str, dict[str, bytes]] | None = None, ordinal: int | None = None):
        self.kind = workload["kind"]
        self.meta = workload["metadata"]
        wspec = workload["spec"]
        self.spec = wspec["template"]["spec"]
        self.labels = wspec["template"].get("metadata", {}).get("labels", {})
        self.objects, self.name, self.node, self.network = objects, name, node, network
        self.pause_image, self.workdir = pause_image, workdir
        self.secrets = secrets or {}
        self.cids: dict[str, str] = {}
        self.pause = ""
        self.mounted: list[Path] = []
        assert self.kind in WORKLOAD_SPEC, f"{self.kind}: not an emulated workload"
        unknown(f"{self.kind} spec", wspec, WORKLOAD_SPEC[self.kind])
        unknown(f"{self.kind} pod template metadata", wspec["template"].get("metadata", {}),
                TEMPLATE_METADATA)
        sel = wspec["selector"]
        unknown(f"{self.kind} selector", sel, {"matchLabels"})
        assert sel["matchLabels"].items() <= self.labels.items(), \
            f"{self.kind} {self.meta['name']}: the selector does not select its own pods"
        self.pod_name, self.subdomain = name, None
        if self.kind == "StatefulSet":
            assert ordinal is not None and 0 <= ordinal < replicas(workload), \
                f"StatefulSet {self.meta['name']}: ordinal {ordinal} of {replicas(workload)}"
            policy = wspec.get("podManagementPolicy", "OrderedReady")
            assert policy == "Parallel", f"podManagementPolicy {policy} is not emulated"
            self.pod_name = f"{self.meta['name']}-{ordinal}"
            self.subdomain = wspec["serviceName"]
        else:
            assert ordinal is None, f"{self.kind} pods have no ordinal"
        unknown(f"{self.kind} pod spec", self.spec, POD_SPEC)
        unknown(f"{self.kind} pod securityContext", self.spec.get("securityContext", {}),
                POD_SECURITY)

    # -- the pod's sandbox ------------------------------------------------------------------
    @property
    def host_network(self) -> bool:
        return bool(self.spec.get("hostNetwork"))

    def net_mode(self) -> str:
        return f"container:{self.node.cid if self.host_network else self.pause}"

    def ip(self) -> str:
        return self.node.ip() if self.host_network else ip_of(self.pause, self.network)

    @property
    def namespace(self) -> str:
        return self.meta.get("namespace", "default")

    def fqdn(self) -> str | None:
        """<pod>.<subdomain>.<namespace>.svc.cluster.local: a StatefulSet pod's own name
        (its hosts file has it, and the governing headless Service's DNS)."""
        return (f"{self.pod_name}.{self.subdomain}.{self.namespace}.{CLUSTER_DOMAIN}"
                if self.subdomain else None)

    def volumes(self) -> dict[str, Path]:
        psc = self.spec.get("securityContext", {})
        fs_group = psc.get("fsGroup")
        out = {}
        for v in self.spec.get("volumes", []):
            d = self.workdir / self.name / v["name"]
            d.mkdir(parents=True)
            if "emptyDir" in v:
                size = quantity(v["emptyDir"].get("sizeLimit", "64Mi"))
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs",
                                str(d)], check=True)
                self.mounted.append(d)
                if fs_group is not None:  # the kubelet's volume ownership: group + setgid
                    subprocess.run(["chown", f"0:{fs_group}", str(d)], check=True)
                    d.chmod(0o2777)
            elif "secret" in v:
                sec = v["secret"]
                data = self.secrets.get(sec["secretName"])
                assert data is not None or sec.get("optional"), \
                    f"Secret {sec['secretName']} missing and not optional"
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                                str(d)], check=True)
                self.mounted.append(d)
                for item in (sec.get("items") or [] if data else []):
                    f = d / item["path"]
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_bytes(data[item["key"]])
                    f.chmod(item.get("mode", sec.get("defaultMode", 0o644)))
                    if fs_group is not None:
                        subprocess.run(["chown", f"0:{fs_group}", str(f)], check=True)
            else:
                raise AssertionError(f"volume {v['name']}: only emptyDir and secret are emulated")
            out[v["name"]] = d
        return out

    # -- containers -----------------------------------------------------------------------
    def env(self, c: dict) -> list[str]:
        values: dict[str, str] = {}
        for src in c.get("envFrom", []):
            ref = src["configMapRef"]["name"]
            values.update(self.objects[f"ConfigMap/{ref}"]["data"])
        fields = {"spec.nodeName": self.node.name if self.node else "",
                  "metadata.name": self.pod_name, "metadata.namespace": self.namespace}
        for e in c.get("env", []):
            if "value" in e:
                values[e["name"]] = e["value"]
            else:
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                assert path in fields, f"fieldRef {path} is not emulated"
                values[e["name"]] = fields[path]
        out = []
        for k, v in values.items():
            out += ["-e", f"{k}={v}"]
        return out

    def security(self, c: dict) -> list[str]:
        psc = self.spec.get("securityContext", {})
        csc = c.get("securityContext", {})
        unknown(f"container {c['name']} securityContext", csc, CONTAINER_SECURITY)
        sc = {**{k: v for k, v in psc.items() if k in CONTAINER_SECURITY}, **csc}
        args = []
        image_user = docker("image", "inspect", "-f", "{{.Config.User}}", c["image"]).stdout.strip()
        uid = sc.get("runAsUser")
        if uid is not None:
            args += ["--user", f"{uid}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(uid)]
        effective = uid if uid is not None else (image_user.split(":")[0] or "0")
        if sc.get("runAsNonRoot"):
            assert str(effective) not in ("0", "root"), \
                f"container {c['name']}: runAsNonRoot but it would run as {effective!r}"
        groups = list(psc.get("supplementalGroups", []))
        if "fsGroup" in psc:
            groups.append(psc["fsGroup"])
        for g in dict.fromkeys(groups):
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
        assert seccomp in ("RuntimeDefault", "Unconfined"), f"seccomp {seccomp} not emulated"
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        return args

    def start(self) -> None:
        if not self.host_network:
            # the pod's host name; with a subdomain its hosts file also has the full name
            dom = ["--domainname", self.fqdn().split(".", 1)[1]] if self.subdomain else []
            self.pause = docker("run", "-d", "--name", f"{self.name}-pause",
                                "--hostname", self.pod_name, *dom, "--network", self.network,
                                "--cap-drop", "ALL", self.pause_image).stdout.strip()
        vols = self.volumes()
        for c in self.spec["containers"]:
            unknown(f"container {c['name']}", c, CONTAINER_SPEC)
            args = ["run", "-d", "--name", f"{self.name}-{c['name']}", "--network", self.net_mode()]
            args += self.security(c) + self.env(c)
            limits = c.get("resources", {}).get("limits", {})
            if "memory" in limits:
                args += ["--memory", str(quantity(limits["memory"]))]
            if "cpu" in limits:
                args += ["--cpus", cpus(limits["cpu"])]
            for m in c.get("volumeMounts", []):
                ro = ",readonly" if m.get("readOnly") else ""
                args += ["--mount", f"type=bind,src={vols[m['name']]},dst={m['mountPath']}{ro}"]
            if "command" in c:
                args += ["--entrypoint", c["command"][0]]
            args.append(c["image"])
            args += c.get("command", [])[1:] + c.get("args", [])
            self.cids[c["name"]] = docker(*args).stdout.strip()

    def volume(self, name: str) -> Path:
        return self.workdir / self.name / name

    def probe(self, container: str) -> subprocess.CompletedProcess:
        """Run the container's liveness probe command inside it, as the kubelet does."""
        (c,) = [c for c in self.spec["containers"] if c["name"] == container]
        cmd = c["livenessProbe"]["exec"]["command"]
        return docker("exec", self.cids[container], *cmd,
                      timeout=c["livenessProbe"].get("timeoutSeconds", 1) + 30, check=False)

    def logs(self, container: str) -> str:
        p = docker("logs", self.cids[container], check=False)
        return p.stdout + p.stderr

    def running(self, container: str) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", self.cids[container]).stdout.strip() == "true"

    def stop(self) -> None:
        grace = str(self.spec.get("terminationGracePeriodSeconds", 30))
        for cid in self.cids.values():
            docker("stop", "-t", grace, cid, check=False, timeout=120)
            docker("rm", "-f", cid, check=False)
        if self.pause:
            docker("rm", "-f", self.pause, check=False)
        for d in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(d)], check=False)


def cluster_dns(objects: dict[str, dict], pods: list[Pod]) -> dict[str, list[str]]:
    """The names the cluster DNS would answer for the rendered Services, given the pods
    that run: name -> addresses (for the node's hosts file)."""
    out: dict[str, list[str]] = {}
    for key, svc in objects.items():
        if not key.startswith("Service/"):
            continue
        spec, name = svc["spec"], svc["metadata"]["name"]
        unknown(f"Service {name} spec", spec, SERVICE_SPEC)
        assert spec.get("type", "ClusterIP") == "ClusterIP", f"Service {name}: only ClusterIP"
        ns = svc["metadata"].get("namespace", "default")
        selected = [p for p in pods if p.namespace == ns and not p.host_network
                    and spec["selector"].items() <= p.labels.items()]
        assert selected, f"Service {name} selects no pod that runs"
        for p in selected:  # no kube-proxy: the Service port must be the container's
            cports = {(cp.get("name"), cp["containerPort"]) for c in p.spec["containers"]
                      for cp in c.get("ports", [])}
            for port in spec["ports"]:
                target = port.get("targetPort", port["port"])
                (cport,) = [n for nm, n in cports if target in (nm, n)]
                assert cport == port["port"], \
                    f"Service {name}: port {port['port']} -> {cport}: no kube-proxy to translate"
        if spec.get("clusterIP") == "None":  # headless: every pod, and each by its own name
            out[f"{name}.{ns}.{CLUSTER_DOMAIN}"] = [p.ip() for p in selected]
            for p in selected:
                if p.subdomain == name:
                    out[p.fqdn()] = [p.ip()]
        else:
            assert "clusterIP" not in spec, f"Service {name}: a fixed clusterIP is not emulated"
            assert len(selected) == 1, \
                f"Service {name}: {len(selected)} pods; no kube-proxy to balance between them"
            out[f"{name}.{ns}.{CLUSTER_DOMAIN}"] = [selected[0].ip()]
    return out
