"""`omnipersona` command line: train a concept, then ask, generate, edit with it; inspect a backbone.

    omnipersona train --backbone tiny --images photos/ --name maeve --out concepts/maeve
    omnipersona ask --backbone tiny --concept concepts/maeve --question "what is the toy of <maeve> ?"
    omnipersona generate --backbone tiny --concept concepts/maeve --prompt "draw <maeve> at its home" --out a.png
    omnipersona edit --backbone tiny --concept concepts/maeve --image a.png --instruction "remove <maeve>" --out b.png
    omnipersona info --backbone tiny [--concept concepts/maeve]

Bad input (a missing folder, a folder without images, an unreadable image, an unknown backbone,
a concept trained on another backbone, bad facts, an unknown concept in a prompt) ends with one
line `omnipersona: error: ...` on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "omnipersona"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP"]  # decoders allowed to open user files
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad user input: reported as one line on stderr, exit status 2."""


# -- input validation (no torch needed) -----------------------------------------------------------
def open_image(path: str | Path):
    """Fully decodes an image file (truncation and corruption surface here) -> RGB PIL image."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise CliError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CliError(f"cannot read image {str(path)!r}: {e}") from e


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CliError(f"image folder {str(folder)!r} does not exist")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.name)
    if not files:
        raise CliError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image_folder(folder: str | Path) -> list:
    return [open_image(p) for p in image_files(folder)]


def read_facts(path: str | Path) -> list[tuple[str, str]]:
    """A JSON list of [question, answer] pairs or {"question": ..., "answer": ...} objects."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CliError(f"facts file {str(path)!r} does not exist") from e
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CliError(f"cannot read facts file {str(path)!r}: {e}") from e
    if not isinstance(data, list):
        raise CliError(f"facts file {str(path)!r} must hold a JSON list of [question, answer] pairs")
    facts = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and set(item) >= {"question", "answer"}:
            q, a = item["question"], item["answer"]
        elif isinstance(item, list) and len(item) == 2:
            q, a = item
        else:
            raise CliError(f"facts file {str(path)!r}, item {i}: expected [question, answer] or "
                           f'{{"question": ..., "answer": ...}}')
        if not (isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip()):
            raise CliError(f"facts file {str(path)!r}, item {i}: question and answer must be non-empty strings")
        facts.append((q, a))
    return facts


