"""``bankflow``: the command line.

Heavy imports happen inside each command: ``--help``, ``--version``, ``eval``,
``data check``, ``store``, ``status`` and ``config show`` import neither torch nor Prefect
(``tests/flows/test_cli.py`` checks). Commands that run stages validate the config, the
files it names and a dataset on disk before Prefect starts
(:func:`stages.preflight.check_before_run`). User errors are one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from stages.stage_names import STAGE_ORDER

DEFAULT_WORK_ROOT = "work"
STAGE_LIST = ", ".join(STAGE_ORDER)
# Exceptions that mean "bad input" (one line, exit 2), by module: a module not imported
# yet cannot have raised one, so main() never imports a module just to catch its errors.
USER_ERRORS = (
    ("stages.config", "ConfigError"),
    ("stages.data.errors", "DataError"),
    ("stages.data.errors", "DataErrors"),
    ("stages.framework", "StageError"),
    ("featurestore.errors", "StoreError"),
)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: ``bankflow run: error: … (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class VersionAction(argparse.Action):
    """``--version``: the installed package's version (pyproject.toml's in a checkout)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print bankflow's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(f"bankflow {bankflow_version()}")
        parser.exit()


def bankflow_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bankflow")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def stage_name(text: str) -> str:
    """argparse type of a stage name: one of :data:`stages.stage_names.STAGE_ORDER`."""
    if text not in STAGE_ORDER:
        raise argparse.ArgumentTypeError(f"unknown stage {text!r}; stages: {STAGE_LIST}")
    return text


def _prefect_env(work_root: Path) -> None:
    """Keep Prefect's state (database, logs, results) under the work root, not ~/.prefect.

    A user who already points PREFECT_HOME / PREFECT_API_URL somewhere keeps that.
    Must run before prefect is imported.
    """
    os.environ.setdefault("PREFECT_HOME", str((work_root / ".prefect").resolve()))
    # Prefect does not create missing parents of its home (then its database cannot open).
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A fresh ephemeral server needs ~20 s to start on 2 cores (docs/design.md §7).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="pipeline config YAML (e.g. flows/configs/demo.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set dataset.root=/data/ava (repeatable)",
    )
    p.add_argument("--work-root", default=DEFAULT_WORK_ROOT, help="where stage outputs go")
    p.add_argument(
        "--cache",
        default=None,
        metavar="URL",
        help="the team's stage cache (s3://…, NFS path); default BANKFLOW_CACHE, then the "
        "config's cache.url",
    )


def cmd_world(args: argparse.Namespace) -> int:
    from stages.world import WorldConfig, build_world

    if args.features_only:
        import json

        from stages.world.scale import ScaleWorldConfig, build_scale_world

        scale_config = ScaleWorldConfig(
            scale=args.scale,
            seed=args.seed,
            context_grid=args.context_grid,
            context_channels=args.context_channels,
        )
        print(json.dumps(build_scale_world(Path(args.out), scale_config), indent=1))
        return 0
    if args.format == "tubes":
        from stages.world.tubes import TubeWorldConfig, build_tube_world

        print(build_tube_world(Path(args.out), TubeWorldConfig(seed=args.seed)))
        return 0
    config = WorldConfig.default(seed=args.seed)
    summary = build_world(Path(args.out), config)
    print(summary)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from stages.data import DatasetConfig, check_dataset

    if args.dataset_config:  # DIR is the root; the file need not (and may not) set one
        config = DatasetConfig.from_yaml(args.dataset_config, root=args.dataset_dir)
    else:
        config = DatasetConfig(root=Path(args.dataset_dir))
    report = check_dataset(config)
    print(report.format_summary())
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not report.ok:  # bad input: one error line per problem, exit 2
        for problem in report.problems:
            print(f"bankflow data check: error: {problem}", file=sys.stderr)
        return 2
    return 0


def _run_pipeline(args: argparse.Namespace, *, until: str | None, force: list[str]) -> int:
    from stages.config import load_config
    from stages.preflight import check_before_run

    # A bad config, --set or named file fails here, in one line, before Prefect starts.
    check_before_run(load_config(args.config, args.overrides))
    work_root = Path(args.work_root)
    _prefect_env(work_root)
    from flows.embedded import embedded_server

    # Our own server (dies with this process, stale ones stopped), not Prefect's ephemeral.
    with embedded_server(Path(os.environ["PREFECT_HOME"])):
        from flows.console import prefect_output_to
        from flows.pipeline import pipeline
        from stages.pipeline import format_summary

        prefect_output_to(Path(os.environ["PREFECT_HOME"]) / "prefect.log")  # tracebacks

        summary = pipeline(
            config=str(args.config),
            overrides=list(args.overrides),
            work_root=str(work_root),
            until=until,
            force=force,
            cache=getattr(args, "cache", None),
        )
    print(format_summary(summary))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(args, until=args.until, force=[])


