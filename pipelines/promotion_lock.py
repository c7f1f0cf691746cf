"""Promotion lock: one registered model is promoted by one process at a time.

A promotion reads the alias holder, compares, tags the candidate and moves the alias; two of them
interleaved would both read the same holder and the last writer would win, even with the worse
model. ``promotion_lock`` makes that sequence a critical section per registered model. Where the lock
lives follows the registry's store (the tracking URI):

- ``postgresql://`` or ``postgresql+DRIVER://`` (a database store): a session advisory lock
  (``pg_advisory_lock``) in that database, on its own connection. Key: the first 8 bytes of
  SHA-256 of ``database NUL model name``, as a signed 64-bit integer (stable across processes and
  machines, unlike Python's salted ``hash()``). PostgreSQL releases it when the connection closes, so
  a killed promotion frees it.
- ``sqlite:///PATH``, ``file:PATH`` or a plain path (a file store): a file lock (``filelock``, an
  ``fcntl`` lock, freed by the kernel when its process dies) in ``<PATH>.locks/`` beside the database
  or store folder, one file per model.
- anything else (an ``http(s)://`` tracking server, whose database the client cannot reach; a MySQL
  store): the lock that ``$DETCURATE_PROMOTION_LOCK`` names, a PostgreSQL URL (the advisory lock in that
  database) or the path of a lock file (that one file, for every model). Every client of the server
  must set the same value. Unset, promotions are not serialised and a ``RuntimeWarning`` says so once
  per process and tracking URI.

A lock not obtained within ``timeout`` seconds is a one-line ``ConfigError`` naming the model and the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from curation_core.errors import ConfigError
from pipelines.tracking import database_error_reason, database_url_shown

#: Environment variable naming the lock where the tracking URI gives none (an ``http(s)://`` server).
LOCK_ENV = "DETCURATE_PROMOTION_LOCK"
#: Seconds a promotion waits for the lock of its model. Generous: a promotion that evaluates the
#: champion again on new validation data holds the lock for that whole evaluation.
DEFAULT_LOCK_TIMEOUT_S = 600.0
#: Seconds to wait for the lock's PostgreSQL server to accept a connection.
CONNECT_TIMEOUT_S = 10
_POSTGRESQL = re.compile(r"postgresql(\+\w+)?://", re.IGNORECASE)
_FILE_NAME_UNSAFE = re.compile(r"[^\w.-]")
_warned: set[str] = set()


@dataclass(frozen=True)
class LockTarget:
    """Where the lock of one model lives: ``kind`` is ``"postgresql"`` (``location``: the database URL,
    ``key``: the advisory-lock key) or ``"file"`` (``location``: the lock file's path)."""

    kind: str
    location: str = field(repr=False)  # a URL may carry a password
    key: int

    def describe(self) -> str:
        """The lock in words, for messages (password hidden)."""
        if self.kind == "file":
            return f"lock file {self.location}"
        return f"PostgreSQL advisory lock {self.key} in {database_url_shown(self.location)}"


def lock_key(database: str, name: str) -> int:
    """Advisory-lock key of model ``name`` in ``database``: a signed 64-bit integer, the same in every
    process (SHA-256, not the salted ``hash()``)."""
    digest = hashlib.sha256(f"{database}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_target(tracking_uri: str, name: str) -> LockTarget | None:
    """The lock of model ``name`` for a registry at ``tracking_uri`` (see the module docstring); None
    when there is none (an ``http(s)://`` server without ``$DETCURATE_PROMOTION_LOCK``, an in-memory
    SQLite)."""
    uri = tracking_uri.strip()
    if _POSTGRESQL.match(uri):
        return _postgresql_target(uri, name)
    if _is_local_store(uri):
        store = _store_path(uri)
        return None if store is None else _file_target(store.with_name(store.name + ".locks"), name)
    configured = os.environ.get(LOCK_ENV, "").strip()
    if _POSTGRESQL.match(configured):
        return _postgresql_target(configured, name)
    if configured:
        return LockTarget("file", str(Path(configured).expanduser().resolve()), lock_key("", name))
    return None


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, name: str, *,
                   timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[LockTarget | None]:
    """Hold the promotion lock of model ``name`` for the ``with`` block; yields its ``LockTarget``
    (None: no lock).

    ``timeout`` : seconds to wait for it (``>= 0``); not obtained in time, ``ConfigError`` naming the
    model and the lock.
    """
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout >= 0):
        raise ConfigError(f"promotion_lock(timeout=) expects a finite number of seconds >= 0; "
                          f"got {timeout!r}.")
    target = lock_target(tracking_uri, name)
    if target is None:
        if not _is_local_store(tracking_uri.strip()):
            _warn_unserialised(tracking_uri)
        yield None
    elif target.kind == "file":
        with _file_lock(target, name, timeout):
            yield target
    else:
        with _advisory_lock(target, name, timeout):
            yield target


def _postgresql_target(url: str, name: str) -> LockTarget:
    import sqlalchemy

    try:
        database = sqlalchemy.engine.make_url(url).database or ""
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"promotion lock: {url.split('@')[-1]!r} is not a PostgreSQL URL") from None
    return LockTarget("postgresql", url, lock_key(database, name))


