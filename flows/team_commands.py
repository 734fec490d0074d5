"""``bankflow push``, ``pull`` and ``gc`` (the command bodies; the logic is in flows.team)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from stages.framework import StageError


def _cache_url(args: argparse.Namespace) -> str:
    url = args.cache or os.environ.get("BANKFLOW_CACHE")
    if not url and args.config:
        from stages.config import load_config

        url = load_config(args.config, args.overrides).cache.url
    if not url:
        raise StageError("no cache given: pass --cache URL, set BANKFLOW_CACHE or cache.url")
    return url


def transfer_command(args: argparse.Namespace) -> int:
    """``push``/``pull``: a config's stage outputs or STAGE/KEY items, with upstream closure."""
    from flows.team import (
        cached_inputs,
        config_nodes,
        local_inputs,
        parse_keys,
        transfer,
        upstream_closure,
    )
    from stages.framework.remote_cache import open_cache

    work_root = Path(args.work_root)
    cache = open_cache(_cache_url(args))
    assert cache is not None  # _cache_url always gives a URL
    if args.keys:
        inputs_of = (
            (lambda n: local_inputs(work_root, n))
            if args.command == "push"
            else (lambda n: cached_inputs(cache, n))
        )
        nodes = upstream_closure(parse_keys(args.keys), inputs_of)
    elif args.config:
        nodes = [(c.stage, c.key) for c in config_nodes(args.config, args.overrides, work_root)]
    else:
        raise StageError(f"bankflow {args.command}: give --config CONFIG or STAGE/KEY items")
    t0 = time.perf_counter()
    done = transfer(args.command, work_root, cache, list(dict.fromkeys(nodes)))
    seconds = time.perf_counter() - t0
    for (stage, key), what, n, secs in done:
        print(f"{stage:<11} {key:<17} {what:<22} {n / 1e6:>9.2f} MB {secs:>7.2f} s")
    moved = sum(n for *_, n, _ in done)
    print(
        f"{args.command}: {moved / 1e6:.2f} MB in {seconds:.1f} s "
        f"({moved / 1e6 / max(seconds, 1e-9):.1f} MB/s) {cache.url} <-> {work_root}"
    )
    return 0


def gc_command(args: argparse.Namespace) -> int:
    from flows.tasks import locks_location
    from flows.team import (
        config_nodes,
        format_entries,
        gc_plan,
        is_cache_root,
        list_root,
        remove_entry,
    )

    keep = None
    if args.keep:
        keep = set()
        for config in args.keep:
            keep |= {(c.stage, c.key) for c in config_nodes(config, args.overrides, Path("."))}
    cache = is_cache_root(args.root)
    lock_dirs = [os.environ["BANKFLOW_LOCKS"]] if os.environ.get("BANKFLOW_LOCKS") else []
    if not cache:
        lock_dirs.append(locks_location(args.root))
    plan = gc_plan(
        list_root(args.root), keep=keep, older_than_days=args.older_than, lock_dirs=lock_dirs
    )
    removed = [e for e, reason in plan if reason is None]
    for e, reason in plan:
        if reason is not None:
            print(f"keep    {e.stage}/{e.key} ({e.state}): {reason}")
    verb = "removing" if args.apply else "would remove"
    if removed:
        print(f"{verb}:")
        print(format_entries(removed))
    for e in removed if args.apply else []:
        remove_entry(args.root, e)
    freed = sum(e.bytes for e in removed)
    tail = "" if args.apply else " (dry run: add --apply to delete)"
    print(f"gc {args.root}: {len(removed)} entries, {freed / 1e6:.1f} MB {verb}{tail}")
    return 0
