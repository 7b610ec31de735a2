"""One cache root and one key rule for every cache."""

import pytest

from mri_tfdata.core import caches


def test_the_root_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert caches.cache_dir("features") == tmp_path / "mri_tfdata" / "features"


def test_without_xdg_the_root_is_under_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert caches.cache_root() == tmp_path / ".cache" / "mri_tfdata"


def test_a_kind_must_be_a_plain_folder_name():
    with pytest.raises(ValueError, match="kind='../x'"):
        caches.cache_dir("../x")


def test_keys_change_with_every_field_and_the_format(monkeypatch):
    key = caches.cache_key("Training/a b", size=64, weights="abc")
    assert key.startswith("Training_a_b-")
    assert key == caches.cache_key("Training/a b", weights="abc", size=64)
    assert key != caches.cache_key("Training/a b", size=128, weights="abc")
    monkeypatch.setattr(caches, "FORMAT_VERSION", caches.FORMAT_VERSION + 1)
    assert key != caches.cache_key("Training/a b", size=64, weights="abc")
