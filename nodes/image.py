"""Image files in and out: LoadImage, SaveImage, PreviewImage (ComfyUI semantics).

What these nodes promise about files:

* Input images are checked at validation (exit 2, before anything heavy runs): the file exists, is an image
  PIL can decode completely (not corrupt or truncated), and has at most ``GRAPHRUN_MAX_IMAGE_PIXELS`` pixels
  (default 8192 x 8192 = 64 megapixels; a decoded image takes 12 bytes per pixel as a float tensor, so a
  "decompression bomb" PNG of a few kilobytes could otherwise claim many gigabytes).
* Output problems are found at validation too: a ``filename_prefix`` that is empty, absolute, escapes the output
  folder, holds a NUL byte, a name too long for the file system (255 bytes per name, the counter and ``.png``
  included) or a device name Windows reserves; an output folder (``--out``) that is a file, lies under a file or
  cannot be written.
* Each PNG is written to a hidden temporary file ``.graphrun-<pid>-<random>.png.part`` in the target folder, then
  linked to the first free ``prefix_#####_.png`` name: nothing is ever overwritten or left half-written, and the
  file gets the usual permissions (0666 less the umask: 0644 under umask 022). A process killed while saving
  leaves its temporary file behind; the next process to save into that folder deletes such files when they are
  older than itself and no process holds them (their writer keeps them locked) — never any other file.
"""
from __future__ import annotations

import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import CheckEnv, Comfy, Problem, Written, node

from .image_decode import decode_image, uses_pyav, without_pil_bomb_check as _without_pil_bomb_check
from .types import Image, Mask

_BACKEND_TOKENS = ("width", "height", "year", "month", "day", "hour", "minute", "second")

#: Environment variable that sets LoadImage's pixel limit (0 = no limit).
MAX_PIXELS_ENV = "GRAPHRUN_MAX_IMAGE_PIXELS"
#: 8192 x 8192: 64 megapixels in ComfyUI's units (2^20 pixels), below PIL's own bomb warning (89.5 million).
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

# --- LoadImage -----------------------------------------------------------------------------------------------------


class SavedImages(NamedTuple):
    """What SaveImage and PreviewImage pass on: the images they saved (ComfyUI 0.33's ``images``)."""

    images: Image


class LoadedImage(NamedTuple):
    image: Image
    mask: Mask


def _image_candidates(name: str, input_dirs: list[str], graph_dir: Path | None) -> list[Path]:
    """Where an image name may live: as given, in input dirs, in ./input, next to the graph file."""
    candidates = [Path(name).expanduser()] + [Path(d) / name for d in input_dirs] + [Path("input") / name]
    if graph_dir is not None:
        candidates.append(graph_dir / name)
    return list(dict.fromkeys(candidates))  # an absolute name is the same path everywhere: list it once


def max_image_pixels() -> int | None:
    """LoadImage's pixel limit: ``GRAPHRUN_MAX_IMAGE_PIXELS`` (0 = none), else 64 megapixels.

    Raises ValueError naming the variable when it is not a whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels "
                         "(e.g. 150000000; 0 = no limit)") from None
    if value < 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is negative; give a number of pixels (0 = no limit)")
    return value or None


def _frame_count(img: Any) -> int:
    """Frames LoadImage would stack (MPO's extra frames are depth maps and skipped)."""
    if img.format == "MPO":
        return 1
    return int(getattr(img, "n_frames", 1) or 1)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 2**20:.1f} megapixels"


def image_problem(path: Path, limit: int | None, decode: bool = True, pyav: bool = False) -> str | None:
    """Why LoadImage cannot load ``path`` (too many pixels, not an image, corrupt or truncated), or None.

    Reads the header first, so an oversized image is refused before its pixels are decoded; with ``decode`` the
    first frame is then decoded completely, which is what finds truncated and corrupt files. With ``pyav``
    (ComfyUI 0.33's decoder) a file PIL does not read is fine when FFmpeg opens it (EXR, ...).
    """
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        handle = open(path, "rb")
    except OSError as exc:
        return f"cannot read image '{path}': {exc.strerror or exc}"
    try:
        with handle, _without_pil_bomb_check(), PILImage.open(handle) as img:
            width, height = img.size
            frames = _frame_count(img)
            pixels = width * height * frames
            if limit is not None and pixels > limit:
                what = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
                return (f"image '{path}' is {what} ({_megapixels(pixels)}), more than the {_megapixels(limit)} "
                        f"LoadImage accepts (decoded, it would take at least {pixels * 12 / 2**30:.1f} GiB); "
                        f"to allow it, set {MAX_PIXELS_ENV}={pixels} (0 = no limit)")
            if decode:
                img.load()
    except UnidentifiedImageError:
        if pyav:
            from .image_decode import pyav_problem

            return pyav_problem(path, limit)
        return f"'{path}' is not an image file (no format PIL reads: PNG, JPEG, WebP, GIF, BMP, TIFF, ...)"
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        return f"image '{path}' is corrupt or truncated ({exc})"
    return None


