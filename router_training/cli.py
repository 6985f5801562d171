"""`python -m router_training <command>`: import, label, train, evaluate, calibrate, export, run,
curve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from router_training import data as data_mod

logger = logging.getLogger("router_training")


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key.path=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_import(args: argparse.Namespace) -> int:
    if args.format == "routellm":
        outcomes = data_mod.read_routellm(
            args.paths,
            weak_column=args.small_column,
            strong_column=args.large_column,
            contaminated=args.contaminated,
        )
    elif args.format == "judge":
        from router_training.judge_data import read_judge_jsonl

        outcomes = [o for path in args.paths for o in read_judge_jsonl(path)]
    else:
        outcomes = [o for path in args.paths for o in data_mod.read_jsonl(path)]
    count = data_mod.write_jsonl(outcomes, args.out)
    small = sum(o.small_score for o in outcomes) / max(count, 1)
    large = sum(o.large_score for o in outcomes) / max(count, 1)
    print(f"wrote {count} outcomes to {args.out} (small {small:.3f}, large {large:.3f})")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from router_training.labelling import (
        ChatJudge,
        ReferenceJudge,
        TierClient,
        label_prompts,
        load_judge,
        read_prompts,
    )

    client = TierClient(
        args.base_url,
        args.api_key,
        args.max_tokens,
        args.timeout_s,
        bypass_cache=not args.keep_cache,
    )
    open_ended = None
    if args.judge:
        open_ended = load_judge(args.judge)
    elif args.judge_model:
        open_ended = ChatJudge(client, args.judge_model)
    try:
        stats = label_prompts(
            read_prompts(args.prompts),
            client,
            ReferenceJudge(open_ended),
            args.out,
            args.small_model,
            args.large_model,
            args.concurrency,
        )
    finally:
        client.close()
    print(json.dumps(stats))
    return 0 if stats["failed"] == 0 else 1


def _config(args: argparse.Namespace):
    from router_training.config import load_config

    return load_config(args.config, _overrides(args.set))


def cmd_train(args: argparse.Namespace) -> int:
    from router_training.pipeline import train_seed

    config = _config(args)
    seeds = [args.seed] if args.seed is not None else config.training.seeds
    for seed in seeds:
        checkpoint = train_seed(config, seed, Path(config.output_dir) / f"seed-{seed}")
        print(f"seed {seed}: checkpoint {checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from router_training.evaluate import measure_latency, plot_cost_quality
    from router_training.features import cache_root
    from router_training.pipeline import checkpoint_split, evaluate_checkpoint, evaluation_json

    split, card = checkpoint_split(args.checkpoint, args.data, args.split_file)
    outcomes = getattr(split, args.split)
    evals = evaluate_checkpoint(
        args.checkpoint, outcomes, card, list(range(args.random_seeds)), cache_root(args.cache_dir)
    )
    out = Path(args.out)
    report = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "prompts": len(outcomes),
        "evaluation": evaluation_json(evals),
    }
    if args.latency_requests:
        report["latency_ms"] = measure_latency(
            args.checkpoint,
            [o.prompt for o in outcomes],
            int(card.get("max_length", 256)),
            args.latency_requests,
            args.latency_batch_size,
        )
    out.mkdir(parents=True, exist_ok=True)
    png = plot_cost_quality(
        evals, out / "cost_quality.png", f"{args.split} prompts ({len(outcomes)})"
    )
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, evaluation in evals.items():
        print(name, json.dumps(evaluation.summary()))
    if "latency_ms" in report:
        print("latency_ms", json.dumps(report["latency_ms"]))
    print(f"curve: {png}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from router_training.features import cache_root
    from router_training.pipeline import calibrate_checkpoint, checkpoint_split

    split, _ = checkpoint_split(args.checkpoint, args.data, args.split_file)
    calibration = calibrate_checkpoint(
        args.checkpoint,
        getattr(split, args.split),
        cache_root(args.cache_dir),
        args.target_large_share,
        args.target_pgr,
        data=f"the checkpoint's {args.split} split",
    )
    print(json.dumps(calibration.__dict__))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from router_training.pipeline import export_checkpoint

    print(json.dumps(export_checkpoint(args.checkpoint, args.out, args.probe)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from router_training.config import MultiSourceConfig, load_any_config
    from router_training.pipeline import markdown_table, run_all

    config = load_any_config(args.config, _overrides(args.set))
    if isinstance(config, MultiSourceConfig):
        from router_training.multi_source import markdown_tables, run_multi_source

        report = run_multi_source(config)
        print(markdown_tables(report))
        exported = report["export"]
        print(f"router: {exported['dir']} (threshold {exported['card']['threshold']:.4f})")
        return 0
    report = run_all(config, latency=not args.no_latency)
    print(markdown_table(report["summary"]))
    print(f"curve: {report['curve_png']}")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from router_training.config import MultiSourceConfig, load_any_config
    from router_training.multi_source import write_operating_curve

    config = load_any_config(args.config, _overrides(args.set))
    if not isinstance(config, MultiSourceConfig):
        raise SystemExit("curve needs a multi-source config (one with `sources`)")
    curve = write_operating_curve(config)
    print(
        f"operating curve of {config.export_dir}: {len(curve.thresholds)} points on "
        f"{curve.num_prompts} prompts ({curve.data})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router_training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="RouteLLM CSVs, generic or judge JSONL -> outcomes JSONL")
    p.add_argument(
        "format",
        choices=["routellm", "jsonl", "judge"],
        help="judge: rows of prompt, answer, label (1 = escalate) for the quality judge",
    )
    p.add_argument("paths", nargs="+", help="files, or directories of RouteLLM *.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--small-column", default=data_mod.ROUTELLM_WEAK_COLUMN)
    p.add_argument("--large-column", default=data_mod.ROUTELLM_STRONG_COLUMN)
    p.add_argument(
        "--contaminated",
        nargs="*",
        default=None,
        help="RouteLLM contaminated_prompts.jsonl files (default: the one beside the CSVs)",
    )
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("label", help="answer prompts with both tiers of a deployment and score")
    p.add_argument("prompts", help="JSONL: prompt, optional id, reference/answer, source")
    p.add_argument("--out", required=True, help="outcomes JSONL (appended; done ids skipped)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="router-labelling")
    p.add_argument("--small-model", default="cascade-small")
    p.add_argument("--large-model", default="cascade-large")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--timeout-s", type=float, default=180.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--keep-cache", action="store_true", help='do not send "cache": false')
    p.add_argument("--judge", help="open-ended judge: 'module:Factory' returning a Judge")
    p.add_argument("--judge-model", help="open-ended judge: a model at --base-url rates 1-10")
    p.set_defaults(fn=cmd_label)

    for name, fn, text in (
        ("train", cmd_train, "train one checkpoint per seed"),
        (
            "run",
            cmd_run,
            "train, evaluate, calibrate and export every seed; summary table (a config with "
            "`sources`: LOSO and in-distribution tables, then the shipped difficulty router)",
        ),
        (
            "curve",
            cmd_curve,
            "measure an exported difficulty router's operating curve on its calibration split "
            "and add it to its card, without refitting (a config with `sources`)",
        ),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="configs/router_training*.yaml")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set training.seeds=[0]",
        )
        if name == "train":
            p.add_argument("--seed", type=int)
        elif name == "run":
            p.add_argument("--no-latency", action="store_true")
        p.set_defaults(fn=fn)

    def checkpoint_args(p: argparse.ArgumentParser, split: str) -> None:
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--data", help="outcomes JSONL (default: the card's)")
        p.add_argument("--split-file", help="split ids JSON (default: the card's)")
        p.add_argument("--split", default=split, choices=["train", "val", "test"])
        p.add_argument("--cache-dir")

    p = sub.add_parser("evaluate", help="APGR, CPT, AUC, curve PNG, latency on held-out prompts")
    checkpoint_args(p, "test")
    p.add_argument("--out", default="artifacts/router_eval")
    p.add_argument("--random-seeds", type=int, default=10)
    p.add_argument("--latency-requests", type=int, default=200)
    p.add_argument("--latency-batch-size", type=int, default=16)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("calibrate", help="write the threshold into the router card")
    checkpoint_args(p, "val")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-large-share", type=float)
    target.add_argument("--target-pgr", type=float)
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("export", help="copy a checkpoint where the app loads it, verify it loads")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--probe", default="Prove that there are infinitely many primes.")
    p.set_defaults(fn=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return args.fn(args)
