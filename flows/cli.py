"""layerwise run NAME | sweep NAME | report NAME | reproduce | list | validate | serve | example-data.
Exit codes: 0 done, 2 bad input (config, data, a store or claims that cannot be read), 1 failure
(reproduce: a claim outside its tolerance)."""
from __future__ import annotations

import argparse
import gc
import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A tracking server that stops answering must fail the run within a minute, not after MLflow's
# default 120 s x 8 tries per call: 10 s a request, one retry (a user's own settings win).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # `report` downloads figures quietly

# torch, MLflow and Prefect load inside the commands: `run` first launches the temporary Prefect API,
# so its start overlaps those imports
from flows.interrupts import INTERRUPTED, _interrupt, exiting, forget_exec_interrupt, install  # noqa: E402,F401
from flows.schedules import check_schedules  # noqa: E402
from layerwise.config import ConfigError, cells, load_all  # noqa: E402
from layerwise.errors import DataError, ReportError  # noqa: E402
from layerwise.paths import DEFAULT_CONFIG  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerwise", description="Greedy layer-wise autoencoder pretraining on image data.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline from pipelines.yaml")
    sweep = sub.add_parser("sweep", help="run a pipeline's sweep: block (a search on validation, resumable)")
    for command in (run, sweep):
        command.add_argument("name", nargs="?", default=None,
                             help="the pipeline (may be left out when the file holds only one, as best.yaml does)")
        command.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipelines file (default: %(default)s)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value",
                             help="override a config value (parsed as YAML); repeatable")
        command.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (as --set device=...)")
        command.add_argument("--data-root", default=None,
                             help="the data root: MNIST/raw and torchvision's datasets (default: $MNIST_ROOT, "
                                  "else ./data)")
    listing = sub.add_parser("list", help="list the pipelines")
    listing.add_argument("--config", default=str(DEFAULT_CONFIG))
    validate = sub.add_parser("validate", help="validate every pipeline in the file")
    validate.add_argument("--config", default=str(DEFAULT_CONFIG))
    serving = sub.add_parser("serve", help="serve every pipeline as a Prefect deployment (schedules from "
                                           "`schedule:`); needs PREFECT_API_URL (make server)")
    serving.add_argument("--config", default=str(DEFAULT_CONFIG))
    example = sub.add_parser("example-data", help="write scikit-learn's bundled 8x8 digits as an .npz "
                                                  "(source: arrays) and an image folder (source: folder)")
    example.add_argument("--out", default=str(DEFAULT_CONFIG.parent / "data"),
                         help="folder for digits.npz and digits-folder/ (default: %(default)s, where the "
                              "digits pipelines of pipelines.yaml look)")
    report = sub.add_parser("report", help="an experiment of an MLflow store as a Markdown page: a grid's means, "
                                           "paired differences and cells, a sweep's trials, a run's metrics and stages")
    report.add_argument("name", help="the experiment (a pipeline's name)")
    report.add_argument("--tracking-uri", default=None, help="the store: sqlite:///PATH or http(s)://HOST:PORT "
                                                             "(default: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db)")
    report.add_argument("--run", default=None, help="the parent run (default: the experiment's latest finished one)")
    report.add_argument("--sweep", action="store_true", help="the experiment's latest finished sweep")
    report.add_argument("--out", default=None, help="folder for report.md and its figures (default: reports/NAME); "
                                                    "- prints the page")
    report.add_argument("--into", default=None, metavar="FILE",
                        help="rewrite the section <!-- report:NAME --> ... <!-- /report --> of this Markdown file")
    report.add_argument("--section", default=None, help="the section's label in --into (default: NAME)")
    reproduce = sub.add_parser("reproduce", help="run every command behind the claims file and check each claim "
                                                 "against the value measured now (exit 1 if one is off)")
    reproduce.add_argument("--claims", default=str(DEFAULT_CONFIG.parent / "docs" / "claims.csv"),
                           help="the claims file (default: %(default)s)")
    reproduce.add_argument("--only", default=None, metavar="NAME,NAME", help="only the claims of these pipelines")
    reproduce.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipelines file (default: %(default)s)")
    reproduce.add_argument("--data-root", default=None, help="passed to every command")
    reproduce.add_argument("--into", default=None, metavar="FILE",
                           help="rewrite this Markdown file's sections of the measured commands (and, without "
                                "--only, its report:reproduce section with the table, date and machine)")
    reproduce.add_argument("--fresh", action="store_true", help="forget earlier calls: run every command again")
    reproduce.add_argument("--restate", action="store_true",
                           help="run nothing: write the values the finished commands measured into the claims file")
    reproduce.add_argument("--tick", type=float, default=300, help="seconds between time-left lines (default 300)")
    return parser


