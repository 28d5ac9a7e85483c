"""`labkit build` as buildah and docker build read a Dockerfile (issue 17): which instructions
substitute $VAR, SHELL, STOPSIGNAL, HEALTHCHECK, VOLUME and ONBUILD in the config, COPY
--chown with names from the image."""
import os

import pytest

from labkit import build, container, lab
from labkit.tree import write_tree


def _build(dockerfile: str, store, files=None) -> dict:
    ctx = write_tree(lab.scratch("sem"), {"Dockerfile": dockerfile, **(files or {})})
    img = build.build(ctx, "t/sem", quiet=True, store=store)
    return img.image.config["config"]


def test_cmd_entrypoint_and_run_keep_their_variables_for_the_shell(busybox):
    """Before: `CMD echo "$HOME"` was stored as `echo ""`."""
    conf = _build('FROM busybox\nENV GREETING=hi\nRUN echo "$GREETING $HOME" > /at-build\n'
                  'CMD echo "$HOME $GREETING"\nWORKDIR /srv/$GREETING\n', busybox)
    assert conf["Cmd"] == ["/bin/sh", "-c", 'echo "$HOME $GREETING"'] and conf["WorkingDir"] == "/srv/hi"
    _, r = container.run("t/sem", rm=True, store=busybox)
    assert r.stdout == "/root hi\n"
    _, r = container.run("t/sem", ["cat", "/at-build"], rm=True, store=busybox)
    assert r.stdout == "hi /root\n"


def test_shell_stopsignal_healthcheck_volume_onbuild_go_into_the_config(busybox):
    with pytest.raises(build.BuildError, match="exited with status 1"):      # -e: the first false stops it
        _build('FROM busybox\nSHELL ["/bin/sh", "-ec"]\nRUN false; echo went-on\n', busybox)
    conf = _build('FROM busybox\nSHELL ["/bin/sh", "-xc"]\nCMD echo hi\nSTOPSIGNAL SIGINT\n'
                  'HEALTHCHECK --interval=30s --retries=3 CMD wget -q -O- localhost || exit 1\n'
                  'VOLUME /data /logs\nONBUILD RUN echo child\n', busybox)
    assert conf["Shell"] == ["/bin/sh", "-xc"] and conf["Cmd"] == ["/bin/sh", "-xc", "echo hi"]
    assert conf["StopSignal"] == "SIGINT" and conf["Volumes"] == {"/data": {}, "/logs": {}}
    assert conf["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
                                   "Interval": 30_000_000_000, "Retries": 3}
    assert conf["OnBuild"] == ["RUN echo child"]
    with pytest.raises(build.BuildError, match="line 2: SHELL needs the JSON form"):
        _build("FROM busybox\nSHELL /bin/bash -c\n", busybox)


def test_copy_chown_with_names_from_the_image(busybox):
    _build("FROM busybox\nRUN echo 'ann:x:1000:1000::/home/ann:/bin/sh' >> /etc/passwd && "
           "echo 'staff2:x:2000:' >> /etc/group\nCOPY --chown=ann:staff2 f /f\nCOPY --chown=ann g /g\n",
           busybox, {"f": "x", "g": "y"})
    _, r = container.run("t/sem", ["stat", "-c", "%u:%g", "/f", "/g"], rm=True, store=busybox)
    assert r.stdout.split() == ["1000:2000", "1000:1000"]


