"""A student at the hub, as a browser would be: log in through the form, ask for a server,
then run a notebook's code cells in a kernel of that server through the hub's proxy (the Jupyter
server REST API and the kernel's websocket, the messaging protocol's execute_request)."""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class Student:
    def __init__(self, hub: str, name: str, password: str):
        self.hub, self.name = hub.rstrip("/"), name
        self.web = httpx.Client(base_url=self.hub, timeout=30)
        page = self.web.get("/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        r = self.web.post("/hub/login", data={"username": name, "password": password, "_xsrf": xsrf})
        if r.status_code != 302:
            raise RuntimeError(f"{name} could not log in: {r.status_code}")
        r = self.web.post(f"/hub/api/users/{name}/tokens", json={"expires_in": 7200, "note": "class-test"},
                          headers={"X-XSRFToken": self.web.cookies.get("_xsrf", xsrf)})
        r.raise_for_status()
        self.token = r.json()["token"]
        self.api = httpx.Client(base_url=self.hub, timeout=60, headers={"Authorization": f"token {self.token}"})

    def start_server(self, timeout: float = 300) -> dict:
        r = self.api.post(f"/hub/api/users/{self.name}/server")
        assert r.status_code in (201, 202), r.text
        deadline = time.monotonic() + timeout
        while True:
            server = self.api.get(f"/hub/api/users/{self.name}").json()["servers"].get("")
            if server and server["ready"]:
                return server
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}'s server was not ready in {timeout} s: {server}")
            time.sleep(1)

    def server(self) -> dict | None:
        return self.api.get(f"/hub/api/users/{self.name}").json()["servers"].get("")

    def url(self, path: str) -> str:
        return f"/user/{self.name}/{path.lstrip('/')}"

    def notebook(self, path: str) -> dict:
        r = self.api.get(self.url(f"api/contents/{path}"))
        r.raise_for_status()
        return r.json()["content"]

    def run_notebook(self, path: str, cell_timeout: float = 600, capture: bool = False):
        """Run the code cells of ``path`` (in the student's /work) in a new kernel, in order,
        stopping at the first error. Returns the errors, one line per failing cell (empty: every
        cell ran), or with ``capture`` what the cells printed (and raises on an error)."""
        cells = [c for c in self.notebook(path)["cells"] if c["cell_type"] == "code"]
        kernel = self.api.post(self.url("api/kernels"), json={"name": "python3", "path": path}).json()["id"]
        try:
            errors, stdout = asyncio.run(self._execute(kernel, [c["source"] for c in cells], cell_timeout))
        finally:
            self.api.delete(self.url(f"api/kernels/{kernel}"))
        if not capture:
            return errors
        if errors:
            raise RuntimeError(f"{path} in {self.name}'s server: {errors}")
        return stdout

    async def _execute(self, kernel: str, sources: list[str], cell_timeout: float) -> tuple[list[str], str]:
        ws_url = self.hub.replace("http", "ws", 1) + self.url(f"api/kernels/{kernel}/channels")
        request = HTTPRequest(ws_url, headers={"Authorization": f"token {self.token}"})
        ws = await websocket_connect(request, max_message_size=64 << 20)
        session, errors, stdout = uuid.uuid4().hex, [], []
        for i, source in enumerate(sources):
            msg_id, replied, idle = uuid.uuid4().hex, False, False
            await ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                           "username": self.name, "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": source, "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
            while True:
                raw = await asyncio.wait_for(ws.read_message(), cell_timeout)
                if raw is None:
                    raise RuntimeError(f"the kernel's websocket closed during cell {i}")
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                    stdout.append(msg["content"]["text"])
                if msg["msg_type"] == "error":
                    errors.append(f"cell {i}: {msg['content']['ename']}: {msg['content']['evalue'][:300]}")
                # a cell is done when its reply came (shell) and the kernel went idle (iopub):
                # the two channels are not ordered with each other, output may follow the reply
                replied |= msg["channel"] == "shell" and msg["msg_type"] == "execute_reply"
                idle |= msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                if replied and idle:
                    break
            if errors:
                break
        ws.close()
        return errors, "".join(stdout)