def what_runs(cfg) -> str:
    if cfg.sweep:
        return f"{_what(cfg)}, sweep {cfg.sweep.trials} trials"
    return _what(cfg)


def _what(cfg) -> str:
    if cfg.unroll:
        return "unrolled"
    if cfg.ablation:
        return f"{len(cells(cfg))} cells"
    n = cfg.n_labels()
    return f"{cfg.finetune.init}, {n if n is not None else '?'} labels"


def cmd_list(args) -> int:
    pipelines = load_all(args.config)
    check_schedules(pipelines, args.config)
    for name, cfg in pipelines.items():
        print(f"{name:<18} {cfg.shape_text():<24} {what_runs(cfg):<22} {cfg.description}")
    return EXIT_OK


def cmd_validate(args) -> int:
    pipelines = load_all(args.config)
    check_schedules(pipelines, args.config)
    print(f"{args.config}: {len(pipelines)} pipeline(s) valid: {', '.join(pipelines)}")
    return EXIT_OK


def _only_pipeline(config: str) -> str:
    """The name to run when none is given: the file's one pipeline (best.yaml holds one)."""
    from layerwise.config import read_pipelines_file

    names = list(read_pipelines_file(config))
    if len(names) != 1:
        raise ConfigError(f"{config}: name the pipeline to run (the file defines {', '.join(names) or 'none'})")
    return names[0]


def _checked_launch(args):
    """The temporary Prefect API launched, then every check made (bad input stops the API at once)."""
    from flows.prefect_api import launch_temporary_api

    api = launch_temporary_api()  # starts while the checks and imports run; stopped at exit
    from flows.checks import check_run

    if args.device:
        args.overrides.append(f"device={args.device}")
    try:
        args.name = args.name or _only_pipeline(args.config)
        checked = check_run(args.name, args.config, args.overrides, args.data_root,
                            require_sweep=args.command == "sweep")
    except BaseException:
        if api is not None:  # bad input: no run starts, so its API goes now, not at exit
            api.stop()
        raise
    return api, checked


def _tracked(args, body):
    """body() inside the run's lifetime: no MLflow run of this process stays RUNNING if it is stopped."""
    try:
        return body()
    except BaseException as exc:
        if not isinstance(exc, Exception) or INTERRUPTED.is_set():
            from tasks.tracking import client, kill_open_runs

            kill_open_runs(client(), args.name)
        raise


def cmd_run(args) -> int:
    api, checked = _checked_launch(args)
    import torch

    from flows.pipeline import layerwise_pipeline
    from flows.prefect_api import temporary_api
    from layerwise.machine.device import describe_device
    from tasks.finetune import prepare_model_logging

    if checked.cfg.finetune and not checked.cfg.ablation:  # the one fine-tune's model is logged
        prepare_model_logging()  # work log_model does anyway, while the API may still be starting

    cfg, uri = checked.cfg, checked.tracking_uri
    where = describe_device(torch.device(checked.device))
    print(f"layerwise: running '{args.name}' ({cfg.shape_text()}, {_what(cfg)}) on {where} -> MLflow {uri}",
          flush=True)

    def body():
        with temporary_api(api):
            return layerwise_pipeline(args.name, args.overrides, args.config, checked=checked)
    print(summary(_tracked(args, body), uri))
    return EXIT_OK


def cmd_sweep(args) -> int:
    api, checked = _checked_launch(args)
    import torch
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.prefect_api import temporary_api
    from flows.sweep import layerwise_sweep
    from layerwise.machine.device import describe_device

    cfg, uri = checked.cfg, checked.tracking_uri
    print(f"layerwise: sweeping '{args.name}' ({cfg.shape_text()}, {cfg.sweep.trials} trials, {cfg.sweep.sampler}, "
          f"{cfg.sweep.workers} at a time) on {describe_device(torch.device(checked.device))} -> MLflow {uri}",
          flush=True)
    flow = layerwise_sweep.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.sweep.workers))

    def body():
        with temporary_api(api):
            return flow(args.name, args.overrides, str(args.config), checked)
    print(summary(_tracked(args, body), uri))
    return EXIT_OK


