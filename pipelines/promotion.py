"""Registry promotion: a new model version takes the alias ``champion`` only if it beats the champion.

Both models are compared by one metric of their evaluation run (default ``eval/AP``, as ``detcurate
evaluate`` logs it) on the same validation data version (the version's ``dataset.version`` tag, DVC's
hash of the validation folder). When the champion was evaluated on another data version, it is
evaluated again on the candidate's data (``evaluate``), never compared across data sets. The decision
and both numbers are recorded as tags of the candidate version (``promotion.*``); a losing candidate
leaves ``champion`` where it was.

What this relies on in MLflow 3 (each checked in tests/test_promotion.py): ``search_model_versions``
returns versions with *empty* aliases, so aliases are read from ``get_registered_model(name).aliases``;
``latest`` and ``v<N>`` are reserved alias names (refused here before MLflow is asked); asking for a
missing alias is an ``INVALID_PARAMETER_VALUE`` error, so the alias map is consulted instead.
Promotions of one registered model are serialised: reading the holder, comparing, tagging and moving
the alias happen inside ``pipelines.promotion_lock.promotion_lock`` (a PostgreSQL advisory lock for a
PostgreSQL store, a file lock beside a SQLite database or file store, ``$DETCURATE_PROMOTION_LOCK`` for
a tracking server), so two at once end as if run one after the other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from curation_core.errors import ConfigError
from pipelines.promotion_lock import DEFAULT_LOCK_TIMEOUT_S, promotion_lock
from pipelines.tracking import mlflow_client, require_mlflow

#: Alias of the model that serves.
CHAMPION = "champion"
#: Metric compared by default (logged by ``detcurate evaluate``; higher = better).
DEFAULT_METRIC = "eval/AP"
#: Tag of a model version naming the data version its metrics were computed on.
DATA_VERSION_TAG = "dataset.version"
#: Prefix of the tags a promotion writes on the candidate version.
TAG_PREFIX = "promotion."
#: Metrics shown by ``detcurate models`` when a version's run has them.
LIST_METRICS = ("eval/AP", "eval/AP50", "val/AP")
_RESERVED_ALIAS = re.compile(r"(latest|v\d+)", re.IGNORECASE)

#: ``evaluate(model_version, data_version) -> value of the metric on the validation data of that version``.
Evaluator = Callable[[Any, str], float]


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of ``promote``: ``promoted`` is True when ``alias`` now points at the candidate."""

    name: str
    candidate_version: str
    champion_version: str | None  # the alias holder before the decision (None: there was none)
    metric: str
    candidate_value: float
    champion_value: float | None
    data_version: str
    promoted: bool
    reason: str

    def tags(self) -> dict[str, str]:
        """The ``promotion.*`` tags written on the candidate version."""
        values = asdict(self)
        del values["name"], values["candidate_version"]
        values["decision"] = "promoted" if self.promoted else "kept"
        return {f"{TAG_PREFIX}{key}": "" if value is None else str(value) for key, value in values.items()}


def check_alias(alias: str) -> str:
    """``alias`` if MLflow accepts it as an alias name, else ``ConfigError`` (``latest``, ``v3`` are reserved)."""
    if not alias or _RESERVED_ALIAS.fullmatch(alias) or not re.fullmatch(r"[\w-]+", alias):
        raise ConfigError(f"alias {alias!r}: not usable as an MLflow alias ('latest' and 'v<N>' are reserved; "
                          f"letters, digits, '_' and '-' only)")
    return alias


def promote(name: str, version: str | int | None = None, *, metric: str = DEFAULT_METRIC, alias: str = CHAMPION,
            min_improvement: float = 0.0, evaluate: Evaluator | None = None,
            lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> PromotionDecision:
    """Move ``alias`` of registered model ``name`` to ``version`` if it beats the current holder.

    Parameters
    ----------
    version : the candidate (default: the newest version of ``name``).
    metric : run metric compared, higher = better (e.g. ``eval/AP``, ``eval/AP50``).
    min_improvement : the candidate must exceed the champion by more than this (0: strictly better).
    evaluate : computes ``metric`` for a model version on the candidate's validation data; needed only
        when the champion's ``dataset.version`` differs from the candidate's (otherwise ``ConfigError``).
    lock_timeout : seconds to wait for the promotion lock of ``name`` (``pipelines.promotion_lock``),
        held from reading the holder to moving the alias; not obtained in time, ``ConfigError``.

    Returns the decision, also recorded as ``promotion.*`` tags on the candidate version.
    """
    check_alias(alias)
    client = mlflow_client()
    with promotion_lock(client.tracking_uri, name, timeout=lock_timeout):
        candidate = _model_version(client, name, version)
        decision = _decide(client, name, candidate, metric=metric, alias=alias, min_improvement=min_improvement,
                           evaluate=evaluate)
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, str(candidate.version), key, value)
        if decision.promoted and decision.champion_version != decision.candidate_version:
            client.set_registered_model_alias(name, alias, str(candidate.version))
    return decision


