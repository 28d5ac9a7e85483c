"""The `labkit` command: exit status 0 on success, one clear line and 1 on failure (run and exec:
125, as podman)."""
import os
import subprocess
import sys

from helpers import need


def labkit(*args, home):
    env = dict(os.environ, LABKIT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "labkit", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_preflight(lab_root):
    r = labkit("preflight", home=lab_root)
    assert "overlay filesystem" in r.stdout
    need(r.returncode == 0, "every required preflight item:\n" + r.stdout + r.stderr)
    assert "everything it needs" in r.stdout


def test_preflight_fails_with_a_fix_when_something_is_missing(lab_root):
    env = dict(os.environ, LABKIT_HOME=str(lab_root), PATH="/nonexistent")
    r = subprocess.run([sys.executable, "-m", "labkit", "preflight"], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "apt-get install graphviz" in r.stdout and "provision.sh" in r.stderr


def test_reset_and_dry_run(lab_root):
    code = "from labkit import lab; from labkit.kernel import mount; mount('none', str(lab.scratch('x')), 'tmpfs')"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABKIT_HOME=str(lab_root)), check=True)
    r = labkit("reset", "--dry-run", home=lab_root)
    assert r.returncode == 0 and "would remove mount" in r.stdout
    r = labkit("reset", home=lab_root)
    assert r.returncode == 0 and "removed mount" in r.stdout and "is clean" in r.stdout
    assert "0 item(s) removed" in labkit("reset", home=lab_root).stdout


def test_errors_are_one_line_with_status_1(lab_root):
    r = labkit("notebook", "reset", "99-nothing", home=lab_root)
    assert r.returncode == 1
    assert r.stderr.startswith("labkit: no single course notebook") and r.stderr.count("\n") == 1


def test_progress(lab_root):
    r = labkit("progress", home=lab_root)
    assert r.returncode == 0 and "01.whiteout" in r.stdout


def test_layer_and_image_commands(lab_root):
    from labkit.tree import write_tree
    up = write_tree(lab_root / "up", {"hello": "hi\n"})
    r = labkit("layer", "create", str(up), "-o", str(lab_root / "l.tar"), home=lab_root)
    assert r.returncode == 0 and "DiffID sha256:" in r.stdout
    r = labkit("layer", "apply", str(lab_root / "l.tar"), str(lab_root / "out"), home=lab_root)
    assert r.returncode == 0 and (lab_root / "out" / "hello").read_text() == "hi\n"
    assert labkit("image", "import", "--busybox", home=lab_root).returncode == 0
    assert labkit("image", "import", str(up), "-t", "hello", home=lab_root).returncode == 0
    ls = labkit("image", "ls", home=lab_root).stdout
    assert "busybox" in ls and "hello" in ls
    assert "busybox-static from the host" in labkit("image", "history", "busybox", home=lab_root).stdout
    assert '"chain_ids"' in labkit("image", "inspect", "hello", home=lab_root).stdout
    r = labkit("image", "save", "hello", "--oci", f"{lab_root}/saved:v1", home=lab_root)
    assert r.returncode == 0
    assert labkit("image", "rm", "hello", home=lab_root).returncode == 0
    r = labkit("image", "load", "--oci", f"{lab_root}/saved:v1", "-t", "back", home=lab_root)
    assert r.returncode == 0 and "loaded back" in r.stdout


def test_image_errors_are_one_line(lab_root, tmp_path):
    r = labkit("image", "history", "nothing", home=lab_root)
    assert r.returncode == 1 and "there is no image called 'nothing'" in r.stderr
    r = labkit("layer", "create", str(lab_root), "-o", str(tmp_path / "x.tar"), home=lab_root)
    assert r.returncode == 1 and "outside the lab root" in r.stderr and not (tmp_path / "x.tar").exists()
    r = labkit("image", "load", "--oci", "no-tag-here", home=lab_root)
    assert r.returncode == 1 and "DIR:TAG" in r.stderr


