"""JupyterHub for a class: one lab container per student (class/README.md).

`class/classctl.py start` runs the hub with this file and the CLASS_* settings below in its
environment; read it beside the JupyterHub and DockerSpawner documentation. Each student gets:

- a container of the class image (the lab image plus jupyterhub-singleuser), **privileged**,
  because the lessons mount file systems, make namespaces and cgroups (the trust model in
  class/README.md says what that gives away);
- two named volumes of their own, the lab root (/var/lib/labkit) and the work dir (/work),
  which outlive the container until `make class-stop`;
- a memory limit and a CPU quota (cgroups, the same ones lesson 05 sets by hand);
- a server that jupyterhub-idle-culler stops after CLASS_IDLE_TIMEOUT seconds without activity.
"""
import os
import sys

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)
env = os.environ.get

# --- the hub and its proxy -------------------------------------------------------------------
c.JupyterHub.ip = env("CLASS_IP", "0.0.0.0")
c.JupyterHub.port = int(env("CLASS_PORT", "8000"))
# The containers reach the hub's API on the class network's gateway, which is this host. The
# bridge gets that address only when its first container starts, so the hub listens on every
# address (CLASS_HUB_PORT, 8081: keep it closed to the outside in the server's firewall, class/README.md)
# and the proxy reaches it on loopback.
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_port = int(env("CLASS_HUB_PORT", "8081"))
c.JupyterHub.hub_connect_ip = "127.0.0.1"
c.Spawner.hub_connect_url = "http://{}:{}".format(env("CLASS_HUB_IP", "127.0.0.1"), c.JupyterHub.hub_port)
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{}".format(env("CLASS_PROXY_API_PORT", "8001"))
c.JupyterHub.db_url = "sqlite:///" + os.path.join(env("CLASS_ROOT", "."), "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(env("CLASS_ROOT", "."), "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.command = [env("CLASS_PROXY", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(env("CLASS_ROOT", "."), "jupyterhub-proxy.pid")
c.JupyterHub.cleanup_servers = True      # stopping the hub stops (and so removes) every container

# --- who may log in --------------------------------------------------------------------------
# The class roster: CLASS_USERS (names separated by commas) or CLASS_ROSTER (a file, one name a
# line); the instructor can add more at /hub/admin. Nobody else gets an account.
admin = env("CLASS_ADMIN", "instructor")
roster = set(filter(None, env("CLASS_USERS", "").split(",")))
if env("CLASS_ROSTER"):
    roster |= {line.strip() for line in open(env("CLASS_ROSTER")) if line.strip() and not line.startswith("#")}
c.Authenticator.admin_users = {admin}
c.Authenticator.allowed_users = roster
c.Authenticator.allow_all = False
if env("CLASS_AUTH", "firstuse") == "dummy":
    # Tests only: every name on the roster logs in with the shared CLASS_PASSWORD.
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = env("CLASS_PASSWORD")
else:
    # FirstUseAuthenticator: the password given at a name's first login becomes its password
    # (stored as a bcrypt hash in CLASS_ROOT/passwords.dbm). So the instructor logs in first,
    # right after `make class`, and each student on the roster at the start of the class.
    # (NativeAuthenticator 1.3.0, with sign-up pages, fails at every login on JupyterHub 6: its
    # login handler still uses the statsd client that JupyterHub 6.0 removed. class/README.md.)
    c.JupyterHub.authenticator_class = "firstuseauthenticator.FirstUseAuthenticator"
    c.FirstUseAuthenticator.create_users = False       # only names on the roster
    c.FirstUseAuthenticator.min_password_length = 8
    c.FirstUseAuthenticator.dbm_path = os.path.join(env("CLASS_ROOT", "."), "passwords.dbm")

# --- one lab container per student -----------------------------------------------------------
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.client_kwargs = {"base_url": env("CLASS_DOCKER_HOST", "unix:///var/run/docker.sock")}
c.DockerSpawner.image = env("CLASS_IMAGE", "localhost/labkit-class")
c.DockerSpawner.pull_policy = "never"                # built here by classctl, never pulled
c.DockerSpawner.name_template = "labkit-class-{username}"
c.DockerSpawner.network_name = env("CLASS_NETWORK", "labkit-class")
c.DockerSpawner.use_internal_ip = True               # the proxy reaches each container on the class network
c.DockerSpawner.remove = True                        # a stopped server's container is removed; its volumes stay
c.DockerSpawner.cmd = ["/opt/labkit/class/singleuser.sh"]
c.DockerSpawner.notebook_dir = "/work"
c.DockerSpawner.volumes = {
    "labkit-class-{username}-home": "/var/lib/labkit",
    "labkit-class-{username}-work": "/work",
}
c.DockerSpawner.extra_host_config = {"privileged": True, "cgroupns": "private"}
c.DockerSpawner.extra_create_kwargs = {"labels": {"labkit.class": "student", "labkit.class.user": "{username}"}}
c.DockerSpawner.mem_limit = env("CLASS_MEM", "2G")
c.DockerSpawner.cpu_limit = float(env("CLASS_CPUS", "1"))
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120
c.Spawner.default_url = "/lab"

# --- stop servers nobody uses ----------------------------------------------------------------
c.JupyterHub.load_roles = [{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}]
# The culler judges a server by its last activity, which the hub learns every
# CLASS_ACTIVITY_INTERVAL seconds (JupyterHub's default 300) from the proxy and from the server.
interval = int(env("CLASS_ACTIVITY_INTERVAL", "300"))
c.JupyterHub.last_activity_interval = interval
c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(interval)}
c.JupyterHub.services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                "--timeout=" + env("CLASS_IDLE_TIMEOUT", "3600"),
                "--cull-every=" + env("CLASS_CULL_EVERY", "300")],
}]
