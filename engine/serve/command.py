"""The ``graphrun serve`` command: its options, their checks, and starting the server.

Kept apart from :mod:`graphrun.engine.cli` so the CLI's module stays about its other verbs; nothing here
imports aiohttp until the command runs (``graphrun --help`` lists the verb without it).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

AddOptions = Callable[[argparse.ArgumentParser], None]


def add_serve_parser(sub: Any, add_model_paths: AddOptions, add_common: AddOptions) -> None:
    """The ``serve`` verb's parser (``sub``: the CLI's subparsers)."""
    p = sub.add_parser(
        "serve", help="serve ComfyUI's HTTP/WebSocket API (and its web editor) on graphrun's engine",
        description="Serve ComfyUI's API: POST /prompt, /ws, /history, /view, /object_info, ... Clients written for "
        "ComfyUI work unchanged. Binds to 127.0.0.1 unless --listen is given.",
    )
    p.add_argument("--host", default=None, metavar="ADDRESS", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8188, help="port (default 8188, as ComfyUI; 0 picks a free one)")
    p.add_argument(
        "--listen", nargs="?", const="0.0.0.0", metavar="ADDRESS",
        help="accept connections from other machines (default address 0.0.0.0); pair it with --token",
    )
    p.add_argument("--token", metavar="TOKEN",
                   help="require 'Authorization: Bearer TOKEN' on every request (default: $GRAPHRUN_SERVE_TOKEN)")
    add_model_paths(p)
    p.add_argument("--out", default="output", metavar="DIR", help="output folder (default: ./output)")
    p.add_argument("--input-dir", default="input", metavar="DIR", help="input folder for uploads (default: ./input)")
    p.add_argument("--user-dir", default="user", metavar="DIR", help="what the web editor saves (default: ./user)")
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: CUDA when available)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="model dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--comfy", metavar="VERSION", help="ComfyUI version whose behaviour to follow: 0.33 (default), 0.18.1 or 2025.10")
    p.add_argument("--max-queue", type=int, default=100, metavar="N", help="pending prompts accepted (default 100)")
    p.add_argument("--max-upload-mb", type=float, default=100, metavar="MB",
                   help="largest request body or upload (default 100 MB, as ComfyUI)")
    p.add_argument("--no-editor", action="store_true", help="do not serve ComfyUI's web editor at /")
    p.add_argument("--front-end-root", metavar="DIR",
                   help="serve the editor from this static folder of a comfyui-frontend-package (another version "
                   "than the installed one, e.g. 1.49.6, the one ComfyUI 0.33 pins)")
    add_common(p)


def cmd_serve(args: argparse.Namespace, cli: Any) -> int:
    """`graphrun serve`: ComfyUI's API on graphrun (see :mod:`graphrun.engine.serve`). ``cli`` is the running
    CLI module (its usage error and option checks; passed in, since it may run as ``__main__``)."""
    CliError, EXIT_OK = cli.CliError, cli.EXIT_OK
    _check_comfy, _check_device, _registry = cli._check_comfy, cli._check_device, cli._registry

    if importlib.util.find_spec("aiohttp") is None:
        raise CliError("graphrun serve needs aiohttp: pip install 'graphrun[serve]' (or 'graphrun[ui]' for the editor)")
    from graphrun.nodes.model_files import ModelPathsError, check_model_paths

    from . import ServerConfig
    from .run import LOOPBACK, serve

    if args.host and args.listen:
        raise CliError("give --host ADDRESS or --listen [ADDRESS], not both")
    host = args.listen or args.host or "127.0.0.1"
    if args.host and host not in LOOPBACK:
        raise CliError(f"--host {host} accepts connections from other machines; say so with --listen {host}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: give a port from 0 to 65535")
    if args.max_queue < 1:
        raise CliError(f"--max-queue {args.max_queue}: give 1 or more")
    if args.max_upload_mb <= 0:
        raise CliError(f"--max-upload-mb {args.max_upload_mb}: give a size above 0")
    try:
        check_model_paths(list(args.models_dir), args.extra_model_paths)
    except ModelPathsError as exc:
        raise CliError(str(exc)) from None
    _check_device(args.device)
    for flag, folder in (("--out", args.out), ("--input-dir", args.input_dir), ("--user-dir", args.user_dir)):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise CliError(f"{flag} {folder}: is a file, not a folder")
    frontend = None
    if args.front_end_root:
        from .editor import check_frontend_root

        try:
            frontend = check_frontend_root(Path(args.front_end_root))
        except ValueError as exc:
            raise CliError(f"--front-end-root: {exc}") from None
    config = ServerConfig(
        host=host, port=args.port, out_dir=Path(args.out), input_dir=Path(args.input_dir),
        user_dir=Path(args.user_dir), models_dirs=list(args.models_dir), extra_model_paths=args.extra_model_paths,
        plugins=list(args.plugin or []), device=args.device, dtype=args.dtype, comfy=_check_comfy(args.comfy),
        token=args.token or os.environ.get("GRAPHRUN_SERVE_TOKEN") or None, max_queue=args.max_queue,
        max_body_bytes=int(args.max_upload_mb * 1024 * 1024), editor=not args.no_editor, frontend_root=frontend,
    )
    try:
        serve(config, _registry(args))
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise CliError(f"cannot listen on {host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK
