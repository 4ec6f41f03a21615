"""TorchScript packages: archive names compared as PyTorch's reader compares them (case-insensitively),
and the loaded model's compiled graphs checked against an allow-list of operators (issue #14, 1b).

Every exploit is a real archive written by `torch.jit.script` / `torch.jit.save` and then rewritten
with zipfile, as an attacker would; every refusal is checked to happen before the model runs.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks import nets
from torch import nn

from connector.compute import demo_model
from connector.compute.manifest import Manifest
from connector.compute.networks import (
    build_network,
    check_model,
    code_problems,
    inspect_torchscript,
    load_model,
    load_torchscript,
)
from connector.compute.package import PackageError, build_package, read_package
from connector.compute.torchscript_graph import check_graph, graph_problems

# TorchScript is deprecated in favour of torch.export, but it is what teams ship today.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

SECRET = b"master-key-material-that-must-never-leave-the-host-0123456789"


def scripted_archive(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def rewritten(
    archive: bytes,
    rename: Callable[[str], str] = lambda name: name,
    code: Callable[[str], str] | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    """The archive with members renamed, code text rewritten (its debug info dropped) and extras added."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if code is not None and info.filename.endswith(".debug_pkl"):
                continue  # source ranges of the original text; the loader does without them
            if code is not None and info.filename.endswith(".py"):
                content = code(content.decode()).encode()
            target.writestr(rename(info.filename), content)
        for name, content in extra:
            target.writestr(name, content)
    return buffer.getvalue()


def code_text(archive: bytes) -> str:
    source = zipfile.ZipFile(io.BytesIO(archive))
    return "".join(source.read(name).decode() for name in source.namelist() if name.endswith(".py"))


def torchscript_package(archive: bytes, labels: int = 2, size: int = 8) -> Any:
    document = {
        "name": "team-model",
        "version": "1.0.0",
        "framework": "torchscript",
        "weights": "model.pt",
        "input": {"modalities": ["CT"], "dimensions": 2, "spatial_size": [size, size]},
        "output": {"kind": "classification", "labels": [f"class-{index}" for index in range(labels)]},
    }
    return read_package(build_package(Manifest.model_validate(document), archive))


def refusal(archive: bytes) -> str:
    with pytest.raises(PackageError) as caught:
        load_model(torchscript_package(archive))
    return str(caught.value)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


# --- archive names -------------------------------------------------------------------------------


def test_code_stored_under_a_case_renamed_folder_is_scanned_and_refused(tmp_path: Path) -> None:
    key = _secret_file(tmp_path)

    class Thief(nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path
            self.head = Head()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stolen = torch.from_file(self.path, False, 45, dtype=torch.uint8)
            return self.head(x) + stolen.float().sum()

    archive = rewritten(scripted_archive(Thief(str(key))), rename=lambda n: n.replace("/code/", "/CODE/"))
    names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    assert any(name.startswith("archive/CODE/__torch__/") for name in names)
    assert not any("/code/" in name for name in names)
    # PyTorch's reader finds `code/` under `CODE/`: the renamed archive loads and reads the file.
    loaded = torch.jit.load(io.BytesIO(archive))
    with pytest.raises(PackageError, match=r"Thief'\.'forward' uses 'aten::from_file', which reads a file"):
        check_graph(loaded)  # the graph check refuses it on its own
    message = refusal(archive)
    renamed_code = r"'archive/CODE/__torch__/test_torchscript_graph[^']*'"
    assert re.search(renamed_code + r" reads a file \(torch.from_file\)", message)


def test_members_whose_names_differ_only_in_case_are_refused() -> None:
    archive = scripted_archive(Head())
    evil = "class Head(Module):\n  pass\n"
    # A second copy of a code member under CODE/: which one would the loader take?
    original = next(n for n in zipfile.ZipFile(io.BytesIO(archive)).namelist() if n.endswith(".py"))
    copy = original.replace("/code/", "/CODE/")
    message = refusal(rewritten(archive, extra=((copy, evil.encode()),)))
    assert f"{copy!r} and {original!r} differ only in case" in message
    # A pickle stored as DATA.PKL is what the loader reads as data.pkl: it is scanned like one.
    payload = b"cos\nsystem\n(S'touch /nonexistent/pwned'\ntR."
    renamed = rewritten(archive, rename=lambda n: n.replace("/data.pkl", "/DATA.PKL"))
    source = zipfile.ZipFile(io.BytesIO(renamed))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, payload if info.filename.endswith("DATA.PKL") else source.read(info))
    with pytest.raises(PackageError, match=r"'archive/DATA.PKL' .* imports 'os.system'"):
        inspect_torchscript(buffer.getvalue())


