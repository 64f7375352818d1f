"""`fewclip fit`, `fewclip predict`, `fewclip evaluate`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import typer

from fewclip.cli._app import app
from fewclip.cli._common import (
    BATCH_HELP,
    DEVICE_OPTION,
    EXIT_USAGE,
    JSON_HELP,
    PRECISION_OPTION,
    PRETRAINED_HELP,
    PROMPTS_HELP,
    QUIET_HELP,
    SKIP_BAD_HELP,
    VIEWS_HELP,
    CLIError,
    default_store,
    echo,
    emit_json,
    in_percent,
    load_backbone,
    load_dataset,
    parse_params,
    report_skipped,
    toy_backbone,
)
from fewclip.cli.data_cmds import BACKBONE_HELP, DATA_HELP, ROOT_HELP, STORE_HELP

PROTOCOL_HELP = (
    "Where hyper-parameters are validated: fewshot-val (held out of train), coop-val, full-val "
    "(the val split), val-free (none), oracle-test (LEAKY). Default: fewshot-val for a "
    "benchmark; for your own folder full-val if it has a val split, else fewshot-val when every "
    "class can spare images, else val-free."
)
SHOTS_HELP = (
    "Training images per class, or 'all' (every one; uneven classes are fine). Default: 16 for "
    "a benchmark, all for your own folder."
)
REPEAT_HELP = "Draw with replacement for classes with fewer than -k images (Tip-Adapter)."
ALLOW_FEWER_HELP = "Take every image of classes with fewer than -k images (CoOp)."
PARAM_HELP = "A method hyper-parameter key=value (repeatable); a wrong key lists the valid ones."


# The options `fit` and `evaluate --method` share (one definition each; typer reads them).
SHOTS_OPTION = typer.Option(None, "--shots", "-k", help=SHOTS_HELP)
SEED_OPTION = typer.Option(1, help="Seed of the few-shot draw and of the method's training.")
PROTOCOL_OPTION = typer.Option(None, help=PROTOCOL_HELP)
REPEAT_OPTION = typer.Option(False, "--repeat", help=REPEAT_HELP)
ALLOW_FEWER_OPTION = typer.Option(False, "--allow-fewer", help=ALLOW_FEWER_HELP)
PARAM_OPTION = typer.Option([], "--param", "-p", help=PARAM_HELP)
PROMPTS_OPTION = typer.Option("default", help=PROMPTS_HELP)
BACKBONE_OPTION = typer.Option(None, "--backbone", "-b", help=BACKBONE_HELP)
PRETRAINED_OPTION = typer.Option(None, help=PRETRAINED_HELP)
VIEWS_OPTION = typer.Option(10, min=0, help=VIEWS_HELP)
STORE_OPTION = typer.Option(None, help=STORE_HELP)


def _method_name(method: str) -> str:
    """The registered method ``method`` names (case-insensitive); exit 2 with "did you mean"."""
    from fewclip import methods
    from fewclip.errors import UnknownNameError

    try:
        return methods.resolve(method)
    except UnknownNameError as e:
        raise typer.BadParameter(str(e), param_hint="'--method' / '-m'") from None


def _method_params(name: str, items: list[str]) -> dict[str, Any]:
    """``-p key=value`` items checked against the method's parameters (exit 2 when unknown)."""
    from fewclip import methods
    from fewclip.errors import UnknownParameterError

    params = parse_params(items)
    try:
        methods.check_params(name, params)
    except UnknownParameterError as e:
        raise typer.BadParameter(str(e), param_hint="'--param' / '-p'") from None
    return params


