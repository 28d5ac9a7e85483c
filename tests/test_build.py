"""The snapshotter, the Dockerfile builder and both squash methods on the real kernel."""
import json
import os
import re
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as hs

from labkit import build, container, lab, mountinfo, overlay, squash
from labkit.image import mutate
from labkit.image import store as st
from labkit.snapshot import Snapshotter, SnapshotError
from labkit.tree import read_tree, write_tree


def _ctx(files: dict, dockerfile: str):
    d = lab.scratch("ctx")
    write_tree(d, files)
    (d / "Dockerfile").write_text(dockerfile)
    return d


# --- snapshotter ---------------------------------------------------------------------------
def test_snapshotter_verbs(lab_root):
    sn = Snapshotter()
    m = sn.prepare("base-work")
    (m.upperdir / "a").write_text("1")
    base = sn.commit("base", "base-work")
    assert base.kind == "committed" and base.parent is None
    m2 = sn.prepare("child-work", "base")
    assert m2.lowerdirs == [sn.dir("base")] and m2.upperdir.is_dir()
    with overlay.Overlay(m2.lowerdirs, m2.upperdir, m2.workdir, lab.root() / "m") as ov:
        (ov.merged / "b").write_text("2")
        assert sorted(os.listdir(ov.merged)) == ["a", "b"]
    sn.commit("child", "child-work")
    v = sn.view("look", "child")
    assert v.upperdir is None and len(v.lowerdirs) == 2
    assert [i.key for i in sn.walk()] == ["base", "child", "look"]
    assert sn.usage("child") > 0
    with pytest.raises(SnapshotError, match="parent of"):
        sn.remove("child")
    with pytest.raises(SnapshotError, match="only an active snapshot"):
        sn.commit("x", "look")
    sn.remove("look"), sn.remove("child"), sn.remove("base")
    assert sn.walk() == []


# --- the builder -----------------------------------------------------------------------------
DOCKERFILE = """\
FROM busybox
ARG WHO=world
ENV GREETING="hello"
WORKDIR /app
COPY --chown=1000:1000 hello.txt .
COPY site/ /srv/site/
ADD bundle.tar /opt/
RUN echo "$GREETING $WHO" > /app/run.txt && rm /bin/vi
TAG lab/intermediate
USER 1000
RUN id -u > /tmp/uid
LABEL team=lab
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/run.txt"]
"""


def _bundle(d):
    with tarfile.open(d / "bundle.tar", "w") as t:
        info = tarfile.TarInfo("tool/readme")
        data = b"from a tar\n"
        info.size = len(data)
        import io
        t.addfile(info, io.BytesIO(data))


def test_every_instruction(busybox):
    ctx = _ctx({"hello.txt": "hi\n", "site/index.html": "<h1/>\n"}, DOCKERFILE)
    _bundle(ctx)
    img = build.build(ctx, "lab/app", quiet=True).image
    tree = read_tree(busybox.flatten("lab/app", lab.scratch("flat")))
    assert tree["app/hello.txt"] == "hi\n" and tree["srv/site/index.html"] == "<h1/>\n"
    assert tree["opt/tool/readme"] == "from a tar\n"
    assert tree["app/run.txt"] == "hello world\n" and "bin/vi" not in tree
    assert tree["tmp/uid"] == "1000\n"
    assert os.stat(lab.root() / "scratch" / "flat" / "app" / "hello.txt").st_uid == 1000
    conf = img.config["config"]
    assert conf["User"] == "1000" and conf["WorkingDir"] == "/app" and "GREETING=hello" in conf["Env"]
    assert conf["Labels"] == {"team": "lab"} and "8080/tcp" in conf["ExposedPorts"]
    assert conf["Entrypoint"] == ["/bin/sh", "-c"] and conf["Cmd"] == ["cat /app/run.txt"]
    layered = [h for h in img.history if not h.get("empty_layer")]
    assert len(layered) == len(img.layers) == 1 + 5         # base + COPY, COPY, ADD, RUN, RUN
    assert sum(1 for h in img.history if h.get("empty_layer")) == 8
    assert len(busybox.image("lab/intermediate").layers) == 5   # TAG: the image as it stood
    _, r = container.run("lab/app")
    assert r.stdout == "hello world\n"