def test_model_packages_with_case_variant_names_are_refused() -> None:
    document = (
        b'{"name": "m", "version": "1", "framework": "torchscript", "weights": "model.pt",'
        b' "input": {"modalities": ["CT"], "dimensions": 2, "spatial_size": [8, 8]},'
        b' "output": {"kind": "classification", "labels": ["a"]}}'
    )
    for names in (("manifest.json", "MANIFEST.json", "model.pt"), ("Manifest.json", "model.pt")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in names:
                archive.writestr(name, document if "anifest" in name.lower() else b"x")
        with pytest.raises(PackageError, match=r"differ(s)? only in case"):
            read_package(buffer.getvalue())


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("archive/code/../data.pkl", "path traversal"),
        ("archive/./code/x.py", "'.' path component"),
        ("archive//code/x.py", "empty or '.' path component"),
        ("archive/code/", "folder entry"),
        ("archive/code/x.py.", "ending in a dot or a space"),
        ("archive/code/x.py ", "ending in a dot or a space"),
        ("archive\\code\\x.py", "backslash"),
        ("/archive/code/x.py", "absolute path"),
        ("C:/archive/code/x.py", "absolute path"),
        ("archive/code/x.py:stream", "colon"),
        ("archive/code/\x01x.py", "control character"),
        ("archive/code/\x85x.py", "control character"),
    ],
)
def test_non_canonical_member_names_are_refused(name: str, reason: str) -> None:
    archive = rewritten(scripted_archive(Head()), extra=((name, b"pass\n"),))
    with pytest.raises(PackageError, match=re.escape(reason)):
        inspect_torchscript(archive)


def test_members_of_unknown_kinds_are_refused() -> None:
    for name in ("archive/extra/notes.txt", "archive/code/__torch__/helper.so", "archive/payload.pkl"):
        archive = rewritten(scripted_archive(Head()), extra=((name, b"x"),))
        with pytest.raises(PackageError, match="is not a kind a TorchScript archive holds"):
            inspect_torchscript(archive)


