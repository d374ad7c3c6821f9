"""A short, stable identity of a nuScenes-format dataset, recorded with every result.

Two runs can only be compared (or called reproduced) when they saw the same data. Hashing every
image and point cloud of a benchmark would take minutes, so the fingerprint covers what defines
the data instead:

- the metadata tables ``<dataroot>/<version>/*.json`` (every sample, pose, calibration and
  annotation; a different world or split changes them), read in sorted file order;
- ``<dataroot>/synth_config.yaml`` when present: the generator config the synthetic world was made
  from (written by ``x3kd data synth``). Together with the code commit, also recorded, it fixes
  the sensor files too.

On real nuScenes only the tables exist and are hashed. The hash is SHA-256 over (file name,
file bytes) pairs; 16 hex digits are kept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["GENERATOR_CONFIG_FILENAME", "dataset_fingerprint"]

#: Where ``x3kd data synth`` stores the generator config inside a dataroot.
GENERATOR_CONFIG_FILENAME = "synth_config.yaml"


def dataset_fingerprint(dataroot: str | Path, version: str) -> dict:
    """Fingerprint of the dataset at ``dataroot`` / ``version``.

    Returns:
        ``{"sha256_16": <16 hex digits>, "tables": <number of table files>, "generator_config": bool}``.

    Raises:
        FileNotFoundError: when ``<dataroot>/<version>`` holds no ``.json`` table.
    """
    root = Path(dataroot)
    tables = sorted((root / version).glob("*.json"))
    if not tables:
        raise FileNotFoundError(f"no nuScenes tables (*.json) in {root / version}")
    files = list(tables)
    gen = root / GENERATOR_CONFIG_FILENAME
    if gen.is_file():
        files.append(gen)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return {"sha256_16": digest.hexdigest()[:16], "tables": len(tables), "generator_config": gen.is_file()}