def test_rebuild_is_all_cache_and_same_digest(busybox):
    ctx = _ctx({"hello.txt": "hi\n"}, "FROM busybox\nCOPY hello.txt /\nRUN echo x > /x\n")
    built = build.build(ctx, "lab/c", quiet=True)
    one, steps1 = built.image, built.steps
    built = build.build(ctx, "lab/c", quiet=True)
    two, steps2 = built.image, built.steps
    assert not any(s.cached for s in steps1) and [s.cached for s in steps2 if s.layer] == [True, True]
    assert one.manifest_desc.digest == two.manifest_desc.digest
    (ctx / "hello.txt").write_text("changed\n")
    built = build.build(ctx, "lab/c", quiet=True)
    three, steps3 = built.image, built.steps
    assert [s.cached for s in steps3 if s.layer] == [False, False]     # a changed file misses from there on
    assert three.manifest_desc.digest != one.manifest_desc.digest


def test_errors_name_the_line(busybox):
    ctx = _ctx({}, "")
    with pytest.raises(build.BuildError, match="line 3: unknown instruction 'RUNN'"):
        build.build(ctx, "lab/e", "FROM busybox\n\nRUNN true\n", quiet=True)
    with pytest.raises(build.BuildError, match="line 2: RUN exit 3 exited with status 3"):
        build.build(ctx, "lab/e", "FROM busybox\nRUN exit 3\n", quiet=True)
    with pytest.raises(build.BuildError, match="line 2: 'nothere' is not in the build context"):
        build.build(ctx, "lab/e", "FROM busybox\nCOPY nothere /\n", quiet=True)
    with pytest.raises(build.BuildError, match="outside the build context"):
        build.build(ctx, "lab/e", "FROM busybox\nCOPY ../../etc/passwd /\n", quiet=True)
    with pytest.raises(build.BuildError, match="starts with FROM"):
        build.build(ctx, "lab/e", "RUN true\n", quiet=True)
    with pytest.raises(build.BuildError, match=r"line 1 \(FROM\): there is no image"):
        build.build(ctx, "lab/e", "FROM nothing\n", quiet=True)
    (ctx / "f").write_text("f")         # a flag COPY or ADD does not take, or a bad mode: one line, as podman
    for df, says in (("COPY --link f /f", "COPY takes only --chmod, --chown and --from (not --link)"),   # before:
                     ("COPY --bogus=1 f /f", "COPY takes only --chmod, --chown and --from (not --bogus)"),  # ignored,
                     ("ADD --from=busybox f /f", "ADD takes only --chmod and --chown (not --from)"),       # or a path
                     ("COPY --chmod=u+x f /f", "--chmod=u+x is not an octal mode")):
        with pytest.raises(build.BuildError, match=re.escape(f"line 2: {says}")):
            build.build(ctx, "lab/e", f"FROM busybox\n{df}\n", quiet=True)
    assert lab.entries() == [] and container.containers() == []


def test_compress_and_squash_flag(busybox):
    ctx = _ctx({"a": "1"}, "FROM busybox\nCOPY a /a\nRUN echo 2 > /b\nRUN rm /a\nCOMPRESS busybox\n")
    img = build.build(ctx, "lab/z", quiet=True).image
    assert len(img.layers) == 2 and "squash" in img.history[-1]["created_by"]
    tree = read_tree(busybox.flatten("lab/z", lab.scratch("f")))
    assert tree["b"] == "2\n" and "a" not in tree
    ctx2 = _ctx({"a": "1"}, "FROM busybox\nCOPY a /a\nRUN echo 2 > /b\n")
    flat = build.build(ctx2, "lab/s", squash_all=True, quiet=True).image
    assert len(flat.layers) == 2


