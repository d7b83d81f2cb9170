"""The `graphrun` command.

Exit codes: 0 success, 1 a node failed while running, 2 invalid input (graph, params, usage),
130 interrupted by Ctrl-C.

`graphrun FILE ...` is short for `graphrun run FILE ...`; FILE may name a graph shipped with
graphrun (`graphrun zimage_turbo`). Options common to every verb (`--plugin`, `--debug`) may come
before the verb. `graphrun` alone prints a short help and exits 2 (no command is a usage error).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .diagnostics import Diagnostic, GraphError, dumps

if TYPE_CHECKING:
    # Imported where used: `graphrun --help` and a usage error need neither pydantic nor the node library.
    from .node import Registry

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
VERBS = ("run", "validate", "params", "graphs", "nodes", "schema", "show", "convert", "export", "serve")
GLOBAL_FLAGS = ("--debug",)  # options of every verb that may come before it
GLOBAL_VALUE_OPTIONS = ("--plugin",)

SHORT_HELP = """\
usage: graphrun GRAPH [--set NAME=VALUE | --set NODE.INPUT=VALUE ...] [--out DIR]
       graphrun VERB ...

Run diffusion node graphs (graphrun YAML, or ComfyUI workflow .json/.png) in process.

verbs:
  run GRAPH        validate and run a graph (the default: `graphrun GRAPH` is `graphrun run GRAPH`)
  validate GRAPH   check a graph and print every problem found
  params GRAPH     the params and settable node inputs of a graph
  graphs           the graphs shipped with graphrun (run them by name)
  nodes [TYPE]     node types, or one node's inputs and docs
  schema           JSON Schema of graph documents
  show GRAPH       the graph as Mermaid or DOT
  convert WORKFLOW a ComfyUI workflow as graphrun YAML
  export GRAPH     a graph as ComfyUI JSON
  serve            ComfyUI's HTTP/WebSocket API (and web editor) on graphrun

example:
  graphrun zimage_3stage --set prompt="a lighthouse at dusk" --set seed=7 --out out/

