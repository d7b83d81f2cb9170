"""How a node type is declared, and the registry that holds node types.

A node type is a plain Python function decorated with :func:`node`. Its signature is the
declaration: parameters annotated with a :class:`Socket` subclass are link-only inputs,
parameters annotated with ``int``/``float``/``str``/``bool``/``Literal[...]`` (optionally
wrapped in ``Annotated[..., Field(...)]`` for ranges and descriptions) are primitive inputs
that take literals, ``$params`` or links. ``Annotated[str, Choices(provider)]`` is a choice
list that follows a registry: ``provider()`` is asked for the current values whenever the
input is validated, described or put in a schema (so plugins can add values). The return
annotation gives the outputs: one type, or a ``NamedTuple`` for several. An output node (``output=True``)
that also passes a value on returns ``Written[T]``: the value its output sockets carry plus the files it
wrote (ComfyUI 0.33's SaveImage outputs its images). The docstring is the help text users read with
``graphrun nodes NAME``.

This module must not import torch: validation and conversion run without it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Callable, ClassVar, Generic, Iterable, Literal, TypeVar, get_args, get_origin

from pydantic import AfterValidator, TypeAdapter
from pydantic.fields import FieldInfo

from .context import Context

ENTRY_POINT_GROUP = "graphrun.nodes"


class Socket:
    """Base class of link-only value types (MODEL, LATENT, ...). Values are never literals."""

    type_name: ClassVar[str] = "*"


class AnyValue(Socket):
    """Accepts a link from any output (display-only nodes)."""

    type_name = "*"


PRIMITIVE_NAMES: dict[type, str] = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}


REQUIRED: Any = inspect.Parameter.empty

T = TypeVar("T")


@dataclass(frozen=True)
class Written(Generic[T]):
    """What an output node returns when it also has outputs: ``value`` goes to its output sockets (one
    value, or a tuple for several), ``files`` are the paths it wrote, reported as every output node's
    files are. Annotate the node ``-> Written[Image]``."""

    value: T
    files: list[Path]


@dataclass(frozen=True)
class Choices:
    """A choice list read when it is used, not when the node is declared.

    Write ``Annotated[str, Choices(provider)]``: ``provider()`` returns the values allowed right now
    (for example the names in a registry that plugins add to), in the order users should see them.
    Validation, ``graphrun nodes``, the JSON Schema and ComfyUI import all ask it at the time they
    run, after plugins are loaded. The provider must be cheap and import nothing heavy: validation
    calls it.
    """

    provider: Callable[[], Iterable[Any]]

    def __call__(self) -> tuple[Any, ...]:
        return tuple(self.provider())


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type."""

    name: str
    type_name: str  # MODEL, LATENT, ... for sockets; INT, FLOAT, STRING, BOOLEAN, COMBO for primitives
    socket: bool
    annotation: Any  # the python annotation used for validation (primitives only)
    default: Any = REQUIRED
    optional: bool = False  # a socket input that may be left unconnected
    description: str = ""
    fixed_choices: tuple[Any, ...] = ()  # the values of a Literal[...] annotation
    constraints: dict[str, Any] = field(default_factory=dict)
    live_choices: Choices | None = None  # a Choices provider, asked each time the choices are used

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and not self.optional

    @property
    def choices(self) -> tuple[Any, ...]:
        """The values this input accepts (empty: any value of its type); a live list is read now."""
        return self.live_choices() if self.live_choices is not None else self.fixed_choices

    def adapter(self) -> TypeAdapter:
        """Validates a value; for live choices, against the choices as they are now."""
        if self.live_choices is None:
            return _adapter(self.annotation)
        return _adapter(_with_current_choices(self.annotation, self.choices))


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type_name: str


