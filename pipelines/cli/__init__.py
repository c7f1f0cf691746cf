"""The ``detcurate`` command line.

Subcommands live in one module per area and import their heavy dependencies lazily, so that
``detcurate --help`` answers at once. Every user-facing error (``DetCurateError``) is printed as one
line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import sys

import click

from curation_core.errors import CocoValidationError, DetCurateError
from pipelines.cli import active_learning as active_learning_cmds
from pipelines.cli import balance as balance_cmds
from pipelines.cli import curation_report as curation_report_cmds
from pipelines.cli import data as data_cmds
from pipelines.cli import demo as demo_cmds
from pipelines.cli import evaluate as evaluate_cmds
from pipelines.cli import models as models_cmds
from pipelines.cli import pipeline as pipeline_cmds
from pipelines.cli import quality as quality_cmds
from pipelines.cli import report as report_cmds
from pipelines.cli import robustness as robustness_cmds
from pipelines.cli import score as score_cmds
from pipelines.cli import train as train_cmds


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="detcurate")
def cli() -> None:
    """DetCurate: curate the training data of object detectors.

    \b
    Demo:        detcurate demo   (the whole pipeline on the built-in synthetic data)
    Pipeline:    detcurate pipeline run --runner dvc|kfp-local|airflow --profile smoke|demo|full | compile | submit
    Data:        detcurate data synth | validate | corrupt
    Evaluation:  detcurate eval --gt GT.json --dt DT.json   (a predictions file)
                detcurate evaluate --checkpoint CKPT --annotations A.json --images DIR   (a trained model)
    Training:    detcurate train --config FILE [--set key=value] [--resume]
    Figures:     detcurate report --run NAME=runs/NAME/metrics.json --out FIG.png
    Report:      detcurate report-html --out DIR   (benchmarks and a pipeline run, HTML + Markdown)
    Registry:    detcurate models | models promote NAME [VERSION]   (champion only if better)
    Robustness:  detcurate robustness --config configs/robustness_demo.yaml --out DIR
    Curation:    detcurate curation-report --selections runs/NAME/selections.csv --annotations A.json --out DIR
    Balancing:   detcurate balance --annotations A.json [--images DIR] [--checkpoint CKPT] --out M.json
    Quality:     detcurate quality --annotations A.json --predictions DT.json --out DIR
    Active:      detcurate active-learning --config configs/active_learning_demo.yaml --out DIR
    DetGain:     detcurate score --gt GT.json --teacher-dt T.json --student-dt S.json
    """


cli.add_command(active_learning_cmds.active_learning_cmd)
cli.add_command(balance_cmds.balance_cmd)
cli.add_command(curation_report_cmds.curation_report_cmd)
cli.add_command(data_cmds.data)
cli.add_command(demo_cmds.demo_cmd)
cli.add_command(evaluate_cmds.eval_cmd)
cli.add_command(models_cmds.models_cmd)
cli.add_command(pipeline_cmds.pipeline)
cli.add_command(quality_cmds.quality_cmd)
cli.add_command(report_cmds.report_cmd)
cli.add_command(report_cmds.html_report_cmd)
cli.add_command(robustness_cmds.robustness_cmd)
cli.add_command(score_cmds.score_cmd)
cli.add_command(train_cmds.train_cmd)
cli.add_command(evaluate_cmds.evaluate_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="detcurate", standalone_mode=False)
    except CocoValidationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except DetCurateError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # disk full, permission denied, ...: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    sys.exit(0)
