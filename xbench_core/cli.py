"""The `xbench` command line. Imports stay lazy so that `xbench list` and `--help` are fast."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

KINDS = ("datasets", "models", "explainers", "metrics")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xbench",
        description="Does a chest X-ray vision-language model look where the disease is?",
    )
    p.add_argument("--strict-plugins", action="store_true", help="a plugin that fails to load is fatal")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="evaluate models on datasets (default: phantom with the baselines)")
    r.add_argument("-c", "--config", help="YAML config file (on top of --preset)")
    r.add_argument("--preset", help="a shipped config, e.g. xbench-paper (`xbench preset list`)")
    r.add_argument("--datasets", help="comma-separated dataset names (overrides the config)")
    r.add_argument("--models", help="comma-separated model names (overrides the config)")
    r.add_argument("--explainers", help="comma-separated explainer names (default native)")
    r.add_argument("--metrics", help="comma-separated metric names (default all)")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="set an option of a dataset, model or explainer, e.g. medklip.checkpoint=/w/ckpt.pth")
    r.add_argument("--out", help="run directory (default runs/<datasets>__<models>)")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    r.add_argument("--batch-size", type=_batch_size, metavar="N|auto",
                   help="images per batch; auto: up to 64 on an accelerator, halved on out-of-memory")
    r.add_argument("--workers", type=int)
    r.add_argument("--limit", type=int, help="only the first N images of each dataset (by sorted id)")
    r.add_argument("--eval-size", type=int, help="cap the eval frame's long side (pixels)")
    r.add_argument("--image-cache", nargs="?", const=True, metavar="DIR",
                   help="keep decoded images on disk for later runs (default folder $XBENCH_HOME/image-cache)")
    r.add_argument("--faithfulness", action="store_true",
                   help="also run the causal faithfulness pass (region ablation, deletion/insertion, sanity check); "
                   "the config's faithfulness settings, or the defaults")
    r.add_argument("--shard", help="i/N: evaluate only shard i of N (job arrays); merge with `xbench merge`")
    r.add_argument("--fail-fast", action="store_true", help="stop at the first per-sample error")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    r.add_argument("--quiet", action="store_true", help="no progress bars and no table")
    r.add_argument("--no-report", action="store_true",
                   help="do not write tables, figures and report.html at the end (written when matplotlib is installed)")

    sc = sub.add_parser("score", help="score precomputed maps (and scores) against a dataset; no model is run")
    sc.add_argument("--dataset", required=True, help="dataset name (its options from -c or --set)")
    sc.add_argument("--maps", required=True, help="map file or folder (cheXlocalize *_map.pkl, .npy/.npz/.pt/.safetensors)")
    sc.add_argument("--scores", help="CSV (id,finding,score or id,<finding>...) or JSON {id: {finding: score}}")
    sc.add_argument("--protocol", help="grounding protocol: xbench (default), chexlocalize, medklip, mavl")
    sc.add_argument("--pointing", choices=("share", "any", "first"), help="pointing game tie rule (default share)")
    sc.add_argument("--frame", help="original (default), squash:S, shortest-side-crop:R:C or letterbox:CANVAS:C")
    sc.add_argument("--model", default="maps", help="model name the rows carry (default maps)")
    sc.add_argument("--explainer", default="precomputed", help="explainer name the rows carry (default precomputed)")
    sc.add_argument("-c", "--config", help="YAML config (dataset options, grounding, metrics)")
    sc.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.KEY=VALUE")
    sc.add_argument("--metrics", help="comma-separated metric names (default all)")
    sc.add_argument("--limit", type=int, help="only the first N images of the dataset (by sorted id)")
    sc.add_argument("--out", required=True, help="run directory to write")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sc.add_argument("--quiet", action="store_true")

    rep = sub.add_parser("report", help="rebuild results.json from a run's records; write tables, figures and report.html")
    rep.add_argument("runs", nargs="+", help="run directories (several: merged, the newest results win on overlaps)")
    rep.add_argument("--out", help="write the (merged) report here (default: the first run)")
    rep.add_argument("--no-gallery", action="store_true", help="leave out the map overlay gallery")
    rep.add_argument("--quiet", action="store_true")
    rep.add_argument("--compare", metavar="PRESET", help="published numbers beside ours, e.g. xbench-paper")

    m = sub.add_parser("merge", help="aggregate all shards of a run; report missing samples")
    m.add_argument("run")

    ls = sub.add_parser("list", help="installed datasets, models, explainers and metrics")
    ls.add_argument("kind", nargs="?", choices=KINDS)
    ls.add_argument("--json", action="store_true")

    pl = sub.add_parser("plugins", help="installed plugin distributions, their components and failures")
    pl.add_argument("--json", action="store_true")

    ins = sub.add_parser("install", help="pip-install a plugin: `xbench install devide`")
    ins.add_argument("names", nargs="+")

    v = sub.add_parser("validate", help="check a config file without running it")
    v.add_argument("config", nargs="?")
    v.add_argument("--preset", help="a shipped config (the config file, if given, goes on top)")
    v.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.KEY=VALUE")

    pr = sub.add_parser("preset", help="shipped run configs: `xbench preset list`, `xbench preset show NAME`")
    pr.add_argument("action", choices=("list", "show"))
    pr.add_argument("name", nargs="?")

    cv = sub.add_parser("convert", help="write a checkpoint's tensors as plain safetensors")
    cv.add_argument("checkpoint")
    cv.add_argument("out")
    cv.add_argument("--container", help="key (or dotted path) of the state_dict inside the file")
    cv.add_argument("--strip-prefix", action="append", default=[])

    ip = sub.add_parser("inspect", help="count a dataset's images, labels and regions; list problems")
    ip.add_argument("dataset", nargs="?", help="a dataset name (or use --preset)")
    ip.add_argument("--preset", help="count every dataset of a preset, e.g. xbench-paper")
    ip.add_argument("-c", "--config", help="YAML config file on top of --preset")
    ip.add_argument("--root", help="where the dataset lives")
    ip.add_argument("--split")
    ip.add_argument("--set", dest="sets", action="append", default=[], metavar="[NAME.]KEY=VALUE")
    ip.add_argument("--skip-images", action="store_true", help="open no image file (labels only)")
    ip.add_argument("--json", action="store_true")
    return p


def _batch_size(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else int(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    from .errors import XBenchError

    try:
        code = int(globals()[f"cmd_{args.command}"](args) or 0)
        sys.stdout.flush()  # inside the try: a reader that left (`| head`) is handled below
        return code
    except XBenchError as exc:  # a user error: one line, no traceback
        if os.environ.get("XBENCH_DEBUG"):
            import traceback

            traceback.print_exc()
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"xbench: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xbench: interrupted; finished records are on disk, run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xbench list | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush is quiet
        return 0


def _registry(args: argparse.Namespace) -> Any:
    from .plugins import get_registry

    return get_registry(strict=getattr(args, "strict_plugins", False))


def _split(text: str | None) -> list[dict[str, Any]] | None:
    return None if not text else [{"name": n.strip()} for n in text.split(",") if n.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.config import build_config, parse_set, split_names
    from .engine.distributed import launch
    from .presets import load_config, resolve_all

    registry = _registry(args)
    data = load_config(args.config, args.preset)
    if args.datasets:
        data["datasets"] = _merge_components(data.get("datasets"), _split(args.datasets))
    if args.models:
        data["models"] = _merge_components(data.get("models"), _split(args.models))
    if args.explainers:
        data["explainers"] = _merge_components(split_names(data.get("explainers")), _split(args.explainers))
    data = resolve_all(data, parse_set(args.sets))
    overrides = {
        "metrics": args.metrics,
        "out": args.out,
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "limit": args.limit,
        "fail_fast": True if args.fail_fast else None,
        # a bare --image-cache keeps the config's own image_cache settings
        "image_cache": None if args.image_cache is True and data.get("image_cache") else args.image_cache,
        # a bare --faithfulness keeps the config's own faithfulness settings
        "faithfulness": None if not args.faithfulness or data.get("faithfulness") else True,
    }
    if args.eval_size is not None:
        data["grounding"] = {**(data.get("grounding") or {}), "eval_size": args.eval_size}
    cfg = build_config(data, registry, overrides=overrides, sets=args.sets)
    outcome = launch(cfg, registry, shard=args.shard, overwrite=args.overwrite, quiet=args.quiet)
    if outcome.shard is not None:
        if not args.quiet:
            i, n = outcome.shard
            print(f"shard {i}/{n} done: {outcome.store.directory}. "
                  f"When every shard is done: xbench merge {outcome.store.directory}")
        return 0
    if outcome.results is not None and not args.quiet:
        print_summary(outcome.results, outcome.store)
    if not args.no_report:
        _report_after_run(cfg, registry, quiet=args.quiet)
    return 0


def _report_after_run(cfg: Any, registry: Any, *, quiet: bool) -> None:
    """The report of a finished run, when matplotlib is installed (on the aggregating process only).
    A report that fails is a warning: the run's results are on disk either way."""
    import importlib.util

    from .engine.distributed import torchrun_env

    env = torchrun_env()
    if (env is not None and env[0] != 0) or cfg.out is None or importlib.util.find_spec("matplotlib") is None:
        return
    from .report import write_report

    try:
        write_report([cfg.out], registry=registry, quiet=quiet)
    except Exception as exc:  # noqa: BLE001 - reported, the run itself succeeded
        print(f"warning: the report could not be written ({type(exc).__name__}: {exc}); "
              f"retry with `xbench report {cfg.out}`", file=sys.stderr)