def test_code_that_defines_setstate_is_refused_before_loading(tmp_path: Path) -> None:
    key = _secret_file(tmp_path)

    class Loader(nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path
            self.stolen = torch.zeros(1)

        @torch.jit.export
        def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
            return (self.path, self.stolen, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
            self.path = state[0]
            # Runs inside torch.jit.load, before any check of the loaded graph could.
            self.stolen = torch.from_file(self.path, False, 45, dtype=torch.uint8).float()
            self.training = state[2]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) + self.stolen.sum()

    archive = scripted_archive(Loader(str(key)))
    assert "__setstate__" in code_text(archive)
    loaded = torch.jit.load(io.BytesIO(archive))
    assert loaded.stolen.numel() == 45  # what loading alone does
    message = refusal(archive)
    assert "defines __setstate__/__getstate__, which run while loading" in message
    assert "runs while the model loads" in " ".join(graph_problems(loaded))


# --- the loaded graph ------------------------------------------------------------------------------


def _split_by_comment(source: str) -> str:
    """`torch.save(...)` / `print(...)` spelled with a comment inside: the same call to the parser."""
    source = re.sub(
        r"^( +)torch\.save\((.*)\)$",
        r"\1_s = (torch.  # saves\n\1  save(\2))",
        source,
        flags=re.MULTILINE,
    )
    return re.sub(r"^( +)print\((.*)\)$", r"\1_p = (print  # prints\n\1  (\2))", source, flags=re.MULTILINE)


class Saver(nn.Module):
    """A submodule whose non-forward method, reached from forward, writes the input to a file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        print("input sum", x.sum())
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keep(x)


class Exfiltrator(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.saver = Saver(path)
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.saver(x))


def test_a_file_write_spelled_past_the_text_scan_is_refused_by_the_graph_check(tmp_path: Path) -> None:
    written = tmp_path / "dump.pt"
    archive = rewritten(scripted_archive(Exfiltrator(str(written))), code=_split_by_comment)
    source = code_text(archive)
    assert "# saves" in source and "# prints" in source
    # The text scan alone misses both: no code problem, and the pre-load inspection passes.
    assert code_problems(source, "code/__torch__.py") == []
    inspect_torchscript(archive)
    # Loaded as-is the model writes the file: the exploit is real.
    torch.jit.load(io.BytesIO(archive))(torch.ones(1, 1, 8, 8))
    assert written.exists()
    written.unlink()
    message = refusal(archive)
    assert "test_torchscript_graph.Saver'.'keep' uses 'aten::save', which writes a file" in message
    assert "uses 'prim::Print', which prints" in message
    assert not written.exists()


def _keep_a_copy(x: torch.Tensor, path: str) -> torch.Tensor:
    torch.save(x, path)
    return x


class IndirectSaver(nn.Module):
    """Writes the input to a file from a TorchScript function: the call is only resolved by inlining."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_keep_a_copy(x, self.path))


def test_a_file_write_in_a_called_function_is_refused(tmp_path: Path) -> None:
    written = tmp_path / "copy.pt"
    loaded = torch.jit.load(io.BytesIO(scripted_archive(IndirectSaver(str(written)))))
    forward = [node.kind() for node in loaded.graph.nodes()]
    assert "prim::CallFunction" in forward and "aten::save" not in forward  # hidden behind the call
    with pytest.raises(PackageError) as caught:
        check_graph(loaded)
    expected = "IndirectSaver'.'forward' uses 'aten::save' in code it calls, which writes a file"
    assert expected in str(caught.value)
    assert not written.exists()


def test_operators_off_the_list_and_in_hooks_are_refused(tmp_path: Path) -> None:
    class Reseeder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.manual_seed(1234)  # the text scan has no rule for this
            return x.mean(dim=(2, 3)).repeat(1, 2)

    reseeder = torch.jit.load(io.BytesIO(scripted_archive(Reseeder())))
    assert code_problems(reseeder.code, "code/__torch__.py") == []
    with pytest.raises(PackageError, match=r"uses 'aten::manual_seed', which changes the process's random"):
        check_graph(reseeder)

    written = tmp_path / "hooked.pt"

    def hook(self: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        torch.save(output, "PATH")

    hooked = Head()
    hooked.register_forward_hook(hook)
    archive = rewritten(scripted_archive(hooked), code=lambda text: text.replace("PATH", str(written)))
    loaded = torch.jit.load(io.BytesIO(archive))
    assert loaded._c._method_names() == ["forward"]  # a hook is not a method
    with pytest.raises(PackageError, match=r"'hook hook' uses 'aten::save'"):
        check_graph(loaded)
    assert not written.exists()


# --- legitimate models ----------------------------------------------------------------------------

MONAI_NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "DenseNet121": lambda: nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=2),
    "ResNet": lambda: nets.ResNet(
        block="bottleneck", layers=(1, 1, 1, 1), block_inplanes=(8, 16, 32, 64), spatial_dims=3,
        n_input_channels=1, num_classes=2,
    ),
    "SegResNet": lambda: nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8),
    "UNet": lambda: nets.UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=2
    ),
    "BasicUNet": lambda: nets.BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8)
    ),
}


@pytest.mark.parametrize("name", sorted(MONAI_NETWORKS))
def test_scripted_monai_networks_pass(name: str) -> None:
    network = MONAI_NETWORKS[name]().eval()
    model = load_torchscript(scripted_archive(network))
    assert graph_problems(model) == []


def test_the_demo_network_scripted_loads_and_runs() -> None:
    monai_manifest = demo_model.demo_manifest()
    network = build_network(monai_manifest).eval()
    manifest = monai_manifest.model_copy(
        update={"framework": "torchscript", "network": None, "weights": "model.pt"}
    )
    package = read_package(build_package(manifest, scripted_archive(network)))
    model = check_model(package)
    with torch.inference_mode():
        expected = network(torch.ones(1, 1, *manifest.input.spatial_size))
        assert torch.equal(model(torch.ones(1, 1, *manifest.input.spatial_size)), expected)