def test_built_image_runs_the_same_under_runc(busybox):
    ctx = _ctx({}, "FROM busybox\nRUN echo built > /msg\nCMD [\"cat\", \"/msg\"]\n")
    build.build(ctx, "lab/r", quiet=True)
    _, mine = container.run("lab/r")
    out = lab.scratch("runc")
    busybox.save(out / "layout", "v1", "lab/r")
    subprocess.run(["umoci", "unpack", "--image", f"{out / 'layout'}:v1", str(out / "bundle")], check=True,
                   capture_output=True)
    spec = json.loads((out / "bundle" / "config.json").read_text())
    spec["process"]["terminal"] = False
    (out / "bundle" / "config.json").write_text(json.dumps(spec))
    r = subprocess.run(["runc", "--root", str(out / "state"), "run", "--bundle", str(out / "bundle"),
                        f"labkit-build-{os.getpid()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == mine.stdout == "built\n"


# --- squash: both methods, random stacks ---------------------------------------------------------
NAMES = ["a", "b", "c"]
change = hs.tuples(hs.sampled_from(["add", "delete", "opaque", "mkdir"]), hs.sampled_from(NAMES),
                   hs.sampled_from(NAMES), hs.text("xyz", min_size=1, max_size=3))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(layers=hs.lists(hs.lists(change, min_size=1, max_size=4), min_size=1, max_size=4))
def test_squash_methods_agree_on_random_stacks(busybox, layers):
    d = lab.scratch("rand")
    write_tree(d / "base", {"a/a": "base", "b": "base", "c/": None})
    mutate.add_layer("busybox", d / "base", "rand/base", "base", store=busybox)
    prev = "rand/base"
    for i, changes in enumerate(layers):
        up = d / f"l{i}"
        up.mkdir()
        for op, top, sub, text in changes:
            p = up / top / sub
            if os.path.lexists(up / top) and not (up / top).is_dir():
                continue        # a whiteout or a file named top: nothing goes below it here
            if op == "add":
                p.parent.mkdir(exist_ok=True)
                if not os.path.lexists(p):
                    p.write_text(text)
            elif op == "delete" and not os.path.lexists(up / top):
                overlay.make_whiteout(up / top)
            elif op == "opaque":
                (up / top).mkdir(exist_ok=True)
                overlay.make_opaque(up / top)
            elif op == "mkdir":
                (up / top).mkdir(exist_ok=True)
        mutate.add_layer(prev, up, f"rand/l{i}", f"layer {i}", store=busybox)
        prev = f"rand/l{i}"
    a = squash.squash(prev, "rand/base", "rand/merged", "merge", store=busybox)
    b = squash.squash(prev, "rand/base", "rand/diffed", "diff", store=busybox)
    assert a.layers[-1].digest == b.layers[-1].digest
    want = read_tree(busybox.flatten(prev, lab.scratch("want")))
    assert read_tree(busybox.flatten("rand/merged", lab.scratch("got"))) == want
    for name in [n for n in busybox.refs() if n.startswith("rand/")]:
        busybox.remove_ref(name)


def test_squash_reads_the_images_through_overlay_views_not_copies(busybox, monkeypatch):
    """Squash used to flatten both images into copies (12 layer applies for 10 layers onto
    busybox); it now compares read-only overlay mounts of their unpacked snapshots. The same
    bytes rewritten are no change, the same size with other bytes is one, and nothing is
    flattened or left mounted."""
    d = lab.scratch("views")
    mutate.add_layer("busybox", write_tree(d / "l0", {"etc/same": "abc", "etc/other": "abc"}), "views/l0", "l0",
                     store=busybox)
    mutate.add_layer("views/l0", write_tree(d / "l1", {"etc/same": "abc", "etc/other": "xyz"}), "views/l1", "l1",
                     store=busybox)
    monkeypatch.setattr(st.Store, "flatten", lambda *a: pytest.fail("squash flattened an image"))
    img = squash.squash("views/l1", "views/l0", "views/sq", store=busybox)
    names = [m.name for m in tarfile.open(busybox.open_layer(img.layers[-1]))]
    assert "etc/other" in names and "etc/same" not in names
    assert not mountinfo.mounts_under(lab.root())
    for name in ("views/sq", "views/l1", "views/l0"):
        busybox.remove_ref(name)


def test_squash_writes_its_changeset_on_a_tmpfs_when_it_fits_and_on_disk_otherwise(busybox, monkeypatch):
    """The changeset is scratch (written, tarred, deleted): on a tmpfs when the layers it
    replaces fit in a quarter of the lab's memory room, else on the lab root's disk. Both
    give the same layer, and neither leaves a mount."""
    from labkit import cgroups, kernel
    d = lab.scratch("scratch")
    mutate.add_layer("busybox", write_tree(d / "l0", {"etc/a": "a", "etc/b": "b"}), "scr/l0", "l0", store=busybox)
    mutate.add_layer("scr/l0", write_tree(d / "l1", {"etc/b": "bb", "srv/c": "c"}), "scr/l1", "l1", store=busybox)
    kinds, mount = [], kernel.mount
    monkeypatch.setattr(kernel, "mount", lambda src, target, fstype, *a: (kinds.append(fstype),
                                                                          mount(src, target, fstype, *a))[1])
    digests = []
    for room in (None, 0):
        if room is not None:
            monkeypatch.setattr(cgroups, "memory_room", lambda: room)
        kinds.clear()
        digests.append(squash.squash("scr/l1", "busybox", "scr/sq", store=busybox).layers[-1].digest)
        assert ("tmpfs" in kinds) == (room is None) and not mountinfo.mounts_under(lab.root())
    assert digests[0] == digests[1]
    for name in ("scr/sq", "scr/l1", "scr/l0"):
        busybox.remove_ref(name)


def test_exercises(busybox):
    from labkit.exercises import l07_build as ex
    bad = "FROM busybox\nCOPY app.py /app/\nRUN echo slow > /slow\n"
    good = "FROM busybox\nRUN echo slow > /slow\nCOPY app.py /app/\n"
    assert not ex.check_cache_order(bad).ok and ex.check_cache_order(good).ok
    leak = lab.scratch("leak")
    write_tree(leak, {"Dockerfile": "FROM busybox\nCOPY token /root/.token\nRUN mkdir -p /app && echo d > /app/data && rm /root/.token\n",
                      "token": "t\n"})
    build.build(leak, "lesson07/leaky", quiet=True)
    assert not ex.check_squashed("lesson07/leaky").ok
    assert not ex.check_squashed("busybox").ok            # lacks the token, but is not leaky's tree
    build.build(write_tree(lab.scratch("other"), {"Dockerfile": "FROM busybox\nRUN mkdir -p /app && echo x > /app/data\n"}),
                "lesson07/rebuilt", quiet=True)
    assert not ex.check_squashed("lesson07/rebuilt").ok   # no token, but not leaky's files
    busybox.remove_ref("lesson07/rebuilt")
    squash.squash("lesson07/leaky", "busybox", "lesson07/clean", store=busybox)
    assert ex.check_squashed("lesson07/clean").ok


def test_cli_build_and_squash(busybox):
    import sys
    ctx = _ctx({"a": "1"}, "FROM busybox\nCOPY a /a\nRUN echo 2 > /b\n")
    env = dict(os.environ, LABKIT_HOME=str(lab.root()))
    r = subprocess.run([sys.executable, "-m", "labkit", "build", "-t", "cli/app", str(ctx)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "built cli/app" in r.stdout and "Step 3/3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "labkit", "image", "squash", "cli/app", "--onto", "busybox",
                        "-t", "cli/flat", "--method", "merge"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and len(busybox.image("cli/flat").layers) == 2
    r = subprocess.run([sys.executable, "-m", "labkit", "build", "-t", "cli/bad", "-f", str(ctx / "nope"), str(ctx)],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0


def test_online_compile_keeps_only_the_last_layer(busybox):
    from labkit.image import waste
    build.toolchain_image()
    ctx = _ctx({"hello.c": '#include <stdio.h>\nint main(void){puts("compiled");return 0;}\n'}, "")
    build.build(ctx, "lab/cc", "FROM lab/toolchain\nCOPY hello.c /src/\nRUN mkdir -p /out && gcc -static -o /out/hello /src/hello.c\n",
                quiet=True)
    out = lab.scratch("bin") / "hello"
    out.write_bytes(waste.read_from_layer(busybox, "lab/cc", -1, "out/hello"))
    out.chmod(0o755)
    assert subprocess.run([str(out)], capture_output=True, text=True).stdout == "compiled\n"
    assert build.toolchain_image().manifest_desc == busybox.image("lab/toolchain").manifest_desc   # cached


def test_add_never_writes_through_a_symlink_its_own_tar_planted(busybox, tmp_path):
    """ADD evil.tar x.txt /dst/: the tar makes /dst/x.txt a symlink to a host file; copying the
    second source there must not overwrite the host file."""
    import io
    import tarfile
    host = tmp_path / "host-file"
    host.write_text("precious\n")
    ctx = lab.scratch("evil-ctx")
    with tarfile.open(ctx / "evil.tar", "w") as t:
        info = tarfile.TarInfo("x.txt")
        info.type, info.linkname = tarfile.SYMTYPE, str(host)
        t.addfile(info)
    (ctx / "x.txt").write_text("overwritten!\n")
    with pytest.raises(build.BuildError, match="through a symlink"):
        build.build(ctx, "lab/evil", "FROM busybox\nADD evil.tar x.txt /dst/\n", quiet=True)
    assert host.read_text() == "precious\n"
    tree_dir = ctx / "tree"
    tree_dir.mkdir()
    (tree_dir / "x.txt").write_text("overwritten!\n")
    # in a later step the symlink is in a lower layer: the copy lands in the new upper dir and
    # hides it, as in docker; the host file is never touched
    build.build(ctx, "lab/evil2", "FROM busybox\nADD evil.tar /dst/\nCOPY tree /dst/\n", quiet=True)
    assert host.read_text() == "precious\n"
    assert read_tree(busybox.flatten("lab/evil2", lab.scratch("evil2")))["dst/x.txt"] == "overwritten!\n"


def test_squash_keeps_hard_links_and_both_methods_agree(busybox):
    """A hard link made by a step stays one link in the squashed layer (as in the image before
    squashing, and as `podman build --squash` keeps it): one file's bytes, a link entry for the
    other name. Merge kept the link and diff copied the file twice, so their digests differed."""
    d = lab.scratch("links")
    up = write_tree(d / "l0", {"opt/data": "x" * 4096})
    os.link(up / "opt" / "data", up / "opt" / "alias")
    mutate.add_layer("busybox", up, "links/l0", "l0", store=busybox)
    mutate.add_layer("links/l0", write_tree(d / "l1", {"opt/more": "y"}), "links/l1", "l1", store=busybox)
    digests = []
    for method in ("merge", "diff"):
        img = squash.squash("links/l1", "busybox", f"links/{method}", method, store=busybox)
        members = {m.name: m for m in tarfile.open(busybox.open_layer(img.layers[-1]))}
        regular = [n for n in ("opt/data", "opt/alias") if members[n].isreg()]
        linked = [n for n in ("opt/data", "opt/alias") if members[n].islnk()]
        assert len(regular) == 1 and len(linked) == 1 and members[linked[0]].linkname == regular[0], method
        tree = busybox.flatten(f"links/{method}", lab.scratch(f"flat-{method}"))
        assert os.stat(tree / "opt" / "data").st_ino == os.stat(tree / "opt" / "alias").st_ino, method
        digests.append(img.layers[-1].digest)
    assert digests[0] == digests[1]
    for name in ("links/merge", "links/diff", "links/l1", "links/l0"):
        busybox.remove_ref(name)


def test_squash_sizes_its_tmpfs_by_the_uncompressed_layers(busybox):
    """The changeset's tmpfs was sized by the layer blobs' sizes; a gzip layer of 96 MiB of
    zeros is 0.1 MiB, so the tmpfs (48 MiB) filled up and the diff squash failed with ENOSPC.
    Bounded by what the layers hold uncompressed, both methods squash it."""
    import gzip
    d = lab.scratch("zeros")
    (d / "l0" / "srv").mkdir(parents=True)
    with open(d / "l0" / "srv" / "zeros", "wb") as f:
        f.write(bytes(96 << 20))
    desc, diff_id = busybox.add_layer_dir(d / "l0")
    raw = busybox.blob_path(desc.digest)
    gz = busybox.put_bytes(gzip.compress(raw.read_bytes(), compresslevel=1, mtime=0), st.LAYER_GZIP)
    mutate.commit("zeros/l0", [(gz, diff_id)], [{"created_by": "zeros"}], base=busybox.image("busybox"), store=busybox)
    mutate.add_layer("zeros/l0", write_tree(d / "l1", {"srv/note": "n"}), "zeros/l1", "l1", store=busybox)
    assert gz.size < 1 << 20
    digests = {squash.squash("zeros/l1", "busybox", f"zeros/{m}", m, store=busybox).layers[-1].digest
               for m in ("diff", "merge")}
    assert len(digests) == 1 and not mountinfo.mounts_under(lab.root())
    for name in ("zeros/diff", "zeros/merge", "zeros/l1", "zeros/l0"):
        busybox.remove_ref(name)


def test_squash_without_room_on_disk_says_so_before_writing(busybox, monkeypatch):
    """Too big for a tmpfs and for the lab root's disk: one LayerError naming the squash and the
    space, before anything is written, and nothing left mounted or half-made."""
    from labkit import cgroups
    from labkit.image import layer
    d = lab.scratch("full")
    mutate.add_layer("busybox", write_tree(d / "l0", {"srv/a": "a" * 100000}), "full/l0", "l0", store=busybox)
    monkeypatch.setattr(cgroups, "memory_room", lambda: 0)
    monkeypatch.setattr(layer, "_free", lambda where: 40 << 20)
    for method in ("diff", "merge"):
        with pytest.raises(layer.LayerError, match="squashing full/l0 onto busybox needs .* MiB are free"):
            squash.squash("full/l0", "busybox", "full/sq", method, store=busybox)
    assert "full/sq" not in busybox.refs() and not mountinfo.mounts_under(lab.root())
    assert not list((lab.root() / "tmp").glob("squash-*"))
    busybox.remove_ref("full/l0")


def test_add_unpacks_compressed_archives_and_guards_the_disk(busybox, monkeypatch):
    """ADD unpacks a local tar compressed with gzip, bzip2 or xz (docker's rule; it copied them
    as they were), copies a compressed file that is no tar as it is, and a compressed archive
    that would inflate past the disk's spare room stops with one error naming the line and file."""
    import bz2, gzip, io, lzma
    from labkit.image import layer
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo("pkg/zeros")
        info.size = 20 << 20
        t.addfile(info, io.BytesIO(bytes(info.size)))
    ctx = lab.scratch("add-z")
    (ctx / "a.tar.gz").write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    (ctx / "b.tbz").write_bytes(bz2.compress(raw.getvalue()))
    (ctx / "c.txz").write_bytes(lzma.compress(raw.getvalue()))
    (ctx / "note.gz").write_bytes(gzip.compress(b"just text\n", mtime=0))
    (ctx / "Dockerfile").write_text("FROM busybox\nADD a.tar.gz /a/\nADD b.tbz /b/\nADD c.txz /c/\nADD note.gz /n/\n")
    build.build(ctx, "lab/add-z", quiet=True, store=busybox)
    tree = busybox.flatten("lab/add-z", lab.scratch("add-z-flat"))
    for d in "abc":
        assert (tree / d / "pkg" / "zeros").stat().st_size == 20 << 20
    assert gzip.decompress((tree / "n" / "note.gz").read_bytes()) == b"just text\n"
    assert not list((lab.root() / "tmp").glob("add-*"))
    monkeypatch.setattr(layer, "_free", lambda where: 40 << 20)
    (ctx / "Dockerfile").write_text("FROM busybox\nADD a.tar.gz /again/\n")
    with pytest.raises(build.BuildError, match=r"line 2 \(ADD\): ADD a.tar.gz \(gzip\) needs 16 MiB but only 40"):
        build.build(ctx, "lab/add-z2", quiet=True, store=busybox)
    assert not list((lab.root() / "tmp").glob("add-*")) and "lab/add-z2" not in busybox.refs()
    busybox.remove_ref("lab/add-z")


def test_from_scratch_builds_runs_and_squashes(busybox):
    """FROM scratch (the empty image: docker's name, never stored) starts a stage with no layers
    and PATH set as docker and buildah set it; COPY and RUN work on it, and --squash and both
    squash methods make it one layer. It said "there is no image called 'scratch'"."""
    ctx = _ctx({"run.sh": "echo from scratch; cat /built\n"},
               'FROM scratch\nCOPY --from=busybox /bin /bin\nCOPY run.sh /\nRUN ["/bin/sh", "-c", "echo built > /built"]\n'
               'ENTRYPOINT ["/bin/sh", "/run.sh"]\n')
    img = build.build(ctx, "lab/scratch", quiet=True, store=busybox).image
    assert len(img.layers) == 3 and img.config["config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    _, r = container.run("lab/scratch", rm=True, store=busybox)
    assert (r.exit_code, r.stdout) == (0, "from scratch\nbuilt\n")
    flat = build.build(ctx, "lab/scratch-flat", squash_all=True, quiet=True, store=busybox).image
    digests = {squash.squash("lab/scratch", "scratch", f"lab/scratch-{m}", m, store=busybox).layers[-1].digest
               for m in ("diff", "merge")}
    assert len(flat.layers) == 1 and digests == {flat.layers[0].digest}
    _, r = container.run("lab/scratch-flat", rm=True, store=busybox)
    assert r.stdout == "from scratch\nbuilt\n"
    for name in ("lab/scratch", "lab/scratch-flat", "lab/scratch-diff", "lab/scratch-merge"):
        busybox.remove_ref(name)
