"""Lesson 07: build an image from a Dockerfile, one layer per instruction that changes files.

Each instruction runs on a snapshot (snapshot.py) prepared on top of the previous one:

* ``RUN`` runs the command in a real container (container.py) whose read-write layer *is*
  the snapshot's upper dir, so the new layer is exactly what the command changed;
* ``COPY``/``ADD`` copy files from the build context into the upper dir (ADD also unpacks a
  local tar, plain or compressed), with ``--chown`` and the files' modes;
* ``ENV``, ``WORKDIR``, ``USER``, ``CMD``, ``ENTRYPOINT``, ``EXPOSE``, ``LABEL``, ``ARG``
  change only the config: a history entry with ``empty_layer``;
* seed 004's two extra instructions: ``TAG name`` names the image as it stands, and
  ``COMPRESS base`` squashes every layer added since ``base`` into one (squash.py).

The **build cache** maps (parent ChainID, config, instruction, content of copied files) to
the layer it produced; an unchanged rebuild runs nothing and says ``CACHED`` for each step.
Errors name the Dockerfile line.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import container, kernel, lab, snapshot, squash
from .errors import LabError
from .image import digest, formats, layer, store as st
from .image import mutate
from .image.base import base_image

INSTRUCTIONS = ("FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT",
                "EXPOSE", "LABEL", "ARG", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "VOLUME", "ONBUILD",
                "TAG", "COMPRESS")
# the Dockerfile reference, "Environment replacement": $VAR is replaced in these; RUN, CMD,
# ENTRYPOINT, SHELL and HEALTHCHECK keep it for the shell in the container, at run time.
# ADD, COPY, ENV and LABEL are split into words first, then each word is expanded (_words):
# ENV B=$A keeps A's spaces in B
EXPANDED = ("EXPOSE", "FROM", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ONBUILD", "TAG", "COMPRESS")


class BuildError(LabError):
    """A Dockerfile that cannot be built; the message names the line."""


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str

    def __str__(self) -> str:
        return f"{self.name} {self.args}"


def parse(text: str) -> list[Instruction]:
    """Dockerfile lines -> instructions (comments, blank lines and ``\\`` continuations handled)."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue        # inside a continuation too: docker removes comment lines first
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.strip().partition(" ")
        if name.upper() not in INSTRUCTIONS:
            raise BuildError(f"Dockerfile line {start}: unknown instruction {name!r}",
                             f"use one of {', '.join(INSTRUCTIONS)}")
        out.append(Instruction(start, name.upper(), args.strip()))
        buf = ""
    if buf:
        raise BuildError(f"Dockerfile line {start}: the last line ends with '\\'", "finish the instruction")
    if not out or out[0].name not in ("FROM", "ARG"):
        raise BuildError("Dockerfile line 1: a Dockerfile starts with FROM", "add FROM busybox (or another image)")
    return out


@dataclass
class Step:
    """What one instruction did."""
    instruction: Instruction
    cached: bool = False
    layer: str = ""            # DiffID of the layer it made, if any

    def __str__(self) -> str:
        what = "CACHED" if self.cached else ("layer " + self.layer[7:19] if self.layer else "config only")
        return f"line {self.instruction.line:>3}: {str(self.instruction)[:60]:<60} {what}"


@dataclass
class _State:
    base: str = ""
    layers: list = field(default_factory=list)       # [(Descriptor, diff_id)] above base
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    created: str = st.EPOCH                           # the time of the last step (image-spec config.md)
    stage: str = ""                                   # FROM ... AS name
    stages: dict = field(default_factory=dict)        # finished stages: {name or index: image name}
    values: dict = field(default_factory=dict)        # ARG and ENV values before this instruction


RUN_MEMORY = "1g"      # a RUN step's default limits (docker build has none; a fork bomb made
RUN_PIDS = 512         # 1,504 processes here before): `labkit build --memory/--pids` raise them


