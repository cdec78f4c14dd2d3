"""Running one job over many cases: naming outputs, per-case errors, progress, provenance."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medhdiff.errors import InputError, MedhdiffError
from medhdiff.io import expand_inputs, full_suffix, select_shard, stem
from medhdiff.io.atomic import check_output_path
from medhdiff.io.readers import IMAGE_SUFFIXES
from medhdiff.tasks.record import run_record, write_run_record
from medhdiff_cli.common import err_console, one_line, runtime_message, state
from medhdiff_cli.signals import Terminated, sigterm_as_exception


def looks_like_file(p: Path) -> bool:
    return full_suffix(p) in IMAGE_SUFFIXES or p.suffix.lower() in (".json", ".png")


def resolve_output(case: Path, value: Path | None, suffix: str, ext: str, n_cases: int,
                   default_dir: Path | None) -> Path:
    """Where one output of one case goes.

    ``value`` may be a file name (one case only) or a folder; ``None`` gives
    ``<default_dir or the input's folder>/<stem>_<suffix><ext>``.
    """
    name = f"{stem(case)}_{suffix}{ext}"
    if value is None:
        return (default_dir if default_dir is not None else case.parent) / name
    if value.is_dir() or not looks_like_file(value):
        value.mkdir(parents=True, exist_ok=True)
        return value / name
    if n_cases > 1:
        raise InputError(f"{value} names one file, but there are {n_cases} inputs; give a folder instead")
    return value


@dataclass
class CaseOutcome:
    case: Path
    status: str = "ok"
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True, disable=not err_console.is_terminal)


def run_cases(command: str, inputs: list[Path], shard: str | None, args: dict[str, Any],
              process: Callable[[Path, Progress], CaseOutcome], record_dir: Callable[[list[CaseOutcome]], Path | None],
              model_sha256: str | None) -> None:
    """Run ``process`` over every case; report failures and exit non-zero at the end if any failed."""
    started = time.time()
    cases = select_shard(expand_inputs(inputs), shard)
    outcomes: list[CaseOutcome] = []
    with sigterm_as_exception(), progress_bar() as bar:
        overall = bar.add_task(command, total=len(cases))
        for case in cases:
            _new_outputs.clear()
            try:
                outcome = process(case, bar)
            except KeyboardInterrupt:
                _discard_new_outputs()
                print("error: interrupted; no partial output was left", file=sys.stderr)
                raise typer.Exit(130) from None
            except Terminated as exc:
                _discard_new_outputs()
                print(f"error: {exc}", file=sys.stderr)
                raise typer.Exit(143) from None
            except MedhdiffError as exc:
                _discard_new_outputs()
                message = one_line(exc)
                outcome = CaseOutcome(case, status="failed", error=message)
                outcome.numbers["exit_code"] = exc.exit_code if exc.exit_code in (1, 2) else 1
                # most messages name the file already
                print(f"error: {message if str(case) in message else f'{case}: {message}'}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the cohort
                _discard_new_outputs()
                if state.debug:
                    import traceback

                    traceback.print_exc()
                outcome = CaseOutcome(case, status="failed", error=runtime_message(exc))
                outcome.numbers["exit_code"] = 1
                print(f"error: {case}: {outcome.error}", file=sys.stderr)
            outcomes.append(outcome)
            bar.advance(overall)
    folder = record_dir(outcomes)
    if folder is not None and folder.is_dir():
        # one record per shard, so that shards writing to one folder keep each other's provenance
        name = "medhdiff_run.json" if not shard else f"medhdiff_run_shard{shard.replace('/', 'of')}.json"
        write_run_record(folder, name, run_record(command, args, model_sha256, [
            {"input": str(o.case), "status": o.status, "error": o.error, "outputs": o.outputs, **o.numbers}
            for o in outcomes], started))
    failed = [o for o in outcomes if o.status != "ok"]
    if failed:
        if len(outcomes) > 1:  # one case: its own error line says it all
            print(f"error: {len(failed)} of {len(outcomes)} case(s) failed", file=sys.stderr)
        # 2 when every failure was bad input, 1 when anything failed at run time
        raise typer.Exit(1 if any(o.numbers.get("exit_code") == 1 for o in failed) else 2)


#: Outputs of the case in progress that did not exist before it: a case that fails or is interrupted
#: removes them, so that it leaves all of its outputs or none (and a rerun is not refused for them).
_new_outputs: list[Path] = []


def _discard_new_outputs() -> None:
    for p in _new_outputs:
        p.unlink(missing_ok=True)
    _new_outputs.clear()


def check_outputs(paths: dict[str, Path], inputs: Path | tuple[Path, ...], overwrite: bool) -> None:
    """Validate every output path of a case before any work; two outputs may not share a path."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    seen: dict[Path, str] = {}
    for key, p in paths.items():
        resolved = Path(p).resolve()
        if resolved in seen:
            raise InputError(f"the {key} and {seen[resolved]} outputs would both be written to {p}")
        seen[resolved] = key
        check_output_path(p, overwrite=overwrite, inputs=inputs)
    _new_outputs.extend(Path(p) for p in paths.values() if not Path(p).exists())


def sampler_progress(bar: Progress) -> Callable[[str, int, int], None]:
    tasks: dict[str, int] = {}

    def report(stage: str, step: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"  {stage} steps", total=total)
        bar.update(tasks[stage], completed=step, total=total)
        if step >= total:
            bar.remove_task(tasks.pop(stage))

    return report
