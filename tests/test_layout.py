"""The package's layering: each subpackage imports only itself and the layers below it."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGE = ROOT / "mri_tfdata"

# Lowest first. A module may import its own subpackage and any layer before it, never one after.
# The command modules at the package's top level (train, evaluate, ...) sit above every layer.
LAYERS = ("core", "runtime", "data", "model", "evaluation", "serving", "training", "cli")
COMMANDS = "commands"


def imported_modules(source: str) -> set[str]:
    """Absolute module names that `source` imports (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of_module(module: str) -> str | None:
    """The layer of an mri_tfdata module name, COMMANDS for a top-level module, None outside."""
    parts = module.split(".")
    if parts[0] != "mri_tfdata" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in LAYERS else COMMANDS


def _rank(layer: str) -> int:
    return len(LAYERS) if layer == COMMANDS else LAYERS.index(layer)


def layering_violations(layer: str, source: str) -> list[str]:
    """The mri_tfdata modules `source` (a module of `layer`) imports from a higher layer."""
    return sorted(module for module in imported_modules(source)
                  if (other := layer_of_module(module)) and _rank(other) > _rank(layer))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        layer = relative.parts[0] if len(relative.parts) > 1 else COMMANDS
        yield layer, path


def test_every_subpackage_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("layer, path", list(_modules()),
                         ids=lambda v: str(v.relative_to(PACKAGE)) if isinstance(v, pathlib.Path)
                         else v)
def test_imports_flow_down_the_layers(layer, path):
    assert layering_violations(layer, path.read_text()) == []


def test_an_upward_import_is_reported():
    source = "from mri_tfdata.training import trainer\nimport mri_tfdata.cli.runner\n"
    assert layering_violations("model", source) == ["mri_tfdata.cli.runner",
                                                    "mri_tfdata.training",
                                                    "mri_tfdata.training.trainer"]
    assert layering_violations("training", source) == ["mri_tfdata.cli.runner"]
    assert layering_violations("cli", source) == []
    # `from mri_tfdata import train` names a command module from inside a layer.
    assert layering_violations("cli", "from mri_tfdata import train\n") == ["mri_tfdata.train"]


def _importers(folder: pathlib.Path, prefix: str) -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path in folder.rglob("*.py")
                  if any(m == prefix or m.startswith(prefix + ".")
                         for m in imported_modules(path.read_text())))


def test_the_library_imports_neither_the_builder_nor_tuning():
    # tuning/ and builders/ build on the library; the reverse would be a cycle.
    assert _importers(PACKAGE, "builders") == []
    assert _importers(PACKAGE, "tuning") == []


def test_the_builder_imports_only_the_data_layer_and_below():
    # A TFDS build needs the image rules, never the model, training or the commands.
    for path in (ROOT / "builders").rglob("*.py"):
        assert layering_violations("data", path.read_text()) == [], path


def test_the_builder_uses_the_librarys_image_checks():
    builder = ROOT / "builders" / "brain_tumor_mri" / "brain_tumor_mri_dataset_builder.py"
    assert "beam_steps." in builder.read_text()
    steps = (PACKAGE / "data" / "beam_steps.py").read_text()
    assert "images.read_file(" in steps and "images.prepare_image(" in steps


def test_importing_the_package_does_nothing_but_define_names():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert all(isinstance(node, (ast.Expr, ast.Assign)) for node in tree.body)
