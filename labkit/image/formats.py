"""Lessons 03 and 08: the shapes an image arrives in, and how labkit tells them apart.

Two families of documents describe the same thing (image-spec media-types.md, and Docker's
"Image Manifest V2, Schema 2"): an **image manifest** (a config and layers) and an **index**
(Docker says *manifest list*: one manifest per platform). A registry answers with whichever it
holds, so a client sends an Accept header naming every type it reads, and on an index picks
the manifest of its own platform (image-index.md, "platform").

A layer's media type says how it is compressed, but the bytes have the last word: docker
cross-mounts an uncompressed blob under a gzip type, so labkit reads the first bytes (the
gzip and zstd magic numbers) and trusts them. A manifest whose config is not an image config
is an **artifact** (a Helm chart, a signature, an SBOM): no root file system to run.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import LabError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
ACCEPT = ", ".join(MANIFESTS + INDEXES)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYERS = (OCI_LAYER, OCI_LAYER + "+gzip", OCI_LAYER + "+zstd",
          "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar")
FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.oci.image.layer.nondistributable.v1.tar",
           "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")

GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class FormatError(LabError):
    """A document or blob labkit cannot use as an image."""


def compression(head: bytes) -> str:
    """'gzip', 'zstd' or 'none', from a blob's first bytes (RFC 1952 and RFC 8878 magic numbers)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def archive_compression(head: bytes) -> str:
    """:func:`compression` plus 'bzip2' and 'xz', which a Dockerfile's ADD also unpacks (moby's
    DetectCompression): never used for layers, whose blobs are gzip, zstd or plain."""
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return compression(head)


def decompressed(f: BinaryIO, kind: str) -> BinaryIO:
    """A reader of ``f``'s uncompressed bytes (``kind`` from :func:`compression` or
    :func:`archive_compression`)."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if kind == "bzip2":
        import bz2
        return bz2.BZ2File(f, mode="rb")
    if kind == "xz":
        import lzma
        return lzma.LZMAFile(f, mode="rb")
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return f


@dataclass(frozen=True)
class Platform:
    """image-index.md's platform: os, architecture and (for arm) a variant."""
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """'linux/arm64', 'linux/arm/v7' (docker's --platform)."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise FormatError(f"{text!r} is not a platform", "write it like linux/amd64 or linux/arm64/v8")
        return cls(*parts)

    @classmethod
    def host(cls) -> "Platform":
        """This machine's, in Go's names (GOARCH), as docker and podman pick by default."""
        m = os.uname().machine
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)
        return cls("linux", arch, "v8" if arch == "arm64" else "v7" if arch == "arm" else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, p: dict) -> bool:
        """Whether an index entry's platform is this one (a missing variant matches any)."""
        return (p.get("os") == self.os and p.get("architecture") == self.architecture
                and (not p.get("variant") or not self.variant or p.get("variant") == self.variant))


def select(index: dict, platform: Platform, what: str) -> dict:
    """The descriptor (JSON) of ``platform``'s manifest in an index; a one-line error listing
    the platforms it has otherwise."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    for m in entries:
        if m.get("mediaType", OCI_MANIFEST) in MANIFESTS and platform.matches(m.get("platform") or {}):
            return m
    have = ", ".join(sorted({str(Platform(p.get("os", "?"), p.get("architecture", "?"), p.get("variant", "")))
                             for p in (m.get("platform") or {} for m in entries)})) or "none"
    raise FormatError(f"{what} has no image for {platform} (it has: {have})",
                      "choose one with --platform, e.g. --platform linux/arm64")


def check_image_manifest(manifest: dict, media_type: str, what: str) -> None:
    """Refuse, in one line, a manifest that is not a runnable image: an artifact (its config is
    not an image config, or it names an artifactType), foreign layers, unknown layer types."""
    config = manifest.get("config")
    if not isinstance(config, dict) or not config.get("mediaType") or not isinstance(manifest.get("layers"), list):
        raise FormatError(f"the manifest of {what} is malformed (a config descriptor and a list of layers needed)",
                          "the registry or layout holds a broken image")
    kind = manifest.get("artifactType") or config.get("mediaType")
    if manifest.get("artifactType") or kind not in CONFIGS:
        raise FormatError(f"{what} is an artifact of type {kind}, not a container image",
                          "labkit pulls and runs images only; fetch artifacts with oras")
    for d in manifest.get("layers") or []:
        t = d.get("mediaType") if isinstance(d, dict) else None
        if t in FOREIGN:
            raise FormatError(f"{what} has a foreign layer ({t}) that registries do not serve",
                              "labkit cannot fetch it; use an image built without Windows base layers")
        if t not in LAYERS:
            raise FormatError(f"{what} has a layer of type {t}", f"labkit reads {', '.join(LAYERS)}")