`graphrun --help` and `graphrun VERB --help` say more.
"""


class CliError(Exception):
    """A user error outside any graph (bad option, missing file): one message, exit 2."""


def _print_diagnostics(diags: Sequence[Diagnostic], as_json: bool = False) -> None:
    if as_json:
        print(dumps(diags))
        return
    for diag in diags:
        print(diag.format(), file=sys.stderr)


def _registry(args: argparse.Namespace) -> Registry:
    from .node import make_registry

    return make_registry(getattr(args, "plugin", None) or [])


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="FILE.py", help="load node types from a Python file")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")


def _add_graph_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="graph YAML/JSON, a ComfyUI workflow .json/.png, or a shipped graph's name")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="set a graph param, or any node input as NODE.INPUT=VALUE (NODE: the node id, or a ComfyUI node id)",
    )
    _add_model_paths(p)


def _add_model_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir", action="append", default=[], metavar="DIR",
        help="ComfyUI-style models folder (diffusion_models/, text_encoders/, vae/, loras/); 'tiny' = the tiny model",
    )
    p.add_argument("--extra-model-paths", metavar="YAML", help="ComfyUI extra_model_paths.yaml")


def _workers(text: str) -> tuple[int, int | None]:
    """``--workers N`` (a fixed pool: (N, None)) or ``--workers MIN:MAX`` (a pool that grows and shrinks)."""
    low, sep, high = text.partition(":")
    try:
        least, most = int(low), int(high) if sep else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of workers (4) or a range MIN:MAX (1:4)") from None
    if least < 1 or (most is not None and most < least):
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 worker, and MAX no less than MIN")
    return least, most


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphrun",
        description="Run diffusion node graphs (YAML, or ComfyUI workflows) in process.",
        epilog="`graphrun FILE ...` is short for `graphrun run FILE ...`; FILE may be the name of a graph shipped "
        "with graphrun (`graphrun graphs` lists them). --plugin FILE.py and --debug may also come before the verb.",
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
        help="ComfyUI version whose behaviour to follow: 0.33 (default), 0.18.1 or 2025.10; overrides the graph's `comfy:`",
    )
    p.add_argument(
        "--progress", choices=["auto", "plain", "json", "none"], default="auto", help="progress output on stderr"
    )
    p.add_argument(
        "--count", type=int, default=1, metavar="N",
        help="run N times, like ComfyUI's batch count: seeds a ComfyUI workflow sets to randomize/increment/"
        "decrement change between runs (the first run uses the saved seed)",
    )
    p.add_argument("--batch", metavar="ROWS", help="run once per row of a .jsonl, .csv or .txt file (one prompt a line)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="run the batch on Ray (default: local)")
    p.add_argument(
        "--batch-size", type=int, default=1, metavar="N",
        help="batch rows run N at a time: shared work once, samplers and VAE decode on all N rows in one forward",
    )
    p.add_argument(
        "--workers", type=_workers, default=(1, None), metavar="N|MIN:MAX",
        help="Ray workers, each holding its models once: N, or a pool growing from MIN to MAX while rows wait",
    )
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per Ray worker; a fraction shares a GPU (0.5: two workers on each)")
    p.add_argument("--cpus-per-worker", type=float, metavar="C",
                   help="CPUs per Ray worker (default 1); torch runs that many threads in it")
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="runs again of a Ray row whose worker died, before it is recorded failed (default 3)")
    p.add_argument("--worker-start-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for Ray to place a worker before the batch fails (default 60)")
    p.add_argument("--no-shared-out", dest="shared_out", action="store_false",
                   help="Ray workers send files through the driver even when they can reach --out")
    p.add_argument(
        "--redo", choices=["changed"],
        help="batch rows whose folders were made from different inputs: render them again into <id>~2/ (old kept)",
    )
    p.add_argument(
        "--seed-per-row", action="store_true",
        help="batch rows without a seed get one derived from their row id (default: the graph's seed for all)",
    )
    _add_common(p)

    p = sub.add_parser("validate", help="check a graph and print every problem found")
    _add_graph_inputs(p)
    p.add_argument("--json", action="store_true", help="diagnostics as JSON on stdout")
    p.add_argument("--comfy", metavar="VERSION",
                   help="validate for this ComfyUI version's behaviour (as `run --comfy`); default: the graph's, else 0.33")
    _add_common(p)

    p = sub.add_parser("params", help="list a graph's params, and the node inputs --set can change")
    p.add_argument("file", help="graph YAML/JSON, a ComfyUI workflow .json/.png, or a shipped graph's name")
    p.add_argument("--inputs", action="store_true", help="also list every settable node input (always for ComfyUI)")
    p.add_argument("--json", action="store_true", help="as JSON on stdout")
    _add_common(p)

    p = sub.add_parser("graphs", help="list the graphs shipped with graphrun (run them by name)")
    p.add_argument("--json", action="store_true", help="as JSON on stdout")
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

    p = sub.add_parser("export", help="export a graph to ComfyUI JSON (API format, or --format ui)")
    _add_graph_inputs(p)
    p.add_argument("-o", "--output", metavar="OUT.json", help="write here (default: stdout); never overwrites")
    p.add_argument("--format", choices=["api", "ui"], default="api",
                   help="api: the prompt ComfyUI runs (default); ui: a workflow ComfyUI opens in its editor")
    _add_common(p)

    from .serve.command import add_serve_parser

    add_serve_parser(sub, _add_model_paths, _add_common)

    p = sub.add_parser("show", help="print the graph as Mermaid or DOT")
    p.add_argument("file")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    _add_common(p)

    return parser


# ------------------------------------------------------------------ verbs


def _graph_path(file: str) -> Path:
    """The graph file ``file`` names: the file itself, or a shipped graph (``zimage_turbo``); CliError when neither."""
    from .shipped import resolve_graph, shipped_graphs

    path = resolve_graph(file)
    if not path.exists():
        shipped = list(shipped_graphs())
        close = difflib.get_close_matches(Path(file).stem, shipped, n=1, cutoff=0.6)
        tail = (f"did you mean the shipped graph '{close[0]}'?" if close
                else f"graphs shipped with graphrun: {', '.join(shipped) or 'none'}; `graphrun graphs` describes them")
        raise CliError(f"no such graph file '{file}': it does not exist here ({tail})")
    return path


def _load_document(args: argparse.Namespace, registry: Registry):
    """A graphrun document, or a ComfyUI workflow (.json/.png) converted on the fly."""
    from .comfy_bridge import load_any

    return load_any(_graph_path(args.file), registry)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    from .graph import parse_overrides

    return parse_overrides(args.set)


def _check_env(args: argparse.Namespace, doc: Any):
    from .node import CheckEnv

    options = {"models_dirs": list(args.models_dir), "extra_model_paths": args.extra_model_paths}
    # A models folder or extra_model_paths.yaml that cannot be used is one usage error, before any
    # node is checked (else every loader would report it). The node library owns the file format.
    from graphrun.nodes.model_files import ModelPathsError, check_model_paths

    try:
        check_model_paths(options["models_dirs"], options["extra_model_paths"])
    except ModelPathsError as exc:
        raise CliError(str(exc)) from None
    if getattr(args, "out", None) is not None:  # `run` only: output nodes check the folder they will write to
        options["output_dir"] = args.out
    return CheckEnv(graph_dir=Path(doc.file).parent if doc.file else None, options=options,
                    comfy_version=_check_comfy(getattr(args, "comfy", None)))


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

    if args.count < 1:
        raise CliError(f"--count {args.count}: give a number of runs, 1 or more")
    if args.count > 1 and args.batch:
        raise CliError("--count repeats a single run; a --batch runs once per row (give one or the other)")
    for flag, given in (("--redo", args.redo), ("--seed-per-row", args.seed_per_row),
                        ("--batch-size", args.batch_size != 1)):
        if given and not args.batch:
            raise CliError(f"{flag} applies to batches only; add --batch ROWS (or drop {flag})")
    registry = _registry(args)
    doc = _load_document(args, registry)
    overrides = _overrides(args)
    graph, diags = check(doc, registry, overrides, _check_env(args, doc))
    if args.batch:
        # Rows supply params: a param without a default is fine here; each row is checked itself.
        diags = [d for d in diags if not (d.code == "GR010" and d.message.endswith("has no value"))]
    _print_diagnostics(diags)
    if any(d.is_error for d in diags):
        errors = [d for d in diags if d.is_error]
        _json_failed(args, node=errors[0].node, error=errors[0].format(), diagnostics=[d.to_json() for d in errors])
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
            rows=Path(args.batch), ray=args.ray, workers=args.workers[0], max_workers=args.workers[1],
            gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            max_retries=args.max_retries, start_timeout=args.worker_start_timeout, shared_out=args.shared_out,
            redo=args.redo, seed_from_row_id=args.seed_per_row, batch_size=args.batch_size,
        )
        with _interrupt_on_sigint(runner.interrupt):
            return run_batch(doc, registry, runner, batch, overrides)
    return _run_series(args, doc, registry, runner, graph, overrides)


def _run_series(
    args: argparse.Namespace, doc: Any, registry: Registry, runner: Any, graph: Any, overrides: dict[str, str]
) -> int:
    """Run the bound graph ``--count`` times (seeds follow ComfyUI's control_after_generate between runs),
    print each file written, and end a JSON progress stream with a done/failed/interrupted event."""
    import random

    from .comfy.seeds import seed_controls, seeds_for_run
    from .context import Interrupted
    from .executor import NodeFailed
    from .validate import bind

    reporter = runner.reporter
    tracker = _NodeTracker(reporter)

    def finish(kind: str, **fields: Any) -> None:
        args.json_finished = True
        end = getattr(reporter, "finish", None)
        if end is not None:
            end(kind, files=[str(f) for f in files], seconds=round(time.perf_counter() - started, 3), **fields)

    controls = seed_controls(doc.problems)
    start, bounds = _seed_starts(doc, registry, overrides, controls)
    rng = random.SystemRandom()  # the seeds drawn are printed (and stored in each PNG): reproducible
    files: list[Path] = []
    started = time.perf_counter()
    if args.count > 1 and not controls:
        tracker.write(f"warning: --count {args.count}: no seed of this graph changes between runs (only ComfyUI "
                      "workflows' randomize/increment/decrement seeds do), so every run gives the same result")
    try:
        with _interrupt_on_sigint(runner.interrupt), _clean_warnings(tracker):
            for run in range(args.count):
                if args.count > 1:
                    seeds = seeds_for_run(controls, run, start, bounds, rng)
                    if run > 0 and seeds:
                        graph = bind(doc, registry, {**_without(overrides, doc, registry, seeds), **seeds},
                                     _check_env(args, doc))
                    shown = ", ".join(f"{key}={value}" for key, value in seeds.items())
                    if hasattr(reporter, "event"):  # JSON progress: stay JSON
                        reporter.event("run", run=run + 1, count=args.count, seeds=seeds)
                    else:
                        tracker.write(f"run {run + 1}/{args.count}" + (f": {shown}" if shown else ""))
                result = runner.run(graph, reporter=tracker)
                for path in result.files:
                    print(path, flush=True)
                    files.append(path)
    except NodeFailed as exc:
        finish("failed", node=exc.node, type=exc.node_type, error=str(exc))
        raise
    except (Interrupted, KeyboardInterrupt):
        finish("interrupted")
        raise
    except GraphError as exc:  # a later run of --count did not bind
        finish("failed", error=str(exc))
        raise
    finish("done")
    return EXIT_OK


def _seed_starts(
    doc: Any, registry: Registry, overrides: dict[str, str], controls: list
) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Each controlled seed's first value (the user's --set, else the saved one) and its input's range."""
    from .overrides import resolve_input

    given: dict[str, int] = {}
    for key, value in overrides.items():
        canonical = _canonical_key(doc, registry, key)
        if canonical is not None:
            with contextlib.suppress(ValueError):
                given[canonical] = int(value)
    start: dict[str, int] = {}
    bounds: dict[str, tuple[int, int]] = {}
    for control in controls:
        start[control.key] = given.get(control.key, control.value)
        spec = registry.get(doc.nodes[control.node].type) if control.node in doc.nodes else None
        ispec = resolve_input(spec, control.input) if spec is not None else None
        limits = ispec.constraints if ispec is not None else {}
        bounds[control.key] = (int(limits.get("ge", 0)), int(limits.get("le", 2**64 - 1)))
    return start, bounds


def _canonical_key(doc: Any, registry: Registry, key: str) -> str | None:
    """``node.input`` in graphrun's names for a ``--set`` key (``57:3.seed`` -> ``ksampler.seed``), or None."""
    from .overrides import resolve_input, resolve_node

    if "." not in key:
        return None
    node_name, _, input_name = key.partition(".")
    node_id = resolve_node(doc, node_name)
    spec = registry.get(doc.nodes[node_id].type) if node_id is not None else None
    ispec = resolve_input(spec, input_name) if spec is not None else None
    return f"{node_id}.{ispec.name}" if ispec is not None else None


def _without(overrides: dict[str, str], doc: Any, registry: Registry, seeds: dict[str, int]) -> dict[str, str]:
    """The --set overrides minus those naming a seed this run sets (under any of its names)."""
    return {k: v for k, v in overrides.items() if _canonical_key(doc, registry, k) not in seeds}


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
            from .listing import describe_node

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
    from .show import to_dot, to_mermaid

    registry = _registry(args)
    doc = _load_document(args, registry)
    print(to_mermaid(doc, registry) if args.format == "mermaid" else to_dot(doc, registry), end="")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .comfy_bridge import cmd_convert as convert

    return convert(args, _registry(args))


def cmd_export(args: argparse.Namespace) -> int:
    from .comfy_bridge import cmd_export as export

    args.file = str(_graph_path(args.file))  # a shipped graph by name, like run and validate
    return export(args, _registry(args))


def cmd_params(args: argparse.Namespace) -> int:
    """`graphrun params GRAPH`: the params, and (ComfyUI workflows, --inputs) the settable node inputs."""
    from .listing import format_params, input_rows, param_rows

    registry = _registry(args)
    doc = _load_document(args, registry)
    if args.json:
        print(json.dumps({"graph": doc.name, "description": doc.description, "params": param_rows(doc),
                          "inputs": input_rows(doc, registry)}, indent=2, default=str))
    else:
        print(format_params(doc, registry, inputs=args.inputs, file=args.file))
    return EXIT_OK


def cmd_graphs(args: argparse.Namespace) -> int:
    """`graphrun graphs`: the graphs shipped with graphrun, with their descriptions and params."""
    from .listing import format_graphs, graph_rows

    print(json.dumps(graph_rows(), indent=2, default=str) if args.json else format_graphs())
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.command import cmd_serve as serve_command  # aiohttp and the server only for this verb
    return serve_command(args, sys.modules[__name__])


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "params": cmd_params,
    "graphs": cmd_graphs,
    "nodes": cmd_nodes,
    "schema": cmd_schema,
    "show": cmd_show,
    "convert": cmd_convert,
    "export": cmd_export,
    "serve": cmd_serve,
}