def _is_local_store(uri: str) -> bool:
    """A SQLite database or a file store, which every client reaches as a file."""
    return urllib.parse.urlparse(uri).scheme.lower() in ("sqlite", "file", "")


def _store_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` URI or the folder of a file store (``file:`` or a plain path);
    None for an in-memory SQLite, which no other process can reach."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme.lower() == "sqlite":
        import sqlalchemy

        database = sqlalchemy.engine.make_url(uri).database
        return None if database in (None, "", ":memory:") else Path(database).expanduser().resolve()
    if parsed.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parsed.path)).resolve()
    return Path(uri).expanduser().resolve()


def _file_target(folder: Path, name: str) -> LockTarget:
    key = lock_key(str(folder), name)
    readable = _FILE_NAME_UNSAFE.sub("_", name)[:64]
    return LockTarget("file", str(folder / f"promotion.{readable}.{key & (2**64 - 1):016x}.lock"), key)


@contextlib.contextmanager
def _file_lock(target: LockTarget, name: str, timeout: float) -> Iterator[None]:
    import filelock

    path = Path(target.location)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise _timeout_error(target, name, timeout) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _advisory_lock(target: LockTarget, name: str, timeout: float) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # NullPool: closing the connection really ends the session (and with it the lock, whatever happens).
    engine = sqlalchemy.create_engine(target.location, poolclass=NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise ConfigError(f"promotion of model {name!r}: {target.describe()} unreachable "
                              f"({database_error_reason(exc)})") from None
        with connection:
            # lock_timeout bounds the wait of pg_advisory_lock (SQLSTATE 55P03 when it runs out);
            # 0 would mean "wait forever" to PostgreSQL, so a zero timeout asks once, for 1 ms.
            milliseconds = max(1, math.ceil(timeout * 1000))
            connection.execute(sqlalchemy.text("SELECT set_config('lock_timeout', :t, false)"),
                               {"t": f"{milliseconds}ms"})
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": target.key})
            except sqlalchemy.exc.OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":
                    raise _timeout_error(target, name, timeout) from None
                raise
            try:
                yield
            finally:
                # A broken connection has ended the session, and the lock with it.
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                       {"key": target.key})
    finally:
        engine.dispose()


def _timeout_error(target: LockTarget, name: str, timeout: float) -> ConfigError:
    return ConfigError(f"promotion of model {name!r}: {target.describe()} not obtained within {timeout:g} s "
                       f"(another promotion of it is running; retry later or give a longer --lock-timeout)")


def _warn_unserialised(tracking_uri: str) -> None:
    if tracking_uri in _warned:
        return
    _warned.add(tracking_uri)
    warnings.warn(f"promotions at {_without_password(tracking_uri)} are not serialised: the client "
                  f"cannot lock that registry; set {LOCK_ENV} to a PostgreSQL URL or a lock-file path "
                  f"shared by every client, or run promotions one after the other",
                  RuntimeWarning, stacklevel=4)


def _without_password(uri: str) -> str:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
