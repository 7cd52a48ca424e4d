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
- exec liveness probes run inside the container, as the kubelet runs them.

Services are a name in the node's hosts file pointing at the pod's address (their port
must equal the container port: there is no kube-proxy to translate it).
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
    """A node's network namespace: an idle container on the cluster network."""
    name: str
    network: str
    image: str
    hosts: dict[str, str] = field(default_factory=dict)
    cid: str = ""

    def start(self) -> None:
        add = [f"--add-host={h}:{ip}" for h, ip in self.hosts.items()]
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


class Pod:
    """One pod of a workload (Deployment, DaemonSet, StatefulSet), run under docker."""

    def __init__(self, workload: dict, objects: dict[str, dict], *, name: str, node: Node | None,
                 network: str, pause_image: str, workdir: Path,
                 secrets: dict[str, dict[str, bytes]] | None = None):
        self.kind = workload["kind"]
        self.meta = workload["metadata"]
        self.spec = workload["spec"]["template"]["spec"]
        self.objects, self.name, self.node, self.network = objects, name, node, network
        self.pause_image, self.workdir = pause_image, workdir
        self.secrets = secrets or {}
        self.cids: dict[str, str] = {}
        self.pause = ""
        self.mounted: list[Path] = []
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
        fields = {"spec.nodeName": self.node.name if self.node else "", "metadata.name": self.name,
                  "metadata.namespace": self.meta.get("namespace", "default")}
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
            self.pause = docker("run", "-d", "--name", f"{self.name}-pause", "--hostname", self.name,
                                "--network", self.network, "--cap-drop", "ALL",
                                self.pause_image).stdout.strip()
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
