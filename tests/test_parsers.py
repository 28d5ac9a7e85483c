"""The pure parsers: fast, and no root needed (no lab_root fixture here)."""
import time

import httpx
import pytest

from labkit import build, container
from labkit.registry import auth, client


# --- Dockerfile ------------------------------------------------------------------------------
def test_dockerfile_parse_handles_comments_blank_lines_and_continuations():
    text = "# a comment\nFROM busybox\n\nRUN echo a \\\n    && echo b\nenv A=1\n"
    got = build.parse(text)
    assert [(i.line, i.name) for i in got] == [(2, "FROM"), (4, "RUN"), (6, "ENV")]
    assert got[1].args.split() == ["echo", "a", "&&", "echo", "b"] and str(got[2]) == "ENV A=1"


@pytest.mark.parametrize("text, problem", [
    ("FROM busybox\nRUNN true\n", "line 2: unknown instruction 'RUNN'"),
    ("RUN true\n", "starts with FROM"),
    ("FROM busybox\nRUN a \\\n", "ends with '\\'"),
])
def test_dockerfile_parse_errors_name_the_line(text, problem):
    with pytest.raises(build.BuildError, match=problem.replace("\\", "\\\\").replace("(", "\\(")):
        build.parse(text)


def test_exec_and_shell_forms_and_expansion():
    assert build._command('["echo", "hi"]', {}) == ["echo", "hi"]
    assert build._command("echo hi", {}) == ["/bin/sh", "-c", "echo hi"]
    assert build._command('["echo", 1]', {}) == ["/bin/sh", "-c", '["echo", 1]']   # not a list of strings
    assert build._expand("${A}/$B/$C", {"A": "x", "B": "y"}) == "x/y/"
    copy = build.Instruction(3, "COPY", "--chown=1:2 a b /dst/")
    assert build._flags(build._words(copy.args, {}, copy), copy) == ({"chown": "1:2"}, ["a", "b", "/dst/"])
    with pytest.raises(build.BuildError, match="line 3: COPY .*no closing quotation"):
        build._words('"a b /dst/', {}, copy)
    # the Dockerfile's word rules: quotes, escapes, and each word expanded after splitting
    v = {"A": "1 2", "E": ""}
    assert build._words("K=$A L='$A' M=\\$A \"q \\\"x\" N=${E:-d} O=${A:+s}", v, copy) == [
        "K=1 2", "L=$A", "M=$A", 'q "x', "N=d", "O=s"]
    assert build._words(" 1  2 ", v, copy, split=False) == [" 1  2 "]
    assert build._expand("${E:-$A}|${U:+x}|\\$A", v) == "1 2||$A"


# --- image references and sizes ---------------------------------------------------------------
def test_image_reference_parse():
    assert client.Ref.parse("127.0.0.1:5000/lab/app:v1") == client.Ref("127.0.0.1:5000", "lab/app", "v1")
    assert client.Ref.parse("localhost/app").tag == "latest"
    with pytest.raises(client.RegistryError, match="HOST:PORT/REPO:TAG"):
        client.Ref.parse("busybox")


def test_size_parse():
    assert container.parse_size("64m") == 64 << 20
    assert container.parse_size("1g") == 1 << 30 and container.parse_size("512K") == 512 << 10
    assert container.parse_size("100") == 100 and container.parse_size(None) is None
    with pytest.raises(container.ContainerError, match="not a size"):
        container.parse_size("lots")


# --- tokens -----------------------------------------------------------------------------------
def test_tokens_are_signed_and_expire():
    a = auth.TokenAuth(users={"alice": auth.TokenAuth.hash_password("pw")})
    t = a._sign({"sub": "alice", "access": [], "exp": time.time() + 60})
    assert a._verify(t)["sub"] == "alice"
    body, _, sig = t.partition(".")
    assert a._verify(body + "." + "0" * len(sig)) is None                 # tampered
    assert a._verify(a._sign({"sub": "x", "access": [], "exp": time.time() - 1})) is None   # expired


