"""The ``labkit`` command: the lab for terminal users and scripts.

Exit status 0 on success; on failure one line that names the problem and the fix,
and status 1. Commands grow with the lessons (see README.md for the full list).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import lab
from .errors import LabError


def cmd_preflight(args) -> int:
    from . import preflight
    report = preflight.preflight()
    print(report)
    if not report.ok:
        print(f"\n{len(report.missing())} required item(s) missing: run scripts/provision.sh as root, "
              "or fix what the arrows say.", file=sys.stderr)
        return 1
    print("\nThe lab has everything it needs.")
    return 0


def cmd_reset(args) -> int:
    done = lab.reset(dry_run=args.dry_run)
    if not args.dry_run:
        from . import snapshot
        done += [f"active snapshot {k} (its process is gone)" for k in snapshot.Snapshotter(sweep=False).sweep()]
    verb = "would remove" if args.dry_run else "removed"
    for line in done:
        print(f"{verb} {line}")
    print(f"{len(done)} item(s) {verb}; the lab root {lab.root()} is clean." if not args.dry_run
          else f"{len(done)} item(s) to remove; run without --dry-run to remove them.")
    return 0


def cmd_progress(args) -> int:
    from . import exercises
    print(exercises.progress())
    return 0


def cmd_notebook(args) -> int:
    from . import exercises
    if args.action == "sync":
        added = exercises.sync_notebooks()
        print(f"copied {len(added)} new notebook(s) to {exercises.work_dir()}: {' '.join(added) or '-'}")
    else:
        dst = exercises.reset_notebook(args.name)
        print(f"restored the original {dst.name} in {dst.parent} (your version is in .backup/)")
    return 0


def cmd_layer(args) -> int:
    from .image import layer
    if args.action == "create":
        info = layer.create(args.source, args.output, mtime=None if args.keep_mtime else 0)
        print(f"{info.path}: {info.entries} entries, {info.whiteouts} whiteouts, "
              f"{info.opaque_dirs} opaque dirs, {info.size} bytes\nDiffID {info.diff_id}")
    else:
        r = layer.apply(args.source, args.output, overlay_form=args.overlay)
        print(f"applied {r.entries} entries to {args.output}: {r.written} written, "
              f"{r.whiteouts} whiteouts, {r.opaque_dirs} opaque dirs, {len(r.removed)} paths removed")
    return 0


def _oci_ref(value: str) -> tuple[str, str]:
    """'DIR:TAG', split at the first ':' as skopeo's oci: transport does (a tag may hold ':')."""
    path, sep, tag = value.partition(":")
    if not sep or not path or not tag:
        raise LabError(f"{value!r} is not DIR:TAG", "write the layout directory and the tag, e.g. /var/lib/labkit/out:v1")
    return path, tag


def _store():
    from .image.store import Store
    return Store()


def cmd_image_ls(args) -> int:
    print(f"{'NAME':<24} {'DIGEST':<19} {'LAYERS':>6} {'SIZE':>10}")
    images, unreadable = _store().listing()
    for img in images:
        print(f"{img.name:<24} {img.manifest_desc.digest[7:19]:<19} {len(img.layers):>6} {img.size:>10}")
    for name, why in unreadable.items():
        print(f"{name:<24} {'(unreadable)':<19} {'-':>6} {'-':>10}  {why}")
    return 0


def cmd_image_history(args) -> int:
    img = _store().image(args.name)
    layers = iter(zip(img.layers, img.diff_ids))
    print(f"{'LAYER':<14} {'SIZE':>10}  CREATED BY")
    for h in img.history:
        if h.get("empty_layer"):
            print(f"{'<none>':<14} {0:>10}  {h.get('created_by', '')}")
        else:
            desc, diff = next(layers, (None, None))
            print(f"{(diff or '?')[7:19]:<14} {desc.size if desc else 0:>10}  {h.get('created_by', '')}")
    return 0


def cmd_image_inspect(args) -> int:
    img = _store().image(args.name)
    print(json.dumps({"name": img.name, "digest": img.manifest_desc.digest, "manifest": img.manifest,
                      "config": img.config, "chain_ids": img.chain_ids}, indent=2))
    return 0


def cmd_image_rm(args) -> int:
    freed = _store().remove(args.name)
    print(f"removed {args.name}; {len(freed)} blob(s) no other image used were deleted")
    return 0