def test_bad_input_gets_one_line_and_a_non_zero_status(lab_root, tmp_path):
    """Every case of issue 13's CLI list: no traceback, no "None: None", one line on stderr."""
    assert labkit("image", "import", "--busybox", home=lab_root).returncode == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("hi\n")
    files = {"env-quote": 'FROM busybox\nENV A="unclosed\n', "label-quote": 'FROM busybox\nLABEL a="x\n',
             "copy-quote": 'FROM busybox\nCOPY "f /f\n', "chown-name": "FROM busybox\nCOPY --chown=abc f /f\n"}
    for name, text in files.items():
        (ctx / name).write_text(text)
    (ctx / "latin1").write_bytes(b"FROM busybox\nRUN echo \xff\xfe\n")
    deep = lab_root / "scratch" / "deep"      # reset empties scratch/ (pytest's own cleanup recurses)
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(2100):               # by fd: the path passes PATH_MAX
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    cases = {
        "push, nothing listening": (["push", "busybox", "127.0.0.1:1/lab/x:v1"], "cannot reach the registry"),
        "pull, nothing listening": (["pull", "-q", "127.0.0.1:1/lab/x:v1"], "cannot reach the registry"),
        "--cpus nan": (["run", "--cpus", "nan", "--rm", "busybox", "--", "true"], "must be above 0"),
        "--cpus -1": (["run", "--cpus", "-1", "--rm", "busybox", "--", "true"], "must be above 0"),
        "--pids 0": (["run", "--pids", "0", "--rm", "busybox", "--", "true"], "must be above 0"),
        "--memory 0": (["run", "--memory", "0", "--rm", "busybox", "--", "true"], "below the smallest limit"),
        "--memory -5": (["run", "--memory", "-5", "--rm", "busybox", "--", "true"], "below the smallest limit"),
        "--memory lots": (["run", "--memory", "lots", "--rm", "busybox", "--", "true"], "is not a size"),
        "--addr notaport": (["registry", "serve", "--addr", "127.0.0.1:notaport", "--root", str(lab_root / "r")],
                            "not HOST:PORT"),
        "unclosed quote in ENV": (["build", "-f", str(ctx / "env-quote"), "-t", "x", str(ctx)], "no closing quotation"),
        "unclosed quote in LABEL": (["build", "-f", str(ctx / "label-quote"), "-t", "x", str(ctx)], "line 2"),
        "unclosed quote in COPY": (["build", "-f", str(ctx / "copy-quote"), "-t", "x", str(ctx)], "line 2"),
        "--chown=abc": (["build", "-f", str(ctx / "chown-name"), "-t", "x", str(ctx)], "no user 'abc'"),
        "non-UTF-8 Dockerfile": (["build", "-f", str(ctx / "latin1"), "-t", "x", str(ctx)], "is not UTF-8"),
        "layer create 2000 deep": (["layer", "create", str(deep), "-o", str(lab_root / "deep.tar")], "PATH_MAX"),
    }
    bad = []
    for what, (args, want) in cases.items():
        r = labkit(*args, home=lab_root)
        if (r.returncode == 0 or r.stderr.count("\n") != 1 or want not in r.stderr or "None" in r.stderr
                or "Traceback" in r.stderr):
            bad.append(f"{what}: status {r.returncode}, stderr {r.stderr[-300:]!r}")
    assert not bad, "\n".join(bad)
    assert not list((lab_root / "containers").glob("*")) if (lab_root / "containers").exists() else True


