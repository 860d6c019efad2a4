"""relayd measured beside lighttpd, HAProxy, an aiohttp proxy and a floor proxy, in one run.

    python -m benchmarks                 # every scenario, 3 runs of 8 s each
    python -m benchmarks --quick         # 1 run of 3 s each, for development
    python -m benchmarks --only 'relayd*' --only haproxy-RS256
    python -m benchmarks --list

The table goes to stdout, progress to stderr; the JSON record and a PNG chart of the
ratios go to benchmarks/results/. A full run (every scenario, not --quick) also
rewrites benchmarks/RESULTS.md, keeping the sections other benchmarks own.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from benchmarks import chart, machine, report, tokens
from benchmarks.procs import Cores
from benchmarks.runner import Outcome, progress, run_all
from benchmarks.scenarios import COMPARISONS, SCENARIOS, Scenario
from benchmarks.systems import Context

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="relayd beside its peers, end to end.")
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per scenario")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only matching scenarios (a name or a glob; repeatable, "
                             "or comma-separated)")
    parser.add_argument("--repeat", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 8, quick 3)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _select(patterns: list[str]) -> list[Scenario]:
    wanted = [p for group in patterns for p in group.split(",") if p]
    if not wanted:
        return list(SCENARIOS)
    unknown = [p for p in wanted if not any(fnmatch.fnmatchcase(s.name, p) for s in SCENARIOS)]
    if unknown:
        raise SystemExit(f"no scenario matches {', '.join(unknown)} (see --list)")
    return [s for s in SCENARIOS if any(fnmatch.fnmatchcase(s.name, p) for p in wanted)]


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # unwinds through the runner's finally blocks, which stop every process by PID
    raise KeyboardInterrupt


def _results_md(text: str, command: str, started: str, host: dict[str, str],
                settings: dict[str, object], files: str, png: str | None) -> str:
    machine_lines = "\n".join(f"- {key}: {value}" for key, value in host.items())
    picture = f"\n![relay beside its peers, this run](results/{png})\n" if png else ""
    return f"""# relay benchmark results

Latest full run: {started}; {settings['repeat']} runs of {settings['seconds']:g} s per
scenario ({files}).

    {command}
{picture}
## Machine

{machine_lines}
- pinning: {settings['pinning']}
- load average: {settings['load_average']}

## How

{report.METHOD}

## Results

{text}"""


#: the sections of RESULTS.md this runner writes; any other "## " section (the operations
#: and sinks benchmarks, the profile notes) is kept as it is when the file is rewritten
_OWN_SECTIONS = ("## Machine", "## How", "## Results")


def _kept_sections(previous: str) -> str:
    """The sections of the previous RESULTS.md that other benchmarks and notes own."""
    kept = [part for part in re.split(r"(?m)^(?=## )", previous)
            if part.startswith("## ") and not part.startswith(_OWN_SECTIONS)]
    return "".join(kept)


def main() -> None:
    args = _parser().parse_args()
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:28} {s.label}")
        return
    scenarios = _select(args.only)
    repeat = args.repeat or (1 if args.quick else 3)
    seconds = args.duration or (3.0 if args.quick else 8.0)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stem = time.strftime("%Y%m%d-%H%M%S")
    command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    cores = Cores.detect()
    load_before = os.getloadavg()[0]
    # lighttpd spools streamed request bodies through files in its upload directory:
    # on tmpfs the uploads measure the proxies rather than the disk
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-",
                                    dir=shm if os.access(shm, os.W_OK) else None))
    outcomes: list[Outcome] = []
    try:
        ctx = Context(workdir, cores, tokens.ensure())
        progress(f"{len(scenarios)} scenarios × {repeat} run(s) of {seconds:g} s")
        outcomes = run_all(ctx, scenarios, repeat, seconds)
    finally:
        if any(o.failure for o in outcomes):
            progress(f"logs of the failed runs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    text = report.tables(outcomes, COMPARISONS)
    print(text)
    host = machine.describe()
    # the machine may be shared: say how busy it was, since req/s depends on it
    settings: dict[str, object] = {"repeat": repeat, "seconds": seconds, "quick": args.quick,
                                   "pinning": cores.describe(),
                                   "load_average": f"{load_before:.2f} before the run, "
                                                   f"{os.getloadavg()[0]:.2f} after (1 min)"}
    meta = {"started": started, "command": command, "machine": host, "settings": settings}
    RESULTS.mkdir(exist_ok=True)
    record = RESULTS / f"{stem}.json"
    record.write_text(json.dumps(report.to_json(outcomes, COMPARISONS, meta=meta), indent=1,
                                 ensure_ascii=False))
    png = RESULTS / f"{stem}.png"
    drew = chart.draw(png, COMPARISONS, outcomes,
                      f"relay vs its peers, {started}" + (" (quick)" if args.quick else ""))
    progress(f"wrote {record.relative_to(HERE.parent)}"
             + (f" and {png.name}" if drew else " (no chart: matplotlib is not installed)"))
    if not args.quick and len(scenarios) == len(SCENARIOS):
        files = f"`results/{record.name}`" + (f", `results/{png.name}`" if drew else "")
        results_md = HERE / "RESULTS.md"
        kept = _kept_sections(results_md.read_text()) if results_md.exists() else ""
        fresh = _results_md(text, command, started, host, settings, files, png.name if drew else None)
        results_md.write_text(fresh.rstrip("\n") + "\n\n" + kept if kept else fresh)
        progress("updated benchmarks/RESULTS.md")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
