"""Start and stop a class: JupyterHub on this machine, one lab container per student.

    class/.venv/bin/python class/classctl.py start     # `make class`
    class/.venv/bin/python class/classctl.py status    # `make class-status`
    class/.venv/bin/python class/classctl.py stop      # `make class-stop`

The engine is podman's Docker-compatible API (`podman system service`, podman(1)) by default,
with podman's storage, configuration and networks under CLASS_ROOT, so that stopping the class
removes exactly what the class made and nothing of the machine's own containers; or a Docker
daemon (CLASS_ENGINE=docker, DOCKER_HOST). Settings are CLASS_* environment variables, listed in
Settings below and in class/README.md. Everything the class makes carries the name or label
`labkit-class`; `stop` finds it by that.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "labkit-class"

# On a host whose cgroups are hybrid (v1 and v2 at once) crun refuses to run; runc and podman's
# own cgroupfs manager work on every layout. ulimits no higher than the host's: a root without
# CAP_SYS_RESOURCE (a container host, a CI runner) cannot raise them. A private cgroup namespace
# for every container, as docker gives on cgroup v2: podman 4.3's Docker API ignores the
# CgroupnsMode that DockerSpawner asks for (jupyterhub_config.py), so it is said here too.
PODMAN_CONF = """[containers]
cgroupns = "private"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/podman-tmp"
[network]
network_config_dir = "{root}/networks"
"""


class ClassError(Exception):
    """What went wrong and what to do next, printed as one line by main()."""


@dataclass
class Settings:
    """The class's settings, each from a CLASS_* variable (default in brackets)."""
    root: Path = field(default_factory=lambda: Path(os.environ.get("CLASS_ROOT", "/var/lib/labkit-class")))
    engine: str = field(default_factory=lambda: os.environ.get("CLASS_ENGINE", "podman"))     # podman | docker
    image: str = field(default_factory=lambda: os.environ.get("CLASS_IMAGE", "localhost/labkit-class"))
    lab_image: str = field(default_factory=lambda: os.environ.get("CLASS_LAB_IMAGE", "localhost/labkit"))
    ip: str = field(default_factory=lambda: os.environ.get("CLASS_IP", "0.0.0.0"))
    port: int = field(default_factory=lambda: int(os.environ.get("CLASS_PORT", "8000")))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.ip == "0.0.0.0" else self.ip
        return f"http://{host}:{self.port}"

    @property
    def socket(self) -> str:
        if self.engine == "docker":
            return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return f"unix://{self.root}/podman.sock"


