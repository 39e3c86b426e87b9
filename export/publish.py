"""Publishing a version into the model repository atomically.

An export builds the whole version in a staging directory beside the versions
(`<root>/<name>/.staging-<pid>-<random>/`, not a version: its name is not a number), verifies
it, and only then renames it to the next version number. A crash, a kill or a full disk at
any point before the rename leaves no version directory at all; the rename itself is atomic.
Existing versions are never opened for writing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from model.fsync import fsync_dir, fsync_file
from server.runtime import MANIFEST, Manifest, next_version

STAGING_PREFIX = ".staging-"


def staging_dir(model_dir: Path) -> Path:
    """A fresh staging directory for one export, after clearing those of exports that died."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for old in model_dir.glob(f"{STAGING_PREFIX}*"):
        pid = old.name.removeprefix(STAGING_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(directory: Path, manifest: Manifest) -> None:
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    fsync_file(tmp)
    os.replace(tmp, directory / MANIFEST)


def publish(staging: Path, manifest: Manifest) -> Path:
    """Rename a verified staging directory to the next free version; returns the version directory.

    The manifest's version number is written just before the rename. Two exports racing for
    one number cannot both win: renaming onto an existing (non-empty) version fails, and the
    loser takes the next number.
    """
    model_dir = staging.parent
    staging.chmod(0o755)  # mkdtemp makes it private; servers running as another user must read it
    for path in staging.iterdir():
        fsync_file(path)
    while True:
        version = next_version(model_dir)
        write_manifest(staging, replace(manifest, version=version))
        target = model_dir / str(version)
        try:
            os.rename(staging, target)
        except OSError:
            if target.exists():
                continue
            raise
        fsync_dir(model_dir)
        return target