class Builder:
    def __init__(self, context: str | os.PathLike, *, store: st.Store | None = None, quiet: bool = False,
                 cache_dir: str | os.PathLike | None = None, memory: str | int = RUN_MEMORY, pids: int = RUN_PIDS):
        self.context = Path(context).resolve()
        if not self.context.is_dir():
            raise BuildError(f"the build context {context} is not a directory", "give the directory with the files to COPY")
        self.store = store or st.Store()
        self.snaps = snapshot.of(self.store)
        # the build cache: one record per step key; a lesson that must start cold gives its own
        self.cache_dir = lab.inside(cache_dir) if cache_dir else lab.root() / "build-cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.memory, self.pids = memory, pids
        self.steps: list[Step] = []

    # --- the build ---
    def build(self, dockerfile: str, tag: str, build_args: dict | None = None, squash_all: bool = False,
              target: str | None = None) -> st.Image:
        """Build ``dockerfile`` (its text) and name the result ``tag``. A multi-stage Dockerfile
        (several FROM, ``FROM image AS name``) gives its last stage, or the stage ``target``."""
        st.check_name(tag)
        s = _State(args=dict(build_args or {}))
        self.steps, self._roots, self._root_ids = [], {}, {}
        instructions = parse(dockerfile)
        if target and not any(i.name == "FROM" and _stage_name(i.args) == target for i in instructions):
            raise BuildError(f"there is no stage {target!r} in the Dockerfile", "name one with FROM image AS NAME")
        try:
            for i, ins in enumerate(instructions, 1):
                if ins.name == "FROM" and target and s.stage == target:
                    break                               # --target: the stages after it are not built
                try:
                    step = self._do(s, ins)
                except BuildError:
                    raise
                except LabError as e:
                    raise BuildError(f"Dockerfile line {ins.line} ({ins.name}): {e.problem}", e.fix) from None
                self.steps.append(step)
                if not self.quiet:
                    print(f"Step {i}/{len(instructions)} {step}", flush=True)
            if not s.base:
                raise BuildError("the Dockerfile has no FROM", "add FROM busybox")
            img = self._commit(s, tag)
            if squash_all and s.layers:
                img = squash.squash(tag, s.base, tag, store=self.store)
            return img
        finally:
            for root in self._roots.values():
                lab.remove_tree(root)
            for name in set(s.stages.values()):   # the names go; the blobs stay for the build
                self.store.remove_ref(name)           # cache, until labkit image prune

    def _do(self, s: _State, ins: Instruction) -> Step:
        s.values = {**s.args, **_env(s.config)}         # what $VAR means in this instruction
        args = _expand(ins.args, s.values) if ins.name in EXPANDED else ins.args
        if ins.name != "FROM" and not s.base and ins.name != "ARG":
            raise BuildError(f"Dockerfile line {ins.line}: {ins.name} before FROM", "put FROM first")
        handler = getattr(self, f"_{ins.name.lower()}")
        return handler(s, ins, args)

    def _from(self, s: _State, ins: Instruction, args: str) -> Step:
        if s.base:                  # the stage before this one is finished: keep it as an image
            done = f"build-stage/{uuid.uuid4().hex[:12]}"
            self._commit(s, done)
            s.stages[str(len({*s.stages.values()}))] = done
            if s.stage:
                s.stages[s.stage] = done
        s.stage = _stage_name(args)
        name = args.split()[0] if args else ""
        name = s.stages.get(name, name)      # FROM an earlier stage
        if name == st.SCRATCH:                  # the empty image: no layers; PATH as docker's and buildah's
            s.base, s.layers, s.history, s.created = st.SCRATCH, [], [], st.EPOCH
            s.config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
            return Step(ins)
        if name.startswith("oci:"):
            path, _, tag = name[4:].rpartition(":")
            self.store.load(path, tag, f"from/{tag}")
            name = f"from/{tag}"
        img = self.store.image(name)
        s.base, s.layers, s.history = name, [], []
        s.created = img.config.get("created") or st.EPOCH
        s.config = json.loads(json.dumps(img.config.get("config", {})))
        snapshot.unpack(name, self.store)
        return Step(ins)

    def _run(self, s: _State, ins: Instruction, args: str) -> Step:
        cmd = _command(args, s.config.get("Shell"))
        env = list(s.config.get("Env", [])) + [f"{k}={v}" for k, v in s.args.items()]

        def make(upper: Path, lowers, work):
            c = container.Container.create(s.base, cmd, hostname="buildkit",
                                           layers=(lowers, upper, work),
                                           entrypoint=[],       # RUN does not go through ENTRYPOINT
                                           env=env, workdir=s.config.get("WorkingDir") or "/",
                                           user=s.config.get("User") or None, store=self.store,
                                           memory=self.memory, pids=self.pids)
            try:
                c.start()
                res = c.wait(timeout=600)
            finally:
                lab.remove_tree(c.dir)
            if res.exit_code != 0:
                raise BuildError(f"Dockerfile line {ins.line}: RUN {args[:60]} exited with status {res.exit_code}"
                                 + (f": {res.stderr.strip()[-300:]}" if res.stderr.strip() else ""),
                                 "fix the command (it ran in a container of the image built so far)")
        return self._layer_step(s, ins, make, extra="")

    def _copy(self, s: _State, ins: Instruction, args: str, add: bool = False) -> Step:
        opts, paths = _flags(_words(args, s.values, ins), ins)
        mode = _mode(opts["chmod"], ins) if "chmod" in opts else None
        if len(paths) < 2:
            raise BuildError(f"Dockerfile line {ins.line}: {ins.name} needs a source and a destination",
                             f"write it like {ins.name} app.py /app/")
        *sources, dest = paths
        if "from" in opts:          # COPY --from=STAGE|IMAGE: out of that image's root, not the context
            root, ignore = self._stage_root(s, opts["from"], ins), []
        else:
            root, ignore = self.context, self._ignore
        files = [self._source(root, one, ins) for src in sources for one in self._matches(root, src, ignore, ins)]
        content = hashlib.sha256(self._root_ids.get(root, "").encode())     # a stage: its image's digest
        for f in files:
            for p in sorted([f, *f.rglob("*")] if f.is_dir() else [f]):
                if _ignored(p, root, ignore):
                    continue
                content.update(str(p.relative_to(root)).encode() + oct(p.lstat().st_mode).encode())
                if p.is_file() and not p.is_symlink():
                    content.update(p.read_bytes())
        owner = opts.get("chown")
        skip = lambda d, names: [n for n in names if _ignored(Path(d) / n, root, ignore)]

        def make(upper: Path, lowers, work):
            workdir = s.config.get("WorkingDir") or "/"
            target = dest if dest.startswith("/") else os.path.join(workdir, dest)
            for f in files:
                tar = _archive(f) if add and f.is_file() else None
                if tar:
                    try:
                        layer.apply(tar, _under(upper, target))
                    finally:
                        if tar != f:
                            tar.unlink()
                    continue
                rel = target.strip("/")
                into = (dest.endswith(("/", "/.")) or dest in (".", "./") or len(files) > 1 or f.is_dir()
                        or any((d / rel).is_dir() for d in [upper, *lowers] if rel))
                final = _under(upper, target) / (f.name if into and not f.is_dir() else "")
                final.parent.mkdir(parents=True, exist_ok=True)
                if f.is_dir():
                    # every directory and file written must still resolve inside the upper dir:
                    # an earlier ADD of a tar may have planted symlinks there
                    shutil.copytree(f, final, symlinks=True, dirs_exist_ok=True,
                                    ignore=lambda d, names: _check_inside(upper, final / Path(d).relative_to(f),
                                                                          names, skip(d, names)),
                                    copy_function=lambda a, b: _copy_entry(a, _inside(upper, b)))
                else:
                    _copy_entry(f, _inside(upper, final))
                if owner:
                    uid, gid = _owner(owner, [upper, *lowers], ins)
                    for p in [final, *(final.rglob("*") if final.is_dir() else [])]:
                        os.chown(p, uid, gid, follow_symlinks=False)
                if mode is not None:        # what was copied, not the directory it was copied as
                    for p in (final.rglob("*") if f.is_dir() else [final]):
                        if not p.is_symlink():
                            os.chmod(_inside(upper, p), mode)
        return self._layer_step(s, ins, make, extra=content.hexdigest())

    def _add(self, s, ins, args):
        return self._copy(s, ins, args, add=True)

    # config-only instructions
    def _env(self, s, ins, args):
        """ENV K=V [K2=V2 ...], every $VAR as it was before this line; or the old form ENV K V...,
        whose value is the rest of the line."""
        env = dict(e.split("=", 1) for e in s.config.get("Env", []) if "=" in e)
        pairs = _words(args, s.values, ins)
        old_form = re.match(r"\s*([^\s=]+)\s+(\S.*)", args, re.S)
        if len(pairs) >= 2 and "=" not in pairs[0] and old_form:
            pairs = [f"{pairs[0]}={_words(old_form.group(2).strip(), s.values, ins, split=False)[0]}"]
        for p in pairs:
            k, _, v = p.partition("=")
            env[k] = v
        s.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        return self._config_step(s, ins)

    def _workdir(self, s, ins, args):
        s.config["WorkingDir"] = os.path.join(s.config.get("WorkingDir") or "/", args)
        return self._config_step(s, ins)

    def _user(self, s, ins, args):
        s.config["User"] = args
        return self._config_step(s, ins)

    def _cmd(self, s, ins, args):
        s.config["Cmd"] = _command(args, s.config.get("Shell"))
        return self._config_step(s, ins)

    def _entrypoint(self, s, ins, args):
        s.config["Entrypoint"] = _command(args, s.config.get("Shell"))
        return self._config_step(s, ins)

    def _shell(self, s, ins, args):
        """SHELL ["/bin/sh", "-c"]: what the shell form of RUN, CMD and ENTRYPOINT goes through."""
        shell = _command(args, None)
        if shell[:2] == ["/bin/sh", "-c"] and not args.strip().startswith("["):
            raise BuildError(f"Dockerfile line {ins.line}: SHELL needs the JSON form", 'write SHELL ["/bin/bash", "-c"]')
        s.config["Shell"] = shell
        return self._config_step(s, ins)

    def _stopsignal(self, s, ins, args):
        s.config["StopSignal"] = args.strip()
        return self._config_step(s, ins)

    def _healthcheck(self, s, ins, args):
        """HEALTHCHECK [--interval=D ...] CMD ... | NONE, stored as docker does (Test, durations in ns)."""
        words = args.split()
        opts = {}
        while words and words[0].startswith("--"):
            k, _, v = words.pop(0)[2:].partition("=")
            opts[k] = v
        if words and words[0].upper() == "NONE":
            s.config["Healthcheck"] = {"Test": ["NONE"]}
            return self._config_step(s, ins)
        if not words or words[0].upper() != "CMD":
            raise BuildError(f"Dockerfile line {ins.line}: HEALTHCHECK needs CMD or NONE", "write HEALTHCHECK CMD true")
        rest = args[args.upper().index("CMD") + 3:].strip()
        test = _command(rest, None)
        hc = {"Test": ["CMD", *test] if rest.startswith("[") else ["CMD-SHELL", rest]}
        names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod", "retries": "Retries"}
        for k, v in opts.items():
            if k not in names:
                raise BuildError(f"Dockerfile line {ins.line}: unknown HEALTHCHECK option --{k}",
                                 "use --interval, --timeout, --start-period or --retries")
            hc[names[k]] = int(v) if k == "retries" else _duration_ns(v, ins)
        s.config["Healthcheck"] = hc
        return self._config_step(s, ins)

    def _volume(self, s, ins, args):
        paths = json.loads(args) if args.strip().startswith("[") else args.split()
        vols = s.config.setdefault("Volumes", {})
        for p in paths:
            vols[p] = {}
        return self._config_step(s, ins)

    def _onbuild(self, s, ins, args):
        """ONBUILD INSTRUCTION: recorded for images built FROM this one (labkit records, never runs them)."""
        s.config.setdefault("OnBuild", []).append(args.strip())
        return self._config_step(s, ins)

    def _expose(self, s, ins, args):
        ports = s.config.setdefault("ExposedPorts", {})
        for p in args.split():
            ports[p if "/" in p else f"{p}/tcp"] = {}
        return self._config_step(s, ins)

    def _label(self, s, ins, args):
        labels = s.config.setdefault("Labels", {})
        for p in _words(args, s.values, ins):
            k, _, v = p.partition("=")
            labels[k] = v
        return self._config_step(s, ins)

    def _arg(self, s, ins, args):
        """ARG NAME[=default] ...: a --build-arg value wins; a default may use $VAR."""
        for word in _words(args, s.values, ins):
            k, _, v = word.partition("=")
            s.args.setdefault(k, v)
        return self._config_step(s, ins) if s.base else Step(ins)

    def _tag(self, s, ins, args):
        self._commit(s, args.strip())
        return Step(ins)

    def _compress(self, s, ins, args):
        base = args.strip()
        tmp = f"build-tmp/{uuid.uuid4().hex[:8]}"
        self._commit(s, tmp)
        img = squash.squash(tmp, base, tmp, store=self.store)
        b = self.store.image(base)
        s.base = base
        s.layers = [(img.layers[-1], img.diff_ids[-1])]
        s.history = img.history[len(b.history):]
        self.store.remove_ref(tmp)
        self._unpack(s)
        return Step(ins, layer=img.diff_ids[-1])

    # --- helpers ---
    def _config_step(self, s: _State, ins: Instruction) -> Step:
        s.created = _reproducible() or s.created      # a config step is as old as the step before
        s.history.append({"created": s.created, "created_by": f"{ins.name} {ins.args}", "empty_layer": True})
        return Step(ins)

    def _layer_step(self, s: _State, ins: Instruction, make, extra: str) -> Step:
        parent = self._top_chain(s)
        key = hashlib.sha256(json.dumps([parent, s.config, s.args, str(ins), extra]).encode()).hexdigest()
        hit = self.cache_dir / f"{key}.json"
        if hit.exists():
            rec = json.loads(hit.read_text())
            desc = st.Descriptor(rec["mediaType"], rec["digest"], rec["size"])
            if self.store.claim_blob(desc.digest):
                s.layers.append((desc, rec["diff_id"]))
                s.created = _reproducible() or rec.get("created") or s.created   # when it was first made
                s.history.append({"created": s.created, "created_by": f"{ins.name} {ins.args}"})
                self._unpack(s)
                return Step(ins, cached=True, layer=rec["diff_id"])
        snap_key = f"build/{uuid.uuid4().hex}"
        m = self.snaps.prepare(snap_key, parent)
        try:
            make(m.upperdir, m.lowerdirs, m.workdir)
            desc, diff_id = self.store.add_layer_dir(m.upperdir)
        except BaseException:
            self.snaps.remove(snap_key)
            raise
        s.layers.append((desc, diff_id))
        s.created = _reproducible() or _now()
        s.history.append({"created": s.created, "created_by": f"{ins.name} {ins.args}"})
        self.snaps.commit(self._top_chain(s), snap_key)
        hit.write_text(json.dumps({**desc.to_json(), "diff_id": diff_id, "created": s.created}))
        return Step(ins, layer=diff_id)

    def _base(self, s: _State) -> st.Image | None:
        """The image the stage is FROM; None for scratch."""
        return None if s.base == st.SCRATCH else self.store.image(s.base)

    def _stack(self, s: _State) -> tuple[list[st.Descriptor], list[str]]:
        """The layers built so far, base image first, and their DiffIDs."""
        base = self._base(s)
        return ((base.layers if base else []) + [d for d, _ in s.layers],
                (base.diff_ids if base else []) + [d for _, d in s.layers])

    def _top_chain(self, s: _State) -> str | None:
        """The ChainID of the layers so far; None before the first layer of a FROM scratch stage."""
        diff_ids = self._stack(s)[1]
        return digest.chain_ids(diff_ids)[-1] if diff_ids else None

    def _unpack(self, s: _State) -> None:
        """After a cache hit or a squash: the new top layer as a committed snapshot."""
        snapshot.unpack_layers(*self._stack(s), self.store)

    def _commit(self, s: _State, name: str) -> st.Image:
        return mutate.commit(name, list(s.layers), list(s.history), config=s.config,
                             base=self._base(s), store=self.store)

    def _source(self, root: Path, src: str, ins: Instruction) -> Path:
        """A COPY source inside ``root`` (the context, or a stage's root file system): symlinks
        resolved, refused if it leads out; .dockerignore'd files are not there. In a stage's
        root a symlink is resolved as if that root were "/", as docker does (an absolute
        /usr/bin/java -> /etc/alternatives/java stays in the stage): openat2(2) RESOLVE_IN_ROOT."""
        if root != self.context:
            p = _in_root(root, src)
            if p is None:          # never fall back to a host lookup: a symlink would lead out
                raise BuildError(f"Dockerfile line {ins.line}: {src!r} is not in that stage's files",
                                 "check the file name")
        else:
            p = (root / src).resolve()
        if p != root and root not in p.parents:
            raise BuildError(f"Dockerfile line {ins.line}: {src!r} is outside the build context",
                             "COPY only files inside the context directory")
        if not p.exists() or (root == self.context and _ignored(p, root, self._ignore)):
            where = f"the build context {self.context}" if root == self.context else "that stage's files"
            raise BuildError(f"Dockerfile line {ins.line}: {src!r} is not in {where}",
                             "check the file name (and .dockerignore)")
        return p

    def _matches(self, root: Path, src: str, ignore, ins: Instruction) -> list[str]:
        """A COPY source with wildcards (* ? [...], as Go's filepath.Match that docker uses: `*`
        stops at `/` and matches dot files too) as the paths it matches (:func:`_glob`); any
        other source as it is. A pattern that matches nothing is an error, as in docker."""
        if not any(c in src for c in "*?["):
            return [src]
        found = [m for m in _glob(root, src) if not _ignored(root / m, root, ignore)]
        if not found:
            raise BuildError(f"Dockerfile line {ins.line}: no file matches {src!r}",
                             "check the pattern (and .dockerignore)")
        return found

    @property
    def _ignore(self) -> list[tuple[bool, re.Pattern]]:
        if not hasattr(self, "_ignore_rules"):
            f = self.context / ".dockerignore"
            self._ignore_rules = dockerignore(f.read_text()) if f.is_file() else []
        return self._ignore_rules

    def _stage_root(self, s: _State, ref: str, ins: Instruction) -> Path:
        """The root file system of an earlier stage (by name or index) or of an image, unpacked
        once per build into a scratch directory."""
        name = s.stages.get(ref, ref)
        if name not in self._roots:
            if name == ref and ref not in self.store.refs():
                raise BuildError(f"Dockerfile line {ins.line}: --from={ref}: no earlier stage or image is called that",
                                 "name the stage with FROM image AS NAME before it")
            self._roots[name] = self.store.flatten(name, lab.scratch(f"stage-{uuid.uuid4().hex[:8]}"))
            self._root_ids[self._roots[name]] = self.store.image(name).manifest_desc.digest
        return self._roots[name]