def test_multi_stage_builds_copy_from_a_stage_or_an_image_and_stop_at_a_target(busybox):
    df = ("FROM busybox AS build\nRUN echo compiled > /out && echo junk > /junk\n"
          "FROM busybox AS test\nRUN echo tested > /t\n"
          "FROM busybox\nCOPY --from=build /out /app/out\nCOPY --from=1 /t /t\nCOPY --from=busybox /bin/busybox /bb\n"
          "CMD cat /app/out /t\n")
    ctx = write_tree(lab.scratch("ms"), {"Dockerfile": df})
    built = build.build(ctx, "t/ms", quiet=True, store=busybox)
    _, r = container.run("t/ms", rm=True, store=busybox)
    assert r.stdout == "compiled\ntested\n"
    base = len(busybox.image("busybox").layers)
    assert len(built.image.layers) == base + 3                    # only the last stage's layers
    assert not [n for n in busybox.refs() if n.startswith("build-stage/")]       # the stages are gone
    assert not list((lab.root() / "scratch").glob("stage-*"))
    t = build.build(ctx, "t/ms-build", quiet=True, store=busybox, target="build")
    assert len(t.image.layers) == base + 1
    _, r = container.run("t/ms-build", ["cat", "/junk"], rm=True, store=busybox)
    assert r.stdout == "junk\n"
    again = build.build(ctx, "t/ms", quiet=True, store=busybox)
    assert all(st.cached for st in again.steps if st.instruction.name in ("RUN", "COPY"))
    with pytest.raises(build.BuildError, match="no stage 'nope'"):
        build.build(ctx, "t/x", quiet=True, store=busybox, target="nope")
    with pytest.raises(build.BuildError, match="--from=ghost: no earlier stage or image"):
        build.build(ctx, "t/x", "FROM busybox\nCOPY --from=ghost /a /a\n", quiet=True, store=busybox)


def test_copy_from_never_follows_a_stage_symlink_to_the_host(busybox):
    """/hostetc -> /etc in the stage: /hostetc/os-release is the stage's /etc/os-release, which
    busybox lacks, so the build stops; the host's /etc/os-release (which exists) is never read.
    (A first version looked the missing path up again on the host, through the symlink.)"""
    assert os.path.exists("/etc/os-release")
    df = ("FROM busybox AS s\nRUN ln -s /etc /hostetc && rm -f /etc/os-release\n"
          "FROM busybox\nCOPY --from=s /hostetc/os-release /leak\n")
    ctx = write_tree(lab.scratch("leak"), {"Dockerfile": df})
    with pytest.raises(build.BuildError, match="not in that stage's files"):
        build.build(ctx, "t/leak", quiet=True, store=busybox)


def test_dockerignore_leaves_files_out_of_copy(busybox):
    ctx = write_tree(lab.scratch("ign"), {
        "Dockerfile": "FROM busybox\nCOPY . /ctx\n",
        ".dockerignore": "# comment\n*.log\nsecret/\n**/tmp\n!keep.log\n",
        "a.txt": "a", "b.log": "b", "keep.log": "k", "secret/key": "s", "src/tmp/x": "x", "src/m.c": "m"})
    build.build(ctx, "t/ign", quiet=True, store=busybox)
    _, r = container.run("t/ign", ["/bin/sh", "-c", "cd /ctx && find . | sort"], rm=True, store=busybox)
    assert r.stdout.split() == [".", "./.dockerignore", "./Dockerfile", "./a.txt", "./keep.log", "./src", "./src/m.c"]
    with pytest.raises(build.BuildError, match="'b.log' is not in the build context"):
        build.build(ctx, "t/ign2", "FROM busybox\nCOPY b.log /\n", quiet=True, store=busybox)


def test_history_times_are_real_a_cached_rebuild_is_the_same_image_and_source_date_epoch_reproduces(busybox,
                                                                                                   monkeypatch):
    """Before: every created time was 1970-01-01."""
    df = "FROM busybox\nRUN echo a > /a\nENV X=1\nCMD cat /a\n"
    ctx = write_tree(lab.scratch("times"), {"Dockerfile": df})
    one = build.build(ctx, "t/times", quiet=True, store=busybox).image
    run_step = one.history[-3]
    assert run_step["created_by"].startswith("RUN") and not run_step["created"].startswith("1970")
    assert one.config["created"] == one.history[-1]["created"] == run_step["created"]
    again = build.build(ctx, "t/times", quiet=True, store=busybox).image
    assert again.manifest_desc.digest == one.manifest_desc.digest        # all cached: the same image
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = build.build(ctx, "t/sde-a", quiet=True, store=busybox, cache_dir=lab.scratch("cache-a")).image
    b = build.build(ctx, "t/sde-b", quiet=True, store=busybox, cache_dir=lab.scratch("cache-b")).image
    assert a.manifest_desc.digest == b.manifest_desc.digest and a.config["created"] == "2023-11-14T22:13:20Z"
