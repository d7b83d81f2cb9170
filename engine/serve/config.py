"""Settings of ``graphrun serve``: where it listens, which folders it reads and writes, its limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    """Everything a server needs; the CLI fills it from ``graphrun serve`` options.

    The server writes only under ``out_dir`` (images; previews under ``out_dir/.preview``, ComfyUI's
    "temp" type), ``input_dir`` (uploads) and ``user_dir`` (what the web editor saves).
    """

    host: str = "127.0.0.1"
    port: int = 8188
    out_dir: Path = Path("output")
    input_dir: Path = Path("input")
    user_dir: Path = Path("user")
    models_dirs: list[str] = field(default_factory=list)
    extra_model_paths: str | None = None
    plugins: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    comfy: str = ""
    token: str | None = None  # bearer token required on every route and the WebSocket (None: no check)
    max_queue: int = 100  # pending prompts accepted before POST /prompt answers 503
    max_body_bytes: int = 100 * 1024 * 1024  # request bodies and uploads (ComfyUI's default: 100 MiB)
    max_history: int = 10_000  # ComfyUI keeps as many
    editor: bool = True  # serve ComfyUI's web editor at / when comfyui-frontend-package is installed
    frontend_root: Path | None = None  # the editor's static folder to serve instead of the installed package's

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.input_dir = Path(self.input_dir)
        self.user_dir = Path(self.user_dir)
        self.models_dirs = [str(d) for d in self.models_dirs]
        self.frontend_root = Path(self.frontend_root) if self.frontend_root is not None else None

    @property
    def temp_dir(self) -> Path:
        """ComfyUI's "temp" folder: where PreviewImage writes."""
        return self.out_dir / ".preview"
