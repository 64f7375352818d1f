"""`fewclip fit`, `fewclip predict`, `fewclip evaluate`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import typer

from fewclip.cli._app import app
from fewclip.cli._common import (
    CLIError,
    default_store,
    echo,
    emit_json,
    load_backbone,
    load_dataset,
    parse_params,
)
from fewclip.cli.data_cmds import BACKBONE_HELP, DATA_HELP, ROOT_HELP, STORE_HELP

PROTOCOL_HELP = "fewshot-val (default), coop-val, full-val, val-free, oracle-test (LEAKY)."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def _method_name(method: str) -> str:
    from fewclip import methods

    if method not in methods.available():
        raise CLIError(
            f"--method: unknown method {method!r}; available: {', '.join(methods.available())}"
        )
    return method


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
    shots: int = typer.Option(16, "--shots", "-k", min=1, help="Images per class."),
    seed: int = typer.Option(1, help="Seed of the few-shot draw."),
    protocol: str = typer.Option("fewshot-val", help=PROTOCOL_HELP),
    param: list[str] = typer.Option([], "--param", "-p", help="Hyper-parameter key=value."),
    prompts: str = typer.Option("default", help="default, single, imagenet-7, openai-80, file."),
    backbone: str = typer.Option("RN50", "--backbone", "-b", help=BACKBONE_HELP),
    pretrained: str | None = typer.Option(None, help="open_clip weights tag or checkpoint file."),
    views: int = typer.Option(10, min=0, help="Augmented views per support image."),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    device: str = typer.Option("cpu"),
    precision: str = typer.Option("amp"),
    evaluate_test: bool = typer.Option(False, "--evaluate", help="Also report test accuracy."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the adapter record as JSON."),
) -> None:
    """Fit a method at K shots on a dataset and save an adapter folder.

    The adapter holds the fitted method (safetensors + JSON) and adapter.json: backbone id,
    class names, prompts, hyper-parameters, protocol, the exact draw and the fewclip version.

    Example: fewclip fit -m tip-adapter-f -d ./my_images -k 8 -b ViT-B/16 -o ./my-adapter
    """
    from fewclip.adapter import Adapter, evaluate_model, fit_adapter
    from fewclip.outputs import check_outside

    name = _method_name(method)
    params = parse_params(param)
    ds = load_dataset(data, root)
    check_outside(out, ds.input_folders(), what="--out")
    replacing = Adapter.check_target(out, overwrite=overwrite)
    bb = load_backbone(backbone, pretrained, device, precision, quiet=quiet)
    adapter, plan, source = fit_adapter(
        name,
        ds,
        bb,
        shots=shots,
        seed=seed,
        protocol=protocol,
        params=params,
        prompts=prompts,
        views=views,
        store=store or default_store(),
        backbone_spec={"name": backbone, "pretrained": pretrained},
        progress=False if quiet else None,
    )
    if evaluate_test:
        if not ds.has_split("test"):
            raise CLIError(f"--evaluate: {ds.name} has no test split")
        adapter.info["test"] = {
            k: v for k, v in evaluate_model(adapter.method, source).items() if k != "per_class"
        }
    path = adapter.save(out, overwrite=overwrite)
    if replacing is not None:
        echo(f"replaced {replacing} in {path} with this {name} adapter", quiet=quiet, err=True)
    if as_json:
        emit_json({"adapter": str(path), **adapter.info})
        return
    mark = " [LEAKY]" if plan.leaky else ""
    echo(
        f"fitted {name} on {ds.name}: {shots} shots, seed {seed}, protocol {plan.protocol}{mark}, "
        f"{len(ds.classnames)} classes, in {adapter.info['fit_seconds']} s"
    )
    chosen = {k: v for k, v in adapter.info["params"].items() if k.endswith("_")}
    if chosen:
        echo("selected: " + ", ".join(f"{k}={v:.4g}" for k, v in chosen.items()))
    if "test" in adapter.info:
        t = adapter.info["test"]
        echo(f"test: top-1 {100 * t['top1']:.2f}%, macro {100 * t['macro']:.2f}% of {t['n']}")
    echo(f"adapter written to {path}")


def _collect_images(items: list[str], recursive: bool = True) -> list[str]:
    """Files, folders (their images, sorted) and manifests (.csv/.jsonl/.txt: one path per row)."""
    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(
                q
                for q in (p.rglob("*") if recursive else p.iterdir())
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise CLIError(f"{p}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(str(q) for q in files)
        elif p.is_file() and p.suffix.lower() in (".csv", ".jsonl", ".txt"):
            out.extend(_read_image_list(p))
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
    device: str = typer.Option("cpu"),
    precision: str = typer.Option("amp"),
    batch_size: int = typer.Option(64, min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict classes of new images with a fitted adapter (top-k with probabilities).

    Loads the backbone named in the adapter and refuses one whose id differs (exit code 4).

    Example: fewclip predict ./my-adapter photos/ --top-k 3 --format csv
    """
    from fewclip.adapter import Adapter

    if fmt not in ("table", "csv", "json"):
        raise CLIError(f"--format: expected table, csv or json, found {fmt!r}")
    ad = Adapter.load(adapter)
    files = _collect_images(images)
    bb = ad.load_backbone(name=backbone, pretrained=pretrained, device=device, precision=precision)
    preds = ad.predict_images(
        bb, files, top_k=top_k, batch_size=batch_size, progress=False if quiet else None
    )
    if fmt == "json":
        emit_json([p.to_dict() for p in preds])
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "rank", "label", "class", "prob"])
        for p in preds:
            for r, (y, n, pr) in enumerate(zip(p.labels, p.names, p.probs, strict=True), 1):
                w.writerow([p.image, r, y, n, f"{pr:.6f}"])
        typer.echo(buf.getvalue(), nl=False)
    else:
        width = max((len(p.image) for p in preds), default=5)
        for p in preds:
            tops = "  ".join(f"{n} {100 * pr:.1f}%" for n, pr in zip(p.names, p.probs, strict=True))
            typer.echo(f"{p.image:{width}}  {tops}")


