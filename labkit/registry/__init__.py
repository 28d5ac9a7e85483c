"""Lesson 08: registries. server.py (the OCI distribution API), storage.py (where blobs and
manifests live), auth.py (bearer tokens), client.py (push, and a parallel, resumable pull)."""
