"""``detcurate models``: the MLflow model registry (versions, aliases, data versions, metrics) and promotion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from curation_core.errors import ConfigError
from pipelines.cli import ui
from pipelines.promotion_lock import DEFAULT_LOCK_TIMEOUT_S


@click.group("models", invoke_without_command=True)
@click.option("--name", "names", multiple=True, metavar="NAME", help="Only this registered model (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as one JSON list.")
@click.pass_context
def models_cmd(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """List registered models: every version with its aliases, data version and metrics.

    \b
    detcurate models                          every model ($MLFLOW_TRACKING_URI, else mlflow.db)
    detcurate models promote NAME [VERSION]   champion moves to VERSION only if it is better
    """
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.promotion import LIST_METRICS, list_versions

    rows = list_versions(names)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        ui.stdout.print("no registered models")
        return
    columns = ["model", "version", "aliases", "data version", *LIST_METRICS, "promotion"]
    # A terminal shows the first 16 characters of the 36 of a DVC hash; a pipe or a file gets every one.
    shown = 16 if ui.stdout.is_terminal else None
    ui.print_table("Registered models", columns,
                   ([r["name"], r["version"], ",".join(r["aliases"]), r["data_version"][:shown],
                     *(r["metrics"].get(m, "") for m in LIST_METRICS), r["decision"]] for r in rows))


@models_cmd.command("promote")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--metric", default="eval/AP", show_default=True, help="Run metric compared (higher = better).")
@click.option("--alias", default="champion", show_default=True, help="Alias that moves to the better model.")
@click.option("--min-improvement", default=0.0, show_default=True, type=float,
              help="The candidate must beat the champion by more than this.")
@click.option("--annotations", type=click.Path(path_type=Path),
              help="Validation COCO JSON: evaluates the champion when it was evaluated on another data version.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of the validation images (with --annotations).")
@click.option("--device", default="cpu", show_default=True, help="Device of that evaluation: cpu, cuda or cuda:N.")
@click.option("--lock-timeout", default=DEFAULT_LOCK_TIMEOUT_S, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait while another promotion of NAME holds its lock.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def promote_cmd(name: str, version: str | None, metric: str, alias: str, min_improvement: float,
                annotations: Path | None, images: Path | None, device: str, lock_timeout: float,
                as_json: bool) -> None:
    """Compare VERSION (default: the newest) of model NAME with the holder of --alias on the same
    validation data version; the alias moves only if VERSION is better. The decision and both numbers
    are recorded as promotion.* tags on VERSION.

    Promotions of one model run one at a time: a PostgreSQL advisory lock for a postgresql:// store, a
    file lock beside a SQLite database or file store, and for an http(s):// tracking server the lock
    $DETCURATE_PROMOTION_LOCK names (a PostgreSQL URL or a lock-file path; unset: not serialised, with
    a warning)."""
    from pipelines.promotion import promote

    if (annotations is None) != (images is None):
        raise ConfigError("--annotations and --images: give both or neither")
    evaluate = (_evaluator(metric, annotations, images, device)
                if annotations is not None and images is not None else None)
    decision = promote(name, version, metric=metric, alias=alias, min_improvement=min_improvement, evaluate=evaluate,
                       lock_timeout=lock_timeout)
    if as_json:
        click.echo(json.dumps(decision.__dict__))
        return
    verdict = (f"{alias} -> version {decision.candidate_version}" if decision.promoted
               else f"{alias} stays at version {decision.champion_version}")
    ui.print_table(f"Promotion of {name} version {decision.candidate_version}: {verdict}", ["", "value"],
                   [("candidate " + metric, decision.candidate_value),
                    ("champion " + metric, "" if decision.champion_value is None else decision.champion_value),
                    ("champion version", decision.champion_version or ""),
                    ("data version", decision.data_version), ("reason", decision.reason)])


def _evaluator(metric: str, annotations: Path, images: Path, device: str) -> Any:
    """Evaluate a model version's checkpoint on the given validation data, which must be the candidate's
    data version (compared by DVC hash)."""
    from curation_core.evaluation import COCO_STAT_NAMES

    stat = metric.rpartition("/")[2]
    if stat not in COCO_STAT_NAMES:
        raise ConfigError(f"--metric {metric!r}: re-evaluation computes COCO statistics; valid: "
                          f"{', '.join('eval/' + s for s in COCO_STAT_NAMES)}")

    def evaluate(model_version: Any, data_version: str) -> float:
        from components.evaluate_model import evaluate_model
        from pipelines.registry import resolve_checkpoint
        from pipelines.tracking import dataset_tags

        given = dataset_tags([annotations, images])["dataset.version"]
        if given != data_version:
            raise ConfigError(f"--annotations {annotations} / --images {images}: data version {given}, but the "
                              f"candidate was evaluated on {data_version}; give the candidate's validation data")
        checkpoint = resolve_checkpoint(f"models:/{model_version.name}/{model_version.version}")
        stats = evaluate_model(str(checkpoint), str(annotations), str(images), device=device, progress=ui.progress_bar)
        ui.stderr.print(f"champion version {model_version.version} on {annotations} (data version {given}): "
                        f"{stat} {stats.named()[stat]:.4f}")
        return stats.named()[stat]

    return evaluate