def _merge_components(existing: Any, chosen: list[dict[str, Any]] | None) -> Any:
    """--datasets/--models/--explainers select by name; options of the same names in the config are kept."""
    if not chosen:
        return existing
    known = {}
    for item in existing or []:
        item = {"name": item} if isinstance(item, str) else item
        known[item["name"]] = item
    return [known.get(c["name"], c) for c in chosen]


def format_table(results: dict[str, Any], per_finding: bool = True) -> str:
    """A plain-text table of the headline metrics."""
    from .schema import MEAN

    cols = [("pointing_game", "PG"), ("dice_fixed", "Dice@.5"), ("dice_best", "Dice*"),
            ("iou_fixed", "IoU@.5"), ("iou_best", "IoU*"), ("auroc", "AUROC"), ("f1", "F1")]
    rows = [r for r in results["rows"] if per_finding or r["finding"] == MEAN]
    if not rows:
        return "(no results)"
    flagged = set(results.get("random_weights", []))
    if any(r.get("n_constant_maps") for r in rows):  # scored as uniform maps: the count is shown
        cols.append(("n_constant_maps", "const"))
    head = ["dataset", "model", "explainer", "finding", "n+"] + [c[1] for c in cols]
    body = []
    for r in rows:
        model = r["model"] + (" (random weights)" if r["model"] in flagged else "")
        cells = [r["dataset"], model, r["explainer"], "MEAN" if r["finding"] == MEAN else r["finding"],
                 str(r.get("n_regions", ""))]
        cells += ["-" if r.get(k) is None else str(r[k]) if k.startswith("n_") else f"{r[k]:.3f}" for k, _ in cols]
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), "  ".join("-" * w for w in widths)]
    prev = None
    for cells, r in zip(body, rows):
        key = (r["dataset"], r["model"], r["explainer"])
        if prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(line(cells))
    return "\n".join(out)