def cmd_example_data(args) -> int:
    from pathlib import Path

    from layerwise.datasets.examples import write_digits_folder, write_digits_npz

    root = Path(args.out)
    npz = write_digits_npz(root / "digits.npz")
    folder = root / "digits-folder"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)  # rewritten whole: a stale file would join a class
    write_digits_folder(folder)
    print(f"wrote {npz} (1,797 images, no test split: layerwise holds one out) and {folder}/ "
          "(100 labelled, 400 test, 1,297 unlabelled)")
    return EXIT_OK


def cmd_serve(args) -> int:
    pipelines = load_all(args.config)
    check_schedules(pipelines, args.config)
    from flows.serve import ServeError, serve_pipelines

    try:
        serve_pipelines(pipelines, args.config)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("serve stopped: the schedules are paused until the next `layerwise serve`", flush=True)
    return EXIT_OK


def cmd_report(args) -> int:
    from flows.reporting import cmd_report as report

    return report(args)


def cmd_reproduce(args) -> int:
    from flows.reproduce import cmd_reproduce as reproduce

    return reproduce(args)


UI_PORT = 5000  # where `mlflow ui` (and `make ui`) serves by default


def ui_command(uri: str, prefix: str = sys.prefix) -> str:
    """The command that opens a sqlite store in the MLflow UI, as it works when pasted on this
    machine: `make ui` where it opens this very store with this very venv (the default store, run
    from the checkout's .venv), else this venv's own mlflow by its full path (`mlflow` alone is
    found only inside the venv). prefix: the running venv."""
    import shlex
    from pathlib import Path

    from layerwise.paths import MLRUNS, PROJECT_ROOT

    if (uri == f"sqlite:///{MLRUNS / 'mlflow.db'}" and (PROJECT_ROOT / "Makefile").exists()
            and Path(prefix).resolve() == (PROJECT_ROOT / ".venv").resolve()):
        return "make ui" if Path.cwd().resolve() == PROJECT_ROOT else f"make -C {shlex.quote(str(PROJECT_ROOT))} ui"
    mlflow = Path(sys.executable).parent / "mlflow"
    program = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    return shlex.join([*program, "ui", "--port", str(UI_PORT), "--backend-store-uri", uri])


def summary(result, uri: str) -> str:
    """The run's headline, its retrieval precision, and where to open it in MLflow."""
    headline = "\n" + result.headline()
    for space, found in result.retrieval.items():
        headline += "\nretrieval " + space + ": " + ", ".join(
            f"{key} {value:.4f}" for key, value in found.items() if key.startswith("precision"))
    page = f"#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
    if uri.startswith(("http://", "https://")):
        where = f"Open it: {uri.rstrip('/')}/{page}"
    else:
        where = f"Open it: {ui_command(uri)}\nthen http://127.0.0.1:{UI_PORT}/{page}"
    return f"{headline}\nMLflow parent run {result.parent_run_id} in experiment '{result.pipeline}'.\n{where}"


def _interrupted() -> int:
    forget_exec_interrupt()
    print("interrupted: the open MLflow runs are marked KILLED", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    install()
    args = _parser().parse_args(argv)
    commands = {"run": cmd_run, "sweep": cmd_sweep, "list": cmd_list, "validate": cmd_validate, "serve": cmd_serve,
                "example-data": cmd_example_data, "report": cmd_report, "reproduce": cmd_reproduce}
    try:
        return commands[args.command](args)
    except (ConfigError, DataError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to turn failures into exit 1
        if INTERRUPTED.is_set():  # an error raised while the interrupt unwound the run
            return _interrupted()
        from tasks.tracking import tracking_uri, unreachable

        first_line = (str(exc).splitlines() or [""])[0]
        if unreachable(exc):
            first_line = f"the MLflow tracking server {tracking_uri()} stopped answering ({first_line})"
        print(f"failed: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return EXIT_FAILED
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return _interrupted()  # Ctrl-C, SIGTERM (KeyboardInterrupt from _interrupt) or Prefect's TerminationSignal
    finally:
        # The interpreter's last collections over torch's, Prefect's and MLflow's objects took ~2.7 s
        # of every run's exit (make bench, end-to-end line); frozen objects are skipped. Exit handlers
        # (the temporary API's stop, MLflow's) still run.
        gc.freeze()
        if argv is None:  # the process's own command line (`layerwise`, `python -m flows`): it ends now
            exiting()


if __name__ == "__main__":
    sys.exit(main())
