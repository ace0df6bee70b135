"""`python -m dawm_fast.report SWEEP_DIR`: report.md, report.json and plots/*.png for a sweep.
`python -m dawm_fast.report DIR DIR ... --out OUT`: one report over several sweeps (or committed
reports), e.g. one table across the programs of a study; runs repeated between them are refused.

Reads only the runs' results.json and metrics.csv: per task x algo x arm the mean ± std over seeds
of the final score and of the mean of the last three evaluations; per task x algo the paired
difference DAWM - plain with a 95% bootstrap CI; across tasks the IQM and the probability of
improvement with stratified-bootstrap CIs. Cells whose runs mix settings are refused and listed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dawm_fast.experiments.report import (ReportError, apply_aliases, export_results,
                                          parse_alias, write_report)
from dawm_fast.run_io import die


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dawm_fast.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, nargs="+")
    p.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--command", action="append", default=[],
                   help="the command(s) that made the sweep, quoted in report.md")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="copy every finished run's results (results.json, metrics.csv, "
                        "config.json, dynamics_check.json, plots) to DIR and write the report "
                        "there: a directory to commit, without checkpoints or synthetic data")
    p.add_argument("--path-alias", action="append", default=[], metavar="OLD=NEW",
                   help="with --export: write NEW for the path prefix OLD in the exported text "
                        "files and the report (e.g. /work/runs/=sweeps/), so the committed "
                        "results name no machine's disk; repeatable")
    p.add_argument("--min-seeds", type=int, default=1, metavar="N",
                   help="paired seeds a task x algo needs to enter the lead table and the "
                        "across-task statistics (cells still filling stay in the other tables)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where the report goes (default: the sweep directory; needed with "
                        "several)")
    args = p.parse_args(argv)
    try:
        roots, out, label = args.sweep_dir, args.out, None
        aliases = [parse_alias(a) for a in args.path_alias]
        if aliases and args.export is None:
            raise ReportError("--path-alias rewrites exported files; use it with --export DIR")
        if args.export is not None:
            if len(roots) != 1 or out is not None:
                raise ReportError("--export takes one sweep directory and writes the report "
                                  "there; drop --out, or export each sweep on its own")
            n = export_results(roots[0], args.export, aliases)
            print(f"exported {n} files of finished runs to {args.export}", flush=True)
            # the exported report names the sweep it came from (as given), not the copy
            label = apply_aliases(str(roots[0]), aliases)
            roots = [args.export]
        commands = [apply_aliases(c, aliases) for c in args.command]
        rep = write_report(roots, args.reps, commands, out, args.min_seeds, label)
    except ReportError as e:
        die(str(e))
    out = out or roots[0]
    n_ok = sum(not c["refused"] for c in rep["cells"])
    print(f"report: {rep['n_runs']} runs in {n_ok} cells ({len(rep['cells']) - n_ok} refused); "
          f"{out / 'report.md'}, report.json, plots/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
