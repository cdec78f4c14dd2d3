"""Entry point of the ``medhdiff`` command."""

from __future__ import annotations

import sys

import typer

from medhdiff import __version__
from medhdiff_cli.common import setup_logging, state
from medhdiff_cli.evaluate_cmd import evaluate
from medhdiff_cli.info_cmd import info
from medhdiff_cli.jobs import denoise, detect, reconstruct
from medhdiff_cli.synth_cmd import synth
from medhdiff_cli.train_cmd import train

app = typer.Typer(
    name="medhdiff",
    help="Hierarchical 3D diffusion for brain MRI: denoise, reconstruct and detect anomalies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medhdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    state.debug = debug
    setup_logging(debug)


app.command("info")(info)
app.command("train")(train)
app.command("denoise")(denoise)
app.command("reconstruct")(reconstruct)
app.command("detect")(detect)
app.command("evaluate")(evaluate)
app.command("synth")(synth)


def main() -> None:
    """Console-script entry: usage errors become one ``error:`` line with exit code 2."""
    try:
        rc = app(standalone_mode=False)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Click's usage errors (typer may vendor click, so match by shape, not class).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(int(exc.exit_code) or 2)
        if type(exc).__name__ == "Abort":
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
