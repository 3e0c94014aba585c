"""The pull-request report: what a branch changes against its base, and whether it is worse.

One markdown page: the `compare` verdict and table, the `dvc params diff` and `dvc metrics diff`
tables, and where the figures are. CI posts it as one comment, found again on the next push by
MARKER and edited in place. All of it is built here, so the workflow only calls
`mnistpipe pr-report` and posts the file, and a test runs the same command on local branches.

The head side defaults to the workspace: in CI that is the branch's checkout after
`dvc repro`, so the report describes what the branch's code and params really produce.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

from . import atomic, paths
from .errors import UserError

MARKER = "<!-- mnistpipe-pr-report -->"
FIGURES = (paths.REPORTS / "figures" / "confusion.png", paths.REPORTS / "figures" / "curves.png")


@dataclass(frozen=True)
class PullRequestReport:
    markdown: str
    failed: bool  # --fail-if-worse and the head is significantly worse than the base
    verdict: str


def dvc_diff(kind: str, base: str, head: str | None) -> str:
    """`dvc params diff BASE [HEAD] --md` (or metrics): a markdown table (a header alone: no change)."""
    cmd = [sys.executable, "-m", "dvc", kind, "diff", base, *([head] if head else []), "--md"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        cause = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"dvc {kind} diff {base} failed ({cause}); run pr-report in the project's git+DVC clone, "
                        "with the base branch fetched (git fetch origin BASE)")
    return result.stdout.strip()


def collapsed(table: str, what: str) -> str:
    """A dvc diff table; a long one folded away (GitHub renders <details>), so the verdict stays on screen."""
    rows = len(table.splitlines()) - 2
    if rows <= 0:
        return f"No {what} changed."
    if rows <= 10:
        return table
    return f"<details><summary>{rows} {what} changed (click to show)</summary>\n\n{table}\n\n</details>"


def figures_text(figures_url: str | None) -> str:
    found = [path for path in FIGURES if path.exists()]
    if not found:
        return f"No figures in `{paths.REPORTS}/figures/`: the report stage writes them (`dvc repro`)."
    names = ", ".join(f"`{path.name}`" for path in found)
    if figures_url:
        return f"The confusion matrix and training curves ({names}) are in [this run's artifact]({figures_url})."
    return f"The confusion matrix and training curves: {', '.join(f'`{path}`' for path in found)}."


def build_report(base: str, head: str | None = None, alpha: float = 0.05, fail_if_worse: bool = False,
                 figures_url: str | None = None) -> PullRequestReport:
    from .compare import compare, format_markdown, load_run

    result = compare(load_run(base), load_run(head), alpha)
    failed = fail_if_worse and result.b_worse
    params, metrics = dvc_diff("params", base, head), dvc_diff("metrics", base, head)
    lines = [MARKER, f"## mnistpipe: `{result.b}` against `{base}`", ""]
    if head is None:
        lines += ["`workspace`: the checked-out files as they are (in CI, after `dvc repro`).", ""]
    if failed:
        lines += [f"> [!CAUTION]\n> **This check fails**: `{result.b}` is significantly worse than `{base}` "
                  f"(McNemar, alpha {alpha}).", ""]
    revs = " ".join([base, *([head] if head else [])])
    lines += [f"### Test accuracy: `mnistpipe compare {revs}`", "",
              format_markdown(result), "",
              f"### Params: `dvc params diff {revs}`", "", collapsed(params, "params"), "",
              f"### Metrics: `dvc metrics diff {revs}`", "", collapsed(metrics, "metrics"), "",
              "### Figures", "", figures_text(figures_url), ""]
    return PullRequestReport("\n".join(lines), failed, result.verdict)


def cmd_pr_report(args: argparse.Namespace) -> int:
    report = build_report(args.base, args.head, args.alpha, args.fail_if_worse, args.figures_url)
    if args.output:
        atomic.write_text(args.output, report.markdown)
        print(f"wrote {args.output}: {report.verdict}")
    else:
        print(report.markdown)
    if report.failed:
        print("pr-report: the branch is significantly worse than its base (--fail-if-worse)", file=sys.stderr)
    return 1 if report.failed else 0


def add_parser(sub) -> None:
    pr = sub.add_parser("pr-report", help="a pull request's params diff, comparison and figures, as markdown")
    pr.add_argument("--base", default="origin/main", help="the branch the pull request targets (default: %(default)s)")
    pr.add_argument("--head", default=None, help="git revision to report on (default: the workspace)")
    pr.add_argument("--output", metavar="PATH", help="write the markdown here (default: print it)")
    pr.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    pr.add_argument("--fail-if-worse", action="store_true",
                    help="exit 1 when the head is significantly worse than the base (a CI gate)")
    pr.add_argument("--figures-url", metavar="URL", help="where CI uploaded reports/figures/ (linked in the report)")
    pr.set_defaults(func=cmd_pr_report)
