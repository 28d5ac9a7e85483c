"""`labkit build` as buildah and docker build read a Dockerfile (issue 17): which instructions
substitute $VAR, SHELL, STOPSIGNAL, HEALTHCHECK, VOLUME and ONBUILD in the config, COPY
--chown with names from the image."""
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
