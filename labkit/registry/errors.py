"""The distribution spec's errors (spec.md, "Error Codes"): a code, a message, an HTTP status.

Every failed request is answered with ``{"errors": [{"code", "message", "detail"}]}``; the
handlers raise :class:`Problem` and the application turns it into that JSON.
"""
from __future__ import annotations

import json

from werkzeug.wrappers import Response

STATUS = {"BLOB_UNKNOWN": 404, "BLOB_UPLOAD_INVALID": 400, "BLOB_UPLOAD_UNKNOWN": 404, "DIGEST_INVALID": 400,
          "MANIFEST_BLOB_UNKNOWN": 400, "MANIFEST_INVALID": 400, "MANIFEST_UNKNOWN": 404, "NAME_INVALID": 400,
          "NAME_UNKNOWN": 404, "SIZE_INVALID": 400, "UNAUTHORIZED": 401, "DENIED": 403, "UNSUPPORTED": 415,
          "TOOMANYREQUESTS": 429}


class Problem(Exception):
    """Answer with the spec's error JSON."""

    def __init__(self, code: str, message: str, status: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.status, self.headers = code, message, status or STATUS[code], headers or {}


def error(code: str, message: str, status: int | None = None, headers: dict | None = None) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": {}}]})
    return Response(body, status or STATUS[code], headers or {}, content_type="application/json")