@app.command()
def evaluate(
    adapter: Path | None = typer.Argument(None, help="Adapter folder (or use --method)."),
    data: str | None = typer.Option(
        None, "--data", "-d", help=DATA_HELP + " Default: the adapter's."
    ),
    root: Path | None = typer.Option(None, "--root", help=ROOT_HELP),
    split: str = typer.Option("test", help="Split to evaluate on."),
    method: str | None = typer.Option(None, "--method", "-m", help="Fit this method first."),
    shots: int = typer.Option(16, "--shots", "-k", min=1),
    seed: int = typer.Option(1),
    protocol: str = typer.Option("fewshot-val", help=PROTOCOL_HELP),
    param: list[str] = typer.Option([], "--param", "-p", help="Hyper-parameter key=value."),
    prompts: str = typer.Option("default"),
    backbone: str = typer.Option("RN50", "--backbone", "-b", help=BACKBONE_HELP),
    pretrained: str | None = typer.Option(None),
    views: int = typer.Option(10, min=0),
    store: Path | None = typer.Option(None, help=STORE_HELP),
    device: str = typer.Option("cpu"),
    precision: str = typer.Option("amp"),
    per_class: bool = typer.Option(False, "--per-class", help="Also print per-class accuracy."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy (top-1, top-5, per-class, macro) of an adapter, or of a method fitted on the fly.

    Examples: fewclip evaluate ./my-adapter --data ./my_images
              fewclip evaluate --method tip-adapter --data dtd --root ~/data -k 16 -b RN50
    """
    from fewclip.adapter import Adapter, evaluate_model, fit_adapter
    from fewclip.features.source import DatasetSource

    if (adapter is None) == (method is None):
        raise CLIError("give an ADAPTER folder or --method (one of them)")
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
            ds, bb, store=store or default_store(), views=0, progress=False if quiet else None
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
        ds = load_dataset(data, root)
        bb = load_backbone(backbone, pretrained, device, precision, quiet=quiet)
        ad, plan, source = fit_adapter(
            _method_name(method),
            ds,
            bb,
            shots=shots,
            seed=seed,
            protocol=protocol,
            params=parse_params(param),
            prompts=prompts,
            views=views,
            store=store or default_store(),
            backbone_spec={"name": backbone, "pretrained": pretrained},
            progress=False if quiet else None,
        )
        model = ad.method
        info = {
            "method": method,
            "shots": shots,
            "seed": seed,
            "protocol": plan.protocol,
            "leaky": plan.leaky,
            "params": ad.info["params"],
        }
    if not ds.has_split(split):
        raise CLIError(f"--split: {ds.name} has no {split!r} split")
    rep = evaluate_model(model, source, split=split)
    result = {**info, "dataset": ds.name, "split": split, **rep}
    if as_json:
        emit_json(result if per_class else {k: v for k, v in result.items() if k != "per_class"})
        return
    mark = " [LEAKY]" if result.get("leaky") else ""
    echo(
        f"{result['method']} on {ds.name}/{split} ({result['n']} images, protocol "
        f"{result.get('protocol')}{mark}): top-1 {100 * rep['top1']:.2f}%  "
        f"top-5 {100 * rep['top5']:.2f}%  macro {100 * rep['macro']:.2f}%"
    )
    if per_class:
        for row in rep["per_class"]:
            acc = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
            echo(f"  {row['class']:30} {acc:>7}  ({row['n']} images)")