def _shots(text: str | None) -> int | str | None:
    """``-k``: a positive integer or ``all``; ``None`` (not given) picks the default."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise typer.BadParameter(
            f"expected a positive integer or 'all', found {text!r}", param_hint="'--shots' / '-k'"
        )
    return k


def _plan_choice(
    ds: Any,
    shots: int | str | None,
    protocol: str | None,
    repeat: bool,
    allow_fewer: bool,
    quiet: bool,
    seed: int,
) -> tuple[int | str, Any]:
    """Shots and ``Protocol`` from the options, the defaults filled in (and said) for unset
    ones (``fewclip.adapter.choose_defaults``), checked against the dataset's labels before
    any model is loaded (a class too small for them fails here, naming the flags that work)."""
    from fewclip.adapter import choose_defaults
    from fewclip.data import plan_dataset
    from fewclip.protocol import PROTOCOLS, Protocol

    if protocol is not None and protocol not in PROTOCOLS:
        raise typer.BadParameter(
            f"expected one of {', '.join(PROTOCOLS)}, found {protocol!r}", param_hint="'--protocol'"
        )
    k, name, why = choose_defaults(ds, shots, protocol)
    if why:
        echo(
            f"using -k {k} --protocol {name}: {why} (pass -k / --protocol to choose)",
            quiet=quiet,
            err=True,
        )
    proto = Protocol(name, repeat=repeat, allow_fewer=allow_fewer)
    plan_dataset(proto, ds, shots=k, seed=seed)  # fails early on a draw that cannot be made
    return k, proto


@app.command()
def fit(
    method: str = typer.Option("tip-adapter", "--method", "-m", help="A registered method."),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    root: Path | None = typer.Option(None, "--root", help=ROOT_HELP),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Adapter folder to write: new or empty (or see --overwrite)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the adapter already in --out (only fewclip's own files; a folder holding "
        "anything else is always refused).",
    ),
    shots: str | None = SHOTS_OPTION,
    seed: int = SEED_OPTION,
    protocol: str | None = PROTOCOL_OPTION,
    repeat: bool = REPEAT_OPTION,
    allow_fewer: bool = ALLOW_FEWER_OPTION,
    param: list[str] = PARAM_OPTION,
    prompts: str = PROMPTS_OPTION,
    backbone: str | None = BACKBONE_OPTION,
    pretrained: str | None = PRETRAINED_OPTION,
    views: int = VIEWS_OPTION,
    store: Path | None = STORE_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    evaluate_test: bool = typer.Option(False, "--evaluate", help="Also report test accuracy."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print the adapter record as JSON (accuracies in percent)."
    ),
) -> None:
    """Fit a method at K shots on a dataset and save an adapter folder.

    The adapter holds the fitted method (safetensors + JSON) and adapter.json: backbone id,
    class names, prompts, hyper-parameters, protocol, the exact draw and the fewclip version.

    \b
    Example:
      fewclip fit -m tip-adapter-f -d ./my_images -k 8 -b ViT-B/16 -o ./my-adapter
    """
    from fewclip.adapter import Adapter, evaluate_model, fit_adapter
    from fewclip.outputs import check_outside

    name = _method_name(method)
    params = _method_params(name, param)
    k_given = _shots(shots)
    ds = load_dataset(data, root)
    check_outside(out, ds.input_folders(), what="--out")
    replacing = Adapter.check_target(out, overwrite=overwrite)
    k, proto = _plan_choice(ds, k_given, protocol, repeat, allow_fewer, quiet or as_json, seed)
    bb = load_backbone(backbone, pretrained, device, precision, quiet=quiet)
    adapter, plan, source = fit_adapter(
        name,
        ds,
        bb,
        shots=k,
        seed=seed,
        protocol=proto,
        params=params,
        prompts=prompts,
        views=views,
        store=store or default_store(),
        backbone_spec={"name": backbone or bb.name, "pretrained": pretrained},
        progress=False if quiet else None,
        skip_bad=skip_bad,
    )
    if evaluate_test:
        if not ds.has_split("test"):
            raise CLIError(f"--evaluate: {ds.name} has no test split")
        rep = in_percent(evaluate_model(adapter.method, source))
        adapter.info["test"] = {k: v for k, v in rep.items() if k != "per_class"}
        adapter.info["skipped_images"] = source.skipped_images()
        adapter.info["dataset"] = source.dataset.summary()
    report_skipped(adapter.info["skipped_images"], quiet=quiet or as_json)
    path = adapter.save(out, overwrite=overwrite)
    if replacing is not None:
        echo(f"replaced {replacing} in {path} with this {name} adapter", quiet=quiet, err=True)
    if as_json:
        emit_json({"adapter": str(path), **adapter.info})
        return
    mark = " [LEAKY]" if plan.leaky else ""
    echo(
        f"fitted {name} on {ds.name}: {k} shots, seed {seed}, protocol {plan.protocol}{mark}, "
        f"{len(ds.classnames)} classes, in {adapter.info['fit_seconds']} s",
        quiet=quiet,
    )
    chosen = {p: v for p, v in adapter.info["params"].items() if p.endswith("_")}
    if chosen:
        echo("selected: " + ", ".join(f"{p}={v:.4g}" for p, v in chosen.items()), quiet=quiet)
    if "test" in adapter.info:
        t = adapter.info["test"]
        echo(f"test: top-1 {t['top1']:.2f}%, macro {t['macro']:.2f}% of {t['n']} images")
    echo(f"adapter written to {path.resolve()}")


def _collect_images(items: list[str], recursive: bool = True, *, quiet: bool = False) -> list[str]:
    """Files, folders (their images, sorted) and lists (.csv/.jsonl/.txt: one path per row;
    said on stderr, since a list file is easy to pass by mistake)."""
    from fewclip.data.types import IMAGE_EXTENSIONS

    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(
                q
                for q in (p.rglob("*") if recursive else p.iterdir())
                if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise CLIError(
                    f"{p}: the folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            out.extend(str(q) for q in files)
        elif p.is_file() and p.suffix.lower() in (".csv", ".jsonl", ".txt"):
            listed = _read_image_list(p)
            missing = [q for q in listed if not Path(q).exists()]
            if missing:
                raise CLIError(
                    f"{p}: read as a list of image paths ({p.suffix} argument), but "
                    f"{len(missing)} of its {len(listed)} paths do not exist, e.g. {missing[0]} "
                    "(paths are relative to the list's folder)"
                )
            echo(f"{p}: a list of {len(listed)} image paths", quiet=quiet, err=True)
            out.extend(listed)
        elif p.is_file():
            out.append(str(p))
        else:
            raise CLIError(f"{p}: no such file or folder")
    return out


def _read_image_list(path: Path) -> list[str]:
    import json

    base = path.parent
    paths: list[str] = []
    text = path.read_text()
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    paths.append(str(json.loads(line)["path"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise CLIError(f"{path}:{n}: expected a JSON object with a 'path'") from None
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise CLIError(f"{path}: expected a CSV header with a 'path' column")
        paths = [row["path"] for row in reader]
    else:
        paths = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [str(p if Path(p).is_absolute() else base / p) for p in paths]


@app.command()
def predict(
    adapter: Path = typer.Argument(..., help="Adapter folder written by `fewclip fit`."),
    images: list[str] = typer.Argument(
        ..., help="Image files, folders, or a .csv/.jsonl/.txt list."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Classes to show per image."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    backbone: str | None = typer.Option(
        None, "--backbone", "-b", help="Load the backbone from here instead (same id required)."
    ),
    pretrained: str | None = typer.Option(None, help="Weights for --backbone."),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    batch_size: int = typer.Option(64, min=1, help=BATCH_HELP),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Exit 0 even when some images cannot be decoded (each still gets an error row).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Predict classes of new images with a fitted adapter (top-k with probabilities).

    Loads the backbone named in the adapter and refuses one whose id differs (exit code 4).
    Every image gets a row; one that cannot be decoded gets an error row instead, and the exit
    code is then 1 (0 with --skip-bad).

    \b
    Example:
      fewclip predict ./my-adapter photos/ --top-k 3 --format csv
    """
    from fewclip.adapter import Adapter

    if fmt not in ("table", "csv", "json"):
        raise CLIError(f"--format: expected table, csv or json, found {fmt!r}", EXIT_USAGE)
    ad = Adapter.load(adapter)
    files = _collect_images(images, quiet=quiet)
    bb = ad.load_backbone(name=backbone, pretrained=pretrained, device=device, precision=precision)
    preds = ad.predict_images(
        bb,
        files,
        top_k=top_k,
        batch_size=batch_size,
        progress=False if quiet else None,
        skip_bad=True,
    )
    if fmt == "json":
        emit_json([p.to_dict() for p in preds])
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "rank", "label", "class", "prob", "error"])
        for p in preds:
            if p.error is not None:
                w.writerow([p.image, "", "", "", "", p.error])
            for r, (y, n, pr) in enumerate(zip(p.labels, p.names, p.probs, strict=True), 1):
                w.writerow([p.image, r, y, n, f"{pr:.6f}", ""])
        typer.echo(buf.getvalue(), nl=False)
    else:
        width = max((len(p.image) for p in preds), default=5)
        for p in preds:
            tops = "  ".join(f"{n} {100 * pr:.1f}%" for n, pr in zip(p.names, p.probs, strict=True))
            typer.echo(f"{p.image:{width}}  {tops if p.error is None else 'ERROR: ' + p.error}")
    failed = [p for p in preds if p.error is not None]
    if failed:
        how = "skipped (--skip-bad)" if skip_bad else "failed; --skip-bad makes this exit 0"
        echo(f"{len(failed)} of {len(preds)} images could not be decoded: {how}", err=True)
        if not skip_bad:
            raise typer.Exit(1)