@dataclass(frozen=True)
class Comfy:
    """The ComfyUI class_type a node type stands for.

    ``inputs`` renames graphrun input names to ComfyUI ones (``{"latent": "latent_image"}``);
    ``fixed`` gives values of graphrun inputs that the ComfyUI node implies (``EmptyLatentImage``
    is ``EmptyLatent`` with ``channels=4``); ``widgets`` overrides the widget order (ComfyUI names,
    defaults to the primitive inputs in declaration order); ``control_after_generate`` names the
    widgets after which the UI stores an extra "control after generate" value. ``files`` names, per
    input, the ComfyUI folder whose file names it takes (``{"unet_name": "diffusion_models"}``; ``"input"``
    for images uploaded to the server): ``graphrun serve`` offers those files as the input's choices.

    What ComfyUI's editor shows of the node (``graphrun serve``'s ``/object_info``), where it is not graphrun's:
    ``display_name`` and ``category`` (ComfyUI's title and node library folder; empty: the class_type and the
    node's category); ``outputs``, the graphrun outputs the ComfyUI node has (a leading part of the node's
    outputs, so output slots number the same on both sides; None: all); ``optional``, the ComfyUI inputs in
    ComfyUI's optional section (None: graphrun's optional sockets); ``input_order``, ComfyUI's order of the
    inputs, which places the sockets among the widgets (widgets keep the widget order); ``options``, widget
    options that only change the editor (``step``, ``round``, ``advanced``); ``choices``, the values the editor
    offers for a text input graphrun takes as free text. ComfyUI names throughout. ``outputs_since``: the
    ComfyUI version (a ``comfy`` setting) from which the ComfyUI node has its outputs (SaveImage: "0.33");
    under older settings links from them are refused, as that ComfyUI refuses them.
    """

    class_type: str
    inputs: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    widgets: tuple[str, ...] | None = None
    control_after_generate: tuple[str, ...] = ()
    image_upload: tuple[str, ...] = ()
    dynamic_prompts: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # ComfyUI input name -> ComfyUI folder name
    display_name: str = ""
    category: str = ""
    outputs: tuple[str, ...] | None = None  # graphrun output names
    optional: tuple[str, ...] | None = None
    input_order: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # ComfyUI input name -> widget options
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # ComfyUI input name -> offered values
    outputs_since: str = ""

    def comfy_name(self, ours: str) -> str:
        return self.inputs.get(ours, ours)

    def our_name(self, theirs: str) -> str:
        for ours, name in self.inputs.items():
            if name == theirs:
                return ours
        return theirs


@dataclass(frozen=True)
class CheckEnv:
    """What a node's pre-run ``check`` may consult: where the graph file lives, the run's
    file-search settings and the ComfyUI version it follows. Checks must be cheap (no model loading)."""

    graph_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    comfy_version: str = ""
    """The run's ``comfy`` option as given (``--comfy``); validation replaces it with the version the run
    follows (the option, else the graph's ``comfy:``, else the default), so checks see a canonical name."""


