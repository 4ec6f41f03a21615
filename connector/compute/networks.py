"""Turning a checked model package into a runnable model, without running anything a team wrote.

framework "monai": the connector builds an allow-listed class of `monai.networks.nets` itself from
the manifest's parameters (names checked against the class signature, values bounded, size
capped by counting parameters on PyTorch's `meta` device before any memory is allocated), then
fills it from a safetensors file, which holds only tensors, with `load_state_dict(strict=True)`.

framework "torchscript": the archive is a zip whose member names must be canonical and distinct
even ignoring case (PyTorch's zip reader finds members case-insensitively), each of a kind a
TorchScript archive holds. Its pickles are scanned opcode by opcode before `torch.jit.load` sees
it; any import outside the few names TorchScript's tensor format uses (the way a pickle would reach
`os.system` or `builtins.eval`) refuses it. Its code text is scanned as a first gate (operators that
read or write files or print, methods that run while loading); the real check comes after loading:
every compiled graph is held against an allow-list of operators (connector.compute.torchscript_graph).

This module never calls `torch.load` (with or without weights_only), never unpickles with Python's
`pickle`, never imports a name taken from a package, and runs a model only in `dry_run`, on zeros.
"""

from __future__ import annotations

import inspect
import io
import math
import pickletools
import re
from dataclasses import dataclass
from typing import Any, get_args

import monai.networks.nets
import safetensors.torch
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from connector.compute.manifest import AllowedNetwork, Manifest
from connector.compute.package import (
    ArchiveLimits,
    ModelPackage,
    PackageError,
    name_key,
    open_archive,
    read_member,
    shown,
)
from connector.compute.torchscript_graph import check_graph

ALLOWED_NETWORKS: dict[str, type[nn.Module]] = {
    name: getattr(monai.networks.nets, name) for name in get_args(AllowedNetwork)
}
# ResNet names its input channels differently from the other networks.
_IN_CHANNELS = {"ResNet": "n_input_channels"}
# Parameters that would make the network fetch or read weights from outside the package.
FORBIDDEN_PARAMETERS = {
    "pretrained": "would load weights from outside the package (a download or a file path)",
    "progress": "belongs to downloading pretrained weights, which packages may not do",
    "pretrained_path": "would load weights from outside the package",
}

# Bounds on parameter values, checked before anything is built: enough for every published
# configuration of these networks, far below what would take a machine down while being built.
MAX_INT_PARAMETER = 4096
MAX_LIST_LENGTH = 16
MAX_LIST_SUM = 4096
MAX_FLOAT_PARAMETER = 1e6
MAX_STRING_PARAMETER = 64
# Depth parameters multiply layers, and building thousands of layers takes long even on `meta`:
# the deepest published configurations (DenseNet264, ResNet200, Swin-L) stay far below these.
DEPTH_PARAMETERS = frozenset(
    {"block_config", "layers", "depths", "blocks_down", "blocks_up", "num_res_units"}
)
MAX_DEPTH_ITEM = 64
MAX_DEPTH_SUM = 256
MAX_MODULES = 20_000
# SwinUNETR (feature size 48) has 62 M parameters; a package may carry up to 150 M.
DEFAULT_MAX_PARAMETERS = 150_000_000
# The dry run's zero input: a 512 x 512 x 512 volume is the largest a job may ask for.
MAX_INPUT_VOXELS = 512**3
_MAX_SHOWN_KEYS = 8

# TorchScript archives: one file per tensor, so many members, but nothing larger than a package.
TORCHSCRIPT_LIMITS = ArchiveLimits(
    max_archive_bytes=768 << 20,
    max_members=20_000,
    max_member_bytes=768 << 20,
    max_total_bytes=800 << 20,
)
MAX_PICKLE_BYTES = 64 << 20
MAX_CODE_BYTES = 16 << 20