#: evaluate's options that only apply when it fits a method on the fly (--method).
_FIT_ONLY_OPTIONS = {
    "shots": "-k/--shots",
    "seed": "--seed",
    "protocol": "--protocol",
    "repeat": "--repeat",
    "allow_fewer": "--allow-fewer",
    "param": "-p/--param",
    "prompts": "--prompts",
    "backbone": "-b/--backbone",
    "pretrained": "--pretrained",
    "views": "--views",
}


@app.command()
def evaluate(
    ctx: typer.Context,
    adapter: Path | None = typer.Argument(None, help="Adapter folder (or use --method)."),
    data: str | None = typer.Option(
        None, "--data", "-d", help=DATA_HELP + " Default: the adapter's."
    ),
    root: Path | None = typer.Option(None, "--root", help=ROOT_HELP),
    split: str = typer.Option("test", help="Split to evaluate on."),
    method: str | None = typer.Option(None, "--method", "-m", help="Fit this method first."),
    shots: str | None = SHOTS_OPTION,
    seed: int = SEED_OPTION,
    protocol: str | None = PROTOCOL_OPTION,
    repeat: bool = REPEAT_OPTION,
    allow_fewer: bool = ALLOW_FEWER_OPTION,
    param: list[str] = PARAM_OPTION,
    prompts: str = PROMPTS_OPTION,
    backbone: str | None = BACKBONE_OPTION,
    pretrained: str | None = PRETRAINED_OPTION,
    views: int = VIEWS_OPTION,
    store: Path | None = STORE_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    per_class: bool = typer.Option(False, "--per-class", help="Also print per-class accuracy."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write a per-class accuracy chart to this .png/.svg/.pdf file (needs matplotlib).",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Accuracy (top-1, top-5, per-class, macro) of an adapter, or of a method fitted on the fly.

    \b
    Examples:
      fewclip evaluate ./my-adapter --data ./my_images
      fewclip evaluate ./my-adapter --per-class --plot per_class.png
      fewclip evaluate --method tip-adapter --data dtd --root ~/data -k 16 -b RN50
    """
    from fewclip.adapter import Adapter, evaluate_model, fit_adapter
    from fewclip.features.source import DatasetSource

    if (adapter is None) == (method is None):
        raise CLIError("give an ADAPTER folder or --method (one of them)")
    if adapter is not None:
        fit_only = [
            opt
            for name, opt in _FIT_ONLY_OPTIONS.items()
            if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
        ]
        if fit_only:
            raise CLIError(
                f"{', '.join(fit_only)}: only used with --method (fitting on the fly); an "
                "adapter is evaluated as it was fitted. Refit it with `fewclip fit` to change "
                "them.",
                EXIT_USAGE,
            )
    if plot is not None and plot.exists():
        raise CLIError(f"--plot: {plot} exists; fewclip does not overwrite it, give a new name")
    info: dict[str, Any]
    if adapter is not None:
        ad = Adapter.load(adapter)
        if data is None:
            ds_rec = ad.info.get("dataset", {})
            data, root = ds_rec.get("root"), None
            if not data:
                raise CLIError("--data: the adapter records no dataset; give one")
        ds = load_dataset(data, root)
        if list(ds.classnames) != ad.classnames:
            raise CLIError(
                f"{ds.name}: its {len(ds.classnames)} class names differ from the adapter's "
                f"{len(ad.classnames)}; evaluate on a dataset with the same classes"
            )
        bb = ad.load_backbone(device=device, precision=precision)
        source = DatasetSource(
            ds,
            bb,
            store=store or default_store(),
            views=0,
            progress=False if quiet else None,
            skip_bad=skip_bad,
        )
        model = ad.method
        info = {
            "adapter": str(adapter),
            "method": ad.method.name,
            "protocol": ad.info.get("protocol"),
            "leaky": ad.info.get("leaky", False),
        }
    else:
        assert method is not None
        if data is None:
            raise CLIError("--data: give the dataset to fit and evaluate on")
        name = _method_name(method)
        params = _method_params(name, param)
        k_given = _shots(shots)
        ds = load_dataset(data, root)
        k, proto = _plan_choice(ds, k_given, protocol, repeat, allow_fewer, quiet or as_json, seed)
        bb = load_backbone(backbone, pretrained, device, precision, quiet=quiet)
        ad, plan, source = fit_adapter(
            name,
            ds,
            bb,
            shots=k,
            seed=seed,
            protocol=proto,
            params=params,
            prompts=prompts,
            views=views,
            store=store or default_store(),
            backbone_spec={"name": backbone or bb.name, "pretrained": pretrained},
            progress=False if quiet else None,
            skip_bad=skip_bad,
        )
        model = ad.method
        info = {
            "method": name,
            "shots": k,
            "seed": seed,
            "protocol": plan.protocol,
            "leaky": plan.leaky,
            "params": ad.info["params"],
        }
    if not ds.has_split(split):
        raise CLIError(f"--split: {ds.name} has no {split!r} split")
    rep = in_percent(evaluate_model(model, source, split=split))
    skipped = source.skipped_images()
    report_skipped(skipped, quiet=quiet or as_json)
    result = {**info, "dataset": ds.name, "split": split, **rep, "skipped_images": skipped}
    if plot is not None:
        from fewclip.bench.plots import plot_per_class

        title = f"{result['method']} on {ds.name}/{split}: per-class top-1 accuracy"
        toy = toy_backbone(str((ad.info.get("backbone") or {}).get("name", "")))
        if toy is not None:
            title += f"\nTOY backbone ({toy}): says nothing about real CLIP models"
        written = plot_per_class(rep["per_class"], plot, title=title)
        echo(f"wrote {written}", quiet=quiet or as_json, err=True)
    if as_json:
        emit_json(result if per_class else {k: v for k, v in result.items() if k != "per_class"})
        return
    mark = " [LEAKY]" if result.get("leaky") else ""
    echo(
        f"{result['method']} on {ds.name}/{split} ({result['n']} images, protocol "
        f"{result.get('protocol')}{mark}): top-1 {rep['top1']:.2f}%  "
        f"top-5 {rep['top5']:.2f}%  macro {rep['macro']:.2f}%"
    )
    if per_class:
        for row in rep["per_class"]:
            acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.1f}%"
            echo(f"  {row['class']:30} {acc:>7}  ({row['n']} images)")