@dataclass(frozen=True)
class Problem:
    """A problem a node's ``check`` found in its literal inputs."""

    input: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    """Everything the engine knows about a node type."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    category: str
    doc: str
    version: int = 1
    output: bool = False  # an output node: the plan runs what feeds it
    cacheable: bool = True
    keep: bool = False  # results stay in the runner's cache beyond the byte budget (loaded models)
    comfy: tuple[Comfy, ...] = ()
    context_param: str | None = None  # the parameter that receives the run Context
    check: Callable[[dict[str, Any], "CheckEnv"], list["Problem"]] | None = None  # cheap pre-run checks
    origin: str = ""
    batch: Callable[[list[dict[str, Any]]], list[Any]] | None = None  # several rows in one call (see node())

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output_named(self, name: str) -> OutputSpec | None:
        for out in self.outputs:
            if out.name == name:
                return out
        return None

    @property
    def summary(self) -> str:
        first_paragraph = self.doc.strip().split("\n\n")[0]
        return " ".join(line.strip() for line in first_paragraph.splitlines())


class NodeDeclarationError(TypeError):
    """A node type's declaration is malformed (a bug in the node's code, not in a graph)."""


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(annotation: Any) -> TypeAdapter:
    try:
        return _ADAPTERS[annotation]
    except (KeyError, TypeError):
        adapter = TypeAdapter(annotation)
        try:
            _ADAPTERS[annotation] = adapter
        except TypeError:
            pass
        return adapter


def _no_choices(value: Any) -> Any:
    raise ValueError("no values are available for this input (its registry is empty)")


def _with_current_choices(annotation: Any, choices: tuple[Any, ...]) -> Any:
    """``Annotated[str, Choices(...), Field(...)]`` -> ``Annotated[Literal[<choices now>], Field(...)]``."""
    base, extras = annotation, ()
    if get_origin(annotation) is Annotated:
        base, *rest = get_args(annotation)
        extras = tuple(e for e in rest if not isinstance(e, Choices))
    allowed: Any = Literal[choices] if choices else Annotated[base, AfterValidator(_no_choices)]
    return Annotated[(allowed, *extras)] if extras else allowed


def _is_socket(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Socket)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _primitive_name(tp: Any) -> tuple[str, tuple[Any, ...]] | None:
    if tp in PRIMITIVE_NAMES:
        return PRIMITIVE_NAMES[tp], ()
    if get_origin(tp) is Literal:
        return "COMBO", tuple(get_args(tp))
    return None


def _constraints(info: FieldInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if info is None:
        return out
    for meta in info.metadata:
        for key in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"):
            value = getattr(meta, key, None)
            if value is not None:
                out[key] = value
    return out


def _input_spec(fn_name: str, param: inspect.Parameter, hint: Any) -> InputSpec:
    info: FieldInfo | None = None
    live: Choices | None = None
    base = hint
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        for extra in extras:
            if isinstance(extra, FieldInfo):
                info = extra
            elif isinstance(extra, Choices):
                live = extra
    base, optional = _strip_optional(base)
    description = (info.description if info and info.description else "") or ""
    default = param.default
    if _is_socket(base):
        if default not in (REQUIRED, None):
            raise NodeDeclarationError(f"{fn_name}: socket input {param.name!r} can only default to None")
        return InputSpec(param.name, base.type_name, True, base, REQUIRED, optional or default is None, description)
    if live is not None:
        if base not in (str, int) or optional:
            raise NodeDeclarationError(
                f"{fn_name}: input {param.name!r}: Choices(...) annotates str or int, not {hint!r}"
            )
        return InputSpec(
            param.name, "COMBO", False, hint, default, False, description,
            constraints=_constraints(info), live_choices=live,
        )
    prim = _primitive_name(base)
    if prim is None:
        raise NodeDeclarationError(
            f"{fn_name}: input {param.name!r} has annotation {hint!r}; use a Socket subclass, "
            "int, float, str, bool, Literal[...] or Annotated[str, Choices(...)]"
        )
    type_name, choices = prim
    annotation = hint if not optional else base
    return InputSpec(
        param.name, type_name, False, annotation, default, False, description,
        fixed_choices=choices, constraints=_constraints(info),
    )


def _is_named_tuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _output_specs(fn_name: str, hint: Any) -> tuple[OutputSpec, ...]:
    if hint is None or hint is type(None) or hint is inspect.Signature.empty:
        return ()
    if _is_named_tuple(hint):
        hints = typing.get_type_hints(hint)
        return tuple(OutputSpec(name, _output_type(fn_name, hints[name])) for name in hint._fields)
    return (OutputSpec(_output_type(fn_name, hint).lower(), _output_type(fn_name, hint)),)


def _output_type(fn_name: str, tp: Any) -> str:
    if _is_socket(tp):
        return tp.type_name
    prim = _primitive_name(tp)
    if prim is None:
        raise NodeDeclarationError(f"{fn_name}: output annotation {tp!r} is not a socket or primitive type")
    return prim[0]


def node(
    name: str,
    *,
    category: str,
    comfy: Comfy | str | tuple[Comfy | str, ...] = (),
    version: int = 1,
    output: bool = False,
    cacheable: bool | None = None,
    keep: bool = False,
    check: Callable[[dict[str, Any], CheckEnv], list[Problem]] | None = None,
    batch: Callable[[list[dict[str, Any]]], list[Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a node type. See the module docstring for the conventions.

    ``output=True`` marks an output node (SaveImage, ...): the plan runs whatever feeds output
    nodes, and output nodes run on every call (they have effects). ``cacheable=False`` opts a
    non-deterministic node out of caching. ``keep=True`` keeps the results in the runner across
    runs regardless of the byte budget (model loaders). ``version`` enters the cache key: bump
    it when the node's behaviour changes. ``check(literals, env)`` runs during validation and
    returns :class:`Problem` records (e.g. a missing file), so they are reported before anything
    heavy runs. ``batch(calls)`` makes the node batchable: given the keyword arguments of several
    rows of a batch (one dict per row, as the node function would get them), it returns each row's
    result, computed together (one forward for all rows); it may raise ValueError when these rows
    cannot go together (the engine then runs them one by one).
    """
    comfys = comfy if isinstance(comfy, tuple) else (comfy,)
    comfy_specs = tuple(Comfy(c) if isinstance(c, str) else c for c in comfys)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        inputs: list[InputSpec] = []
        context_param = None
        for param in inspect.signature(fn).parameters.values():
            hint = hints.get(param.name, Any)
            if hint is Context:
                context_param = param.name
                continue
            if param.name in ("type", "description"):
                raise NodeDeclarationError(
                    f"{name}: input name {param.name!r} is reserved by the graph format; rename it "
                    "(a Comfy(inputs=...) mapping can keep ComfyUI's name)"
                )
            inputs.append(_input_spec(fn.__name__, param, hint))
        returns = hints.get("return", None)
        if output and get_origin(returns) is Written:
            returns = get_args(returns)[0]
        elif output and not (_is_socket(returns) or _primitive_name(returns) or _is_named_tuple(returns)):
            returns = None  # an output node's result (e.g. written paths) is reported, not linked
        outputs = _output_specs(fn.__name__, returns)
        spec = NodeSpec(
            name=name,
            fn=fn,
            inputs=tuple(inputs),
            outputs=outputs,
            category=category,
            doc=inspect.cleandoc(fn.__doc__ or ""),
            version=version,
            output=output,
            cacheable=(not output) if cacheable is None else cacheable,
            keep=keep,
            comfy=comfy_specs,
            context_param=context_param,
            check=check,
            batch=batch,
            origin=f"{fn.__module__}.{fn.__qualname__}",
        )
        for comfy_spec in comfy_specs:
            for ours in list(comfy_spec.inputs) + list(comfy_spec.fixed):
                if spec.input(ours) is None:
                    raise NodeDeclarationError(f"{name}: comfy mapping names unknown input {ours!r}")
            for theirs in comfy_spec.files:
                if spec.input(comfy_spec.our_name(theirs)) is None:
                    raise NodeDeclarationError(
                        f"{name}: comfy mapping {comfy_spec.class_type!r} lists files for unknown input {theirs!r}"
                    )
        if comfy_specs:
            from .comfy.specs import check_mapping  # here, not at the top: specs imports this module

            for comfy_spec in comfy_specs:
                check_mapping(spec, comfy_spec)
        fn.__graphrun_node__ = spec  # type: ignore[attr-defined]
        return fn

    return decorate