@dataclass
class Built:
    """What :func:`build` made: the image, and what each instruction did."""
    image: st.Image
    steps: list[Step]


def build(context: str | os.PathLike, tag: str, dockerfile: str | None = None, squash_all: bool = False,
          build_args: dict | None = None, quiet: bool = False, *, store: st.Store | None = None,
          cache_dir: str | os.PathLike | None = None, memory: str | int = RUN_MEMORY, pids: int = RUN_PIDS,
          target: str | None = None) -> Built:
    """Build ``context/Dockerfile`` (or the text ``dockerfile``) as ``tag`` in ``store``, with the
    build cache in ``cache_dir`` (the lab's shared ``build-cache/`` by default). Each RUN step is
    a container with Docker's confinement and at most ``memory`` and ``pids``."""
    b = Builder(context, store=store, quiet=quiet, cache_dir=cache_dir, memory=memory, pids=pids)
    text = dockerfile if dockerfile is not None else read_dockerfile(Path(context) / "Dockerfile")
    img = b.build(text, tag, build_args, squash_all, target)
    return Built(img, b.steps)


def read_dockerfile(path: str | os.PathLike) -> str:
    """The Dockerfile's text; it must be UTF-8, as BuildKit reads it."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BuildError(f"{path} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text",
                         "save the Dockerfile as UTF-8") from None


def _now() -> str:
    """This moment in RFC 3339, UTC, as image-spec config.md writes ``created``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reproducible() -> str | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org; buildah and BuildKit honour it): every step
    gets that time, so the same Dockerfile gives the same image digest anywhere. Without it a
    layer step carries the time it was first built (kept in the build cache), and a step that
    makes no layer the time of the step before: a fully cached rebuild is the same image."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if not sde:
        return None
    if not sde.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={sde!r} is not a number of seconds", "e.g. SOURCE_DATE_EPOCH=0")
    return datetime.fromtimestamp(int(sde), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stage_name(args: str) -> str:
    """'busybox AS build' -> 'build' ('' without AS)."""
    words = args.split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else ""


def dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    """.dockerignore's rules (the Dockerfile reference): one pattern a line, Go's filepath.Match
    (``*`` and ``?`` stay within a path component) plus ``**`` for any number of them, a
    leading ``!`` for an exception; the last rule that matches decides."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
        rx = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pat):
            rx += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((keep, re.compile(rx + "(?:/.*)?")))      # a directory that matches takes its contents
    return rules


def _ignored(p: Path, root: Path, rules) -> bool:
    if not rules or p == root:
        return False
    rel, out = str(p.relative_to(root)), False
    for keep, rx in rules:
        if rx.fullmatch(rel):
            out = not keep
    return out


def _owner(spec: str, roots: list[Path], ins: Instruction) -> tuple[int, int]:
    """--chown=USER[:GROUP]: numbers as they are; names looked up in the image's /etc/passwd
    and /etc/group (the topmost layer that has the file), as docker does. The files are read
    with openat2(RESOLVE_IN_ROOT), so an image's symlink cannot make us read the host's."""
    user, _, group = spec.partition(":")

    def lookup(name: str, table: str, field: int) -> int:
        if name.isascii() and name.isdigit():
            return int(name)
        for r in roots:
            try:
                text = _read_in_root(r, f"etc/{table}")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                parts = line.split(":")
                if len(parts) > field and parts[0] == name and parts[field].isdigit():
                    return int(parts[field])
            break
        raise BuildError(f"Dockerfile line {ins.line}: --chown={spec}: no {'user' if table == 'passwd' else 'group'} "
                         f"{name!r} in the image's /etc/{table}",
                         "use numbers (--chown=1000:1000) or add the user in an earlier RUN step")
    uid = lookup(user, "passwd", 2)
    if group:
        return uid, lookup(group, "group", 2)
    if user.isascii() and user.isdigit():
        return uid, uid
    for r in roots:          # a user name alone: its primary group from /etc/passwd
        try:
            for line in _read_in_root(r, "etc/passwd").splitlines():
                parts = line.split(":")
                if len(parts) > 3 and parts[0] == user and parts[3].isdigit():
                    return uid, int(parts[3])
        except FileNotFoundError:
            continue
        break
    return uid, uid


def _read_in_root(root: Path, rel: str) -> str:
    top = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            fd = kernel.openat2(top, rel, os.O_RDONLY, kernel.RESOLVE_IN_ROOT)
        except kernel.KernelError as e:
            raise FileNotFoundError(rel) from e
        with os.fdopen(fd, "r", errors="replace") as f:
            return f.read(1 << 20)
    finally:
        os.close(top)


def _copy_entry(src: str, dst: Path) -> None:
    """copytree's copy function: files with their modes and times; a named pipe is made anew
    (as docker's COPY does, through its tar stream); a socket is skipped (tar cannot hold one)."""
    st_ = os.lstat(src)
    if stat.S_ISFIFO(st_.st_mode):
        os.mkfifo(dst, stat.S_IMODE(st_.st_mode))
    elif not stat.S_ISSOCK(st_.st_mode):
        shutil.copy2(src, dst, follow_symlinks=False)


def _command(args: str, shell: list[str] | None) -> list[str]:
    """Exec form ``["a", "b"]`` as is; shell form through ``shell`` (SHELL; /bin/sh -c by default)."""
    a = args.strip()
    if a.startswith("["):
        try:
            v = json.loads(a)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v
        except ValueError:
            pass
    return [*(shell or ["/bin/sh", "-c"]), a]


def _duration_ns(text: str, ins: Instruction) -> int:
    """'30s', '1m30s', '500ms' (Go's time.ParseDuration) -> nanoseconds, as docker stores them."""
    units = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise BuildError(f"Dockerfile line {ins.line}: {text!r} is not a duration", "write it like 30s or 1m30s")
    return int(sum(float(n) * units[u] for n, u in parts))


def _env(config: dict) -> dict:
    return dict(e.split("=", 1) for e in config.get("Env", []) if "=" in e)


# $NAME, ${NAME}, ${NAME:-word} (word if NAME is unset or empty), ${NAME:+word} (word if it is set)
_VARIABLE = re.compile(r"\$(?:(\w+)|\{(\w+)(?::([-+])((?:[^}\\]|\\.)*))?\})")


def _substitute(m: re.Match, values: dict) -> str:
    name = m.group(1) or m.group(2)
    value = str(values.get(name, ""))       # unknown names become empty, as in docker
    if m.group(3) == "-":
        return value or _expand(m.group(4), values)
    if m.group(3) == "+":
        return _expand(m.group(4), values) if value else ""
    return value


def _expand(text: str, values: dict) -> str:
    """The Dockerfile reference's environment replacement in ``text``, from ARG and ENV
    values: $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word}; \\$ is a literal $."""
    return re.sub(r"\\\$|" + _VARIABLE.pattern, lambda m: "$" if m.group(0) == "\\$" else _substitute(m, values), text)


def _words(text: str, values: dict, ins: Instruction, split: bool = True) -> list[str]:
    """``text`` as words, each expanded, by the Dockerfile's shell-word rules (moby's shell
    lexer): blanks separate words; '...' is literal; "..." and bare text replace variables
    (:func:`_expand`); a backslash escapes the next character (in "...", only $, " and \\).
    ``split=False``: one word, blanks kept (ENV's old form K V...)."""
    words, word, quote, started, i = [], [], None, False, 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                word.append(c)
        elif c == "\\" and i + 1 < len(text) and (quote is None or text[i + 1] in '$"\\'):
            word.append(text[i + 1])
            i += 1
        elif c == "$" and (m := _VARIABLE.match(text, i)):
            word.append(_substitute(m, values))
            i = m.end()
            continue
        elif quote == '"':
            if c == '"':
                quote = None
            else:
                word.append(c)
        elif c in "'\"":
            quote, started = c, True
        elif c.isspace() and split:
            if word or started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
        i += 1
    if quote:
        raise BuildError(f"Dockerfile line {ins.line}: {ins.name} {text[:50]}: no closing quotation",
                         "close the quote (or escape it with \\)")
    if word or started or not split:
        words.append("".join(word))
    return words


def _glob(root: Path, pattern: str) -> list[str]:
    """The paths below ``root`` that ``pattern`` matches, one component at a time (fnmatch(3)
    rules per name), sorted. Each directory listed is reached inside the root (:func:`_in_root`,
    openat2 RESOLVE_IN_ROOT): a stage's absolute symlink /cfg -> /etc/apt lists the stage's
    /etc/apt, never the host's."""
    found = [""]
    for part in pattern.strip("/").split("/"):
        matched = []
        for rel in found:
            d = _in_root(root, rel) if rel else root
            if d is None or not d.is_dir():
                continue
            if any(c in part for c in "*?["):
                matched += [os.path.join(rel, n) for n in sorted(os.listdir(d)) if fnmatch.fnmatchcase(n, part)]
            elif os.path.lexists(d / part):
                matched.append(os.path.join(rel, part))
        found = matched
    return found


# the flags each takes, as podman 4.3's buildah (BuildKit's --link, --parents, --checksum are not)
COPY_FLAGS = {"COPY": ("chmod", "chown", "from"), "ADD": ("chmod", "chown")}


def _flags(words: list[str], ins: Instruction) -> tuple[dict, list[str]]:
    """The leading ``--name[=value]`` words of COPY or ADD, checked against COPY_FLAGS, then
    the other words (the sources and the destination)."""
    opts, n = {}, 0
    while n < len(words) and words[n].startswith("--"):
        k, _, v = words[n][2:].partition("=")
        if k not in COPY_FLAGS[ins.name]:
            known = COPY_FLAGS[ins.name]
            raise BuildError(f"Dockerfile line {ins.line}: {ins.name} takes only "
                             f"{', '.join('--' + f for f in known[:-1])} and --{known[-1]} (not --{k})",
                             "remove that flag (a BuildKit one has no equivalent here)")
        opts[k], n = v, n + 1
    return opts, words[n:]


def _mode(spec: str, ins: Instruction) -> int:
    """--chmod=OCTAL (e.g. 755) as a number; symbolic modes (u+x) are refused, as by buildah."""
    if not re.fullmatch(r"[0-7]{1,4}", spec):
        raise BuildError(f"Dockerfile line {ins.line}: --chmod={spec} is not an octal mode", "write it like --chmod=755")
    return int(spec, 8)


def _in_root(root: Path, src: str) -> Path | None:
    """``src`` looked up with ``root`` as "/" (openat2 RESOLVE_IN_ROOT, no magic links); the
    path the kernel reached, read back from /proc/self/fd; None if it is not there."""
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = kernel.openat2(rootfd, src.lstrip("/") or ".", os.O_PATH,
                            kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_MAGICLINKS)
    except OSError:
        return None
    finally:
        os.close(rootfd)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def _inside(upper: Path, p: Path) -> Path:
    """``p`` itself, if it (and any symlink it is) resolves inside ``upper``; else a BuildError."""
    real = Path(os.path.realpath(p))
    if real != upper and upper not in real.parents:
        raise BuildError(f"/{p.relative_to(upper)} leads out of the image through a symlink (to {real})",
                         "COPY and ADD never write through such a symlink; remove it in an earlier step")
    return p


def _check_inside(upper: Path, d: Path, names: list[str], skip: list[str] = ()) -> list[str]:
    """copytree's ignore hook: check each destination below ``d`` first; ignore ``skip``
    (the names .dockerignore leaves out)."""
    for n in names:
        _inside(upper, d / n)
    return list(skip)


def _under(upper: Path, target: str) -> Path:
    p = (upper / target.lstrip("/")).resolve()
    if p != upper and upper not in p.parents:
        raise BuildError(f"destination {target!r} leaves the image", "use a path inside the image")
    return p


def _archive(f: Path) -> Path | None:
    """ADD's rule (the Dockerfile reference): a local tar archive, plain or compressed (gzip,
    bzip2, xz, and zstd as moby and buildah read it), is unpacked at the destination; any
    other file (a gzip of a text file, say) is copied as it is. Returns the plain tar to apply
    (a decompressed copy in the lab's tmp, which the caller deletes), or None."""
    import tarfile
    with open(f, "rb") as r:
        kind = formats.archive_compression(r.read(6))
    if kind == "none":
        return f if tarfile.is_tarfile(f) else None
    out = lab.root() / "tmp" / f"add-{uuid.uuid4().hex}.tar"
    out.parent.mkdir(exist_ok=True)
    try:
        with open(f, "rb") as r, formats.decompressed(r, kind) as src, open(out, "wb") as dst:
            st.decompress(src, dst, out.parent, f"ADD {f.name} ({kind})")
        if tarfile.is_tarfile(out):
            return out
    except LabError:
        out.unlink(missing_ok=True)
        raise
    except Exception:       # not a whole stream of that kind (EOFError, OSError, ZstdError ...)
        pass
    out.unlink(missing_ok=True)
    return None


# --- the seed's "online compile": a build image made from the host's own toolchain ----------
TOOLCHAIN = ("gcc", "libc6-dev")
SKIP = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/", "/usr/share/lintian/")


def toolchain_image(name: str = "lab/toolchain", store: st.Store | None = None) -> st.Image:
    """busybox plus the host's installed gcc and libc6-dev (and everything they depend on),
    copied file by file from dpkg's lists: a C build image without any download. Cached by name."""
    store = store or st.Store()
    if name in store.refs():
        return store.image(name)
    base_image(store)
    packages = _closure(TOOLCHAIN)
    root = lab.fresh_dir(lab.root() / "tmp" / "toolchain-rootfs")
    try:
        for pkg in sorted(packages):
            files = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout.splitlines()
            for f in files:
                if not f.startswith("/") or f.startswith(SKIP) or not os.path.lexists(f):
                    continue
                dst = root / f.lstrip("/")
                if os.path.isdir(f):         # a real directory here, even where the host has a
                    dst.mkdir(parents=True, exist_ok=True)   # usrmerge link (/lib -> usr/lib)
                elif not os.path.lexists(dst):
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if os.path.islink(f):
                        os.symlink(os.readlink(f), dst)
                    else:
                        shutil.copy2(f, dst)
        return mutate.add_layer("busybox", root, name, f"host toolchain: {' '.join(sorted(packages))}", store=store)
    finally:
        lab.remove_tree(root)


def _closure(roots) -> set[str]:
    """Installed packages needed by ``roots`` (Depends and Pre-Depends, first installed alternative)."""
    if not shutil.which("dpkg-query"):
        raise BuildError("dpkg-query is missing: the toolchain image is made from Debian packages",
                         "run the lab on Debian 12 (scripts/provision.sh installs gcc)")
    seen, todo = set(), list(roots)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        fields = subprocess.run(["dpkg-query", "-W", "-f", "${Status}|${Depends},${Pre-Depends}", pkg],
                                capture_output=True, text=True).stdout
        status, _, depends = fields.partition("|")
        if "install ok installed" not in status:
            raise BuildError(f"the package {pkg} is not installed", f"apt-get install {pkg}")
        seen.add(pkg)
        for alt in filter(None, (a.strip() for a in depends.split(","))):
            for choice in alt.split("|"):
                name = re.split(r"[ (:]", choice.strip())[0]
                ok = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", name], capture_output=True, text=True)
                if "install ok installed" in ok.stdout:
                    todo.append(name)
                    break
    return seen
