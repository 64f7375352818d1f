"""`fewclip extract`, `fewclip cache ls|info|verify|gc|rm`, `fewclip datasets check`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fewclip.cli._app import app, cache_app, datasets_app
from fewclip.cli._common import (
    BATCH_HELP,
    DEVICE_OPTION,
    EXECUTOR_OPTION,
    PRECISION_OPTION,
    RAY_ADDRESS_OPTION,
    RAY_WORKERS_OPTION,
    SKIP_BAD_HELP,
    CLIError,
    cli_executor,
    default_store,
    echo,
    emit_json,
    load_backbone,
    load_dataset,
    report_skipped,
    str_list,
)

if TYPE_CHECKING:
    from fewclip.features import FeatureStore
    from fewclip.features.store import Leftover

DATA_HELP = "Benchmark name (with --root), image folder, or .csv/.jsonl manifest."
ROOT_HELP = "The $DATA folder holding the benchmarks (default: $FEWCLIP_DATA or $DATA)."
STORE_HELP = "Feature store folder (default: $FEWCLIP_STORE or ~/.cache/fewclip/features)."
BACKBONE_HELP = (
    "Model: RN50, ViT-B/16, an open_clip name, local-dir:/hf-hub:/hf: ids, a folder. Default: "
    "RN50 if its weights are on this machine (nothing is downloaded unasked)."
)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
def extract(
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    root: Path | None = typer.Option(None, "--root", help=ROOT_HELP),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help=BACKBONE_HELP),
    pretrained: str | None = typer.Option(None, help="open_clip weights tag or checkpoint file."),
    splits: str = typer.Option("", help="Comma-separated splits (default: every split)."),
    views: int = typer.Option(10, min=0, help="Augmented views of each train image."),
    view_seed: int = typer.Option(0, help="Seed of the augmented views."),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    batch_size: int = typer.Option(64, min=1, help=BATCH_HELP),
    num_workers: int = typer.Option(0, min=0, help="DataLoader workers for decoding."),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    commit_seconds: float = typer.Option(
        30.0,
        "--commit-seconds",
        min=0.0,
        help="Save unfinished work to the store this often, so Ctrl-C loses at most this much.",
    ),
    executor: str = EXECUTOR_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    ray_workers: int | None = RAY_WORKERS_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Extract image features of a dataset into the feature store (plain + augmented views).

    The train split also gets --views augmented views. Already stored entries are reused;
    an interrupted extraction resumes from its finished shards. With --executor ray the
    shards are encoded by Ray actors (one per GPU, or one per CPU) into the same store,
    with the same bytes.

    \b
    Examples:
      fewclip extract --data dtd --root ~/data --backbone RN50 --views 10
      fewclip extract --data imagenet --root /shared/data --store /shared/features \\
        --backbone ViT-B-16 --device cuda --executor ray --ray-address auto
    """
    from fewclip.features import FeatureStore
    from fewclip.features import extract as run_extract

    ds = load_dataset(data, root)
    wanted = str_list(splits) or list(ds.splits)
    missing = [s for s in wanted if not ds.has_split(s)]
    if missing:
        raise CLIError(
            f"--splits: {ds.name} has no split {', '.join(missing)} (it has "
            f"{', '.join(sorted(ds.splits))})"
        )
    runner = cli_executor(executor, ray_address, ray_workers)
    bb = load_backbone(backbone, pretrained, device, precision, quiet=quiet)
    fs = FeatureStore(store or default_store())
    summary: list[dict[str, Any]] = []
    with runner:
        for split in wanted:
            lst = ds.split(split)
            n_views = views if split == "train" else 0
            echo(f"{ds.name}/{split}: {len(lst)} images, {n_views} views", quiet=quiet, err=True)
            t0 = time.perf_counter()
            images = (
                [lst.open(i) for i in range(len(lst))]
                if lst.loader is not None
                else [str(p) for p in lst.abspaths()]
            )
            res = run_extract(
                bb,
                images,
                labels=list(lst.labels),
                views=n_views,
                seed=view_seed,
                store=fs,
                split=f"{ds.name}/{split}",
                dataset_id=lst.fingerprint() if lst.loader is not None else None,
                batch_size=batch_size,
                num_workers=num_workers,
                skip_bad=skip_bad,
                progress=None if not quiet else False,
                commit_seconds=commit_seconds,
                executor=runner,
            )
            summary.append(
                {
                    "split": split,
                    "images": len(lst),
                    "views": n_views,
                    "encoded": res.n_encoded,
                    "from_store": res.n_encoded == 0,
                    "bad_files": [{"path": b.path, "reason": b.reason} for b in res.bad_files],
                    "keys": res.keys,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    if as_json:
        emit_json({"dataset": ds.name, "backbone": bb.id, "store": str(fs.root), "splits": summary})
        return
    report_skipped(
        [{"split": row["split"], **b} for row in summary for b in row["bad_files"]], quiet=quiet
    )
    for row in summary:
        how = "from the store" if row["from_store"] else f"{row['encoded']} images encoded"
        bad = f", {len(row['bad_files'])} bad files skipped" if row["bad_files"] else ""
        echo(f"{ds.name}/{row['split']}: {how} in {row['seconds']} s{bad}")
    echo(f"store: {fs.root} (backbone id {bb.id})")


@cache_app.command("ls")
def cache_ls(
    store: Path | None = typer.Option(None, help=STORE_HELP),
    kind: str | None = typer.Option(None, help="Only 'image' or 'text' entries."),
    orphans: bool = typer.Option(
        False,
        "--orphans",
        help="List what killed runs left instead: partial entries and unfinished deletions.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the entries of the feature store.

    \b
    Example:
      fewclip cache ls --kind image
    """
    from fewclip.features import FeatureStore

    fs = FeatureStore(store or default_store())
    if store is not None and not fs.root.is_dir():
        raise CLIError(f"--store: {fs.root} does not exist (no feature store there)")
    if orphans:
        _list_leftovers(fs, as_json)
        return
    infos = fs.entries(kind=kind) if kind else fs.entries()
    rows = []
    for info in infos:
        rec = info.record
        view = rec.get("view", {})
        rows.append(
            {
                "key": info.key,
                "kind": info.kind,
                "split": rec.get("split", ""),
                "view": view.get("type", "") + (f"{view['index']}" if "index" in view else ""),
                "backbone": rec.get("backbone", ""),
                "backbone_name": str(info.meta.get("backbone", {}).get("name", "")),
                "rows": info.n_rows,
                "dim": info.dim,
                "dtype": info.dtype,
                "bytes": info.nbytes,
                "created": info.created,
            }
        )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        echo(f"{fs.root}: no entries")
        return
    names = [f"{r['backbone_name'] or '?'} ({str(r['backbone'])[-8:]})" for r in rows]
    width = min(40, max(len("backbone"), *(len(n) for n in names)))
    echo(
        f"{'key':14} {'kind':5} {'split':28} {'backbone':{width}} {'view':9} {'rows':>8} "
        f"{'dim':>5} {'size':>9}"
    )
    for r, name in zip(rows, names, strict=True):
        echo(
            f"{r['key'][:12]:14} {r['kind']:5} {str(r['split'])[:28]:28} {name[:width]:{width}} "
            f"{r['view']:9} {r['rows']:>8} {r['dim']:>5} {_size(r['bytes']):>9}"
        )
    echo(f"{len(rows)} entries, {_size(sum(r['bytes'] for r in rows))} in {fs.root}")


def _leftover_rows(items: list[Leftover]) -> list[dict[str, Any]]:
    return [
        {
            "kind": x.kind,
            "key": x.key,
            "path": str(x.path),
            "files": x.n_files,
            "bytes": x.nbytes,
            "in_use": x.in_use,
        }
        for x in items
    ]


def _list_leftovers(fs: FeatureStore, as_json: bool) -> None:
    items = fs.leftovers()
    if as_json:
        emit_json(_leftover_rows(items))
        return
    if not items:
        echo(f"{fs.root}: no leftovers of interrupted runs")
        return
    echo(f"{'kind':8} {'key':14} {'files':>6} {'size':>9}  state")
    for x in items:
        state = "in use (an extraction is running)" if x.in_use else "left by a stopped run"
        echo(f"{x.kind:8} {x.key[:12]:14} {x.n_files:>6} {_size(x.nbytes):>9}  {state}")
    echo(
        f"{len(items)} leftovers, {_size(sum(x.nbytes for x in items))}. A partial entry "
        "resumes when its extraction runs again; `fewclip cache gc` removes them."
    )


def _resolve_key(fs: FeatureStore, prefix: str) -> str:
    keys = [k for k in fs.keys() if k.startswith(prefix)]  # noqa: SIM118 (a method, not a dict)
    if not keys:
        raise CLIError(f"KEY: no entry starts with {prefix!r} in {fs.root}")
    if len(keys) > 1:
        raise CLIError(f"KEY: {prefix!r} matches {len(keys)} entries; give more characters")
    return keys[0]


@cache_app.command("info")
def cache_info(
    key: str = typer.Argument(..., help="Entry key (a unique prefix is enough)."),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    verify: bool = typer.Option(
        False, help="Check every shard's data against its checksum too (exit 1 if damaged)."
    ),
) -> None:
    """Show one entry's key record, shape, shards and bad files (JSON).

    \b
    Example:
      fewclip cache info 3fa9c2
    """
    from fewclip.features import FeatureStore

    fs = FeatureStore(store or default_store())
    full = _resolve_key(fs, key)
    info = fs.info(full)
    out = {
        "key": info.key,
        "path": str(info.path),
        "record": info.record,
        "n_rows": info.n_rows,
        "dim": info.dim,
        "dtype": info.dtype,
        "n_shards": info.n_shards,
        "bytes": info.nbytes,
        "created": info.created,
        "bad_files": [{"row": i, "path": b.path, "reason": b.reason} for i, b in info.bad_files],
        "problems": fs.verify(full, full=verify),
    }
    emit_json(out)
    if out["problems"]:
        echo(f"error: entry {full[:12]} is damaged; {_REPAIR.format(keys=full[:12])}", err=True)
        raise typer.Exit(1)


_REPAIR = (
    "run the command that extracted it again (extract, fit, evaluate or bench on the same "
    "images and backbone) to rebuild it, or remove it: fewclip cache rm {keys}"
)


@cache_app.command("verify")
def cache_verify(
    keys: list[str] = typer.Argument(None, help="Entry keys (unique prefixes); default: all."),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    sha256: bool = typer.Option(
        False, "--sha256", help="Check the SHA-256 of each shard instead of its xxHash3."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every entry's files and data against their checksums; exit 1 if any is damaged.

    
    Example:
      fewclip cache verify            |   fewclip cache verify 3fa9c2 --sha256
    """
    from fewclip.features import FeatureStore

    fs = FeatureStore(store or default_store())
    if store is not None and not fs.root.is_dir():
        raise CLIError(f"--store: {fs.root} does not exist (no feature store there)")
    targets = [_resolve_key(fs, k) for k in keys] if keys else fs.keys()
    damaged = {}
    for k in targets:
        problems = fs.verify(k, full=True, sha256=sha256)
        if problems:
            damaged[k] = problems
    leftovers = [x for x in fs.leftovers() if not x.in_use]
    if as_json:
        emit_json(
            {
                "checked": len(targets),
                "damaged": damaged,
                "leftovers": _leftover_rows(leftovers),
            }
        )
    else:
        for k, problems in damaged.items():
            echo(f"damaged: {k[:12]}: " + "; ".join(problems))
        echo(f"{len(targets)} entries checked, {len(damaged)} damaged, in {fs.root}")
        if leftovers:
            echo(
                f"{len(leftovers)} leftovers of stopped runs (`fewclip cache ls --orphans`; "
                "`fewclip cache gc` removes them)"
            )
    if damaged:
        names = " ".join(k[:12] for k in damaged)
        echo(f"error: {len(damaged)} damaged entries; {_REPAIR.format(keys=names)}", err=True)
        raise typer.Exit(1)


@cache_app.command("gc")
def cache_gc(
    store: Path | None = typer.Option(None, help=STORE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove what killed runs left in the store: partial entries and unfinished deletions.

    Finished entries are never touched, nor a partial entry whose extraction is running.
    A partial entry would let its extraction resume: removing it loses that work.

    
    Example:
      fewclip cache gc --dry-run   |   fewclip cache gc --yes
    """
    from fewclip.features import FeatureStore

    fs = FeatureStore(store or default_store())
    if store is not None and not fs.root.is_dir():
        raise CLIError(f"--store: {fs.root} does not exist (no feature store there)")
    items = [x for x in fs.leftovers() if not x.in_use]
    busy = len(fs.leftovers()) - len(items)
    size = _size(sum(x.nbytes for x in items))
    if not items:
        echo(f"{fs.root}: nothing to remove" + (f" ({busy} in use)" if busy else ""))
        return
    if dry_run:
        for x in items:
            echo(f"would remove {x.kind} {x.key[:12] or x.path.name} ({_size(x.nbytes)})")
        echo(f"{len(items)} leftovers, {size}; run without --dry-run to remove them")
        return
    if not yes:
        typer.confirm(f"remove {len(items)} leftovers ({size}) from {fs.root}?", abort=True)
    removed = fs.remove_leftovers()
    echo(
        f"removed {len(removed)} leftovers ({_size(sum(x.nbytes for x in removed))}) from "
        f"{fs.root}" + (f"; {busy} in use were kept" if busy else "")
    )


@cache_app.command("rm")
def cache_rm(
    keys: list[str] = typer.Argument(None, help="Entry keys (unique prefixes)."),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    all_entries: bool = typer.Option(False, "--all", help="Delete every entry."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete entries from the feature store.

    \b
    Example:
      fewclip cache rm 3fa9c2 77b1e0   |   fewclip cache rm --all --yes
    """
    from fewclip.features import FeatureStore

    fs = FeatureStore(store or default_store())
    if all_entries and keys:
        raise CLIError("give KEYS or --all, not both")
    if not all_entries and not keys:
        raise CLIError("nothing to delete: give entry KEYS or --all")
    targets = fs.keys() if all_entries else [_resolve_key(fs, k) for k in keys]
    if all_entries and not yes:
        typer.confirm(f"delete all {len(targets)} entries in {fs.root}?", abort=True)
    for k in targets:
        fs.delete(k)
    echo(f"deleted {len(targets)} entries from {fs.root}")


@datasets_app.command("check")
def datasets_check(
    names: list[str] = typer.Argument(..., help="Benchmark names (e.g. dtd eurosat), or 'all'."),
    root: Path | None = typer.Option(None, "--root", help=ROOT_HELP),
    no_files: bool = typer.Option(False, "--no-files", help="Skip checking that files exist."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check benchmarks under $DATA against the published class counts and split sizes.

    Exit code 1 when any dataset has problems.

    \b
    Example:
      fewclip datasets check dtd eurosat --root ~/data
    """
    import os

    from fewclip import data as fdata

    base = root or (os.environ.get("FEWCLIP_DATA") or os.environ.get("DATA"))
    if not base:
        raise CLIError("--root: give the $DATA folder (or set FEWCLIP_DATA)")
    todo = fdata.benchmark_names() if names == ["all"] else names
    reports = [fdata.check(base, n, verify_files=not no_files) for n in todo]
    if as_json:
        emit_json([r.__dict__ for r in reports])
    else:
        for r in reports:
            echo(str(r))
    if not all(r.ok for r in reports):
        raise typer.Exit(1)