def print_summary(results: dict[str, Any], store: Any, info: dict[str, Any] | None = None) -> None:
    print(format_table(results))
    print()
    errs = results.get("errors", [])
    if errs:
        print(f"{len(errs)} per-sample errors (first 10; all in results.json):")
        for e in errs[:10]:
            print(f"  {e['dataset']}/{e['model']}/{e['explainer']} {e['id']} {e.get('finding') or ''}: {e['error']}")
    from .engine.problems import problem_lines

    for line in problem_lines(results.get("problems", {}), store.directory):
        print(line)
    for s in results.get("skipped_explainers", []):
        print(f"skipped explainer {s['explainer']} for {s['model']}: {s['reason']}")
    if results.get("random_weights"):
        print("WARNING: random weights (smoke test, not a real result): " + ", ".join(results["random_weights"]))
    for model, note in results.get("model_notes", {}).items():
        print(f"note on {model}: {note}")
    print(f"results: {store.results_path}")


def cmd_report(args: argparse.Namespace) -> int:
    import importlib.util

    from .engine.session import rebuild_results
    from .store import RunStore

    registry = _registry(args)
    for run in args.runs:
        store = RunStore(run)
        if len(args.runs) > 1 and store.results_path.exists():
            # merging: each run's results.json stays as it is, its creation time decides overlaps
            results = store.read_results()
        else:
            results = rebuild_results(store, registry)
        if not args.quiet:
            print(format_table(results))
            print(f"results: {store.results_path}")
        if args.compare:
            from .report.paper import refuse_random_weights

            refuse_random_weights(results)
    if importlib.util.find_spec("matplotlib") is None:
        print("no report (tables, figures, report.html): it needs matplotlib, pip install 'xbench-cxr[report]'", file=sys.stderr)
        return 0
    from .report import write_report

    write_report(args.runs, out=args.out, registry=registry, gallery=not args.no_gallery, quiet=args.quiet)
    if args.compare:
        from .report.paper import write_comparison

        write_comparison(args.out or args.runs[0], args.compare, quiet=args.quiet)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .score import run_score

    return run_score(args, _registry(args))


