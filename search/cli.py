"""``compvae-search``: launch, resume, export, report and browse hyperparameter searches.

    compvae-search launch spaces/quick.yaml [--name N] [--storage DIR] [--mlflow-uri URI]
                                            [--address ADDR] [--num-samples N]
                                            [--max-concurrent N] [--seed S]
                                            [--no-parent-reuse]
                                            [--set KEY=VALUE ...] [--dry-run]
    compvae-search resume NAME_OR_DIR
    compvae-search ls [--storage DIR]
    compvae-search status NAME_OR_DIR
    compvae-search stop NAME_OR_DIR
    compvae-search export NAME_OR_DIR --out DIR [--top K] [--register MODEL]
    compvae-search report NAME_OR_DIR [--group-by KNOB]
    compvae-search ui NAME_OR_DIR [--port 5000]

A search lives in <storage>/<name>/ (default storage: ./searches). Ctrl-C stops it cleanly;
`resume` continues it. Anything you can fix (a bad space field, an unreachable cluster or MLflow
server) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compvae import __version__
from compvae.errors import REPORTED, ArgumentParser, UserError, first_line, report_error


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``, with a message that says which."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be at least 1, got {value}" if minimum == 1 else f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive = _int_at_least(1)
_nonneg = _int_at_least(0)


def _port(text: str) -> int:
    """An argparse type: a TCP port number, 1-65535."""
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


def _check_port_free(port: int) -> None:
    """``mlflow ui`` on a port in use logs an error and still exits 0: check it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UserError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
                            "choose another port") from None


def _parse_set(items: list[str]) -> dict[str, Any]:
    from compvae.config import parse_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set child.epochs=4 or "
                            "--set search.num_samples=20")
        out[key.strip()] = parse_yaml(value, f"--set {item}")
    return out


def cmd_launch(args: argparse.Namespace) -> int:
    if args.dry_run:  # no Ray, no folder: the space and settings checked, the plan printed
        from search.analysis.plan import plan_text
        from search.run.checks import check_search_data
        from search.run.lifecycle import prepare_space, search_name

        space = prepare_space(args.space, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                              seed=args.seed, reuse_parents=False if args.no_parent_reuse else None,
                              settings=_parse_set(args.set))
        space = check_search_data(space)
        print(plan_text(space, search_name(space, args.name)))
        return 0
    from search.run.lifecycle import launch

    outcome = launch(args.space, name=args.name, storage=args.storage, mlflow_uri=args.mlflow_uri,
                     address=args.address, num_samples=args.num_samples,
                     max_concurrent=args.max_concurrent, seed=args.seed,
                     reuse_parents=False if args.no_parent_reuse else None, settings=_parse_set(args.set))
    return 0 if outcome.finished else 130