def cmd_image_prune(args) -> int:
    """docker image prune: delete the blobs no name reaches (untagged images, lost layers)."""
    s = _store()
    sizes = s.unreferenced()
    if args.dry_run:
        for d, n in sorted(sizes.items()):
            print(f"would delete {d[:19]} {n:>10}")
        print(f"{len(sizes)} blob(s), {sum(sizes.values())} bytes no image name reaches; "
              "run without --dry-run to delete those older than the grace period")
        return 0
    gone = s.gc(grace=args.grace)
    print(f"deleted {len(gone)} blob(s), {sum(sizes[d] for d in gone)} bytes no image name reached"
          + (f"; {len(sizes) - len(gone)} newer than {args.grace:g} s kept" if len(gone) < len(sizes) else ""))
    return 0


def cmd_image_save(args) -> int:
    if args.output:
        from .image import archive
        print(f"saved {args.name} to {archive.save(_store(), args.name, args.output, args.format)} ({args.format})")
        return 0
    path, tag = _oci_ref(args.oci)
    print(f"saved {args.name} to {_store().save(path, tag, args.name)} as {tag}")
    return 0


def cmd_image_load(args) -> int:
    from .image import archive, formats
    platform = formats.Platform.parse(args.platform) if args.platform else None
    if args.input:
        img = archive.load(_store(), args.input, args.tag, args.ref, platform)
    else:
        path, tag = _oci_ref(args.oci)
        img = _store().load(path, tag, args.tag, platform)
    print(f"loaded {img.name} ({img.manifest_desc.digest}, {len(img.layers)} layers)")
    return 0


def cmd_image_squash(args) -> int:
    from . import squash
    img = squash.squash(args.name, args.onto, args.tag, args.method)
    print(f"{img.name}: {len(img.layers)} layers ({args.onto}'s plus one); history of the squashed steps is gone")
    return 0


def cmd_image_import(args) -> int:
    from .image import mutate
    from .image.base import base_image
    if args.busybox:
        img = base_image(name=args.tag or "busybox")
    elif args.rootfs and args.tag:
        img = mutate.import_rootfs(args.rootfs, args.tag)
    else:
        raise LabError("import needs a rootfs directory and -t NAME, or --busybox",
                       "e.g. labkit image import --busybox, or labkit image import ./rootfs -t mine")
    print(f"{img.name}: {img.manifest_desc.digest}, {len(img.layers)} layer(s)")
    return 0


def cmd_run(args) -> int:
    """docker run: the command's exit status is ours; SIGTERM, SIGINT and SIGHUP sent to us go
    on to the container's PID 1 (docker's --sig-proxy), so Ctrl-C stops what runs inside."""
    from . import container
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    opts = dict(hostname=args.hostname, memory=args.memory, pids=args.pids, cpus=args.cpus, volumes=args.volume or [],
                name=args.name or "", privileged=args.privileged, cap_add=args.cap_add, cap_drop=args.cap_drop,
                security_opt=args.security_opt, userns=args.userns, user=args.user,
                entrypoint=[args.entrypoint] if args.entrypoint else None, workdir=args.workdir,
                env=_env(args.env))
    if args.detach:
        if args.tty or args.interactive:
            raise LabError("-d cannot be combined with -i or -t here", "run it with -d alone, then labkit exec")
        print(container.run_detached(args.image, cmd or None, rm=args.rm, **opts).id)
        return 0
    c = container.Container.create(args.image, cmd or None, **opts)
    try:
        c.start(capture=False, stdin=0 if args.interactive else None, tty=args.tty)
        pid1 = c.pid1()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if pid1 else ():
            signal.signal(sig, lambda n, _f: _signal(pid1, n))
        if args.tty:
            c.attach(args.interactive)
        res = c.wait()
    finally:
        if args.rm:
            c.remove()
    if res.oom_killed or res.signal:
        print(f"labkit: {res.message}", file=sys.stderr)
    return res.exit_code


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def cmd_ps(args) -> int:
    from . import container
    print(f"{'CONTAINER':<14} {'NAME':<16} {'IMAGE':<20} {'STATUS':<12} COMMAND")
    for c in container.containers():
        done = c.dir / "result.json"
        status = (f"exited {json.loads(done.read_text())['exit_code']}" if done.exists()
                  else "running" if c.running_pid1() else "created")
        print(f"{c.id:<14} {c.cfg.name[:16]:<16} {c.cfg.image[:20]:<20} {status:<12} {' '.join(c.cfg.cmd)[:40]}")
    return 0


