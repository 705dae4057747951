"""`layerwise report NAME`: experiment NAME read back from an MLflow store (the local sqlite file or
a tracking server) as a Markdown page (tasks/experiments.py, layerwise/report/pages.py), written
to a folder with its figures, printed, or pasted into a marked section of a docs file."""
from __future__ import annotations

from pathlib import Path

from layerwise.paths import PROJECT_ROOT
from layerwise.report.pages import Page
from layerwise.report.sections import rewrite_file


def section_body(page: Page, command: str) -> str:
    """What a docs section holds: where the numbers come from, then the page's tables."""
    return (f"_Written by `{command}`, never by hand: {page.source}_\n\n{page.body.rstrip()}\n")


def cmd_report(args) -> int:
    from tasks.experiments import download_figures, read_page
    from tasks.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri()
    page = read_page(args.name, uri, args.run, args.sweep)
    run_id = page.run_id
    if args.into:
        label = args.section or args.name
        command = f"layerwise report {args.name}" + (" --sweep" if args.sweep else "") + f" --into {args.into}" + (
            f" --section '{label}'" if args.section else "")
        rewrite_file(args.into, label, section_body(page, command))
        print(f"{args.into}: section report:{label} rewritten from MLflow run {run_id}")
        if not args.out:
            return 0
    if args.out == "-":
        print(page.markdown(), end="")
        return 0
    folder = Path(args.out or PROJECT_ROOT / "reports" / args.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(page.markdown())
    download_figures(uri, run_id, page.figures, folder)
    print(f"{folder / 'report.md'}: the report of MLflow run {run_id} (experiment '{args.name}', store {uri})"
          + (f", with {len(page.figures)} figure(s)" if page.figures else ""))
    return 0