def _decide(client: Any, name: str, candidate: Any, *, metric: str, alias: str, min_improvement: float,
            evaluate: Evaluator | None) -> PromotionDecision:
    """Compare ``candidate`` with the holder of ``alias`` (read now: the caller holds the lock)."""
    data_version = candidate.tags.get(DATA_VERSION_TAG)
    if not data_version:
        raise ConfigError(f"model {name} version {candidate.version}: no {DATA_VERSION_TAG} tag (register it "
                          f"with detcurate evaluate --register-as, which records the validation data version)")
    candidate_value = run_metric(client, candidate, metric)
    holder = _registered(client, name).aliases.get(alias)
    if holder is None:
        return _decision(name, candidate, None, metric, candidate_value, None, data_version, True,
                         f"no model held {alias!r}")
    if str(holder) == str(candidate.version):
        return _decision(name, candidate, str(holder), metric, candidate_value, candidate_value, data_version,
                         True, f"already {alias}")
    champion = client.get_model_version(name, str(holder))
    champion_value = _champion_value(client, champion, metric, data_version, evaluate)
    better = candidate_value > champion_value + min_improvement
    reason = (f"{metric} {candidate_value:.4f} {'>' if better else '<='} {champion_value:.4f}"
              + (f" + {min_improvement}" if min_improvement else "") + f" on data version {data_version}")
    return _decision(name, candidate, str(holder), metric, candidate_value, champion_value, data_version,
                     better, reason)


def _decision(name: str, candidate: Any, champion: str | None, metric: str, candidate_value: float,
              champion_value: float | None, data_version: str, promoted: bool, reason: str) -> PromotionDecision:
    return PromotionDecision(name=name, candidate_version=str(candidate.version), champion_version=champion,
                             metric=metric, candidate_value=candidate_value, champion_value=champion_value,
                             data_version=data_version, promoted=promoted, reason=reason)


def _champion_value(client: Any, champion: Any, metric: str, data_version: str, evaluate: Evaluator | None) -> float:
    if champion.tags.get(DATA_VERSION_TAG) == data_version:
        return run_metric(client, champion, metric)
    if evaluate is None:
        raise ConfigError(f"model {champion.name} version {champion.version} (the champion) was evaluated on data "
                          f"version {champion.tags.get(DATA_VERSION_TAG) or '<none>'}, the candidate on {data_version}; "
                          f"give the validation data (--annotations/--images) to evaluate the champion on it")
    value = float(evaluate(champion, data_version))
    if not math.isfinite(value):
        raise ConfigError(f"model {champion.name} version {champion.version}: {metric} on data version "
                          f"{data_version} is {value} (no ground truth?)")
    return value


def run_metric(client: Any, version: Any, metric: str) -> float:
    """Latest value of ``metric`` in the run a model version was logged from (``ConfigError`` if absent)."""
    if not version.run_id:
        raise ConfigError(f"model {version.name} version {version.version}: not logged from a run; no {metric}")
    metrics = client.get_run(version.run_id).data.metrics
    if metric not in metrics:
        known = ", ".join(sorted(metrics)[:12]) or "none"
        raise ConfigError(f"model {version.name} version {version.version}: its run {version.run_id} has no metric "
                          f"{metric!r} (it has: {known})")
    return float(metrics[metric])


def _registered(client: Any, name: str) -> Any:
    mlflow = require_mlflow()
    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"model {name!r}: no such registered model in {client.tracking_uri}") from None


def _model_version(client: Any, name: str, version: str | int | None) -> Any:
    registered = _registered(client, name)
    if version is None:
        versions = client.search_model_versions(f"name='{_quote(name)}'")
        if not versions:
            raise ConfigError(f"model {name!r}: has no versions")
        version = max(int(v.version) for v in versions)
    try:
        return client.get_model_version(registered.name, str(version))
    except require_mlflow().exceptions.MlflowException:
        raise ConfigError(f"model {name!r}: no version {version}") from None


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def list_versions(names: Sequence[str] = (), *, metrics: Sequence[str] = LIST_METRICS) -> list[dict[str, Any]]:
    """One row per registered model version (all models, or ``names``), newest first within a model.

    Row keys: ``name``, ``version``, ``aliases`` (list; from the registered model's alias map, because
    search results carry none), ``data_version``, ``metrics`` (``{metric: value}`` of ``metrics`` the
    version's run has), ``decision`` (the ``promotion.decision`` tag or ""), ``run_id``, ``created`` (ms).
    """
    client = mlflow_client()
    # Aliases from get_registered_model: search results may carry none (mlflow issue 16734).
    found = names or [m.name for m in _all_registered(client)]
    models = [_registered(client, n) for n in found]
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{_quote(model.name)}'")
        for version in sorted(versions, key=lambda v: -int(v.version)):
            run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
            rows.append({"name": model.name, "version": str(version.version),
                         "aliases": sorted(by_version.get(str(version.version), [])),
                         "data_version": version.tags.get(DATA_VERSION_TAG, ""),
                         "metrics": {m: run_metrics[m] for m in metrics if m in run_metrics},
                         "decision": version.tags.get(f"{TAG_PREFIX}decision", ""),
                         "run_id": version.run_id or "", "created": version.creation_timestamp})
    return rows


def _all_registered(client: Any) -> list[Any]:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models
