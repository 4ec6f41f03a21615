"""Checking a loaded TorchScript model's compiled graphs against an allow-list of operators.

The archive's code text is only what the loader parses; what runs is the graph it compiles. So
after `torch.jit.load` (inside the sandboxed child), every method and hook of every submodule is
taken, inlined (calls into other methods, classes and functions become their bodies), and each
node, down into the blocks of `prim::If` / `prim::Loop`, must be one of the tensor operators and
control-flow primitives that real networks compile to. Anything else (files, printing, threads,
RPC, the global random seed, custom or foreign operators, Python calls) refuses the model.

This module never runs a method of the model, never edits the loaded graphs (it inlines copies),
and never puts a package's bytes into a message: names in messages are bounded and quoted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from connector.compute.package import PackageError, shown

# aten:: operators (names without the namespace; every overload of a name is allowed). Built from
# what MONAI's scriptable networks compile to (DenseNet121, ResNet basic/bottleneck, SegResNet,
# UNet, BasicUNet in 2D and 3D; SwinUNETR does not script in MONAI 1.6) and the tests' models,
# plus the tensor arithmetic, activations, normalisations and shape operators of the same kind
# that other classification and segmentation networks use. None of them touches a file, the
# process or the host; they compute on tensors, numbers, strings, lists and dicts.
ALLOWED_ATEN_OPS: frozenset[str] = frozenset(
    {
        # convolution, pooling, resampling
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "_convolution", "convolution",
        "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
        "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
        "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d",
        "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "_upsample_lanczos2d_aa",
        "pixel_shuffle", "pixel_unshuffle", "grid_sampler", "affine_grid_generator", "pad",
        "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
        "replication_pad1d", "replication_pad2d", "replication_pad3d",
        # linear algebra
        "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "t",
        "scaled_dot_product_attention",
        # normalisation, dropout
        "batch_norm", "instance_norm", "group_norm", "layer_norm", "local_response_norm",
        "dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
        # activations
        "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "elu", "elu_", "selu", "celu",
        "gelu", "silu", "silu_", "mish", "sigmoid", "sigmoid_", "hardsigmoid", "hardswish", "hardtanh",
        "hardtanh_", "tanh", "tanh_", "softplus", "softmax", "log_softmax", "glu", "threshold",
        # arithmetic and maths
        "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "floor_divide", "neg",
        "remainder", "fmod", "pow", "sqrt", "rsqrt", "exp", "log", "log2", "log10", "log1p", "abs",
        "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "sign", "reciprocal", "erf", "sin", "cos",
        "round", "ceil", "floor", "trunc", "maximum", "minimum", "where", "lerp", "addcmul", "addcdiv",
        "sum", "mean", "std", "var", "prod", "max", "min", "amax", "amin", "argmax", "argmin", "norm",
        "linalg_vector_norm", "cumsum", "logsumexp", "all", "any", "isfinite", "isnan", "topk", "sort",
        "eq", "ne", "lt", "le", "gt", "ge", "__and__", "__or__", "__xor__", "logical_and",
        "logical_or", "logical_not", "bitwise_not", "masked_fill", "masked_fill_", "nan_to_num",
        # shapes, views, copies
        "size", "dim", "numel", "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
        "permute", "transpose", "contiguous", "expand", "expand_as", "repeat", "repeat_interleave",
        "cat", "concat", "stack", "split", "chunk", "unbind", "slice", "select", "narrow", "index",
        "index_select", "gather", "roll", "flip", "tile", "movedim", "unfold", "clone", "detach",
        "copy_", "fill_", "zero_", "to", "type_as", "view_as", "reshape_as",
        # (not `empty`: uninitialised memory could hold what the process handled before)
        "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange", "linspace",
        "tensor", "scalar_tensor", "one_hot", "tril", "triu", "meshgrid",
        "is_floating_point", "requires_grad_",
        # numbers, strings, lists and dicts as TorchScript compiles Python's built-ins
        "Float", "Int", "Bool", "ScalarImplicit", "item", "floordiv", "__range_length",
        "__derive_index", "__getitem__", "_set_item", "__contains__", "__is__", "__isnot__",
        "__not__", "__round_to_zero_floordiv", "len", "list", "append", "extend", "insert", "pop",
        "reverse", "copy", "keys", "values", "items", "dict", "get", "format", "str", "join",
        "startswith", "endswith", "lower", "upper", "replace", "strip", "isupper", "_infer_size",
        "broadcast_tensors",
        # `warnings.warn` compiles to aten::warn; torch.nn.functional.interpolate, which MONAI's
        # networks call, holds one. Its text goes to the child process's warnings, not to a result.
        "warn",
    }
)

# prim:: nodes: constants, containers, attribute access and control flow.
ALLOWED_PRIM_KINDS: frozenset[str] = frozenset(
    {
        "Constant", "ListConstruct", "ListUnpack", "TupleConstruct", "TupleUnpack", "TupleIndex",
        "TupleSlice", "DictConstruct", "GetAttr", "SetAttr", "If", "Loop", "RaiseException",
        "Uninitialized", "unchecked_cast", "NumToTensor", "device", "dtype", "layout", "is_cuda",
        "requires_grad", "isinstance", "min", "max", "abs", "shape", "data", "CreateObject",
        "TypeCheck", "BroadcastSizes", "AutogradZero", "tolist", "EnumValue", "EnumName",
    }
)

# Why some operators are refused, named in the message (anything else off the list is refused
# as "not on the connector's list of tensor operators").
REFUSED_OPERATORS: dict[str, str] = {
    "aten::from_file": "which reads a file",
    "aten::save": "which writes a file",
    "aten::_print": "which prints, putting data into the connector's logs",
    "prim::Print": "which prints, putting data into the connector's logs",
    "prim::PythonOp": "which calls Python",
    "prim::CallFunction": "a call the loader could not resolve to TorchScript code",
    "prim::CallMethod": "a call through an interface whose code cannot be checked",
    "prim::fork": "which starts a thread",
    "aten::wait": "which waits on a thread",
    "prim::rpc_async": "which calls another process",
    "prim::rpc_sync": "which calls another process",
    "prim::rpc_remote": "which calls another process",
    "aten::manual_seed": "which changes the process's random seed",
    "aten::seed": "which changes the process's random seed",
    "aten::set_": "which points a tensor at other memory",
}
# Methods TorchScript's loader runs while loading, before anything can check the graph.
LOAD_TIME_METHODS = frozenset({"__setstate__", "__getstate__"})
_MAX_PROBLEMS = 20


@dataclass(frozen=True)
class _Code:
    """One compiled function of the model: its identity, where it lives (for messages) and its graph."""

    key: tuple[str, str]  # (qualified class name, method name or "hook NAME")
    where: str
    method: str
    graph: torch.Graph


def _functions(module: torch.jit.ScriptModule) -> list[_Code]:
    """Every method and hook of every submodule, once per compiled class."""
    found: dict[tuple[str, str], _Code] = {}
    for _, submodule in module.named_modules():
        script = submodule._c
        owner = script._type().qualified_name()
        named = [(name, name, script._get_method(name).graph) for name in script._method_names()]
        hooks = [*script._get_forward_pre_hooks(), *script._get_forward_hooks()]
        named += [(f"hook {hook.name}", hook.name, hook.graph) for hook in hooks]
        for label, name, graph in named:
            key = (owner, label)
            if key not in found:
                where = f"{shown(owner.removeprefix('__torch__.'), 80)}.{shown(label, 40)}"
                found[key] = _Code(key, where, name, graph)
    return list(found.values())


def _refusal(kind: str) -> str | None:
    """Why the node kind `kind` is refused, or None when it is allowed."""
    namespace, _, name = kind.partition("::")
    if kind in REFUSED_OPERATORS:
        return REFUSED_OPERATORS[kind]
    if namespace == "aten" and name in ALLOWED_ATEN_OPS:
        return None
    if namespace == "prim" and name in ALLOWED_PRIM_KINDS:
        return None
    if namespace not in ("aten", "prim"):
        return "an operator outside PyTorch's aten and prim namespaces (custom or foreign)"
    return "which is not on the connector's list of tensor operators"


def _nodes(block: torch.Block) -> Iterator[torch.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)


def _module_callee(node: torch.Node, known: set[tuple[str, str]]) -> tuple[str, str] | None:
    """The module method a `prim::CallMethod` node calls directly, when it is one of `known`."""
    receiver = node.inputsAt(0).type()
    # torch's stubs for ClassType lack is_interface_type, which the C++ binding has.
    if not isinstance(receiver, torch.ClassType) or receiver.is_interface_type():  # type: ignore[attr-defined]
        return None
    callee = (receiver.qualified_name(), node.s("name"))
    return callee if callee in known else None


class _Verdicts:
    """`_refusal` memoised per node kind: a model has thousands of nodes but a few dozen kinds."""

    def __init__(self) -> None:
        self._known: dict[str, str | None] = {}

    def refused(self, kinds: Iterator[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for kind in kinds:
            if kind not in self._known:
                self._known[kind] = _refusal(kind)
            why = self._known[kind]
            if why is not None:
                found[kind] = why
        return found


def graph_problems(module: torch.jit.ScriptModule) -> list[str]:
    """Every refused operator in the model's compiled code, as 'method uses operator, why'.

    Each method's own graph is checked, so a message names the method holding the operator; a
    direct call into another module's method is covered by that method's own check. Calls into
    functions (torch.nn.functional's, or the package's), TorchScript classes and interfaces only
    show their code once inlined, so a method making such a call is checked again on an inlined
    copy. Inlining only those (mostly the leaf layers) keeps the walk linear in the model's size:
    inlining every method would repeat each layer once per module above it.
    """
    codes = _functions(module)
    known = {code.key for code in codes}
    verdicts = _Verdicts()
    problems: list[str] = []
    calls: dict[tuple[str, str], set[tuple[str, str]]] = {}
    reported: set[str] = set()
    opaque: dict[tuple[str, str], _Code] = {}
    for code in codes:
        if code.method in LOAD_TIME_METHODS:
            problems.append(f"TorchScript method {code.where} runs while the model loads")
        own: list[str] = []
        callees: set[tuple[str, str]] = set()
        for node in _nodes(code.graph.block()):
            kind = node.kind()
            if kind == "prim::CallMethod" and (callee := _module_callee(node, known)):
                callees.add(callee)  # that method is checked on its own
            elif kind in ("prim::CallMethod", "prim::CallFunction"):
                opaque[code.key] = code  # judged on the inlined copy below
            else:
                own.append(kind)
        calls[code.key] = callees
        for kind, why in sorted(verdicts.refused(iter(own)).items()):
            problems.append(f"TorchScript method {code.where} uses {shown(kind, 60)}, {why}")
            reported.add(kind)
    called = set().union(*calls.values())
    roots = [code for code in codes if code.key not in called]
    reached = {code.key for code in roots}
    pending = list(reached)
    while pending:
        for callee in calls[pending.pop()] - reached:
            reached.add(callee)
            pending.append(callee)
    problems += [
        f"TorchScript method {code.where} is reached only through recursion"
        for code in codes
        if code.key not in reached
    ]
    if len(reached) < len(codes):
        return problems[:_MAX_PROBLEMS]  # inlining a recursive call would not end
    for code in opaque.values():
        graph = code.graph.copy()
        torch._C._jit_pass_inline(graph)
        refused = verdicts.refused(node.kind() for node in _nodes(graph.block()))
        for kind, why in sorted(refused.items()):
            if kind not in reported:
                problems.append(
                    f"TorchScript method {code.where} uses {shown(kind, 60)} in code it calls, {why}"
                )
                reported.add(kind)
    return problems[:_MAX_PROBLEMS]


def check_graph(module: torch.jit.ScriptModule) -> None:
    """PackageError naming each refused operator (and the method using it) of a loaded model."""
    try:
        problems = graph_problems(module)
    except RuntimeError as exc:  # TorchScript's graph API raises RuntimeError for what it cannot handle
        message = " ".join(str(exc).split())[:200]
        raise PackageError([f"the TorchScript model's graph cannot be checked ({message})"]) from None
    if problems:
        raise PackageError(problems)