def _check_image(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    if "image" not in literals:
        return []  # the name comes from another node: checked when the node runs
    name = literals.get("image", "")
    candidates = _image_candidates(name, env.options.get("input_dirs", []), env.graph_dir)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return [Problem("image", f"image '{name}' not found", "looked in: " + ", ".join(map(str, candidates)))]
    try:
        limit = max_image_pixels()
    except ValueError as exc:
        return [Problem("image", str(exc), "fix or unset the environment variable")]
    problem = image_problem(found, limit, pyav=uses_pyav(env.comfy_version))
    if problem is None:
        return []
    hint = None if MAX_PIXELS_ENV in problem else "give a PNG, JPEG or WebP file that opens in an image viewer"
    return [Problem("image", problem, hint)]


def _resolve_input(ctx: Context, name: str) -> Path:
    graph_file = ctx.graph.document.file if ctx.graph is not None else None
    candidates = _image_candidates(
        name, ctx.options.extra.get("input_dirs", []), Path(graph_file).parent if graph_file else None
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"image '{name}' not found (looked in: {looked})")


@node(
    "LoadImage",
    category="image",
    comfy=Comfy("LoadImage", image_upload=("image",), files={"image": "input"}, display_name="Load Image"),
    check=_check_image,
)
def load_image(ctx: Context, image: Annotated[str, Field(description="image file path")]) -> LoadedImage:
    """Load an image file as IMAGE plus a MASK from its alpha channel (ComfyUI LoadImage).

    ComfyUI 0.33 (the default) decodes through FFmpeg (PyAV): 16-bit PNGs keep their precision,
    JPEG pixels can differ from PIL's by a few levels, rotation metadata (EXIF orientation) turns
    the image in steps of 90 degrees, every frame is stacked into a batch and the mask is
    1 - alpha (palette images included), else zeros 64x64; files FFmpeg decodes no frame of
    (animated WebP) go through PIL. `--comfy 0.18.1` decodes with PIL in 8 bits per channel
    as ComfyUI v0.18.1 did (frames of the first frame's size, EXIF transpose). Images over
    GRAPHRUN_MAX_IMAGE_PIXELS pixels (default 64 megapixels; 0 = no limit) are refused before
    they are decoded, like corrupt or truncated files, at validation.
    """
    path = _resolve_input(ctx, image)
    limit = max_image_pixels()
    pyav = uses_pyav(ctx.comfy_version)
    # The file may have changed since validation (or its name came from another node). FFmpeg decodes a
    # truncated JPEG without complaint, so the PyAV path has PIL decode it completely first.
    problem = image_problem(path, limit, decode=pyav, pyav=pyav)
    if problem is not None:
        raise ValueError(problem)
    decoded = decode_image(path, ctx.comfy_version, limit)
    return LoadedImage(decoded.image, decoded.mask)


# --- file names in the output folder -----------------------------------------------------------------------------

#: The longest name most file systems allow (ext4, XFS, APFS, NTFS: 255 bytes or UTF-16 units).
NAME_MAX = 255
#: The longest path Linux accepts.
PATH_MAX = 4095
#: What SaveImage appends to the prefix's file name: ``_00001_.png``.
_COUNTER_SUFFIX = "_00001_.png"
#: Device names Windows reserves, with or without an extension (ComfyUI users share outputs across systems).
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                       *(f"LPT{i}" for i in range(1, 10))})
_TOKEN_WIDEST = {"width": "16384", "height": "16384", "year": "9999", "month": "12", "day": "31", "hour": "23",
                 "minute": "59", "second": "59"}