# ------------------------------------------------------------------ command line


def _normalise_argv(argv: list[str]) -> list[str] | None:
    """The argument list argparse gets: options common to every verb (--plugin FILE, --debug) given before
    the verb move after it, and a first argument that is not a verb means `run`. None when no verb is left
    (`graphrun --debug`). Raises CliError for a mistyped verb."""
    leading: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option = argv[i]
        if option in GLOBAL_FLAGS or option.partition("=")[0] in GLOBAL_VALUE_OPTIONS and "=" in option:
            leading.append(option)
            i += 1
        elif option in GLOBAL_VALUE_OPTIONS and i + 1 < len(argv):
            leading += argv[i : i + 2]
            i += 2
        else:
            break  # -h, or an option of no verb: argparse answers
    rest = argv[i:]
    if not rest:
        return None if leading else rest
    if not rest[0].startswith("-") and rest[0] not in VERBS:
        _check_first_argument(rest[0])
        rest = ["run", *rest]
    if rest[0] in VERBS:
        return [rest[0], *leading, *rest[1:]]
    return leading + rest


def _check_first_argument(word: str) -> None:
    """`graphrun WORD ...` runs WORD as a graph; a WORD that is no file, no shipped graph and close to a verb is
    a mistyped command."""
    from .shipped import shipped_name

    path = Path(word)
    if path.exists() or shipped_name(word) is not None:
        return
    if any(sep in word for sep in "/\\") or path.suffix:
        return  # a path: `run` reports that it does not exist
    close = difflib.get_close_matches(word.lower(), VERBS, n=1, cutoff=0.6)
    if close:
        raise CliError(f"unknown command '{word}'; did you mean '{close[0]}'? (commands: {', '.join(VERBS)})")
    try:
        _graph_path(word)
    except CliError as exc:
        raise CliError(f"{exc}, and '{word}' is not a command either (`graphrun --help` lists them)") from None


