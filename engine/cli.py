"""The `graphrun` command.

Exit codes: 0 success, 1 a node failed while running, 2 invalid input (graph, params, usage),
130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .diagnostics import Diagnostic, GraphError, dumps
from .node import InputSpec, NodeSpec, Registry, RegistryError, make_registry

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
VERBS = ("run", "validate", "nodes", "schema", "show", "convert", "export")


class CliError(Exception):
    """A user error outside any graph (bad option, missing file): one message, exit 2."""


def _print_diagnostics(diags: Sequence[Diagnostic], as_json: bool = False) -> None:
    if as_json:
        print(dumps(diags))
        return
    for diag in diags:
        print(diag.format(), file=sys.stderr)


def _registry(args: argparse.Namespace) -> Registry:
    return make_registry(getattr(args, "plugin", None) or [])


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="FILE.py", help="load node types from a Python file")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")


def _add_graph_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="graph YAML/JSON (or a ComfyUI workflow .json/.png)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="set a graph param")
    p.add_argument(
        "--models-dir", action="append", default=[], metavar="DIR",
        help="ComfyUI-style models folder (diffusion_models/, text_encoders/, vae/, loras/); 'tiny' = the tiny model",
    )
    p.add_argument("--extra-model-paths", metavar="YAML", help="ComfyUI extra_model_paths.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphrun",
        description="Run diffusion node graphs (YAML, or ComfyUI workflows) in process.",
        epilog="`graphrun FILE ...` is short for `graphrun run FILE ...`.",
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("run", help="validate and run a graph")
    _add_graph_inputs(p)
    p.add_argument("--out", default="output", metavar="DIR", help="output folder (default: ./output)")
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: CUDA when available)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="model dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--offload", action="store_true", help="keep models on the CPU between uses (small GPUs)")
    p.add_argument(
        "--comfy",
        metavar="VERSION",
        help="ComfyUI version whose behaviour to follow: 0.18.1 (default) or 2025.10; overrides the graph's `comfy:`",
    )
    p.add_argument(
        "--progress", choices=["auto", "plain", "json", "none"], default="auto", help="progress output on stderr"
    )
    p.add_argument("--batch", metavar="ROWS", help="run once per row of a .jsonl, .csv or .txt file (one prompt a line)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="run the batch on Ray (default: local)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="Ray actors (each holds its models once)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per Ray actor")
    _add_common(p)

    p = sub.add_parser("validate", help="check a graph and print every problem found")
    _add_graph_inputs(p)
    p.add_argument("--json", action="store_true", help="diagnostics as JSON on stdout")
    _add_common(p)

    p = sub.add_parser("nodes", help="list node types, or show one")
    p.add_argument("name", nargs="?", help="a node type (or its ComfyUI class_type)")
    p.add_argument("--json", action="store_true")
    _add_common(p)

    p = sub.add_parser("schema", help="print the JSON Schema of graph documents")
    _add_common(p)

    p = sub.add_parser("convert", help="convert a ComfyUI workflow (.json or .png) to graphrun YAML")
    p.add_argument("file")
    p.add_argument("-o", "--output", metavar="OUT.yaml", help="write here (default: stdout); never overwrites")
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=NODE.INPUT[,NODE.INPUT]",
        help="make node inputs a graph param (default: their current value), e.g. --param prompt=positive.text",
    )
    _add_common(p)

    p = sub.add_parser("export", help="export a graph to ComfyUI API-format JSON")
    _add_graph_inputs(p)
    p.add_argument("-o", "--output", metavar="OUT.json", help="write here (default: stdout); never overwrites")
    _add_common(p)

    p = sub.add_parser("show", help="print the graph as Mermaid or DOT")
    p.add_argument("file")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    _add_common(p)

    return parser


# ------------------------------------------------------------------ verbs


def _load_document(args: argparse.Namespace, registry: Registry):
    """A graphrun document, or a ComfyUI workflow (.json/.png) converted on the fly."""
    from .comfy_bridge import load_any

    return load_any(Path(args.file), registry)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    from .graph import parse_overrides

    return parse_overrides(args.set)


def _check_env(args: argparse.Namespace, doc: Any):
    from .node import CheckEnv

    return CheckEnv(
        graph_dir=Path(doc.file).parent if doc.file else None,
        options={"models_dirs": list(args.models_dir), "extra_model_paths": args.extra_model_paths},
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import check

    registry = _registry(args)
    doc = _load_document(args, registry)
    _, diags = check(doc, registry, _overrides(args), _check_env(args, doc))
    _print_diagnostics(diags, args.json)
    errors = sum(d.is_error for d in diags)
    if not args.json:
        warnings = len(diags) - errors
        status = "invalid" if errors else "valid"
        print(f"{doc.file or 'graph'}: {status} ({_plural(errors, 'error')}, {_plural(warnings, 'warning')})", file=sys.stderr)
    return EXIT_INVALID if errors else EXIT_OK


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reporter(kind: str):
    from . import progress

    if kind == "none":
        return progress.quiet
    if kind == "json":
        return progress.JsonReporter()
    if kind == "plain":
        return progress.LineReporter()
    return progress.default_reporter()


def cmd_run(args: argparse.Namespace) -> int:
    from .context import RunOptions
    from .executor import Runner
    from .validate import check

    registry = _registry(args)
    doc = _load_document(args, registry)
    overrides = _overrides(args)
    graph, diags = check(doc, registry, overrides, _check_env(args, doc))
    if args.batch:
        # Rows supply params: a param without a default is fine here; each row is checked itself.
        diags = [d for d in diags if not (d.code == "GR010" and d.message.endswith("has no value"))]
    _print_diagnostics(diags)
    if any(d.is_error for d in diags):
        return EXIT_INVALID
    _check_device(args.device)
    comfy = _check_comfy(args.comfy)
    options = RunOptions(
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        comfy=comfy,
        output_dir=Path(args.out),
        extra={"models_dirs": list(args.models_dir), "extra_model_paths": args.extra_model_paths},
    )
    runner = Runner(options, reporter=_reporter(args.progress))
    if args.batch:
        from .batch import BatchOptions, run_batch

        batch = BatchOptions(
            rows=Path(args.batch), ray=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker
        )
        with _interrupt_on_sigint(runner.interrupt):
            return run_batch(doc, registry, runner, batch, overrides)
    with _interrupt_on_sigint(runner.interrupt):
        result = runner.run(graph)
    for path in result.files:
        print(path)
    return EXIT_OK


def _check_comfy(version: str | None) -> str:
    """--comfy VERSION as its canonical name ("" when not given); a usage error when unknown."""
    if version is None:
        return ""
    from .comfy.versions import resolve_comfy_version

    try:
        return resolve_comfy_version(version)
    except ValueError as exc:
        raise CliError(f"--comfy: {exc}") from None


def _check_device(device: str | None) -> None:
    """Reject an unusable --device before anything loads (torch is needed to run anyway)."""
    if device is None or device.strip().lower() in ("", "auto"):
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise CliError(f"--device {device!r} is not a device; use cuda, cuda:N, cpu or mps") from None
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if not available.get(kind, True):
        raise CliError(f"--device {device}: {kind.upper()} is not available on this machine; use --device cpu")


class _interrupt_on_sigint:
    """First Ctrl-C asks the runner to stop at the next step; a second one aborts at once."""

    def __init__(self, interrupt: Callable[[], None]) -> None:
        self.interrupt = interrupt
        self.previous: Any = None
        self.hits = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.hits += 1
        if self.hits > 1:
            raise KeyboardInterrupt
        print("\ninterrupt: stopping at the next step (Ctrl-C again to abort now)", file=sys.stderr)
        self.interrupt()

    def __enter__(self) -> "_interrupt_on_sigint":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _format_input(spec: InputSpec) -> str:
    from .validate import _describe

    if spec.socket:
        text = f"  {spec.name}: {spec.type_name}" + (" (optional)" if spec.optional else "")
    else:
        import textwrap

        default = "" if spec.required else f" = {spec.default!r}"
        # A long choice list (every registered sampler) wraps under the input instead of one endless line.
        text = textwrap.fill(f"{spec.name}: {_describe(spec)}{default}", width=100, initial_indent="  ",
                             subsequent_indent="      ", break_long_words=False, break_on_hyphens=False)
    if spec.description:
        text += f"\n      {spec.description}"
    return text


def describe_node(spec: NodeSpec) -> str:
    lines = [f"{spec.name}  [{spec.category}]" + ("  (output node)" if spec.output else "")]
    if spec.doc:
        lines += ["", *("  " + line if line else "" for line in spec.doc.splitlines())]
    lines += ["", "inputs:"] + ([_format_input(i) for i in spec.inputs] or ["  (none)"])
    lines += ["outputs:"] + ([f"  {o.name}: {o.type_name}" for o in spec.outputs] or ["  (none)"])
    if spec.comfy:
        lines.append("ComfyUI: " + ", ".join(c.class_type for c in spec.comfy))
    lines.append(f"version {spec.version}; defined in {spec.origin}")
    return "\n".join(lines)


def cmd_nodes(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.name:
        spec = registry.get(args.name) or (registry.comfy_index().get(args.name) or (None,))[0]
        if spec is None:
            from .diagnostics import did_you_mean

            hint = did_you_mean(args.name, registry.names())
            raise CliError(f"unknown node type '{args.name}'" + (f"; {hint}" if hint else ""))
        if args.json:
            from .schema import node_schema

            print(json.dumps(node_schema(spec), indent=2, default=str))
        else:
            print(describe_node(spec))
        return EXIT_OK
    if args.json:
        print(json.dumps({s.name: {"category": s.category, "summary": s.summary} for s in registry}, indent=2))
        return EXIT_OK
    category = None
    for spec in registry:
        if spec.category != category:
            category = spec.category
            print(f"\n{category}:" if spec is not next(iter(registry)) else f"{category}:")
        print(f"  {spec.name:<26} {spec.summary}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import document_schema

    print(json.dumps(document_schema(_registry(args)), indent=2, default=str))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from .graph import load_document
    from .show import to_dot, to_mermaid

    registry = _registry(args)
    doc = load_document(args.file)
    print(to_mermaid(doc, registry) if args.format == "mermaid" else to_dot(doc, registry), end="")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .comfy_bridge import cmd_convert as convert

    return convert(args, _registry(args))


def cmd_export(args: argparse.Namespace) -> int:
    from .comfy_bridge import cmd_export as export

    return export(args, _registry(args))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "nodes": cmd_nodes,
    "schema": cmd_schema,
    "show": cmd_show,
    "convert": cmd_convert,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    from .context import Interrupted
    from .executor import NodeFailed

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in VERBS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return EXIT_INVALID if exc.code else EXIT_OK
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.verb](args)
    except GraphError as exc:
        _print_diagnostics(exc.diagnostics, getattr(args, "json", False))
        return EXIT_INVALID
    except (RegistryError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except NodeFailed as exc:
        if debug:
            traceback.print_exception(exc.error)
        print(f"error: {exc}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in graphrun: say so, keep the traceback behind --debug
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
