"""The ``dlbook`` command: list the chapters, run one, benchmark training, ask the Python docs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from dlbook.chapters import find_chapter, list_chapters
from dlbook.config import PROFILE_ENV, PROFILES
from dlbook.device import get_device


def _cmd_chapters(args: argparse.Namespace) -> int:
    current = None
    chapters = list_chapters()
    width = max((len(c.title) for c in chapters), default=0)
    for chapter in chapters:
        if chapter.part != current:
            current = chapter.part
            print(f"Part {int(chapter.part[:2])}: {chapter.part_title}")
        print(f"  {chapter.key:<5} {chapter.title:<{width}}  {chapter.slug}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        chapter = find_chapter(args.chapter)
    except LookupError as e:
        print(f"dlbook run: {e}", file=sys.stderr)
        return 2
    if args.profile not in PROFILES:  # a default read from the environment skips `choices`
        print(
            f"dlbook run: {PROFILE_ENV}={args.profile!r} is not a profile; choose one of "
            f"{', '.join(PROFILES)} (or pass --profile)",
            file=sys.stderr,
        )
        return 2
    try:  # fail here, in one line, rather than in a traceback from inside the chapter
        get_device()
    except ValueError as e:
        print(f"dlbook run: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ, **{PROFILE_ENV: args.profile})
    if not args.show:
        env.setdefault("MPLBACKEND", "Agg")  # plots are drawn but no window blocks the run
    print(f"running {chapter.slug} with {PROFILE_ENV}={args.profile}", file=sys.stderr)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(chapter.path)], env=env, cwd=chapter.path.parent)
    print(f"{chapter.slug}: exit {code} after {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


def _cmd_bench(args: argparse.Namespace) -> int:
    from dlbook.bench import benchmark_gpt  # imports the models only when benchmarking

    try:
        device = get_device()
        result = benchmark_gpt(
            args.size, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
            dtype=args.dtype, compile=args.compile, peak_tflops=args.peak_tflops, device=device,
        )
    except ValueError as e:
        print(f"dlbook bench: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), allow_nan=False) if args.json else result.report())
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    import warnings

    from dlbook import hub
    from dlbook.rag import answer, check_question, docs_index, rag_messages

    question = args.question.strip()
    if not question:
        print("dlbook ask: the question is empty; ask e.g. "
              "dlbook ask \"what does the with statement do?\"", file=sys.stderr)
        return 2
    if args.k < 1 or args.max_tokens < 1:
        print("dlbook ask: --k and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    encoder = hub.load("minilm-l6")
    try:  # before the (slow) first index build
        check_question(question, *encoder)
    except ValueError as e:
        print(f"dlbook ask: {e}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = docs_index(progress=True, encoder=encoder)
    for w in caught:
        print(f"dlbook ask: {w.message}", file=sys.stderr)
    try:
        hits = index.search(question, args.k)
    except ValueError as e:
        print(f"dlbook ask: {e}", file=sys.stderr)
        return 2
    if not args.no_generate:
        model, tok = hub.load("smollm2-135m")
        try:
            reply = answer(model, tok, [rag_messages(question, [c for c, _ in hits])],
                           args.max_tokens)[0]
        except ValueError as e:
            print(f"dlbook ask: {e}", file=sys.stderr)
            return 2
        print(reply)
    print("sources:")
    for chunk, score in hits:
        first = " ".join(chunk.text.split())[:70]
        print(f"  {chunk.source:<22} {score:.2f}  {first}...")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dlbook import hub
    from dlbook.serve.app import ServeLimits, create_app

    try:
        limits = ServeLimits(max_tokens=args.max_tokens, default_max_tokens=min(
            64, args.max_tokens), max_body_bytes=args.max_body_bytes,
            request_timeout_s=args.timeout)
        if args.max_batch < 1 or (args.max_queue is not None and args.max_queue < 1):
            raise ValueError("--max-batch and --max-queue must be >= 1")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
        model, tokenizer = hub.load(args.model)
        app = create_app(model, tokenizer, model_name=args.model, max_batch=args.max_batch,
                         max_queue=args.max_queue, limits=limits,
                         preload_classifier=args.preload_classifier,
                         background_classifier=not args.preload_classifier)
    except (ValueError, KeyError) as e:
        print(f"dlbook serve: {e}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"dlbook serve: {args.model} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlbook`` console script."""
    parser = argparse.ArgumentParser(prog="dlbook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("chapters", help="list the chapters with their part and title")
    run = sub.add_parser("run", help="run one chapter script")
    run.add_argument("chapter", help="key (1.3), slug (01_basics/03_mlp) or file name")
    run.add_argument(
        "--profile", choices=PROFILES,
        default=os.environ.get(PROFILE_ENV, "").strip().lower() or "book",
    )
    run.add_argument("--show", action="store_true", help="open plot windows")
    bench = sub.add_parser("bench", help="measure training speed, memory and MFU")
    bench.add_argument("model", choices=["gpt"])
    bench.add_argument("--size", choices=["tiny", "small", "124M"], default="tiny")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    bench.add_argument("--compile", action="store_true", help="torch.compile the model")
    bench.add_argument("--peak-tflops", type=float, help="device peak, for MFU on unknown devices")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    ask = sub.add_parser("ask", help="answer a question from the Python docs (retrieval + LLM)")
    ask.add_argument("question", help='e.g. "what does the with statement do?"')
    ask.add_argument("--k", type=int, default=3, help="passages to retrieve (default 3)")
    ask.add_argument("--max-tokens", type=int, default=48, help="longest answer, in tokens")
    ask.add_argument("--no-generate", action="store_true",
                     help="only retrieve and print the sources (fast, no language model)")
    serve = sub.add_parser("serve", help="serve a chat model over HTTP (OpenAI-style API + page)")
    serve.add_argument("--model", choices=["smollm2-135m"], default="smollm2-135m")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=8, help="most requests per batch")
    serve.add_argument("--max-queue", type=int, help="most waiting requests (more: HTTP 429)")
    serve.add_argument("--max-tokens", type=int, default=512,
                       help="largest max_tokens a request may ask for")
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024)
    serve.add_argument("--timeout", type=float, default=120.0, help="per-request deadline, s")
    serve.add_argument("--preload-classifier", action="store_true",
                       help="build the R8 classifier before serving (default: in the "
                       "background from the first /v1/classify, which answers 503 until ready)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    commands = {"chapters": _cmd_chapters, "run": _cmd_run, "bench": _cmd_bench,
                "ask": _cmd_ask, "serve": _cmd_serve}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