def expand_prefix(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Replace %width% %height% %year% %month% %day% %hour% %minute% %second% (ComfyUI backend)."""
    now = now or time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02d}",
        "day": f"{now.tm_mday:02d}",
        "hour": f"{now.tm_hour:02d}",
        "minute": f"{now.tm_min:02d}",
        "second": f"{now.tm_sec:02d}",
    }
    for token in _BACKEND_TOKENS:
        prefix = prefix.replace(f"%{token}%", values[token])
    return prefix


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def prefix_problem(prefix: str) -> tuple[str, str] | None:
    """Why a ``filename_prefix`` (backend tokens not yet expanded) cannot name files inside the output folder:
    ``(message, hint)``, or None when it can."""
    example = "use a relative prefix such as 'zimage' or 'zimage/run1'"
    if not prefix.strip():
        return "filename_prefix is empty, so the images would have no name", example
    if "\0" in prefix:
        return f"filename_prefix {prefix!r} contains a NUL byte, which no file name may hold", example
    if os.path.isabs(prefix) or prefix.startswith("\\") or re.match(r"^[A-Za-z]:[\\/]", prefix):
        return (f"filename_prefix '{_short(prefix)}' is an absolute path; it is relative to the output folder "
                "(--out), and graphrun writes nothing outside it"), example
    if prefix.startswith("~"):
        return (f"filename_prefix '{_short(prefix)}' starts with '~'; it is relative to the output folder (--out) "
                "and '~' is not expanded"), "choose the folder with --out, e.g. --out ~/pictures"
    if prefix.endswith(("/", os.sep)):
        return f"filename_prefix '{_short(prefix)}' ends with '/', so the images would have no name", (
            "add a name after the folder, e.g. 'zimage/run1'")
    widest = prefix.replace("%batch_num%", "9999")
    for token, value in _TOKEN_WIDEST.items():
        widest = widest.replace(f"%{token}%", value)
    normalized = os.path.normpath(widest)
    parts = normalized.split(os.sep)
    if normalized == ".":
        return (f"filename_prefix '{_short(prefix)}' names the output folder itself, so the images would have no "
                "name"), example
    if parts[0] == "..":
        return (f"filename_prefix '{_short(prefix)}' would save outside the output folder (it climbs out with "
                "'..')"), example
    *folders, stem = parts
    for part in folders:
        if _bytes(part) > NAME_MAX:
            return (f"filename_prefix '{_short(prefix)}': the folder name '{_short(part)}' is {_bytes(part)} bytes, "
                    f"more than the {NAME_MAX} file systems allow"), "shorten it"
    file_name = stem + _COUNTER_SUFFIX
    if _bytes(file_name) > NAME_MAX:
        return (f"filename_prefix '{_short(prefix)}': its file name '{_short(stem)}' is {_bytes(stem)} bytes; with "
                f"SaveImage's counter ('{_COUNTER_SUFFIX}') that is {_bytes(file_name)}, more than the {NAME_MAX} "
                "file systems allow"), f"shorten the name to at most {NAME_MAX - len(_COUNTER_SUFFIX)} bytes"
    for part in (*folders, file_name):
        if part.split(".")[0].rstrip(" ").upper() in _RESERVED:
            return (f"filename_prefix '{_short(prefix)}': '{part}' is a device name Windows reserves "
                    "(CON, PRN, AUX, NUL, COM1-9, LPT1-9), so the outputs could not be copied there"
                    ), "choose another name"
    return None


def output_dir_problem(output_dir: Path, subfolder: str = "") -> tuple[str, str] | None:
    """Why files cannot be written to ``output_dir/subfolder``: a file where a folder must be, a folder that
    cannot be written, or a link leading out of the output folder. ``(message, hint)`` or None."""
    out = Path(output_dir).expanduser()
    target = out / subfolder if subfolder else out
    hint = "choose another --out"
    chain = [target, *target.parents]
    for path in chain:
        if not os.path.lexists(path):
            continue
        if not path.is_dir():
            if path == out:
                return f"the output folder --out '{out}' is an existing file, not a folder", hint
            if out in path.parents:
                made = "" if path == target else f" (for '{target}')"
                return f"'{path}' is an existing file, so it cannot be made a folder{made}", (
                    "choose another filename_prefix folder, or move the file")
            return f"the output folder --out '{out}' lies under '{path}', which is a file", hint
        if not os.access(path, os.W_OK | os.X_OK):
            return f"the output folder '{path}' is read-only for this user, so no image can be saved there", hint
        break
    if subfolder:
        base, folder = out.resolve(), target.resolve()
        if os.path.commonpath([base, folder]) != str(base):
            return (f"the output subfolder '{target}' leads to '{folder}', outside the output folder (a link); "
                    "graphrun writes nothing outside --out"), "choose another filename_prefix"
    return None


def _check_save(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    if "filename_prefix" not in literals:
        return []  # the prefix comes from another node: checked when the node runs
    prefix = literals["filename_prefix"]
    found = prefix_problem(prefix)
    if found is not None:
        return [Problem("filename_prefix", *found)]
    output_dir = env.options.get("output_dir")
    if output_dir is None:
        return []
    expanded = os.path.normpath(expand_prefix(prefix, 16384, 16384))
    found = output_dir_problem(Path(output_dir), os.path.dirname(expanded))
    if found is None:
        full = str(Path(output_dir).expanduser().absolute() / expanded) + _COUNTER_SUFFIX
        if _bytes(full) > PATH_MAX:
            found = (f"the files would be named '{_short(full, 60)}', {_bytes(full)} bytes, longer than the "
                     f"{PATH_MAX} a path may have"), "use a shorter filename_prefix or --out"
    return [Problem("filename_prefix", *found)] if found else []


def _check_preview(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    output_dir = env.options.get("output_dir")
    found = output_dir_problem(Path(output_dir), ".preview") if output_dir is not None else None
    return [Problem("images", *found)] if found else []


def save_path(output_dir: Path, prefix: str, width: int, height: int) -> tuple[Path, str, int]:
    """(folder, filename stem, first counter) for a prefix, refusing paths outside output_dir."""
    problem = prefix_problem(prefix)
    if problem is not None:
        raise ValueError(f"{problem[0]}; {problem[1]}")
    prefix = expand_prefix(prefix, width, height)
    output_dir = output_dir.resolve()
    normalized = os.path.normpath(prefix)
    folder = (output_dir / os.path.dirname(normalized)).resolve()
    filename = os.path.basename(normalized)
    if os.path.commonpath([output_dir, folder]) != str(output_dir) or not filename or filename in (".", ".."):
        raise ValueError(
            f"filename_prefix '{prefix}' would save outside the output folder {output_dir}; "
            "use a relative prefix such as 'zimage/run1'"
        )
    pattern = re.compile(re.escape(filename) + r"_(\d+)", re.IGNORECASE)
    counter = 0
    if folder.is_dir():
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                counter = max(counter, int(match.group(1)))
    return folder, filename, counter + 1


# --- writing PNGs ------------------------------------------------------------------------------------------------

#: graphrun's temporary files: ``.graphrun-<pid>-<hex>.png.part`` (and the ``.graphrun-<random>.png.part`` names
#: of earlier versions). Nothing else is ever deleted.
TEMP_FILE = re.compile(r"^\.graphrun-(?:(\d+)-)?[A-Za-z0-9_]+\.png\.part$")
_PROCESS_STARTED = time.time()  # temporary files newer than this may belong to a run going on now
_CLEANED: set[str] = set()
_CLEANED_LOCK = threading.Lock()


def _lock(fd: int) -> bool:
    """Take an exclusive advisory lock without waiting; True when taken (or when the OS has no flock)."""
    try:
        import fcntl
    except ImportError:  # Windows: an open file cannot be deleted there anyway
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def clean_stale_temp_files(folder: Path) -> list[Path]:
    """Delete graphrun's temporary files left in ``folder`` by killed processes; returns what was deleted.

    A file goes only when its name is graphrun's (:data:`TEMP_FILE`), it is a plain file older than this process,
    the process named in it is gone, and no one holds its lock (a writer locks its file until it is done).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_FILE.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_file(follow_symlinks=False) or info.st_mtime >= _PROCESS_STARTED:
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if _lock(fd):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _clean_once(folder: Path) -> None:
    key = str(folder.resolve())
    with _CLEANED_LOCK:
        if key in _CLEANED:
            return
        _CLEANED.add(key)
    clean_stale_temp_files(folder)


def _open_temp(folder: Path) -> tuple[int, Path]:
    """A new locked temporary file in ``folder``, created with mode 0666 less the umask (as any tool would)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = folder / f".graphrun-{os.getpid()}-{secrets.token_hex(6)}.png.part"
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        _lock(fd)
        return fd, path


def write_png_exclusive(
    pixels: Any, folder: Path, filename: str, counter: int, info: Any, compress_level: int
) -> tuple[Path, int]:
    """Write atomically under the first free ``filename_#####_.png`` name; never overwrite."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    _clean_once(folder)
    fd, tmp = _open_temp(folder)
    handle = os.fdopen(fd, "wb")
    try:
        PILImage.fromarray(pixels).save(handle, format="PNG", pnginfo=info, compress_level=compress_level)
        handle.flush()
        while True:
            target = folder / f"{filename}_{counter:05d}_.png"
            try:
                os.link(tmp, target)  # atomic and fails if the name exists: never overwrites
                return target, counter
            except FileExistsError:
                counter += 1
            except OSError:  # filesystems without hard links
                if not target.exists():
                    os.replace(tmp, target)
                    return target, counter
                counter += 1
    finally:
        tmp.unlink(missing_ok=True)
        handle.close()  # after the unlink: the lock tells cleaners the file is in use until it is gone


# --- SaveImage / PreviewImage ------------------------------------------------------------------------------------


def to_uint8(image: Any):
    """ComfyUI's pixel conversion: clip(255 * x) truncated to uint8 (not rounded)."""
    import numpy as np

    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def _workflow_registry(graph: Any) -> Any:
    """The built-in node types plus the graph's own (plugins): what the UI workflow needs widget orders from."""
    from graphrun.engine.node import builtin_registry

    registry = builtin_registry().copy()
    for bound in graph.nodes.values():
        if bound.spec.name not in registry:
            registry.add(bound.spec)
    return registry


def _metadata(ctx: Context) -> Any:
    """PNG text chunks: `prompt` (the graph as a ComfyUI API prompt), `workflow` (the same as a ComfyUI UI
    workflow, so the image opens in ComfyUI's editor) and `graphrun` (the graph document, the params used and the
    ComfyUI version the run followed, `comfy`: `graphrun IMAGE.png --set ...` re-runs it with its params)."""
    from PIL.PngImagePlugin import PngInfo

    from graphrun.engine.comfy.api_to_ui import api_to_ui
    from graphrun.engine.comfy.export import graph_to_api
    from graphrun.engine.comfy.png import GRAPHRUN_CHUNK, graphrun_record, png_info_for

    graph = ctx.graph
    if graph is None:
        return PngInfo()
    prompt = graph_to_api(graph)  # nodes without a ComfyUI counterpart keep graphrun's type: no notice here
    try:
        workflow = api_to_ui(prompt, _workflow_registry(graph))
    except Exception as exc:  # noqa: BLE001 - a layout problem must never cost the user the image
        ctx.warn(f"the PNG gets no ComfyUI 'workflow' chunk ({type(exc).__name__}: {exc})")
        workflow = None
    record = graphrun_record(graph.document.raw, graph.params, ctx.comfy_version)
    return png_info_for(prompt, workflow, {GRAPHRUN_CHUNK: record})


@node(
    "SaveImage",
    category="image",
    output=True,
    comfy=Comfy("SaveImage", inputs={"images": "images", "filename_prefix": "filename_prefix"},
                display_name="Save Image", outputs_since="0.33"),
    check=_check_save,
)
def save_image(
    ctx: Context,
    images: Image,
    filename_prefix: Annotated[
        str, Field(description="file name prefix, may contain subfolders and %width% %height% %year% ...")
    ] = "ComfyUI",
) -> Written[SavedImages]:
    """Save images as PNG in the output folder (`--out`) like ComfyUI: prefix_00001_.png, ...

    The counter continues after existing files; each file is written atomically, never
    overwrites anything and gets the usual permissions (0644 under umask 022). The PNG carries
    the graph as ComfyUI's `prompt` and `workflow` chunks (it opens in ComfyUI) and as graphrun's
    own chunk with the params used (`graphrun IMAGE.png --set seed=5` re-runs it). A prefix
    that leaves the output folder, is empty or too long is an error at validation.
    Outputs the images unchanged, as ComfyUI 0.33's SaveImage does, so a graph can go on after saving.
    """
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    folder, filename, counter = save_path(ctx.output_dir, filename_prefix, width, height)
    info = _metadata(ctx)
    written = []
    for index in range(batch):
        name = filename.replace("%batch_num%", str(index))
        path, counter = write_png_exclusive(to_uint8(images[index]), folder, name, counter, info, compress_level=4)
        counter += 1
        written.append(path)
        ctx.progress(index + 1, batch)
    return Written(SavedImages(images), written)


@node(
    "PreviewImage",
    category="image",
    output=True,
    comfy=Comfy("PreviewImage", display_name="Preview Image", outputs_since="0.33"),
    check=_check_preview,
)
def preview_image(ctx: Context, images: Image) -> Written[SavedImages]:
    """Save images to a temporary preview folder (`<out>/.preview`), not the outputs; outputs the images
    unchanged (ComfyUI 0.33)."""
    folder = ctx.output_dir / ".preview"
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    written = []
    for index in range(images.shape[0]):
        path, _ = write_png_exclusive(to_uint8(images[index]), folder, f"preview_{suffix}", 1, None, compress_level=1)
        written.append(path)
    return Written(SavedImages(images), written)
