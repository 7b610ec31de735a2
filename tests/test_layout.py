"""The package's layering: data flows from mri_tfdata into builders/ and tuning/, never back."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1]


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _importers(folder: str, prefix: str) -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / folder).rglob("*.py")
                  if any(m == prefix or m.startswith(prefix + ".")
                         for m in _imported_modules(path)))


def test_the_library_imports_neither_the_builder_nor_tuning():
    # The builder imports mri_tfdata (its layout and image rules); the reverse would be a cycle.
    # TFDS reads a built dataset from its files, so the library needs no builder code.
    assert _importers("mri_tfdata", "builders") == []
    assert _importers("mri_tfdata", "tuning") == []


def test_the_builder_uses_the_librarys_image_checks():
    builder = ROOT / "builders" / "brain_tumor_mri" / "brain_tumor_mri_dataset_builder.py"
    assert "mri_tfdata" in _imported_modules(builder)
    assert "build_pipeline." in builder.read_text()
    steps = (ROOT / "mri_tfdata" / "build_pipeline.py").read_text()
    assert "images.read_file(" in steps and "images.prepare_image(" in steps