def cmd_commit(args) -> int:
    from . import container
    img = container.Container.load(args.container).commit(args.name)
    print(f"{img.name}: {img.manifest_desc.digest}, {len(img.layers)} layers (the last is the container's changes)")
    return 0


def cmd_logs(args) -> int:
    from . import container
    out, err = container.Container.load(args.container).logs()
    sys.stdout.write(out)
    sys.stderr.write(err)
    return 0


def cmd_stop(args) -> int:
    from . import container
    container.Container.load(args.container).stop(timeout=args.time)
    print(args.container)
    return 0


def cmd_kill(args) -> int:
    from . import container
    sig = int(args.signal) if args.signal.isdigit() else getattr(signal, "SIG" + args.signal.upper().removeprefix("SIG"), None)
    if sig is None:
        raise LabError(f"{args.signal!r} is not a signal", "use a name like TERM or KILL, or a number")
    container.Container.load(args.container).kill(sig)
    print(args.container)
    return 0


def cmd_exec(args) -> int:
    from . import container
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("exec needs a command", "e.g. labkit exec CONTAINER -- ps")
    r = container.Container.load(args.container).exec(cmd, user=args.user, capture=False, timeout=None,
                                                       env=_env(args.env), workdir=args.workdir,
                                                       stdin=0 if args.interactive else None)
    return r.exit_code


def cmd_rm(args) -> int:
    from . import container
    for ident in args.containers:
        container.Container.load(ident).remove(force=args.force)
        print(f"removed {ident}")
    return 0


def cmd_build(args) -> int:
    from . import build
    dockerfile = build.read_dockerfile(args.file) if args.file else None
    build_args = {}
    for a in args.build_arg or []:      # NAME alone takes the value from the environment, as docker does
        name, eq, value = a.partition("=")
        if eq or name in os.environ:
            build_args[name] = value if eq else os.environ[name]
    built = build.build(args.context, args.tag, dockerfile, squash_all=args.squash, build_args=build_args,
                        memory=args.memory, pids=args.pids, target=args.target)
    img, steps = built.image, built.steps
    cached = sum(s.cached for s in steps)
    print(f"built {img.name}: {img.manifest_desc.digest}, {len(img.layers)} layers"
          + (f"; {cached} step(s) from the cache" if cached else ""))
    return 0


def cmd_registry(args) -> int:
    from .registry import auth, server
    host, port = args.addr
    grants = {}
    for g in args.grant or []:
        user, _, pattern = g.partition("=")
        grants.setdefault(user, []).append(pattern)
    a = auth.TokenAuth(args.auth, anonymous_pull=args.anonymous_pull, grants=grants) if args.auth else None
    try:
        srv = server.http_server(server.Registry(args.root, a, log=_RequestLog()), host, port)
    except OSError as e:
        raise LabError(f"cannot listen on {host}:{port} ({e.strerror})",
                       "pick another port with --addr 127.0.0.1:PORT, or stop what is using it") from None
    print(f"labkit registry on http://{host}:{srv.bind_addr[1]}/v2/, storing under {args.root}"
          + (" (token auth)" if a else ""), flush=True)
    try:
        srv.serve()
    except KeyboardInterrupt:
        srv.stop()
    return 0


class _RequestLog(list):
    """The registry's request log, printed as it grows: one line per request, as the client's
    errors promise ("labkit registry serve prints every request")."""

    def append(self, item) -> None:
        method, path, status = item
        print(f"{status} {method} {path}", flush=True)


def _address(text: str) -> tuple[str, int]:
    """--addr HOST:PORT for argparse."""
    host, _, port = text.rpartition(":")
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port from 0 to 65535")
    return host or "127.0.0.1", int(port)