def test_docker_semantics_for_build_args_fifos_and_chown_names(lab_root, tmp_path):
    """--build-arg NAME takes NAME's value from the environment; COPY of a directory holding a
    named pipe copies the pipe; --chown=nobody looks the name up in the image (as docker does)."""
    assert labkit("image", "import", "--busybox", home=lab_root).returncode == 0
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    os.mkfifo(ctx / "d" / "pipe")
    (ctx / "d" / "f").write_text("x")
    (ctx / "Dockerfile").write_text("FROM busybox\nARG FOO=unset\nRUN echo $FOO > /foo\n"
                                    "COPY --chown=nobody d /d\n")
    env = dict(os.environ, LABKIT_HOME=str(lab_root), FOO="from-env")
    r = subprocess.run([sys.executable, "-m", "labkit", "build", "--build-arg", "FOO", "-t", "t", str(ctx)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from labkit.image import store as st
    import stat
    flat = st.Store().flatten("t", lab_root / "flat")
    assert (flat / "foo").read_text() == "from-env\n"
    assert stat.S_ISFIFO(os.lstat(flat / "d" / "pipe").st_mode)
    assert os.lstat(flat / "d" / "f").st_uid == 65534


def test_a_closed_pipe_is_not_an_error(lab_root):
    """`labkit progress | head -1` printed "Broken pipe: None"."""
    env = dict(os.environ, LABKIT_HOME=str(lab_root))
    r = subprocess.run(f"{sys.executable} -m labkit progress | head -1", shell=True, env=env,
                       capture_output=True, text=True)
    assert r.stdout.startswith("exercise") and r.stderr == ""


def test_registry_serve_prints_every_request(lab_root):
    """The client's errors say to look at the registry's log: `labkit registry serve` prints one
    line per request (cheroot, unlike werkzeug's development server, logs nothing itself)."""
    import httpx
    from labkit.registry import reference
    port = reference.free_port()
    env = dict(os.environ, LABKIT_HOME=str(lab_root))
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "registry", "serve", "--addr", f"127.0.0.1:{port}",
                             "--root", str(lab_root / "reg")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert "labkit registry on http://127.0.0.1" in proc.stdout.readline()
        assert httpx.get(f"http://127.0.0.1:{port}/v2/lab/x/tags/list").status_code == 404
        assert proc.stdout.readline().strip() == "404 GET /v2/lab/x/tags/list"
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_command_builds_only_its_own_options_and_exits_without_the_interpreters_shutdown(busybox, lab_root):
    """`labkit run` builds only the run subparser and ends with os._exit after releasing what it
    made (issue 20): the exit status still passes through, output is flushed, nothing is left in
    the ledger, and a bad command or flag still gets argparse's one line and status 2."""
    from labkit import cli, lab
    run = cli.parser("run")
    assert run._subparsers._group_actions[0].choices.keys() == {"run"}
    assert cli.parser("image")._subparsers._group_actions[0].choices.keys() == {"image"}
    assert "image" in cli.parser("no-such-command")._subparsers._group_actions[0].choices
    r = labkit("run", "--rm", "busybox", "--", "/bin/sh", "-c", "echo out; exit 3", home=lab_root)
    assert (r.returncode, r.stdout) == (3, "out\n") and lab.entries() == []
    r = labkit("nosuch", home=lab_root)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "'run'" in r.stderr
    r = labkit("image", "ls", "--bogus", home=lab_root)
    assert r.returncode == 2 and "--bogus" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = labkit("run", "--bogus", "busybox", home=lab_root)     # run and exec: 125, as podman (before: 2)
    assert r.returncode == 125 and "--bogus" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_run_takes_env_and_workdir_as_docker_run(busybox, lab_root):
    """docker run -e KEY=VALUE, -e KEY (this shell's value, left out when it has none) and -w DIR
    (made if missing, as docker makes it; podman 4.3 refuses a missing one); a relative -w is
    refused in one line. They were not flags of labkit run."""
    env = dict(os.environ, LABKIT_HOME=str(lab_root), FROM_SHELL="here")
    script = 'echo "$A|$FROM_SHELL|${NOWHERE-unset}"; pwd'
    r = subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", "-e", "A=1 2", "-e", "FROM_SHELL", "-e", "NOWHERE",
                        "-w", "/srv/made", "busybox", "--", "/bin/sh", "-c", script],
                       env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "1 2|here|unset\n/srv/made\n"), r.stderr
    r = labkit("run", "--rm", "-w", "rel", "busybox", "--", "pwd", home=lab_root)
    assert r.returncode == 125 and "not an absolute path" in r.stderr and r.stderr.count("\n") == 1
    for flags, says in ((["-e", "=x"], "invalid environment variable '=x'"),         # before: 126, "executing
                        (["--name", "a/b"], "container name 'a/b' is not allowed")):   # 'sh' failed"; a/b taken
        r = labkit("run", "--rm", *flags, "busybox", "--", "true", home=lab_root)
        assert r.returncode == 125 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr   # podman: 125
    assert not list(lab_root.glob("containers/*"))