def cmd_stage(args: argparse.Namespace) -> int:
    # One stage = the pipeline up to it: upstream outputs are found (or built), this
    # stage runs (or is served from cache unless --force).
    return _run_pipeline(args, until=args.name, force=[args.name] if args.force else [])


def cmd_demo(args: argparse.Namespace) -> int:
    from stages.config import packaged_config

    work_root = Path(args.work_root)
    args.config = str(packaged_config("demo"))
    args.overrides = [f"dataset.root={(work_root / 'world').resolve()}", *args.overrides]
    return _run_pipeline(args, until=None, force=[])


def _dry_run(config: Any, work_root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(stage run name, record) of every stage the config runs; keys computed, nothing run."""
    from stages.pipeline import PipelineRun, dry_runner, iter_runs, run_pipeline

    run = PipelineRun(config=config, work_root=work_root, runner=dry_runner, with_cache=False)
    # Only looking: it must not write summary.json over a real run's.
    return list(iter_runs(run_pipeline(run, write=False)))


def cmd_status(args: argparse.Namespace) -> int:
    from stages.config import load_config

    config = load_config(args.config, args.overrides, check_heads=False)  # no torch
    from stages.framework.remote_cache import open_cache

    cache = open_cache(args.cache or os.environ.get("BANKFLOW_CACHE") or config.cache.url)
    print(f"{'stage':<12} {'key':<17} {'state':<8} {'bytes':>12} {'seconds':>8}  output")
    for name, rec in _dry_run(config, Path(args.work_root)):
        st = rec["summary"]["status"]
        if cache is not None and st["state"] != "cached":
            stage = name.split(":")[0]
            record = cache.record(stage, rec["key"])
            if record is not None:  # not here, but a pull away
                st = {
                    "state": "in cache",
                    "seconds": record.get("seconds"),
                    "bytes": sum(size for _, size, *_ in record["manifest"]),
                }
                rec = {**rec, "uri": cache.data_url(stage, rec["key"])}
        secs = f"{st['seconds']:.1f}" if st["seconds"] is not None else "-"
        print(
            f"{name:<12} {rec['key']:<17} {st['state']:<8} {st['bytes']:>12} {secs:>8}  {rec['uri']}"
        )
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from stages.config import load_config

    config = load_config(args.config, args.overrides, check_heads=False)  # no torch
    print(f"# {args.config}, base: merged, --set applied, defaults filled in")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    print("\n# stage keys (work root: outputs in <work-root>/<stage>/<key>)")
    for name, rec in _dry_run(config, Path(args.work_root)):
        print(f"# {name:<24} {rec['key']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stages.evaluate.cli import eval_main

    return eval_main(args.rest)


def cmd_checkpoint_inspect(args: argparse.Namespace) -> int:
    """Exit 0: the checkpoint loads as described; 1: it would be refused (the report says
    why); 2: it cannot be read at all."""
    from stages.tools.checkpoint_inspect import inspect_checkpoint

    result = inspect_checkpoint(args.file, args.source_config)
    print("\n".join(result.lines))
    return 0 if result.loadable else 1


def cmd_store(args: argparse.Namespace) -> int:
    from featurestore import export_hdf5, import_hdf5, store_info, store_verify

    if args.action in ("export", "import") and not args.target:
        print(f"bankflow store {args.action}: a target is required", file=sys.stderr)
        return 2
    if args.action == "ls":
        from flows.team import format_entries, list_root

        print(format_entries(list_root(args.url)))
    elif args.action == "info":
        from flows.team import stage_output_info

        print(store_info(args.url))
        print(stage_output_info(args.url))
    elif args.action == "verify":
        report = store_verify(args.url, quick=args.quick)
        print("ok" if report.ok else "\n".join(report.problems))
        return 0 if report.ok else 1
    elif args.action == "export":
        n = export_hdf5(args.url, args.target)
        print(f"exported {args.url} -> {args.target} ({n} videos)")
    else:  # import: url is the HDF5 file, target the new store
        import_hdf5(args.url, args.target)
        print(f"imported {args.url} -> {args.target}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from flows.team_commands import transfer_command

    return transfer_command(args)


def cmd_gc(args: argparse.Namespace) -> int:
    from flows.team_commands import gc_command

    return gc_command(args)


def cmd_infer(args: argparse.Namespace) -> int:
    from stages.tools.infer import InferConfig, infer_video

    cfg = InferConfig(
        detector=args.detector,
        detector_arch=args.detector_arch,
        score_threshold=args.score_threshold,
        max_persons=args.max_persons,
        offset=args.offset,
        max_seconds=args.max_seconds,
        labelmap=args.labelmap,
        device=args.device,
    )
    report = infer_video(args.video, args.run, args.out, cfg)
    print(
        f"{report['video_id']}: {report['frames']} frames, {report['keyframes']} keyframes, "
        f"{report['persons']} persons in {report['tracks']} tracks -> {args.out}/"
        f"{report['outputs']['video']}, {args.out}/{report['outputs']['csv']}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Flow runs log INFO (stage progress) to the server; the CLI's default is WARNING.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    _prefect_env(Path(args.work_root))
    from flows.serve import options_from_args, serve

    return serve(options_from_args(args))


def cmd_attention(args: argparse.Namespace) -> int:
    from stages.tools.attention import attention_picture

    info = attention_picture(
        args.run,
        args.video,
        args.timestamp,
        args.out,
        store=args.store,
        video_id=args.video_id,
        offset=args.offset,
        frame_numbers=args.frame_numbers,
        max_actors=args.max_actors,
    )
    print(f"{info['head']}: {info['actors']} actors, maps {info['maps']} -> {info['out']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bankflow",
        description="Two-stage feature-bank action detection as cached, restartable stages.",
        epilog=f"Stages, in order: {STAGE_LIST}.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("world", help="build the synthetic demo world (an AVA-format dataset)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format",
        choices=("ava", "tubes"),
        default="ava",
        help="ava: AVA CSVs (default); tubes: a MultiSports-layout tube dataset",
    )
    p.add_argument(
        "--features-only",
        action="store_true",
        help="no pixels: AVA's cardinality x --scale as CSVs, a work root with a "
        "pre-seeded feature store and OUT/scale.yaml (stages.world.scale)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="--features-only: F (1 = AVA v2.2)")
    p.add_argument(
        "--context-grid",
        type=int,
        default=4,
        help="--features-only: side of the stored pooled context map",
    )
    p.add_argument(
        "--context-channels",
        type=int,
        default=None,
        help="--features-only: context channels (default: the 2304 actor dims)",
    )
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="validate an AVA-format dataset directory")
    c.add_argument("dataset_dir")
    c.add_argument("--dataset-config", help="YAML with DatasetConfig fields (file names, offset)")
    c.set_defaults(func=cmd_data_check)

    p = sub.add_parser("run", help="run the pipeline through the embedded Prefect")
    _add_config_args(p)
    p.add_argument(
        "--until",
        type=stage_name,
        metavar="STAGE",
        help=f"stop after this stage, one of: {STAGE_LIST}",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one stage (its inputs are found or built first)")
    p.add_argument("name", type=stage_name, metavar="STAGE", help=f"one of: {STAGE_LIST}")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="recompute even if published")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("demo", help="build the demo world and run the pipeline on it")
    p.add_argument("--work-root", default=DEFAULT_WORK_ROOT)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "status",
        help="each stage's key and whether its output is published",
        epilog=f"Stages, in order: {STAGE_LIST}.",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("config", help="pipeline configs: config show --config F [--set K=V]")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = config_sub.add_parser(
        "show",
        help="print the resolved config (base: merged, --set applied) and stage keys",
        epilog=f"Stages, in order: {STAGE_LIST}.",
    )
    _add_config_args(c)
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser(
        "eval",
        help="AVA frame-mAP: bankflow eval GT PRED --labelmap L [--excluded E]",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "store",
        help="feature stores: info|verify STORE, export STORE OUT.h5, import IN.h5 STORE",
    )
    p.add_argument("action", choices=["info", "verify", "export", "import", "ls"])
    p.add_argument(
        "url",
        help="a store URL (path, file://, s3://…); for import the .h5 file; for ls a "
        "work root or stage cache",
    )
    p.add_argument("target", nargs="?", help="export: the .h5 to write; import: the new store")
    p.add_argument(
        "--quick",
        action="store_true",
        help="verify: only check every chunk exists (default: decode every chunk)",
    )
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("checkpoint", help="backbone checkpoints from model zoos")
    checkpoint_sub = p.add_subparsers(dest="checkpoint_cmd", required=True)
    c = checkpoint_sub.add_parser(
        "inspect", help="format, architecture, tensors loaded/missing/unexpected/mis-shaped"
    )
    c.add_argument("file", help="a .pyth / .pth / .pt / Caffe2 .pkl checkpoint")
    c.add_argument(
        "--source-config", help="PySlowFast .yaml, MMAction2 .py, pytorchvideo:<hub> or a preset"
    )
    c.set_defaults(func=cmd_checkpoint_inspect)

    for name, what in (("push", "work root -> cache"), ("pull", "cache -> work root")):
        p = sub.add_parser(
            name,
            help=f"copy stage outputs {what}: a config's, or STAGE/KEY items with "
            "everything upstream of them",
        )
        p.add_argument("keys", nargs="*", metavar="STAGE/KEY")
        p.add_argument("--config", help="every stage output of this pipeline config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--work-root", default=DEFAULT_WORK_ROOT)
        p.add_argument("--cache", metavar="URL", help="default BANKFLOW_CACHE, then cache.url")
        p.set_defaults(func=cmd_transfer)

    p = sub.add_parser(
        "gc",
        help="list (or --apply: delete) staging leftovers, replaced outputs and outputs "
        "no --keep config reaches, in a work root or cache",
    )
    p.add_argument("root", help="a work root or a stage cache URL")
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="CONFIG",
        help="outputs of this config are kept (repeatable); without it only "
        "staging and replaced entries are collected",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override applied to every --keep config",
    )
    p.add_argument("--older-than", type=float, metavar="DAYS", help="only entries this old")
    p.add_argument("--apply", action="store_true", help="delete (default: only list)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "serve", help="Prefect server + work pool + deployments + worker, in the foreground"
    )
    p.add_argument("--work-root", default=DEFAULT_WORK_ROOT, help="PREFECT_HOME defaults here")
    from flows.serve import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("infer", help="run a trained model on a video file: annotated MP4 + AVA CSV")
    p.add_argument("video")
    p.add_argument(
        "--run", required=True, help="a train or train_bank run's directory (work/<stage>/<key>)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--detector", help="person detector checkpoint (default: the run's own)")
    p.add_argument("--detector-arch", help="its torchvision architecture (default: the run's)")
    p.add_argument("--score-threshold", type=float, help="default: the run's detect threshold")
    p.add_argument("--max-persons", type=int, default=20, help="boxes per keyframe at most")
    p.add_argument("--offset", type=int, default=0, help="CSV timestamp of the first frame")
    p.add_argument("--max-seconds", type=float, help="only the first seconds of the video")
    p.add_argument("--labelmap", help="label map .pbtxt if the run's dataset is not at hand")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "attention", help="draw a trained acar/amcr/igmn_dam head's attention on a keyframe"
    )
    p.add_argument("--run", required=True, help="a train run's directory (work/train/<key>)")
    p.add_argument("--video", required=True, help="the video file of the keyframe")
    p.add_argument("--timestamp", type=int, required=True, help="the keyframe's CSV timestamp")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--store", help="feature store with the keyframe (default: the run's)")
    p.add_argument("--video-id", help="the video's id in the store (default: file stem)")
    p.add_argument("--offset", type=float, help="CSV time of the first frame")
    p.add_argument(
        "--frame-numbers",
        action="store_true",
        default=None,
        help="timestamps are 1-based frame numbers (a tube dataset's store given by --store;"
        " the run's own stores follow its dataset)",
    )
    p.add_argument("--max-actors", type=int, default=4)
    p.set_defaults(func=cmd_attention)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:
        # The evaluator has its own parser (``bankflow eval --help`` is its help).
        from stages.evaluate.cli import eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    work_root = getattr(args, "work_root", None)
    if work_root and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", work_root):
        print(
            f"bankflow: error: --work-root {work_root}: a work root is a directory, not a URL; "
            "give a local path or the path of a mounted share (NFS)",
            file=sys.stderr,
        )
        return 2
    # Stage progress (per video, per epoch, projected store sizes) goes to stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("bankflow")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's root handler would print every line twice
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if isinstance(exc, user_errors()):
            print(f"bankflow: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk outside a stage's compute (inside one it is a StageError).
            print(
                f"bankflow: error: out of disk space writing {exc.filename or '?'}: "
                f"{exc.strerror}; free some space and rerun",
                file=sys.stderr,
            )
            return 2
        raise
    finally:
        # main() called in-process (tests, notebooks) must not leave a handler bound to a
        # stream that may be closed by the time the next bankflow log line is written.
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def user_errors() -> tuple[type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` whose modules are imported."""
    return tuple(
        getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules
    )


if __name__ == "__main__":
    sys.exit(main())