def _positive(kind):
    """An argparse type: a finite number above 0 (so 0, -1 and nan are refused here)."""
    def convert(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (v > 0 and v != float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0 (leave the flag out for no limit)")
        return v
    convert.__name__ = kind.__name__
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (what was wrong, where to look), status 2
    (125 for run and exec: main())."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_push(args) -> int:
    from .registry import client
    d = client.push(args.name, args.ref, args.user, args.password)
    print(f"pushed {args.name} to {args.ref} ({d})")
    return 0


def cmd_pull(args) -> int:
    from .registry import client
    img = client.pull(args.ref, args.tag, parallel=args.parallel, user=args.user, password=args.password,
                      progress=not args.quiet, platform=args.platform)
    print(f"pulled {args.ref} as {img.name} ({img.manifest_desc.digest}, {len(img.layers)} layers)")
    return 0


# --- the command line: one function per command adds its arguments -----------------------------
def _args_preflight(p) -> None:
    p.set_defaults(fn=cmd_preflight)


def _args_reset(p) -> None:
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(fn=cmd_reset)


def _args_progress(p) -> None:
    p.set_defaults(fn=cmd_progress)


def _args_notebook(p) -> None:
    p.add_argument("action", choices=["sync", "reset"],
                   help="sync: copy new lessons to your work dir; reset NAME: restore the original")
    p.add_argument("name", nargs="?", help="with reset: the lesson, e.g. 01-overlayfs")
    p.set_defaults(fn=cmd_notebook)


def _args_layer(p) -> None:
    lsub = p.add_subparsers(dest="action", required=True)
    c = lsub.add_parser("create", help="UPPERDIR -o L.tar")
    c.add_argument("source", metavar="UPPERDIR")
    c.add_argument("-o", "--output", required=True, metavar="L.tar", help="under the lab root")
    c.add_argument("--keep-mtime", action="store_true", help="real mtimes (the tar is no longer reproducible)")
    a = lsub.add_parser("apply", help="L.tar DIR")
    a.add_argument("source", metavar="L.tar")
    a.add_argument("output", metavar="DIR", help="under the lab root")
    a.add_argument("--overlay", action="store_true", help="keep whiteouts as char devices (an overlay lowerdir)")
    p.set_defaults(fn=cmd_layer)


def _args_image(p) -> None:
    isub = p.add_subparsers(dest="action", required=True)
    isub.add_parser("ls", help="list images").set_defaults(fn=cmd_image_ls)
    for action, fn in (("history", cmd_image_history), ("inspect", cmd_image_inspect), ("rm", cmd_image_rm)):
        one = isub.add_parser(action, help=f"{action} NAME")
        one.add_argument("name", metavar="NAME")
        one.set_defaults(fn=fn)
    pr = isub.add_parser("prune", help="delete the blobs of untagged images [--dry-run] [--grace SECONDS]")
    pr.add_argument("--dry-run", action="store_true")
    pr.add_argument("--grace", type=float, default=300.0, metavar="SECONDS",
                    help="keep blobs written in the last SECONDS (another kernel may be writing that image)")
    pr.set_defaults(fn=cmd_image_prune)
    sv = isub.add_parser("save", help="NAME -o FILE [--format docker-archive|oci-archive], or NAME --oci DIR:TAG")
    sv.set_defaults(fn=cmd_image_save)
    sv.add_argument("name", metavar="NAME")
    where = sv.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="FILE", help="one archive file, as podman save -o")
    where.add_argument("--oci", metavar="DIR:TAG", help="an OCI layout directory")
    sv.add_argument("--format", choices=("docker-archive", "oci-archive"), default="docker-archive")
    ld = isub.add_parser("load", help="-i FILE (docker-archive, oci-archive) or --oci DIR:TAG [-t NAME]")
    ld.set_defaults(fn=cmd_image_load)
    where = ld.add_mutually_exclusive_group(required=True)
    where.add_argument("-i", "--input", metavar="FILE", help="an archive of docker save or podman save")
    where.add_argument("--oci", metavar="DIR:TAG", help="an OCI layout directory (skopeo's, umoci's)")
    ld.add_argument("-t", "--tag", metavar="NAME")
    ld.add_argument("--ref", metavar="NAME", help="which image of an archive holding several")
    ld.add_argument("--platform", metavar="OS/ARCH", help="which image of an index (default: this machine's)")
    im = isub.add_parser("import", help="ROOTFS -t NAME, or --busybox")
    im.set_defaults(fn=cmd_image_import)
    im.add_argument("rootfs", nargs="?", metavar="ROOTFS")
    im.add_argument("-t", "--tag", metavar="NAME")
    im.add_argument("--busybox", action="store_true", help="the lab's base image from busybox-static")
    sq = isub.add_parser("squash", help="NAME --onto BASE -t NEW [--method diff|merge]")
    sq.add_argument("name", metavar="NAME")
    sq.add_argument("--onto", required=True, metavar="BASE")
    sq.add_argument("-t", "--tag", required=True, metavar="NEW")
    sq.add_argument("--method", choices=["diff", "merge"], default="diff")
    sq.set_defaults(fn=cmd_image_squash)


def _args_build(p) -> None:
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", required=True, metavar="NAME")
    p.add_argument("--squash", action="store_true", help="squash everything after FROM into one layer")
    p.add_argument("--build-arg", action="append", metavar="NAME=VALUE")
    p.add_argument("--target", metavar="STAGE", help="build up to this stage of a multi-stage Dockerfile")
    p.add_argument("--memory", default="1g", help="memory limit of each RUN step (default 1g)")
    p.add_argument("--pids", type=_positive(int), default=512, help="most processes of a RUN step (default 512)")
    p.add_argument("context", metavar="CONTEXT")
    p.set_defaults(fn=cmd_build)


def _args_registry(p) -> None:
    rsub = p.add_subparsers(dest="action", required=True)
    rs = rsub.add_parser("serve")
    rs.add_argument("--addr", default="127.0.0.1:5000", type=_address, help="HOST:PORT to listen on")
    rs.add_argument("--root", required=True, help="where blobs and manifests are stored")
    rs.add_argument("--auth", metavar="USERS", help="an htpasswd file of bcrypt hashes (htpasswd -B): token auth on")
    rs.add_argument("--anonymous-pull", action="store_true", help="with --auth: let anyone pull")
    rs.add_argument("--grant", action="append", metavar="USER=PATTERN",
                    help="with --auth: let USER push and delete in repositories matching PATTERN "
                         "(everyone may already push under their own name, USER/...)")
    p.set_defaults(fn=cmd_registry)


def _args_push(p) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("ref", metavar="HOST:PORT/REPO:TAG")
    _args_login(p)
    p.set_defaults(fn=cmd_push)


def _args_pull(p) -> None:
    p.add_argument("ref", metavar="HOST:PORT/REPO:TAG")
    p.add_argument("-t", "--tag", metavar="NAME")
    p.add_argument("--parallel", type=int, default=4, help="layers at once; 1 is the v1-style serial pull")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--platform", metavar="OS/ARCH", help="which image of an index (default: this machine's)")
    _args_login(p)
    p.set_defaults(fn=cmd_pull)


def _args_login(p) -> None:
    p.add_argument("--user")
    p.add_argument("--password")


def _args_run(p) -> None:
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m")
    p.add_argument("--pids", "--pids-limit", type=_positive(int), help="most processes at once (docker: --pids-limit)")
    p.add_argument("--cpus", type=_positive(float), help="CPU time, e.g. 0.5")
    p.add_argument("-v", "--volume", action="append", metavar="HOST:CTR",
                   help="bind HOST (under the lab root) at CTR; CTR alone makes an anonymous volume")
    _args_env_workdir(p, made="made if missing")
    p.add_argument("--hostname")
    p.add_argument("--name", help="a name to commit or remove it by")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--privileged", action="store_true",
                   help="every capability, no seccomp filter, /proc and /sys writable, all devices")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability (or ALL)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (or ALL)")
    p.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                   help="seccomp=unconfined, no-new-privileges=false")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (else it is /dev/null)")
    p.add_argument("-t", "--tty", action="store_true", help="a pseudo-terminal for the command (TERM=xterm)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background under a supervisor; print the container's id (logs, stop, kill, exec)")
    p.add_argument("--entrypoint", metavar="CMD", help="run CMD instead of the image's ENTRYPOINT (and CMD)")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="a name or uid of the image's /etc/passwd")
    p.add_argument("--userns", choices=("host", "auto"), default="host",
                   help="auto: root inside is an unprivileged host uid, as podman run --userns=auto")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(fn=cmd_run)


