"""docs/claims.csv: every measured figure the README and docs state, with the command that measures
it and how close a fresh run must come.

    figure,command,pipeline,args,metric,value,tolerance,where
    paper: test error,run,paper,,test_error,1.14,0.06,README.md#sweeps

- command: `run` (default) or `sweep`: `layerwise COMMAND PIPELINE ARGS`;
- args: what follows the pipeline on that command line (`--set precision=bf16`), shell-quoted;
- metric: a name of the run's report page (layerwise/report/pages.py: a parent metric such as
  `test_error`, `mean/100/pretrained`, `cell/100/scratch/2`, `final/test_error`), or
  `command_seconds`, the wall time of the whole command as `layerwise reproduce` measured it;
- value: the figure as stated; tolerance: `0.06` (within ± 0.06), `5%` (within ± 5 % of the value),
  `<=1800` or `>=0.9` (a bound; the stated value is then what was measured once), `<=x1.25` (at most
  1.25 times the stated value: a wall time, which follows the value when it is restated);
- where: the file (and anchor) that states it.
"""
from __future__ import annotations

import csv
import io
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from layerwise.errors import ReportError

COLUMNS = ["figure", "command", "pipeline", "args", "metric", "value", "tolerance", "where"]
COMMANDS = ("run", "sweep")
COMMAND_SECONDS = "command_seconds"
_TOLERANCE = re.compile(r"^(?P<bound><=|>=)?\s*(?P<times>x)?(?P<number>[0-9.eE+-]+)\s*(?P<percent>%)?$")


class ClaimsError(ReportError):
    """The claims file is malformed (bad input: names the file, its line and the column)."""


@dataclass(frozen=True)
class Job:
    """One command line whose run measures some claims."""
    command: str
    pipeline: str
    args: tuple[str, ...]

    def line(self) -> str:
        return " ".join(["layerwise", self.command, self.pipeline, *map(shlex.quote, self.args)])

    @property
    def label(self) -> str:
        """The docs section its report fills: the pipeline, or the pipeline and its arguments."""
        return " ".join([self.pipeline, *self.args]) if self.command == "run" else f"{self.command} {self.pipeline}"


@dataclass(frozen=True)
class Claim:
    figure: str
    job: Job
    metric: str
    value: float
    stated: str  # the value as the file writes it
    tolerance: str
    where: str
    line: int

    def within(self, measured: Optional[float]) -> Optional[bool]:
        """Whether measured backs the claim (None: nothing was measured)."""
        if measured is None or math.isnan(measured):
            return None
        bound, limit, unit = parse_tolerance(self.tolerance)
        limit = limit * self.value if unit == "x" else limit
        if bound == "<=":
            return measured <= limit
        if bound == ">=":
            return measured >= limit
        allowed = abs(self.value) * limit / 100 if unit == "%" else limit
        return abs(measured - self.value) <= allowed + 1e-9


def parse_tolerance(text: str) -> tuple[Optional[str], float, str]:
    """(bound '<=' / '>=' / None, the number, its unit: '' plain, '%' of the value, 'x' times the value)."""
    match = _TOLERANCE.match(text.strip())
    if not match:
        raise ValueError(f"tolerance {text!r} is none of 0.05, 5%, <=1800, >=0.9, <=x1.25")
    number = float(match.group("number"))
    if number < 0 or (match.group("bound") and match.group("percent")):
        raise ValueError(f"tolerance {text!r}: a bound is a plain number, a ± tolerance is not negative")
    if match.group("times") and not match.group("bound"):
        raise ValueError(f"tolerance {text!r}: x (times the value) goes with a bound: <=x1.25")
    return match.group("bound"), number, "%" if match.group("percent") else "x" if match.group("times") else ""


def read_claims(path: Path | str) -> list[Claim]:
    path = Path(path)
    if not path.is_file():
        raise ClaimsError(f"{path}: no such claims file")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
        header = list(rows[0]) if rows else []
    missing = [c for c in COLUMNS if rows and c not in header]
    if not rows or missing:
        raise ClaimsError(f"{path}: {'no claims' if not rows else 'missing column(s) ' + ', '.join(missing)}"
                          f" (columns: {','.join(COLUMNS)})")
    claims, lines = [], _data_lines(path)
    for row, line in zip(rows, lines):
        where = f"{path}:{line}"
        command = (row["command"] or "run").strip()
        if command not in COMMANDS:
            raise ClaimsError(f"{where}: command {command!r} is not one of {', '.join(COMMANDS)}")
        if not (row["pipeline"] or "").strip() or not (row["metric"] or "").strip():
            raise ClaimsError(f"{where}: pipeline and metric must be given")
        try:
            value = float(row["value"])
            parse_tolerance(row["tolerance"] or "")
            args = tuple(shlex.split(row["args"] or ""))
        except ValueError as exc:
            raise ClaimsError(f"{where}: {exc}") from None
        claims.append(Claim(row["figure"].strip(), Job(command, row["pipeline"].strip(), args), row["metric"].strip(),
                            value, row["value"].strip(), row["tolerance"].strip(), (row["where"] or "").strip(), line))
    return claims


def _data_lines(path: Path) -> list[int]:
    """The file's line number of each data row (comments and the header skipped; no quoted newlines)."""
    numbers = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip() and not line.startswith("#")]
    return numbers[1:]


def jobs(claims: list[Claim]) -> list[Job]:
    """The command lines behind the claims, once each, in the file's order: the file lists the runs
    that share stored stages and cells one after the other, the run that trains them first."""
    return list(dict.fromkeys(claim.job for claim in claims))


def results_table(claims: list[Claim], measured: dict[Claim, Optional[float]]) -> tuple[str, int, int, int]:
    """The Markdown table of every claim against its fresh value, and the counts (within, outside,
    not measured)."""
    lines = ["| figure | command | metric | stated | measured | tolerance | within |", "|---|---|---|---|---|---|---|"]
    counts = [0, 0, 0]
    for claim in claims:
        value = measured.get(claim)
        verdict = claim.within(value)
        counts[0 if verdict else 1 if verdict is False else 2] += 1
        shown = "–" if value is None else _like(claim.stated, value)
        lines.append(f"| {claim.figure} | `{claim.job.line()}` | {claim.metric} | {claim.stated} | {shown} | "
                     f"{claim.tolerance} | {'yes' if verdict else 'NO' if verdict is False else 'not measured'} |")
    return "\n".join(lines) + "\n", counts[0], counts[1], counts[2]


def _decimals(stated: str) -> int:
    return len(stated.split(".")[1]) if "." in stated and "e" not in stated.lower() else 0


def _like(stated: str, value: float) -> str:
    """value with as many decimals as the stated figure, and one more."""
    return f"{value:.{_decimals(stated) + 1}f}"


def stated_like(stated: str, value: float) -> str:
    """value written as the stated figure is: as many decimals."""
    return f"{value:.{_decimals(stated)}f}"


def restate(path: Path | str, values: dict[int, str]) -> str:
    """The claims file's text with the value column of the given lines (file line -> new value)
    replaced; every other byte as it was."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    header = next(csv.reader([next(line for line in lines if line.strip() and not line.startswith("#"))]))
    column = header.index("value")
    for number, value in values.items():
        text = lines[number - 1]
        ending = text[len(text.rstrip("\r\n")):]
        fields = next(csv.reader([text.rstrip("\r\n")]))
        fields[column] = value
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(fields)
        lines[number - 1] = out.getvalue() + ending
    return "".join(lines)