def engine(s: Settings, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run podman (with the class's configuration) or docker with ``args``."""
    env = dict(os.environ)
    if s.engine == "podman":
        env.update(CONTAINERS_CONF=str(s.root / "containers.conf"),
                   CONTAINERS_STORAGE_CONF=str(s.root / "storage.conf"))
    r = subprocess.run([s.engine, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise ClassError(f"{s.engine} {' '.join(map(str, args[:3]))} failed: {r.stderr.strip()[-400:]}")
    return r


def _write_podman_conf(s: Settings) -> None:
    (s.root / "networks").mkdir(parents=True, exist_ok=True)
    (s.root / "containers.conf").write_text(PODMAN_CONF.format(root=s.root))
    (s.root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{s.root}/storage"\nrunroot = "{s.root}/run"\n')


def _pid(path: Path) -> int | None:
    """The process whose id ``path`` holds, if it is still running."""
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _daemon(s: Settings, name: str, argv: list[str], env: dict | None = None) -> int:
    """Start ``argv`` in its own session, its output in ROOT/NAME.log, its pid in ROOT/NAME.pid."""
    with open(s.root / f"{name}.log", "ab") as log:
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=s.root, env=env, start_new_session=True)
    (s.root / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def _wait(what: str, ok, seconds: float, log: Path) -> None:
    """Until ``ok()``; fail with the end of ``log`` after ``seconds`` or when its process ended."""
    deadline = time.monotonic() + seconds
    pidfile = log.with_suffix(".pid")
    while not ok():
        if time.monotonic() > deadline or _pid(pidfile) is None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise ClassError(f"{what} did not come up; the end of its log ({log}): {tail!r}")
        time.sleep(0.5)


def _answers(url: str, uds: str | None = None) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=uds) if uds else None, timeout=2) as client:
            return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def start_engine(s: Settings) -> None:
    """podman: `podman system service --time=0` on ROOT/podman.sock (podman-system-service(1))."""
    if s.engine == "docker":
        if engine(s, "info", check=False).returncode != 0:
            raise ClassError("docker does not answer: start the docker daemon or set DOCKER_HOST")
        return
    _write_podman_conf(s)
    if _pid(s.root / "podman.pid") is None:
        env = dict(os.environ, CONTAINERS_CONF=str(s.root / "containers.conf"),
                   CONTAINERS_STORAGE_CONF=str(s.root / "storage.conf"))
        _daemon(s, "podman", ["podman", "system", "service", "--time=0", s.socket], env)
    _wait("podman's API", lambda: _answers("http://d/_ping", uds=str(s.root / "podman.sock")), 30, s.root / "podman.log")


def build_images(s: Settings) -> None:
    """The lab image (../Containerfile) and the class image on top of it, if either is missing."""
    extra = os.environ.get("CLASS_BUILD_ARGS", "").split()        # e.g. -v for a local package mirror
    if engine(s, "image", "inspect", s.lab_image, check=False).returncode != 0:
        print(f"class: building {s.lab_image} from Containerfile (a few minutes)", flush=True)
        engine(s, "build", "--network", "host", *extra, "-f", REPO / "Containerfile", "-t", s.lab_image, REPO,
               timeout=3600)
    if engine(s, "image", "inspect", s.image, check=False).returncode != 0:
        print(f"class: building {s.image} from class/Containerfile", flush=True)
        engine(s, "build", "--network", "host", *extra, "-f", HERE / "Containerfile",
               "--build-arg", f"LAB={s.lab_image}", "-t", s.image, REPO, timeout=1800)


def network_gateway(s: Settings) -> str:
    """The class network (a bridge the containers sit on); its gateway is this host's address on it."""
    if engine(s, "network", "inspect", PREFIX, check=False).returncode != 0:
        engine(s, "network", "create", "--label", f"{PREFIX}=1", PREFIX)
    info = json.loads(engine(s, "network", "inspect", PREFIX).stdout)[0]
    if s.engine == "podman":
        return info["subnets"][0]["gateway"]
    return info["IPAM"]["Config"][0]["Gateway"]


def start(s: Settings) -> None:
    """Engine, images, network, then the hub (which starts the proxy and the culler)."""
    if os.geteuid() != 0:
        raise ClassError("the class needs root (privileged containers): run `sudo make class`")
    s.root.mkdir(parents=True, exist_ok=True)
    start_engine(s)
    build_images(s)
    gateway = network_gateway(s)
    if _pid(s.root / "hub.pid") is None:
        venv_bin = HERE / ".venv" / "bin"
        env = dict(os.environ, CLASS_ROOT=str(s.root), CLASS_HUB_IP=gateway, CLASS_DOCKER_HOST=s.socket,
                   CLASS_IMAGE=s.image, CLASS_NETWORK=PREFIX, CLASS_IP=s.ip, CLASS_PORT=str(s.port),
                   CLASS_PROXY=str(HERE / "node_modules/.bin/configurable-http-proxy"),
                   PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        _daemon(s, "hub", [str(venv_bin / "jupyterhub"), "-f", str(HERE / "jupyterhub_config.py")], env)
    _wait("JupyterHub", lambda: _answers(f"{s.url}/hub/health"), 120, s.root / "hub.log")
    print(f"class: JupyterHub on {s.url}/ ; log in as {os.environ.get('CLASS_ADMIN', 'instructor')} now: "
          f"the first password given to a name becomes its password. `make class-stop` ends the class", flush=True)


def students(s: Settings) -> list[dict]:
    """The class's containers: name, user, state."""
    fmt = "json" if s.engine == "podman" else "{{json .}}"       # docker 20.10: one JSON object a line
    out = engine(s, "ps", "-a", "--filter", "label=labkit.class=student", "--format", fmt, check=False).stdout
    rows = json.loads(out or "[]") if s.engine == "podman" else [json.loads(line) for line in out.splitlines() if line]
    found = []
    for r in rows:
        labels = r.get("Labels") or {}
        if isinstance(labels, str):                                # docker: "a=b,c=d"
            labels = dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv)
        found.append({"name": r["Names"][0] if isinstance(r["Names"], list) else r["Names"],
                      "state": r.get("State"), "user": labels.get("labkit.class.user")})
    return found


def status(s: Settings) -> None:
    hub = _pid(s.root / "hub.pid")
    print(f"hub: {'running, ' + s.url if hub else 'not running'}")
    if s.engine == "podman" and _pid(s.root / "podman.pid") is None:
        return
    for st in students(s):
        print(f"{st['name']}: {st['state']}")


def _stop_process(pidfile: Path, seconds: float = 30) -> None:
    """SIGTERM the process group ``pidfile`` names, SIGKILL it after ``seconds``."""
    pid = _pid(pidfile)
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds
        while _pid(pidfile) is not None and time.monotonic() < deadline:
            time.sleep(0.3)
        if _pid(pidfile) is not None:
            os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def hand_in(s: Settings, volume: str) -> Path | None:
    """A copy of a student's work volume in ROOT/handin/VOLUME.tar before it is removed (podman)."""
    if s.engine != "podman":
        return None
    (s.root / "handin").mkdir(exist_ok=True)
    dst = s.root / "handin" / f"{volume}.tar"
    engine(s, "volume", "export", volume, "-o", dst)
    return dst


def stop(s: Settings) -> None:
    """The hub (and so the proxy, the culler and every student's server), then the containers,
    volumes (each student's /work handed in first) and network the class made, then the engine."""
    _stop_process(s.root / "hub.pid")
    proxy = s.root / "jupyterhub-proxy.pid"
    if _pid(proxy) is not None:
        os.kill(_pid(proxy), signal.SIGTERM)
    proxy.unlink(missing_ok=True)
    if s.engine == "docker" or _pid(s.root / "podman.pid") is not None:
        for st in students(s):
            engine(s, "rm", "-f", st["name"], check=False)
        names = engine(s, "volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for v in (n for n in names if n.startswith(PREFIX + "-")):
            if v.endswith("-work"):
                hand_in(s, v)
            engine(s, "volume", "rm", "-f", v, check=False)
        engine(s, "network", "rm", "-f", PREFIX, check=False)
    if s.engine == "podman":
        _stop_process(s.root / "podman.pid")
        (s.root / "podman.sock").unlink(missing_ok=True)
    for f in (*s.root.glob("jupyterhub.sqlite*"), s.root / "jupyterhub_cookie_secret", *s.root.glob("passwords.dbm*")):
        f.unlink(missing_ok=True)
    print(f"class: stopped; students' work dirs are in {s.root / 'handin'}" if s.engine == "podman"
          else "class: stopped", flush=True)


def main(argv: list[str]) -> int:
    actions = {"start": start, "stop": stop, "status": status}
    if len(argv) != 1 or argv[0] not in actions:
        print("usage: classctl.py start|status|stop (settings: CLASS_* variables, class/README.md)", file=sys.stderr)
        return 2
    try:
        settings = Settings()
    except ValueError as e:
        print(f"class: CLASS_PORT must be a port number ({e}); unset it for 8000", file=sys.stderr)
        return 2
    try:
        actions[argv[0]](settings)
    except ClassError as e:
        print(f"class: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