# What TorchScript's pickles may name. TorchScript's own loader resolves these natively (tensor
# rebuilding, typed lists, ordered dicts); `__torch__.*` are classes compiled from the archive's
# TorchScript code, not Python imports. Everything else (os, posix, builtins, subprocess,
# importlib, torch.* functions) is how a pickle runs code, and is refused.
_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch.jit._pickle", "build_intlist"),
        ("torch.jit._pickle", "build_doublelist"),
        ("torch.jit._pickle", "build_boollist"),
        ("torch.jit._pickle", "build_tensorlist"),
        ("torch.jit._pickle", "build_tensor_from_id"),
        ("torch.jit._pickle", "restore_type_tag"),
        ("torch", "device"),
    }
)
_STORAGE_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,30}Storage")
_TORCHSCRIPT_CLASS = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")
_STRING_PUSHES = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_MEMO_WRITES = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})
# Operators TorchScript code may call that reach outside the model: files and the connector's logs.
_FORBIDDEN_CODE = (
    (re.compile(r"\bfrom_file\b"), "reads a file (torch.from_file)"),
    (re.compile(r"\b(?:torch|aten)\s*\.\s*save\b"), "writes a file (torch.save)"),
    (re.compile(r"\bprint\s*\("), "prints, which would put data into the connector's logs"),
    (re.compile(r"\btorch\s*\.\s*classes\b"), "uses custom C++ classes"),
    # The loader runs these while loading, before the compiled graph can be checked.
    (re.compile(r"\b__(?:set|get)state__\b"), "defines __setstate__/__getstate__, which run while loading"),
)
# A backslash at a line's end joins two lines: `torch.\<newline>save` is `torch.save` to the parser.
_LINE_CONTINUATION = re.compile(r"\\[ \t]*\r?\n")
# Members of a TorchScript archive, by their path under the top folder (compared case-folded).
_TORCHSCRIPT_FIXED_MEMBERS = frozenset(
    {"data.pkl", "constants.pkl", "version", ".data/version", "byteorder", ".data/serialization_id"}
)
_TORCHSCRIPT_TENSOR_MEMBER = re.compile(r"(?:data|constants)/[0-9]{1,9}")
_OPERATOR_NAMESPACE = re.compile(r"\bops\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_BUILT_IN_NAMESPACES = frozenset({"aten", "prim", "quantized", "_quantized", "prepacked", "mkldnn"})


@dataclass(frozen=True)
class NetworkPlan:
    """A checked MONAI constructor call: the class and the keyword arguments the connector passes."""

    name: str
    network_class: type[nn.Module]
    arguments: dict[str, Any]


# --- MONAI networks ------------------------------------------------------------------------------


def accepted_parameters(network_class: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """The constructor parameters of a network, following `**kwargs` into its base classes.

    DenseNet121 passes `**kwargs` on to DenseNet, so DenseNet's parameters count too; torch's own
    `nn.Module.__init__` is never a source of parameters.
    """
    found: dict[str, inspect.Parameter] = {}
    for klass in network_class.__mro__:
        if klass in (nn.Module, object) or "__init__" not in vars(klass):
            continue
        signature = inspect.signature(vars(klass)["__init__"])  # the function klass.__init__ gives
        forwards_kwargs = False
        for name, parameter in list(signature.parameters.items())[1:]:  # skip self
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards_kwargs = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                found.setdefault(name, parameter)
        if not forwards_kwargs:
            break
    return found


def _value_problem(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_INT_PARAMETER else f"is beyond ±{MAX_INT_PARAMETER}"
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_FLOAT_PARAMETER:
            return f"must be a finite number within ±{MAX_FLOAT_PARAMETER:g}"
        return None
    if isinstance(value, str):
        return (
            None
            if len(value) <= MAX_STRING_PARAMETER
            else f"is longer than {MAX_STRING_PARAMETER} characters"
        )
    if isinstance(value, list):
        if len(value) > MAX_LIST_LENGTH:
            return f"has more than {MAX_LIST_LENGTH} items"
        for item in value:
            problem = _value_problem(item)
            if problem:
                return f"has an item that {problem}"
        if sum(abs(item) for item in value) > MAX_LIST_SUM:
            return f"adds up to more than {MAX_LIST_SUM}"
        return None
    return "is not a number, true/false, a string or a list of numbers"


def _depth_problem(value: object) -> str | None:
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, int | float) and item > MAX_DEPTH_ITEM for item in items):
        return f"asks for more than {MAX_DEPTH_ITEM} layers in one stage"
    if sum(item for item in items if isinstance(item, int | float)) > MAX_DEPTH_SUM:
        return f"asks for more than {MAX_DEPTH_SUM} layers in all"
    return None


def plan_network(manifest: Manifest) -> NetworkPlan:
    """The checked constructor call for a "monai" manifest; PackageError naming every problem.

    `spatial_dims` and the input channels are taken from the input spec when the package leaves
    them out, and must agree with it when it gives them.
    """
    if manifest.framework != "monai" or manifest.network is None:
        raise PackageError(["only a 'monai' manifest names a network to build"])
    name = manifest.network.name
    network_class = ALLOWED_NETWORKS[name]
    accepted = accepted_parameters(network_class)
    problems: list[str] = []
    arguments: dict[str, Any] = {}
    for key, value in manifest.network.parameters.items():
        label = f"network parameter {shown(key, 40)}"
        if key not in accepted:
            problems.append(f"{label} is not a parameter of {name} (accepted: {', '.join(sorted(accepted))})")
            continue
        if key in FORBIDDEN_PARAMETERS:
            problems.append(f"{label} may not be set: it {FORBIDDEN_PARAMETERS[key]}")
            continue
        problem = _value_problem(value) or (_depth_problem(value) if key in DEPTH_PARAMETERS else None)
        if problem:
            problems.append(f"{label} {problem}")
            continue
        # MONAI's signatures ask for sequences; JSON only has lists, tuples are what they expect.
        arguments[key] = tuple(value) if isinstance(value, list) else value
    in_channels = _IN_CHANNELS.get(name, "in_channels")
    spec = manifest.input
    for key, expected, what in (
        ("spatial_dims", spec.dimensions, f"the input spec ({spec.dimensions}D)"),
        (in_channels, spec.channels, f"the input spec ({spec.channels} channel(s))"),
    ):
        if key not in accepted:
            continue
        if key not in arguments:
            arguments[key] = expected
        elif arguments[key] != expected or isinstance(arguments[key], bool):
            problems.append(f"network parameter {key}={arguments[key]!r} disagrees with {what}")
    missing = [
        key
        for key, parameter in accepted.items()
        if parameter.default is inspect.Parameter.empty and key not in arguments
    ]
    if missing:
        problems.append(f"{name} needs the network parameter(s) {', '.join(missing)}")
    if problems:
        raise PackageError(problems)
    return NetworkPlan(name, network_class, arguments)


class _ParametersOnMeta(TorchFunctionMode):
    """Creates tensors on PyTorch's `meta` device (shapes only, no memory) while a network is built.

    Ranges (arange, linspace) stay real: some constructors read hyper-parameter schedules from
    them with `.item()`, and they are small.
    """

    _CONSTRUCTORS = frozenset(
        {torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}
        | {torch.randint, torch.tensor, torch.eye}
    )

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in self._CONSTRUCTORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _build_failure(plan: NetworkPlan, exc: Exception) -> PackageError:
    message = " ".join(str(exc).split())[:200]
    return PackageError(
        [f"{plan.name} cannot be built with these parameters ({type(exc).__name__}: {message})"]
    )


def count_parameters(plan: NetworkPlan) -> int:
    """How many numbers (parameters and buffers) the network would hold, counted without allocating."""
    try:
        with _ParametersOnMeta():
            skeleton = plan.network_class(**plan.arguments)
    except Exception as exc:  # any constructor error is the package's parameters' fault
        raise _build_failure(plan, exc) from None
    modules = sum(1 for _ in skeleton.modules())
    if modules > MAX_MODULES:
        raise PackageError(
            [f"{plan.name} with these parameters has {modules:,} layers; at most {MAX_MODULES:,}"]
        )
    return sum(tensor.numel() for tensor in (*skeleton.parameters(), *skeleton.buffers()))


def build_network(manifest: Manifest, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> nn.Module:
    """The manifest's MONAI network with freshly initialised weights, its size checked first."""
    plan = plan_network(manifest)
    size = count_parameters(plan)
    if size > max_parameters:
        raise PackageError(
            [f"{plan.name} with these parameters holds {size:,} numbers; at most {max_parameters:,}"]
        )
    # The random initialisation is overwritten by the package's weights; forking keeps the
    # process's random state as it was (other code may rely on its seed).
    with torch.random.fork_rng(devices=[]):
        try:
            return plan.network_class(**plan.arguments)
        except Exception as exc:
            raise _build_failure(plan, exc) from None


def _listed(keys: list[str]) -> str:
    shown_keys = ", ".join(shown(key, 60) for key in keys[:_MAX_SHOWN_KEYS])
    more = len(keys) - _MAX_SHOWN_KEYS
    return shown_keys + (f" and {more} more" if more > 0 else "")


def load_safetensors_weights(model: nn.Module, weights: bytes) -> None:
    """Fill `model` from safetensors bytes, strictly; PackageError naming missing, extra or misshapen keys."""
    try:
        state = safetensors.torch.load(weights)
    except Exception:  # safetensors raises its own error type for any malformed header
        raise PackageError(
            ["the weights are not a readable safetensors file (a pickled file is refused)"]
        ) from None
    expected = model.state_dict()
    problems: list[str] = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [
        f"{shown(key, 60)} is {list(state[key].shape)}, expected {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    if missing:
        problems.append(f"the weights lack {len(missing)} tensor(s) the network has: {_listed(missing)}")
    if unexpected:
        problems.append(
            f"the weights hold {len(unexpected)} tensor(s) the network lacks: {_listed(unexpected)}"
        )
    if misshapen:
        more = len(misshapen) - _MAX_SHOWN_KEYS
        problems.append(
            f"{len(misshapen)} tensor(s) have the wrong shape: {'; '.join(misshapen[:_MAX_SHOWN_KEYS])}"
            + (f" and {more} more" if more > 0 else "")
        )
    for key, tensor in state.items():
        if key in expected and tensor.is_floating_point() != expected[key].is_floating_point():
            problems.append(
                f"tensor {shown(key, 60)} is {tensor.dtype}, the network holds {expected[key].dtype}"
            )
    if problems:
        raise PackageError(problems)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # checked above; kept as a last guard with a bounded message
        raise PackageError([f"the weights do not fit the network ({str(exc)[:200]})"]) from None


# --- TorchScript ---------------------------------------------------------------------------------


def pickle_problems(raw: bytes, name: str) -> list[str]:
    """Why a pickle inside a TorchScript archive could run code, opcode by opcode (nothing is unpickled)."""
    label = f"{shown(name)} in the TorchScript archive"
    problems: list[str] = []
    strings: list[str] = []  # strings pushed since the last other opcode: STACK_GLOBAL's operands
    try:
        for opcode, argument, _position in pickletools.genops(raw):
            op = opcode.name
            imported: tuple[str, str] | None = None
            if op in ("GLOBAL", "INST"):
                module, _, attribute = str(argument).partition(" ")
                imported = (module, attribute)
            elif op == "STACK_GLOBAL":
                if len(strings) < 2:
                    # The operands came from the memo or elsewhere: what it imports cannot be read
                    # off the pickle without running it, so it is refused.
                    problems.append(f"{label} imports a name it assembles indirectly (STACK_GLOBAL)")
                else:
                    imported = (strings[-2], strings[-1])
            elif op in ("EXT1", "EXT2", "EXT4"):
                problems.append(f"{label} imports through the copyreg extension registry ({op})")
            if imported is not None and not _allowed_global(*imported):
                problems.append(
                    f"{label} imports {shown('.'.join(imported), 80)}, which is not part of TorchScript's "
                    "tensor format (a pickle that imports names can run code)"
                )
            if op in _STRING_PUSHES:
                strings.append(str(argument))
            elif op not in _MEMO_WRITES:
                strings.clear()
    except (ValueError, EOFError, KeyError, UnicodeDecodeError) as exc:
        problems.append(f"{label} is not a valid pickle ({type(exc).__name__})")
    return problems


def _allowed_global(module: str, attribute: str) -> bool:
    if (module, attribute) in _ALLOWED_GLOBALS:
        return True
    if module == "torch" and _STORAGE_NAME.fullmatch(attribute):
        return True
    return bool(_TORCHSCRIPT_CLASS.fullmatch(module)) and attribute.isidentifier()


def code_problems(source: str, name: str) -> list[str]:
    """Why TorchScript code in an archive could reach outside the model (files, logs, foreign ops).

    A first gate on the text; `check_graph` on the loaded graph is the check that holds.
    """
    label = f"TorchScript code {shown(name)}"
    source = _LINE_CONTINUATION.sub(" ", source)
    problems = [f"{label} {why}" for pattern, why in _FORBIDDEN_CODE if pattern.search(source)]
    foreign = sorted(set(_OPERATOR_NAMESPACE.findall(source)) - _BUILT_IN_NAMESPACES)
    if foreign:
        problems.append(f"{label} calls operators outside PyTorch's built-ins: {', '.join(foreign[:5])}")
    return problems


def _member_kind(relative: str) -> str | None:
    """What a member is, from its path under the top folder (case-folded), or None if unknown."""
    if relative in _TORCHSCRIPT_FIXED_MEMBERS or _TORCHSCRIPT_TENSOR_MEMBER.fullmatch(relative):
        return "pickle" if relative.endswith(".pkl") else "plain"
    if relative.endswith((".pkl", ".debug_pkl")):
        return "pickle" if relative.startswith("code/") else None
    if relative.endswith(".py"):
        return "code"
    return None


def inspect_torchscript(data: bytes, limits: ArchiveLimits = TORCHSCRIPT_LIMITS) -> None:
    """Refuse a TorchScript archive before loading it: zip structure, member kinds, pickles, code.

    Names are compared case-folded because PyTorch's reader finds `archive/CODE/x.py` when asked
    for `archive/code/x.py`: every member that could be read as code or a pickle is scanned.
    """
    problems: list[str] = []
    with open_archive(data, limits, what="TorchScript archive") as archive:
        infos = archive.infolist()
        keys = [name_key(info.filename) for info in infos]
        tops = {key.split("/", 1)[0] for key in keys}
        if len(tops) != 1 or not any(key.count("/") == 1 and key.endswith("/data.pkl") for key in keys):
            raise PackageError(
                ["the weights are not a TorchScript archive (one top folder holding data.pkl)"]
            )
        for info, key in zip(infos, keys, strict=True):
            name = info.filename
            if not name.isascii():
                # TorchScript writes ASCII names; zip readers may decode others differently.
                problems.append(f"TorchScript archive member {shown(name)} has a non-ASCII name")
                continue
            kind = _member_kind(key.partition("/")[2])
            if kind is None:
                problems.append(
                    f"TorchScript archive member {shown(name)} is not a kind a TorchScript archive holds "
                    "(data.pkl, constants.pkl, code/, data/, version files; extra files are refused)"
                )
            elif kind == "pickle":
                problems += pickle_problems(read_member(archive, info, MAX_PICKLE_BYTES), name)
            elif kind == "code":
                raw = read_member(archive, info, MAX_CODE_BYTES)
                try:
                    source = raw.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(f"TorchScript code {shown(name)} is not UTF-8 text")
                    continue
                problems += code_problems(source, name)
    if problems:
        raise PackageError(problems)


def load_torchscript(data: bytes, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> nn.Module:
    """A TorchScript module on the CPU: loaded only after `inspect_torchscript` found nothing, then
    kept only if every compiled graph passes `check_graph`."""
    inspect_torchscript(data)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # TorchScript's loader raises RuntimeError and friends for bad archives
        message = " ".join(str(exc).split())[:200]
        raise PackageError(
            [f"the TorchScript archive does not load ({type(exc).__name__}: {message})"]
        ) from None
    # The text scan above can be fooled by how code is spelled; the compiled graph cannot.
    check_graph(module)
    size = sum(tensor.numel() for tensor in (*module.parameters(), *module.buffers()))
    if size > max_parameters:
        raise PackageError([f"the TorchScript model holds {size:,} numbers; at most {max_parameters:,}"])
    return module


# --- the model of a package, and its dry run ----------------------------------------------------


def load_model(package: ModelPackage, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> nn.Module:
    """The package's model in eval mode on the CPU; PackageError for anything refused."""
    manifest = package.manifest
    if manifest.framework == "monai":
        model = build_network(manifest, max_parameters)
        load_safetensors_weights(model, package.weights)
    else:
        model = load_torchscript(package.weights, max_parameters)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def expected_output_shapes(manifest: Manifest) -> list[list[int]]:
    """The output shapes the output spec allows for one study (batch of one)."""
    labels = len(manifest.output.labels)
    per_study = [1, labels]
    per_voxel = [1, labels, *manifest.input.spatial_size]
    if manifest.output.kind == "classification":
        return [per_study]
    if manifest.output.kind == "segmentation-statistics":
        return [per_voxel]
    return [per_study, per_voxel]  # aggregate-metrics summarise either kind of output


def dry_run(model: nn.Module, manifest: Manifest) -> list[int]:
    """Run one zero tensor of the input spec's shape through `model`; its output shape, checked.

    PackageError when the model fails, returns something other than one finite floating tensor, or
    a shape the output spec does not describe.
    """
    spec = manifest.input
    shape = [1, spec.channels, *spec.spatial_size]
    voxels = math.prod(spec.spatial_size)
    if voxels > MAX_INPUT_VOXELS:
        raise PackageError(
            [f"the input spec asks for {voxels:,} voxels per study; at most {MAX_INPUT_VOXELS:,}"]
        )
    with torch.inference_mode():
        try:
            output = model(torch.zeros(shape, dtype=torch.float32))
        except Exception as exc:  # whatever the model raises on a well-formed input is its fault
            message = " ".join(str(exc).split())[:200]
            raise PackageError(
                [f"the model fails on a zero input of shape {shape} ({type(exc).__name__}: {message})"]
            ) from None
        if not isinstance(output, torch.Tensor):
            raise PackageError([f"the model returns {type(output).__name__}, not one tensor"])
        if not output.is_floating_point():
            raise PackageError([f"the model returns {output.dtype} values, not floating-point ones"])
        actual = list(output.shape)
        allowed = expected_output_shapes(manifest)
        if actual not in allowed:
            wanted = " or ".join(str(candidate) for candidate in allowed)
            raise PackageError(
                [
                    f"the model returns shape {actual} for input {shape}; "
                    f"output kind {manifest.output.kind!r} with {len(manifest.output.labels)} label(s) "
                    f"needs {wanted}"
                ]
            )
        if not bool(torch.isfinite(output).all()):
            raise PackageError(["the model returns NaN or infinite values on a zero input"])
    return actual


def check_model(package: ModelPackage, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> nn.Module:
    """`load_model` then `dry_run`: the model of a package, ready for a job."""
    model = load_model(package, max_parameters)
    dry_run(model, package.manifest)
    return model
