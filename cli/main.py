"""Entry point of the ``medhdiff`` command."""

from __future__ import annotations

import sys
import traceback

import typer

from medhdiff import __version__
from medhdiff_cli.calibrate_cmd import calibrate
from medhdiff_cli.common import one_line, runtime_message, setup_logging, state
from medhdiff_cli.evaluate_cmd import evaluate
from medhdiff_cli.info_cmd import info
from medhdiff_cli.jobs import denoise, detect, reconstruct
from medhdiff_cli.signals import Terminated, sigterm_as_exception
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
app.command("calibrate")(calibrate)
app.command("denoise")(denoise)
app.command("reconstruct")(reconstruct)
app.command("detect")(detect)
app.command("evaluate")(evaluate)
app.command("synth")(synth)


def main() -> None:
    """Console-script entry: every failure becomes one ``error:`` line and an exit code.

    2 for usage and input errors, 1 for runtime errors, 130 for Ctrl-C and 143
    for SIGTERM (also when it arrives before a command's own handling starts).
    A Python traceback is shown only with ``--debug``.
    """
    try:
        with sigterm_as_exception():
            rc = app(standalone_mode=False)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:
        # Click's usage errors (typer may vendor click, so match by shape, not class).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
            sys.exit(int(exc.exit_code) or 2)
        if type(exc).__name__ == "Abort":
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        if state.debug:
            traceback.print_exc()
        print(f"error: {runtime_message(exc)} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