def _graph_help(argv: list[str]) -> str | None:
    """`graphrun run GRAPH --help`: the run options, then the graph's params (None: plain argparse help)."""
    if not argv or argv[0] != "run" or not {"-h", "--help"} & set(argv):
        return None
    stripped = [a for a in argv if a not in ("-h", "--help")]
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            args = build_parser().parse_args(stripped)
        path = _graph_path(args.file)
    except (SystemExit, CliError):
        return None
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        build_parser().parse_args(["run", "--help"])
    from .comfy_bridge import load_any
    from .listing import format_params
    from .node import RegistryError

    try:
        registry = _registry(args)
        listing = format_params(load_any(path, registry), registry, inputs=False, file=args.file)
    except (GraphError, RegistryError) as exc:
        listing = f"{args.file}: cannot list its params:\n{exc}"
    return help_text.getvalue().rstrip() + "\n\n" + listing


class _NodeTracker:
    """Passes progress events on to the reporter, remembering the node that runs (warnings name it)."""

    def __init__(self, reporter: Callable[[Any], None]) -> None:
        self.reporter = reporter
        self.current: tuple[str, str] | None = None

    def __call__(self, event: Any) -> None:
        if event.kind == "start":
            self.current = (event.node, event.type)
        elif event.kind in ("end", "cached", "error"):
            self.current = None
        self.reporter(event)

    def write(self, text: str) -> None:
        write = getattr(self.reporter, "write", None)
        if write is not None:
            write(text)
        else:
            print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _clean_warnings(tracker: _NodeTracker | None = None) -> Iterator[None]:
    """Python warnings (a LoRA's unmatched keys, a node's ctx.warn) as one line, `warning: node 'x' (Type): ...`,
    without Python's `file.py:123: UserWarning:` prefix and source line; through the progress display when
    one is active, so a bar is not garbled and JSON progress stays JSON."""
    previous = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = " ".join(str(message).split("\n")) if "\n" in str(message) else str(message)
        current = tracker.current if tracker is not None else None
        if current is not None and not text.startswith("node '"):
            text = f"node '{current[0]}' ({current[1]}): {text}"
        if tracker is not None:
            tracker.write(f"warning: {text}")
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        normalised = _normalise_argv(argv)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not normalised:  # `graphrun` alone: short help; no command is a usage error (exit 2), as for argparse
        sys.stderr.write(SHORT_HELP)
        return EXIT_INVALID
    argv = normalised
    graph_help = _graph_help(argv)
    if graph_help is not None:
        print(graph_help)
        return EXIT_OK
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return EXIT_INVALID if exc.code else EXIT_OK
    # Only now: `graphrun --help` and usage errors return above without importing the engine.
    from .context import Interrupted
    from .executor import NodeFailed
    from .node import RegistryError

    debug = getattr(args, "debug", False)
    try:
        with _clean_warnings():
            return COMMANDS[args.verb](args)
    except GraphError as exc:
        _print_diagnostics(exc.diagnostics, getattr(args, "json", False))
        errors = [d for d in exc.diagnostics if d.is_error]
        _json_failed(args, node=errors[0].node if errors else None, error=str(exc),
                     diagnostics=[d.to_json() for d in errors])
        return EXIT_INVALID
    except (RegistryError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        _json_failed(args, error=str(exc))
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
        _json_failed(args, error=f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _json_failed(args: argparse.Namespace, **fields: Any) -> None:
    """With `run --progress json`, end the JSON stream with a `failed` event when the run stopped before its
    own last event (a bad graph, a bad option, a bug)."""
    if getattr(args, "verb", None) != "run" or getattr(args, "progress", None) != "json" or getattr(args, "batch", None):
        return
    if getattr(args, "json_finished", False):
        return
    from .progress import JsonReporter

    JsonReporter().finish("failed", **fields)


if __name__ == "__main__":
    sys.exit(main())