class RegistryError(Exception):
    """A node type could not be registered (name clash, broken plugin)."""


class Registry:
    """The node types available to a graph, by name."""

    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._comfy: dict[str, tuple[NodeSpec, Comfy]] | None = None  # comfy_index, built once per change

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda s: (s.category, s.name)))

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> NodeSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def add(self, spec: NodeSpec) -> None:
        self._comfy = None
        existing = self._specs.get(spec.name)
        if existing is not None and existing is not spec:
            raise RegistryError(
                f"node type {spec.name!r} is defined twice: by {existing.origin} and by {spec.origin}; "
                "rename one of them"
            )
        self._specs[spec.name] = spec

    def add_module(self, module: ModuleType) -> int:
        """Register every node declared in ``module``; returns how many were added."""
        count = 0
        for value in vars(module).values():
            spec = getattr(value, "__graphrun_node__", None)
            if isinstance(spec, NodeSpec) and getattr(value, "__module__", None) == module.__name__:
                self.add(spec)
                count += 1
        return count

    def load_plugin_file(self, path: str | Path) -> int:
        """Import a plugin from a ``.py`` file and register its nodes."""
        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"plugin file {path} does not exist")
        module_name = f"graphrun_plugin_{path.stem}_{abs(hash(str(path.resolve()))):x}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RegistryError(f"plugin file {path} cannot be imported (is it a .py file?)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a broken plugin must name itself, not crash the CLI
            sys.modules.pop(module_name, None)
            raise RegistryError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
        for value in vars(module).values():
            node_spec = getattr(value, "__graphrun_node__", None)
            if isinstance(node_spec, NodeSpec):
                object.__setattr__(node_spec, "origin", f"{path}:{node_spec.fn.__name__}")
        return self.add_module(module)

    def load_entry_points(self) -> None:
        """Register node modules that installed packages expose under ``graphrun.nodes``."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = ep.load()
            except Exception as exc:
                raise RegistryError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(module, ModuleType):
                raise RegistryError(f"plugin {ep.name!r} ({ep.value}) must name a module")
            self.add_module(module)

    def copy(self) -> "Registry":
        other = Registry()
        other._specs = dict(self._specs)
        return other

    def comfy_index(self) -> dict[str, tuple[NodeSpec, Comfy]]:
        """ComfyUI class_type -> (node type, mapping)."""
        return dict(self._comfy_table())

    def comfy_spec(self, class_type: str) -> tuple[NodeSpec, Comfy] | None:
        """The node type (and mapping) standing for a ComfyUI class_type, or None."""
        return self._comfy_table().get(class_type)

    def _comfy_table(self) -> dict[str, tuple[NodeSpec, Comfy]]:
        if self._comfy is None:  # validation asks once per unknown node type: build the table once
            index: dict[str, tuple[NodeSpec, Comfy]] = {}
            for spec in self._specs.values():
                for comfy in spec.comfy:
                    index.setdefault(comfy.class_type, (spec, comfy))
            self._comfy = index
        return self._comfy


_DEFAULT: Registry | None = None


def builtin_registry() -> Registry:
    """The built-in node library plus installed plugins (loaded once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        registry = Registry()
        from graphrun import nodes as builtin

        for module_name in builtin.MODULES:
            registry.add_module(importlib.import_module(module_name))
        registry.load_entry_points()
        _DEFAULT = registry
    return _DEFAULT


def make_registry(plugins: list[str | Path] = (), builtins: bool = True) -> Registry:
    """A registry with the built-ins (optional) and the given plugin files."""
    registry = builtin_registry().copy() if builtins else Registry()
    for path in plugins:
        registry.load_plugin_file(path)
    return registry
