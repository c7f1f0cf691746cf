"""Data versions: a data folder as it was at a git revision of a DVC project (``--data-rev REV``).

The folder is read through ``dvc.api.DVCFileSystem`` at that revision (from the DVC cache or remote; no
checkout of the working tree), so a pipeline can rerun on last month's data while the workspace holds
today's. Runs made from it carry the tag ``detcurate.data_rev``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from curation_core.errors import ConfigError


def fetch_data(rev: str, path: str, out_dir: str | os.PathLike[str], *, repo: str | os.PathLike[str]) -> Path:
    """Copy ``path`` (a DVC-tracked folder of ``repo``) as it was at git revision ``rev`` into ``out_dir``.

    ``out_dir`` is replaced whole (written beside it, then renamed). Raises ``ConfigError`` naming the
    revision and the path when the revision does not exist or does not hold the folder.
    """
    from dvc.api import DVCFileSystem

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.fetching")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        fs = DVCFileSystem(str(repo), rev=rev)
        if not fs.isdir(path):
            raise ConfigError(f"--data-rev {rev}: {path} is not a folder tracked at that revision of {repo}")
        fs.get(path, str(tmp), recursive=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - scmrepo/dvc raise many types for a bad revision
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"--data-rev {rev}: cannot read {path} at that revision of {repo} ({first})") from None
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