def _args_ps(p) -> None:
    p.set_defaults(fn=cmd_ps)


def _args_logs(p) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(fn=cmd_logs)


def _args_stop(p) -> None:
    p.add_argument("-t", "--time", type=float, default=10, help="seconds to wait before SIGKILL (default 10)")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(fn=cmd_stop)


def _args_kill(p) -> None:
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(fn=cmd_kill)


def _args_env_workdir(p, made: str) -> None:
    """-e and -w, as docker run and docker exec take them."""
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set KEY in the container (KEY alone: this shell's value, if it has one)")
    p.add_argument("-w", "--workdir", metavar="DIR", help=f"the command's working directory ({made})")


def _env(flags: list[str]) -> list[str]:
    """-e flags as KEY=VALUE: KEY alone takes this shell's value, and is left out if it has none."""
    return [e if "=" in e else f"{e}={os.environ[e]}" for e in flags if "=" in e or e in os.environ]


def _args_exec(p) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (else it is /dev/null)")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]")
    _args_env_workdir(p, made="not made if missing")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(fn=cmd_exec)


def _args_commit(p) -> None:
    p.add_argument("container")
    p.add_argument("name")
    p.set_defaults(fn=cmd_commit)


def _args_rm(p) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first (else refused)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(fn=cmd_rm)