def test_bearer_auth_follows_the_challenge_once_and_keeps_the_token():
    seen = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("Authorization", "")))
        if request.url.path == "/token":
            assert request.url.params["scope"] == "repository:lab/app:pull"
            assert request.headers["Authorization"].startswith("Basic ")
            return httpx.Response(200, json={"token": "T1"})
        if request.headers.get("Authorization") != "Bearer T1":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://reg/token",'
                                                'service="labkit",scope="repository:lab/app:pull"'})
        return httpx.Response(200, json={"tags": []})

    with httpx.Client(base_url="http://reg", transport=httpx.MockTransport(registry),
                      auth=auth.BearerAuth("alice", "pw")) as http:
        assert http.get("/v2/lab/app/tags/list").status_code == 200
        assert http.get("/v2/lab/app/tags/list").status_code == 200
    assert [p for _, p, _ in seen] == ["/v2/lab/app/tags/list", "/token", "/v2/lab/app/tags/list",
                                       "/v2/lab/app/tags/list"]
    assert seen[-1][2] == "Bearer T1"                        # the second call needed no new token


def test_bearer_auth_says_when_the_token_service_refuses():
    def registry(request):
        if request.url.path == "/token":
            return httpx.Response(401, json={"errors": []})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://reg/token",service="s"'})

    with httpx.Client(base_url="http://reg", transport=httpx.MockTransport(registry),
                      auth=auth.BearerAuth("alice", "wrong")) as http:
        with pytest.raises(auth.AuthError, match="token service refused"):
            http.get("/v2/")


def test_a_star_in_the_token_scope_means_every_action_the_user_may_take():
    """distribution's token scope: ``repository:NAME:*`` asks for all actions (skopeo delete
    does); the token service grants those the user may take there: all in their namespace,
    pull elsewhere."""
    import base64
    import json
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request
    a = auth.TokenAuth(users={"alice": auth.TokenAuth.hash_password("pw")})
    basic = "Basic " + base64.b64encode(b"alice:pw").decode()
    for repo, want in [("alice/app", ["delete", "pull", "push"]), ("lab/app", ["pull"])]:
        req = Request(EnvironBuilder(path="/token", query_string={"scope": f"repository:{repo}:*"},
                                     headers={"Authorization": basic}).get_environ())
        token = json.loads(a.token_response(req).get_data())["token"]
        claims = a._verify(token)
        assert claims["access"] == [{"type": "repository", "name": repo, "actions": want}]
    full = a._sign({"sub": "alice", "exp": time.time() + 60,
                    "access": [{"type": "repository", "name": "alice/app", "actions": a.allowed("alice", "alice/app", ["*"])}]})
    for method in ("GET", "PUT", "DELETE"):
        req = Request(EnvironBuilder(method=method, path="/v2/alice/app/manifests/v1",
                                     headers={"Authorization": f"Bearer {full}"}).get_environ())
        a.require(req, "alice/app")                           # no Problem raised


def test_a_cell_run_before_its_setup_says_so():
    """A NameError in a lesson (a stale cell run out of order) tells the learner to run the
    set-up cell first, under the usual traceback; the cell still counts as failed."""
    import contextlib
    import io
    from IPython.testing.globalipapp import start_ipython
    ip = start_ipython()
    ip.run_cell("import labkit; labkit._explain_name_errors()")    # what lab.scratch() does in a lesson
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        r = ip.run_cell("print(home_of_lesson)")
    assert isinstance(r.error_in_exec, NameError)
    assert "run the lesson's first cell (its set-up)" in out.getvalue()


def test_proc_status_is_parsed_key_by_key():
    from labkit import procfs
    st = procfs.parse_status("Name:\tsh\nCapEff:\t00000000a80425fb\nSeccomp:\t2\nnot a field\n")
    assert st == {"Name": "sh", "CapEff": "00000000a80425fb", "Seccomp": "2"}
    assert procfs.status()["Pid"] == str(__import__("os").getpid())