def check_png_out(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CliError(f"output {str(path)!r} is a folder, expected a .png file path")
    return path


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


# -- library access -------------------------------------------------------------------------------
def load_backbone(spec: str):
    from .backbone import BackboneError
    from .backbone import load_backbone as _load

    try:
        return _load(spec)
    except (BackboneError, OSError) as e:
        raise CliError(str(e)) from e


def make_pipeline(backbone, concept_folders: Sequence[str], recaption: bool = True):
    from safetensors import SafetensorError

    from .pipeline import OmniPipeline

    pipe = OmniPipeline(backbone, recaption=recaption)
    for folder in concept_folders:
        if not Path(folder).is_dir():
            raise CliError(f"concept folder {folder!r} does not exist")
        try:
            pipe.load_concept(folder)
        except (ValueError, KeyError, OSError, SafetensorError) as e:  # ConceptMismatchError is a ValueError
            raise CliError(f"cannot load concept {folder!r}: {e}") from e
    return pipe


def run_request(fn, *args, **kwargs):
    """Pipeline call; a `ValueError` there is a request naming an unknown concept."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise CliError(str(e)) from e


def save_png(image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def parameter_counts(model) -> dict[str, int]:
    groups = {"understanding_expert": 0, "generation_expert": 0, "text_embeddings": 0, "vit": 0, "vae": 0,
              "latent_adapters": 0}
    for name, p in model.named_parameters():
        if name.startswith("language_model."):
            if "embed_tokens" in name or "lm_head" in name:
                key = "text_embeddings"
            elif "_moe_gen" in name:
                key = "generation_expert"
            else:
                key = "understanding_expert"
        elif name.startswith(("vit_model.", "connector.", "vit_pos_embed.")):
            key = "vit"
        elif name.startswith("vae."):
            key = "vae"
        else:
            key = "latent_adapters"  # vae2llm, llm2vae, time_embedder, latent_pos_embed
        groups[key] += p.numel()
    return {"total": sum(groups.values()), **groups}


# -- commands -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .tokens import NAME_RE

    if not NAME_RE.match(args.name):
        raise CliError(f"concept name {args.name!r} must match {NAME_RE.pattern}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"output {str(out)!r} exists and is not a folder")
    images = load_image_folder(args.images)
    negatives = load_image_folder(args.negatives) if args.negatives else []
    facts = read_facts(args.facts) if args.facts else []
    backbone = load_backbone(args.backbone)

    from tqdm import tqdm

    from .artifacts import save_concept
    from .data import ConceptData
    from .trainer import TrainRecipe, train_concept

    recipe = TrainRecipe(seed=args.seed, method=args.method, backend=args.backend,
                         checkpoint_every=args.checkpoint_every)
    for key in ("steps", "batch_size", "lr"):
        if getattr(args, key) is not None:
            setattr(recipe, key, getattr(args, key))
    data = ConceptData(images=images, facts=facts, negatives=negatives)
    with tqdm(total=recipe.steps, desc=f"train <{args.name}>", unit="step", file=sys.stderr,
              dynamic_ncols=True) as bar:

        def progress(step: int, total: int, parts: dict[str, float]) -> None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()}, refresh=False)
            bar.update(step - bar.n)

        result = train_concept(backbone, data, args.name, recipe, progress=progress,
                               checkpoint_dir=args.checkpoint_dir)
    save_concept(result.concept, out, backbone.fingerprint(), metrics=result.metrics, recipe=recipe.to_dict())
    print(out)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    image = open_image(args.image) if args.image else None
    pipe = make_pipeline(load_backbone(args.backbone), args.concept)
    print(run_request(pipe.ask, args.question, image))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    out = check_png_out(args.out)
    pipe = make_pipeline(load_backbone(args.backbone), args.concept, recaption=not args.no_recaption)

    from .sampler import SamplerConfig

    result = run_request(pipe.generate, args.prompt, seed=args.seed, sampler=SamplerConfig(num_steps=args.steps))
    save_png(result.image, out)
    print(json.dumps({"path": str(out), "prompt": result.prompt, "seed": result.seed,
                      "trace": result.trace.to_dict() if result.trace else None}))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    out = check_png_out(args.out)
    source = open_image(args.image)
    pipe = make_pipeline(load_backbone(args.backbone), args.concept)

    from .sampler import SamplerConfig

    result = run_request(pipe.edit, source, args.instruction, seed=args.seed,
                         sampler=SamplerConfig.for_editing(num_steps=args.steps))
    save_png(result.image, out)
    print(out)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    concept_meta: dict[str, Any] | None = None
    if args.concept:
        from .artifacts import read_concept_meta

        if not Path(args.concept).is_dir():
            raise CliError(f"concept folder {args.concept!r} does not exist")
        try:
            concept_meta = read_concept_meta(args.concept)
        except ValueError as e:  # not a concept folder, or its concept.json is not JSON
            raise CliError(f"cannot read concept {args.concept!r}: {e}") from e
    backbone = load_backbone(args.backbone)
    fingerprint = backbone.fingerprint()
    info: dict[str, Any] = {
        "config": backbone.config.name,
        "hidden_size": backbone.config.hidden_size,
        "image_size": backbone.config.image_size,
        "parameters": parameter_counts(backbone.model),
        "fingerprint": fingerprint,
    }
    if concept_meta is not None:
        info["concept"] = concept_meta
        info["concept_compatible"] = concept_meta.get("backbone_fingerprint") == fingerprint
    print(json.dumps(info, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import EXAMPLE, run_demo

    photos = load_image_folder(EXAMPLE / "photos")
    facts = read_facts(EXAMPLE / "facts.json")
    backbone = load_backbone(args.backbone)
    summary = run_demo(args.out, photos, facts, backbone=backbone, steps=args.steps, sample_steps=args.sample_steps)
    print(json.dumps(summary, indent=2))
    print(f"outputs: {summary['generate']['image']}, {summary['edit']['image']}, concept {summary['concept']}")
    return 0


def cmd_pretrain_toy(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .toyworld.pretrain import PretrainConfig, pretrain_toy

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(seed=args.seed)
    cfg.steps = args.steps or cfg.steps
    cfg.vae_steps = args.vae_steps or cfg.vae_steps
    cfg.vit_steps = args.vit_steps or cfg.vit_steps
    cfg.batch_size = args.batch_size or cfg.batch_size
    cfg.lr = args.lr or cfg.lr
    cfg.constant_lr = args.constant_lr
    cfg.generation_only = args.generation_only
    if cfg.generation_only and not args.init:
        raise CliError("--generation-only continues a pretrained run: give it --init DIR")
    for item in args.mix or []:
        task, _, weight = item.partition("=")
        if task not in cfg.mix:
            raise CliError(f"--mix: unknown task {task!r}; known: {', '.join(cfg.mix)}")
        try:
            cfg.mix[task] = float(weight)
        except ValueError:
            raise CliError(f"--mix: {item!r} is not TASK=WEIGHT") from None
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, parts: dict[str, float]) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=f"pretrain {stage}", unit="step", mininterval=5)
        bar = bars[stage]
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})

    report = pretrain_toy(args.out, cfg, minutes=args.minutes, progress=progress, init=args.init)
    for bar in bars.values():
        bar.close()
    print(json.dumps(report, indent=2))
    return 0


def cmd_train_recogniser(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .toyworld.recogniser import save_recogniser, train_recogniser

    if args.threads:
        torch.set_num_threads(args.threads)
    with tqdm(total=args.steps, desc="recogniser", unit="step", mininterval=5) as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")

        model, report = train_recogniser(args.steps, seed=args.seed, progress=progress)
    save_recogniser(model, report, args.out)
    print(json.dumps({"seconds": report.seconds, "accuracy": report.accuracy, "passes": report.passes}, indent=2))
    return 0 if report.passes else 1


def cmd_evaluate_base(args: argparse.Namespace) -> int:
    import time

    import torch

    from .toyworld import RECOGNISER_DIR, TOY_BACKBONE_DIR
    from .toyworld.card import model_card
    from .toyworld.evaluate import evaluate_base, evaluate_editing, evaluate_generation
    from .toyworld.recogniser import load_recogniser

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = TOY_BACKBONE_DIR if args.backbone == "toy" else Path(args.backbone)
    backbone = load_backbone(args.backbone)
    recogniser, _ = load_recogniser(args.recogniser or RECOGNISER_DIR)
    t0 = time.monotonic()
    scores: dict[str, Any] = evaluate_base(backbone, n=args.n)
    scores["recaption_text_tasks"] = sum(scores[k] for k in
                                         ("recaption_intent", "recaption_answer", "recaption_rewrite")) / 3
    scores |= evaluate_generation(backbone, recogniser, n=args.n)
    scores |= evaluate_editing(backbone, recogniser, n=args.n)
    scores["n"] = args.n
    scores["parameters"] = sum(p.numel() for p in backbone.model.parameters())
    scores["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(scores, indent=2))
    if args.write_card:
        (folder / "base_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        (folder / "MODEL_CARD.md").write_text(model_card(folder))
        print(f"model card: {folder / 'MODEL_CARD.md'}")
    return 0


QUICK_CONCEPTS = 5  # `bench --quick`: five concepts from the seed (the 20-concept run takes about 90 min)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import ROWS, BenchResult, markdown_table, run_bench, write_report
    from .toyworld import RECOGNISER_DIR
    from .toyworld.recogniser import load_recogniser

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = ROWS
    if args.rows:
        known = {r.name: r for r in ROWS}
        unknown = [r for r in args.rows if r not in known]
        if unknown:
            raise CliError(f"unknown row(s) {unknown}; known: {', '.join(known)}")
        rows = tuple(known[r] for r in args.rows)
    backbone = load_backbone(args.backbone)
    try:
        recogniser, report = load_recogniser(args.recogniser or RECOGNISER_DIR)
    except FileNotFoundError as e:
        raise CliError(f"no recogniser at {e.filename}; train one with `omnipersona train-recogniser`") from e
    if not report.passes:
        raise CliError(f"the recogniser's accuracy {report.accuracy} is under 98%: it may not judge images")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    paths: dict[str, Path] = {}

    def rewrite_report(so_far: BenchResult) -> None:  # after every concept, the last one included
        paths.update(write_report(so_far, args.out))

    n_concepts = QUICK_CONCEPTS if args.quick else args.concepts
    result = run_bench(backbone, recogniser, seed=args.seed, n_concepts=n_concepts, steps=args.steps,
                       rows=rows, sample_steps=args.sample_steps, log=log, on_concept=rewrite_report)
    print(markdown_table(result))
    print(f"\nseed {args.seed}, {n_concepts} concepts, {args.steps} steps per concept; "
          f"{result.seconds:.0f} s in all; " + ", ".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Personalized concept tokens on a BAGEL-style MoT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, concepts: str | None = "*") -> None:
        p.add_argument("--backbone", required=True, metavar="SPEC",
                       help="preset name (tiny, toy) or a backbone folder")
        if concepts == "*":
            p.add_argument("--concept", action="append", default=[], metavar="DIR",
                           help="concept folder to load (repeatable)")
        elif concepts == "?":
            p.add_argument("--concept", metavar="DIR", help="concept folder whose metadata to show")

    p = sub.add_parser("train", help="learn a concept's tokens from a folder of photos")
    common(p, concepts=None)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of photos (png, jpg, jpeg, webp)")
    p.add_argument("--name", required=True, help="concept name; prompts call it <NAME>")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the concept checkpoint")
    p.add_argument("--facts", metavar="FILE.json",
                   help='JSON list of [question, answer] or {"question", "answer"}; {c} = <NAME>')
    p.add_argument("--negatives", metavar="DIR", help="folder of photos without the concept")
    p.add_argument("--steps", type=positive_int, help="training steps (default: recipe's)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("decoupled", "shared"), default="decoupled")
    p.add_argument("--backend", choices=("torch", "deepspeed"), default="torch")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="resumable training checkpoints")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=0, metavar="K")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ask", help="answer a question (optionally about an image)")
    common(p)
    p.add_argument("--question", required=True)
    p.add_argument("--image", metavar="FILE")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("generate", help="render a prompt (recaptioned) to a PNG")
    common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--no-recaption", action="store_true", help="skip explicit knowledge recaptioning")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit an image by an instruction")
    common(p)
    p.add_argument("--image", required=True, metavar="FILE")
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("demo", help="the main job: train the bundled example concept, then ask, generate, edit")
    p.add_argument("--out", default="outputs/demo", metavar="DIR")
    p.add_argument("--backbone", default="toy", metavar="SPEC")
    p.add_argument("--steps", type=positive_int, default=100, help="training steps (default 100)")
    p.add_argument("--sample-steps", type=positive_int, default=20, help="flow steps per image (default 20)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain-toy", help="pretrain the toy backbone on the toy world (long: run in background)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--minutes", type=float, default=90.0, help="time budget (default 90)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, help="backbone steps (default: PretrainConfig's)")
    p.add_argument("--vae-steps", type=positive_int, help="VAE steps (default: PretrainConfig's)")
    p.add_argument("--vit-steps", type=positive_int, help="ViT dense-reading steps (default: PretrainConfig's)")
    p.add_argument("--batch-size", type=positive_int, help="backbone batch size (default: PretrainConfig's)")
    p.add_argument("--lr", type=positive_float, help="backbone peak learning rate (default: PretrainConfig's)")
    p.add_argument("--constant-lr", action="store_true",
                   help="keep the backbone's peak learning rate after the warm-up (default: cosine decay to 10%%)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.add_argument("--init", metavar="DIR", help="continue stage 2 from a saved run (skips the VAE stage)")
    p.add_argument("--mix", nargs="+", metavar="TASK=WEIGHT", help="override task weights of the batch mix")
    p.add_argument("--generation-only", action="store_true",
                   help="train only the generation expert (needs --init; the base's VQA, captions, naming and "
                        "recaptioning stay exactly as --init left them)")
    p.set_defaults(func=cmd_pretrain_toy)

    p = sub.add_parser("train-recogniser", help="train the toy world's image reader (the benchmark's judge)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--steps", type=positive_int, default=3000, help="training steps (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_train_recogniser)

    p = sub.add_parser("evaluate-base", help="base capabilities of a toy-world backbone (held-out scenes)")
    p.add_argument("--backbone", default="toy", metavar="SPEC")
    p.add_argument("--recogniser", metavar="DIR", help="judge's weights (default: the committed one)")
    p.add_argument("-n", type=positive_int, default=100, help="items per task family (default 100)")
    p.add_argument("--write-card", action="store_true", help="write base_scores.json and MODEL_CARD.md beside it")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_evaluate_base)

    p = sub.add_parser("bench", help="the OmniPBench-style benchmark on the toy world (long: run in background)")
    p.add_argument("--out", default="outputs/bench", metavar="DIR")
    p.add_argument("--backbone", default="toy", metavar="SPEC")
    p.add_argument("--recogniser", metavar="DIR", help="judge's weights (default: the committed one)")
    p.add_argument("--seed", type=int, default=0, help="draws the concepts (default 0)")
    p.add_argument("--concepts", type=positive_int, default=20, help="number of concepts (default 20)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CONCEPTS} concepts instead of --concepts")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps per concept (default 300)")
    p.add_argument("--sample-steps", type=positive_int, default=25, help="flow steps per image (default 25)")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="subset of rows (default: all)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="backbone (and concept) facts as JSON")
    common(p, concepts="?")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (status 2) and --help (status 0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_BAD_INPUT)
    try:
        return args.func(args)
    except CliError as e:
        message = " ".join(str(e).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