def cmd_ls(args: argparse.Namespace) -> int:
    from search.analysis.progress import progress, searches_in
    from search.layout import storage_root

    if args.storage is not None and not Path(args.storage).expanduser().is_dir():
        # a mistyped folder would otherwise read as "no searches" (exit 0)
        raise UserError(f"--storage {args.storage}: no such folder; give the folder the searches were "
                        "launched in (launch --storage), or leave it out for the default")
    layouts = searches_in(args.storage)
    if not layouts:
        print(f"no searches in {storage_root(args.storage)}")
        return 0
    rows = []
    for layout in layouts:
        try:
            p = progress(layout)
        except UserError as exc:  # one broken folder must not hide the others
            rows.append((layout.name, "unreadable", "-", "-", "-", first_line(exc)[:60]))
            continue
        best = ", ".join(f"{m}={v:.4g}" for m, v in p.best.items()) or "-"
        rows.append((p.name, p.status, f"{p.done}/{p.total}", best, p.started, ""))
    header = ("search", "status", "trials", "best", "started", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + (f"  {r[5]}" if r[5] else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from search.analysis.progress import progress, status_text
    from search.layout import resolve_search

    print(status_text(progress(resolve_search(args.search, args.storage))))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Ctrl-C for a driver in another terminal: SIGINT, then wait until it let go of the search."""
    import os
    import signal
    import time

    from search.layout import SearchState, driver_process, driver_running, resolve_search

    layout = resolve_search(args.search, args.storage)
    driver = driver_process(layout)
    if driver is None:
        raise UserError(f"search {layout.name} is not running (status: {SearchState.load(layout).status}); "
                        f"nothing to stop")
    if driver.get("host") != socket.gethostname():
        raise UserError(f"search {layout.name}: its driver runs on {driver.get('host')} (pid {driver.get('pid')}); "
                        "run `compvae-search stop` there")
    os.kill(int(driver["pid"]), signal.SIGINT)
    print(f"asked search {layout.name} to stop (SIGINT to its driver, pid {driver['pid']}); waiting up to "
          f"{args.timeout}s for trials in flight to checkpoint", flush=True)
    deadline = time.monotonic() + args.timeout
    while driver_running(layout):
        if time.monotonic() > deadline:
            raise UserError(f"search {layout.name}: the driver is still stopping after {args.timeout}s; "
                            "check it, or wait longer with --timeout")
        time.sleep(0.5)
    print(f"stopped: {layout.name} is {SearchState.load(layout).status}; continue with "
          f"`compvae-search resume {layout.root}`")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from search.run.lifecycle import resume

    outcome = resume(args.search, storage=args.storage, address=args.address)
    return 0 if outcome.finished else 130


def _open(args: argparse.Namespace):  # -> (layout, state, space)
    from search.layout import SearchState, resolve_search
    from search.space import load_space

    layout = resolve_search(args.search, args.storage)
    return layout, SearchState.load(layout), load_space(layout.space_file)


def cmd_export(args: argparse.Namespace) -> int:
    from compvae.paths import check_folder
    from search.analysis.export import export_best
    from search.analysis.results import TrialSummary, format_table, trials_frame

    if args.register is not None and (not args.register.strip() or any(c in args.register for c in "/:")):
        raise UserError(f"--register {args.register!r}: an MLflow model name, non-empty and without '/' or ':'")
    out = check_folder("--out", args.out)
    layout, state, space = _open(args)
    if args.register and space.multi_objective:
        raise UserError(f"--register {args.register}: search {layout.name} has several objectives (a Pareto "
                        "front, no single best); register one trial's run with MLflow instead")
    written = export_best(layout, space, out, top=args.top, state=state)
    chosen = {p.stem.split("_", 1)[1] for p in written}
    frame = trials_frame([s for s in TrialSummary.load_all(layout) if s.name in chosen], space)
    print(format_table(frame))
    for p in written:
        print(f"wrote {p}")
    print(f"retrain one with: compvae train {written[0]} --out DIR")
    if args.register:
        from mlflow.tracking import MlflowClient

        from search.tracking.models import register_child

        best = written[0].stem.split("_", 1)[1]  # rank01_<trial>: the best
        summary = next(s for s in TrialSummary.load_all(layout) if s.name == best)
        if not summary.mlflow_run_id:
            raise UserError(f"--register {args.register}: trial {best} has no MLflow run; run "
                            f"`compvae-search report {layout.root}` once the store is reachable")
        try:
            version = register_child(MlflowClient(state.mlflow_uri), summary.mlflow_run_id, args.register)
        except Exception as exc:  # a name MLflow refuses, a store that is away: one line
            raise UserError(f"--register {args.register}: MLflow refused it ({first_line(exc)[:200]}); the "
                            f"configs are exported in {out}; fix the name or the store and run export again") from None
        print(f"registered {best}'s child as model '{args.register}' version {version.version} "
              f"(models:/{args.register}/{version.version} in {state.mlflow_uri})")
    return 0


def _joined_trials(names: list[str], storage: str | None, own) -> list:
    """The trials of other searches (``report --with``), named ``<search>/<trial>``: arms run
    in separate searches of the same seeds (e.g. the oracle control beside the parent-mask study)."""
    import dataclasses

    from search.analysis.results import TrialSummary
    from search.layout import resolve_search

    out = []
    for name in names:
        other = resolve_search(name, storage)
        if other.root.resolve() == own.root.resolve():
            raise UserError(f"--with {name}: that is the search being reported; name another one")
        out += [dataclasses.replace(s, name=f"{other.name}/{s.name}") for s in TrialSummary.load_all(other)]
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from search.analysis.report import build_report
    from search.analysis.results import TrialSummary, format_table, trials_frame
    from search.tracking.client import MlflowTracker
    from search.tracking.journal import JOURNAL, sync_pending

    layout, state, space = _open(args)
    if args.with_ and not args.paired_by:
        raise UserError("--with: other searches join only a paired comparison; add --paired-by train.seed")
    summaries = TrialSummary.load_all(layout) + _joined_trials(args.with_ or [], args.storage, layout)
    if args.group_by:  # a wrong knob costs nothing: checked before any file or MLflow write
        from search.analysis.groups import check_knob, per_trial_frame

        knobs = [k.strip() for k in args.group_by.split(",")] if args.paired_by else [args.group_by]
        for knob in knobs:
            check_knob(knob)
        if per_trial_frame(summaries, knobs[0]).empty:
            raise UserError(f"--group-by {args.group_by}: no complete trial yet; wait for the search or resume it")
    tracker = None
    try:
        tracker = MlflowTracker(state.mlflow_uri, journal=layout.root / JOURNAL)
        tracker.client.get_run(state.mlflow_parent_run_id or "")
    except Exception as exc:  # a report must not need the MLflow store to be up
        print(f"note: not logging to MLflow ({first_line(exc)[:120]})", file=sys.stderr)
        tracker = None
    if tracker is not None:  # writes buffered while the store was away (search.tracking.client.MlflowTracker)
        sent, pending = sync_pending(tracker, layout)
        if sent or pending:
            print(f"MLflow: sent {sent} buffered writes, {pending} still pending in {layout.root / JOURNAL}")
    files = build_report(layout, space, state, tracker=tracker)
    print(format_table(trials_frame(TrialSummary.load_all(layout), space)))
    for f in files:
        print(f"wrote {f}")
    if args.paired_by:
        from search.analysis.paired import paired_report

        knobs = [k.strip() for k in (args.group_by or "child.masking_mode").split(",") if k.strip()]
        paired = paired_report(summaries, knobs, args.paired_by, layout.report_dir,
                               baseline=args.baseline, space=space, tracker=tracker,
                               parent_run_id=state.mlflow_parent_run_id)
        print(f"\n{layout.name}: arms ({', '.join(knobs)}) paired by {args.paired_by}")
        print(paired.text)
        for f in paired.files:
            print(f"wrote {f}")
    elif args.group_by:
        from search.analysis.groups import group_report

        grouped = group_report(TrialSummary.load_all(layout), args.group_by, layout.report_dir, space,
                               title=f"{layout.name}: complete trials by {args.group_by}",
                               tracker=tracker, parent_run_id=state.mlflow_parent_run_id)
        print(f"\n{layout.name}: by {args.group_by}")
        print(grouped.text)
        for f in grouped.files:
            print(f"wrote {f}")
    if tracker is not None:
        print(f"logged to MLflow run {state.mlflow_parent_run_id} ({state.mlflow_uri})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from search.tracking.context import experiment_url

    layout, state, _space = _open(args)
    if state.mlflow_uri.startswith(("http://", "https://")):
        print(f"search {layout.name} logs to {state.mlflow_uri}: open "
              f"{experiment_url(state.mlflow_uri, state.mlflow_experiment_id or '0')}")
        return 0
    _check_port_free(args.port)  # after _open: a missing search is the first thing to fix
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", state.mlflow_uri,
           "--host", "127.0.0.1", "--port", str(args.port)]
    url = experiment_url(f"http://127.0.0.1:{args.port}", state.mlflow_experiment_id or "0")
    print(f"MLflow UI for {layout.name}: {url} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd, cwd=str(layout.root))
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="compvae-search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="start a search from a space YAML")
    p.add_argument("space", help="search space YAML, e.g. spaces/quick.yaml")
    p.add_argument("--name", help="search name (default: <space name>-<date-time>)")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite store inside the search folder; "
                                        "http://host:port for `mlflow server`)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-samples", type=_positive, help="override search.num_samples")
    p.add_argument("--max-concurrent", type=_positive, help="override search.max_concurrent")
    p.add_argument("--seed", type=_nonneg, help="override search.seed (the sampler's seed)")
    p.add_argument("--no-parent-reuse", action="store_true",
                   help="train a parent in every trial (search.reuse_parents: false); for comparisons")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the space's base config (child.epochs=4) or a search "
                        "setting (search.num_samples=20); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="check the space and print the plan (trials, parents, resources, rough time); "
                        "starts nothing")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("ls", help="every search in a storage folder: status, trials done, best, start")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("status", help="progress, elapsed, ETA, running best and failures of a search")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="stop a running search gracefully (as Ctrl-C); `resume` continues it")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.add_argument("--timeout", type=_positive, default=300, help="seconds to wait for the driver (default 300)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.add_argument("--address", help="Ray cluster address (default: the one it was launched with)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("export", help="write the best (or Pareto) configs as YAML for `compvae train`")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top", type=_positive, help="how many configs (default: 1, or the whole Pareto front)")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.add_argument("--register", metavar="NAME",
                   help="also register the best trial's child (MLflow PyTorch model) as model NAME")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="trials table and figures (saved and logged to MLflow)")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.add_argument("--group-by", metavar="KNOB",
                   help="also compare groups of complete trials by a dotted config field, e.g. "
                        "child.masking_mode: mean and 95%% CI per group, table + strip plot; with "
                        "--paired-by, one or more comma-separated knobs that define the arms")
    p.add_argument("--paired-by", metavar="KNOB",
                   help="compare every arm with a baseline, pairing trials by this knob (e.g. "
                        "train.seed): mean difference, 95%% CI, paired t and Wilcoxon tests, Holm-corrected")
    p.add_argument("--with", dest="with_", metavar="NAME_OR_DIR", action="append",
                   help="with --paired-by: also pair the trials of another search of the same seeds "
                        "(repeatable), e.g. the oracle control beside a parent-mask study; put the knob "
                        "that tells the searches apart (e.g. mask.source) in --group-by")
    p.add_argument("--baseline", metavar="ARM",
                   help="the arm the others are compared with (default: the first, in the space's order)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the search's store")
    p.add_argument("search", metavar="NAME_OR_DIR")
    p.add_argument("--port", type=_port, default=5000)
    p.add_argument("--storage", help="folder holding searches (default: ./searches)")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.run.session import (
        SIGTERM,  # installed once Ray is up (Ray's own handler comes first)
    )

    terminated = SIGTERM
    terminated.received = False
    try:
        rc = int(args.func(args))
    except REPORTED as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        hint = ""
        if args.command in ("launch", "resume"):
            hint = "; continue with `compvae-search resume NAME_OR_DIR`"
        print(f"{'terminated' if terminated.received else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if terminated.received else 130
    return 143 if terminated.received and rc == 130 else rc


if __name__ == "__main__":
    sys.exit(main())