# name: (what `labkit --help` says, the function that adds the command's arguments)
COMMANDS = {
    "preflight": ("check kernel features, privileges and tools", _args_preflight),
    "reset": ("unmount and remove everything the lab made", _args_reset),
    "progress": ("your exercises and their state", _args_progress),
    "notebook": ("your copies of the lesson notebooks", _args_notebook),
    "layer": ("turn an upper dir into an OCI layer tar, or apply one", _args_layer),
    "image": ("the image store (an OCI layout under the lab root)", _args_image),
    "build": ("build an image from a Dockerfile: -f Dockerfile -t NAME [--squash] CONTEXT", _args_build),
    "registry": ("registry serve --addr 127.0.0.1:PORT --root DIR [--auth USERS]", _args_registry),
    "push": ("push an image: NAME HOST:PORT/REPO:TAG", _args_push),
    "pull": ("pull an image: HOST:PORT/REPO:TAG [-t NAME] [--parallel N]", _args_pull),
    "run": ("run a command in a container: IMAGE -- CMD...", _args_run),
    "ps": ("list containers", _args_ps),
    "logs": ("what a detached container wrote: CONTAINER", _args_logs),
    "stop": ("STOPSIGNAL, then SIGKILL after -t seconds: CONTAINER", _args_stop),
    "kill": ("send a signal (KILL by default) to a container's PID 1", _args_kill),
    "exec": ("run a command in a running container: CONTAINER -- CMD...", _args_exec),
    "commit": ("CONTAINER NAME: the container's read-write layer as a new image", _args_commit),
    "rm": ("remove containers (their volumes stay)", _args_rm),
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. With ``only`` (a command's name), just that command's arguments:
    argparse spends about half a millisecond on each subparser (mostly gettext), and
    `labkit run` should not pay for the seventeen it does not use. Any other ``only`` gets
    the whole parser, so that its error lists every command."""
    p = _Parser(prog="labkit", description="Container images from the kernel up.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments) in COMMANDS.items():
        if only not in COMMANDS or only == name:
            add_arguments(sub.add_parser(name, help=help_))
    return p


# `podman run` and `podman exec` (and `docker run`) exit 125 when the error is the tool's own (a
# bad flag, no such image), so that a script can tell it from the command's own status and from
# 126 and 127 (the command could not be executed, or was not found; container.StartError is
# 126 too). Other commands: 1, and 2 for a bad flag (argparse's).
OWN_ERROR = {"run": 125, "exec": 125}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    failed = OWN_ERROR.get(command, 1)
    try:
        args = parser(command).parse_args(argv)
    except SystemExit as e:
        raise SystemExit(failed if e.code == 2 and command in OWN_ERROR else e.code) from None
    if args.command == "notebook" and args.action == "reset" and not args.name:
        parser().error("notebook reset needs the lesson name, e.g. labkit notebook reset 01-overlayfs")
    try:
        return args.fn(args)
    except BrokenPipeError:     # `labkit progress | head`: the reader left; that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except LabError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return getattr(e, "run_status", failed) if command in OWN_ERROR else failed
    except OSError as e:        # a file named on the command line that is not there, say
        where = f": {e.filename}" if e.filename else ""
        print(f"labkit: {e.strerror or e}{where}. Check the path and try again.", file=sys.stderr)
        return failed


def command() -> None:
    """The `labkit` program: main(). For `run` and `exec`, what this process made is then
    released (lab's atexit handler, called here) and the process ends with os._exit(2),
    skipping the interpreter's shutdown (module teardown, garbage collection): 5-20 ms of a
    `labkit run`. Other commands exit normally, so every library's atexit handler runs."""
    status = main()
    if next((a for a in sys.argv[1:] if not a.startswith("-")), None) not in ("run", "exec"):
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    lab._release_own()
    os._exit(status)


if __name__ == "__main__":
    command()