def cmd_merge(args: argparse.Namespace) -> int:
    from .engine.distributed import merge

    outcome = merge(args.run, _registry(args))
    print_summary(outcome.results, outcome.store)
    if outcome.missing:
        print(f"{len(outcome.missing)} samples have no records yet (first 20):")
        for line in outcome.missing[:20]:
            print(f"  {line}")
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    kinds = [args.kind] if args.kind else list(KINDS)
    data: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        data[kind] = []
        for name, spec in sorted(getattr(registry, kind).items()):
            entry = {"name": name, "summary": spec.summary, "plugin": registry.owner(kind, name).name}
            note = getattr(spec, "note", "")
            if note:
                entry["note"] = note
            data[kind].append(entry)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for kind in kinds:
        print(f"{kind}:")
        width = max([len(e["name"]) for e in data[kind]] + [4])
        for e in data[kind]:
            note = f"  [{e['note']}]" if e.get("note") else ""
            print(f"  {e['name']:<{width}}  {e['summary']}  ({e['plugin']}){note}")
        if not data[kind]:
            print("  (none installed)")
    if registry.failures:
        print(f"\n{len(registry.failures)} plugin(s) failed to load: see `xbench plugins`", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = _registry(args)
    dists = [
        {"name": d.name, "version": d.version, "entry_point": d.plugin, "components": d.components}
        for d in registry.distributions
    ]
    fails = [{"plugin": f.plugin, "distribution": f.distribution, "error": f.error} for f in registry.failures]
    if args.json:
        print(json.dumps({"plugins": dists, "failures": fails}, indent=2))
        return 0
    for d in dists:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in d["components"].items()) or "no components"
        print(f"{d['name']} {d['version']}  ({comps})")
    for f in fails:
        print(f"FAILED {f['distribution']} (entry point {f['plugin']}): {f['error']}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .published import install_name

    names = [install_name(n) for n in args.names]
    cmd = [sys.executable, "-m", "pip", "install", *names]
    print("+ " + " ".join(cmd))
    return subprocess.call(cmd)


def cmd_validate(args: argparse.Namespace) -> int:
    from .engine.config import build_config, parse_set
    from .errors import ConfigError
    from .presets import load_config, resolve_all

    if not args.config and not args.preset:
        raise ConfigError("xbench validate needs a config file or --preset NAME")
    data = resolve_all(load_config(args.config, args.preset), parse_set(args.sets))
    cfg = build_config(data, _registry(args), sets=args.sets)
    print(f"{args.config or args.preset}: valid")
    print(json.dumps(cfg.as_dict(), indent=2, default=str))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_checkpoint

    container = args.container.split(".") if args.container else None
    out = convert_checkpoint(args.checkpoint, args.out, container=container, strip_prefixes=tuple(args.strip_prefix))
    print(f"wrote {out}")
    return 0


def cmd_preset(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .presets import available, get

    if args.action == "show":
        if not args.name:
            raise ConfigError("xbench preset show needs a preset name (`xbench preset list`)")
        print(get(args.name).text, end="")
        return 0
    for name, preset in sorted(available().items()):
        print(f"{name}  {preset.meta.get('summary', '')}  ({preset.source})")
    return 0


def inspect_options(dataset: str, sets: list[str]) -> dict[str, Any]:
    """`xbench inspect DATASET --set ...` options: KEY=VALUE, or DATASET.KEY=VALUE as `xbench run`
    takes them (the dataset READMEs show that form)."""
    from .engine.config import parse_set

    prefix = f"{dataset}."
    return parse_set([s if s.startswith(prefix) else prefix + s for s in sets]).get(dataset, {})


def cmd_inspect(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .inspect import format_inspection, inspect_dataset

    registry = _registry(args)
    if args.preset or args.config:
        from .presets.inspect import format_preset_inspection, inspect_preset

        report = inspect_preset(args.preset, args.config, args.sets, registry, skip_images=args.skip_images,
                                progress=not args.json, only=args.dataset)
        print(json.dumps(report, indent=2) if args.json else format_preset_inspection(report))
        return 0
    if not args.dataset:
        raise ConfigError("xbench inspect needs a dataset name or --preset NAME")
    spec = registry.get("datasets", args.dataset)
    options = inspect_options(args.dataset, args.sets)
    if args.root is not None:
        options["root"] = args.root
    if args.split is not None:
        options["split"] = args.split
    dataset = spec.build(**options)
    report = inspect_dataset(dataset, skip_images=args.skip_images, progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
