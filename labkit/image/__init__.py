"""OCI images (lessons 03 and 06): digests, layers as changesets, and the local store.

    digest.py   content addressing: sha256 digests, DiffID, ChainID
    layer.py    an overlay upper dir <-> an OCI layer tar (whiteouts, opaque dirs), safely
    store.py    the OCI image layout under the lab root: blobs, manifests, configs, names
"""
