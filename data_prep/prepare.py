"""`prepare`: raw text to a tokenizer and packed, checksummed shards, cached by a hash of the config, the source
files (names, sizes, times) and the versions of the libraries that decide the content (tokenizers, the segmenter).

Layout of a prepared folder (`<cache_dir>/prepared/<hash>/`):
    manifest.json                 counts, hashes, checksums; written last
    tokenizer/                    a transformers fast tokenizer
    train-00000.input_ids.npy     shards, one file per field
    validation-00000.*.npy
    artifacts/<name>-<hash>/      extra products an objective asked for (neighbours, co-occurrence)
The folder is built under a temporary name and renamed when complete, so a killed prepare leaves no
half-written cache; a file lock makes concurrent ranks wait for one builder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import pkgutil
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator
from tqdm import tqdm

from data_prep import durable, sources
from data_prep import tokenizer as tokenizers_
from data_prep.pack import PACKERS, ShardWriter, SpecialIds, sha256_file
from data_prep.tokenize import init_worker, tokenize
from data_prep.words import SEGMENTER_PACKAGES, SEGMENTERS
from pretrain_bench.errors import UserError
from pretrain_bench.section import Section

# 2: tokenizer ids in code-point order; 3: the same pieces in every process (data_prep/tokenizer.py);
# 4: a JSON Lines text of null is no document (it was the text "None")
FORMAT_VERSION = 4
DOCS_PER_JOB = 256


class DataConfig(Section):
    """The corpus and how it becomes training rows."""

    path: str = Field(sources.BUILTIN, description="text file or folder (.txt/.jsonl/.parquet), "
                      "'builtin:docstrings', or 'hub:<name>[:<config>][@<revision>]' (online only; the cache is keyed "
                      "by this text, so pin a revision to notice a hub update)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files under a data.path folder "
                               "to leave out, matched case-sensitively against paths relative to it, '*' crossing folders "
                               "(e.g. 'python311_docs.jsonl'; quote a leading '*' in YAML: '*.txt')")
    text_field: str = Field("text", description="JSON/Parquet field holding a document's text")
    txt_documents: Literal["blank_line", "line", "file"] = Field(
        "blank_line", description="how a .txt file splits into documents")
    hub_split: str = Field("train", description="split of a hub data set")
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="non-UTF-8 bytes: refuse the file, or replace them with U+FFFD")
    max_documents: int | None = Field(None, ge=1, description="read at most this many documents")
    validation_fraction: float = Field(0.02, gt=0, lt=0.5, description="share of documents held out")
    seq_len: int = Field(128, ge=8, description="tokens per packed row, [CLS] and [SEP] included")
    tokenizer: tokenizers_.TokenizerConfig = Field(default_factory=tokenizers_.TokenizerConfig)
    segmenter: str = Field("wordpiece", description="word boundaries: wordpiece ('##'), jieba or ltp")
    segmenter_options: dict = Field(default_factory=dict, description="options of the segmenter")
    num_proc: int | None = Field(None, ge=1, description="tokenization processes (does not change the result); "
                                 "default: one process using the tokenizer's own threads for wordpiece, one per "
                                 "core for Python segmenters")
    rows_per_shard: int = Field(16384, ge=1, description="rows in one shard file")
    cache_dir: str = Field("~/.cache/pretrain-bench", description="where prepared data is cached")

    @field_validator("segmenter")
    @classmethod
    def _known_segmenter(cls, name: str) -> str:
        if name not in SEGMENTERS:  # here, not in the tokenization workers after the tokenizer is trained
            raise ValueError(f"unknown segmenter '{name}'; choose one of {', '.join(SEGMENTERS)}")
        return name

    @field_validator("segmenter_options")
    @classmethod
    def _options_of_the_segmenter(cls, options: dict, info: ValidationInfo) -> dict:
        if "segmenter" not in info.data:  # unknown: reported by itself
            return options
        from data_prep import segment_zh  # no segmenter library is imported by this

        schema = segment_zh.OPTIONS.get(info.data["segmenter"])
        if schema is None and options:
            raise ValueError(f"segmenter {info.data['segmenter']} takes no options; remove them")
        if schema is not None:
            try:
                segment_zh.checked_options(schema, options, info.data["segmenter"])
            except UserError as e:
                raise ValueError(str(e)) from None
        return options

    def fingerprint(self, packing: str) -> str:
        """Hash of everything that decides the shards' content (not where or how fast they are made)."""
        # The source fingerprint lists the files data.exclude keeps, so the patterns themselves are left out.
        content = self.model_dump(exclude={"num_proc", "rows_per_shard", "cache_dir", "exclude"})
        version = PACKERS[packing].version  # version 1 keeps the hashes of data prepared before packers had one
        content.update(packing=packing if version == 1 else f"{packing}/v{version}", format=FORMAT_VERSION,
                       source=sources.fingerprint(self.path, self.exclude),
                       libraries=library_versions("tokenizers", *SEGMENTER_PACKAGES.get(self.segmenter, ())))
        # files named by path count by their content: a tokenizer or dictionary replaced in place is another one
        if self.tokenizer.path:
            content["tokenizer_content"] = tokenizers_.fingerprint(tokenizers_.load(self.tokenizer.path))
        user_dict = Path(self.segmenter_options.get("user_dict") or "")
        if user_dict.is_file():  # a missing one is the segmenter's error to report
            content["user_dict_content"] = sha256_file(user_dict)
        weights = self.segmenter_options.get("model_path")
        if weights and Path(weights).is_dir():  # LTP weights replaced in place: their files' names, sizes, times
            content["segmenter_model"] = [(str(f.relative_to(weights)), f.stat().st_size, f.stat().st_mtime_ns)
                                          for f in sorted(Path(weights).rglob("*")) if f.is_file()]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def library_versions(*packages: str) -> dict[str, str | None]:
    """The installed version of each package that decides the prepared content (None: not installed, which
    the code that imports it reports)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


@dataclass
class Prepared:
    """A prepared data folder: manifest, tokenizer, shards and the artifacts built for an objective."""

    root: Path
    manifest: dict
    artifacts: dict[str, Path] = field(default_factory=dict)

    @cached_property
    def tokenizer(self):
        return tokenizers_.load(self.root / "tokenizer")

    def shards(self, split: str) -> list[dict]:
        return self.manifest["splits"][split]["shards"]

    def verify(self) -> None:
        """The tokenizer and every shard file against the manifest; a bad one is named."""
        if tokenizers_.fingerprint(self.tokenizer) != self.manifest["tokenizer_hash"]:
            raise UserError(f"{self.root / 'tokenizer'}: the tokenizer does not match the shards (its fingerprint "
                            f"differs from manifest.json); delete {self.root} and run prepare again")
        for split in self.manifest["splits"].values():
            for shard in split["shards"]:
                for entry in shard["files"].values():
                    path = self.root / entry["file"]
                    if not path.exists():
                        raise UserError(f"{path}: shard missing; delete {self.root} and run prepare again")
                    if sha256_file(path) != entry["sha256"]:
                        raise UserError(f"{path}: checksum does not match manifest.json (corrupted shard); "
                                        f"delete {self.root} and run prepare again")


# name -> builder(prepared, settings, output folder); modules of this package register theirs.
ArtifactBuilder = Callable[[Prepared, Section, Path], None]
ARTIFACTS: dict[str, ArtifactBuilder] = {}


def register_artifact(name: str):
    def add(fn: ArtifactBuilder) -> ArtifactBuilder:
        ARTIFACTS[name] = fn
        return fn

    return add


def _load_plugins() -> None:
    import data_prep

    for module in pkgutil.iter_modules(data_prep.__path__):
        importlib.import_module(f"data_prep.{module.name}")


def prepare(cfg: DataConfig, packing: str = "concat", artifacts: dict[str, Section] | None = None,
            log: Callable[[str], None] = print) -> Prepared:
    """The prepared data for `cfg`, built if missing, plus the requested artifacts."""
    _load_plugins()
    if packing not in PACKERS:
        raise UserError(f"packing '{packing}' is unknown; registered packers: {', '.join(PACKERS)}")
    sources.check(cfg.path, cfg.exclude)
    cache = Path(cfg.cache_dir).expanduser()
    digest = cfg.fingerprint(packing)
    root = cache / "prepared" / digest[:16]
    with _locked(root.with_suffix(".lock")):
        if (root / "manifest.json").exists():
            log(f"data_prep: cache hit, nothing to do ({root})")
        else:
            _build(cfg, packing, digest, root, log)
        prepared = Prepared(root, json.loads((root / "manifest.json").read_text()))
        for name, settings in (artifacts or {}).items():
            prepared.artifacts[name] = _artifact(prepared, name, settings, log)
    return prepared


@contextmanager
def _scratch(final: Path) -> Iterator[Path]:
    """The folder `final` is built in, under a temporary name that the caller renames once complete. Called under
    `final`'s lock: a failure removes it, and so does the next build after a kill (the leftovers of any pid)."""
    for stale in final.parent.glob(f"{final.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _artifact(prepared: Prepared, name: str, settings: Section, log) -> Path:
    if name not in ARTIFACTS:
        raise UserError(f"the objective needs data_prep artifact '{name}', which no module provides "
                        f"(known: {', '.join(ARTIFACTS) or 'none'})")
    key = {"settings": settings.model_dump(mode="json"), "tokenizer": prepared.manifest["tokenizer_hash"],
           "data": prepared.manifest["config_hash"]}
    folder = prepared.root / "artifacts" / f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"
    if (folder / "done.json").exists():
        log(f"data_prep: artifact '{name}' cached ({folder})")
        return folder
    log(f"data_prep: building artifact '{name}'")
    with _scratch(folder) as tmp:
        ARTIFACTS[name](prepared, settings, tmp)
        (tmp / "done.json").write_text(json.dumps(key, indent=1))
        durable.replace(tmp, folder)
    return folder


def _split_of(text: str, fraction: float) -> str:
    """Deterministic document-level split from the text's hash (duplicates share a split)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")
    return "validation" if h / 2**64 < fraction else "train"


def _documents(cfg: DataConfig, cache: Path) -> Iterator[str]:
    docs = sources.read_documents(cfg.path, cfg.text_field, cfg.txt_documents, cfg.encoding_errors,
                                  cfg.hub_split, cache, cfg.exclude)
    return islice(docs, cfg.max_documents)


def _total_bytes(cfg: DataConfig) -> int | None:
    if cfg.path == sources.BUILTIN or cfg.path.startswith(sources.HUB_PREFIX) or cfg.max_documents:
        return None
    return sum(p.stat().st_size for p in sources.files_of(Path(cfg.path).expanduser(), cfg.exclude))


def _trained_tokenizer(cfg: DataConfig, cache: Path, log) -> Path:
    """The tokenizer trained on this corpus with these settings, trained once and shared by every packing,
    row length and segmenter."""
    key = {"source": sources.fingerprint(cfg.path, cfg.exclude), "path": cfg.path, "tokenizer": cfg.tokenizer.model_dump(),
           "validation_fraction": cfg.validation_fraction, "max_documents": cfg.max_documents,
           "text": [cfg.text_field, cfg.txt_documents, cfg.encoding_errors, cfg.hub_split], "format": FORMAT_VERSION,
           "libraries": library_versions("tokenizers")}
    folder = cache / "tokenizers" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    with _locked(folder.with_suffix(".lock")):
        if not (folder / "tokenizer.json").exists():
            log(f"data_prep: training a WordPiece tokenizer (vocabulary {cfg.tokenizer.vocab_size})")
            def training_docs():  # read twice (data_prep/tokenizer.py says why)
                docs = (d for d in _documents(cfg, cache) if _split_of(d, cfg.validation_fraction) == "train")
                return islice(docs, cfg.tokenizer.max_training_documents)

            tok = tokenizers_.train(training_docs, cfg.tokenizer)
            with _scratch(folder) as tmp:
                tok.save_pretrained(str(tmp))
                durable.replace(tmp, folder)
    return folder


def _build(cfg: DataConfig, packing: str, digest: str, root: Path, log) -> None:
    cache = Path(cfg.cache_dir).expanduser()
    log(f"data_prep: preparing {cfg.path} -> {root}")
    with _scratch(root) as tmp:
        tok = tokenizers_.load(cfg.tokenizer.path or _trained_tokenizer(cfg, cache, log))
        tok.model_max_length = cfg.seq_len
        tok.save_pretrained(str(tmp / "tokenizer"))
        special = SpecialIds(cls=tok.cls_token_id, sep=tok.sep_token_id, pad=tok.pad_token_id)
        id_dtype = np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.int32

        writers = {s: ShardWriter(tmp, s, cfg.rows_per_shard, id_dtype) for s in ("train", "validation")}
        counts = {s: {"documents": 0, "tokens": 0} for s in writers}
        packers = {s: PACKERS[packing].for_tokenizer(cfg.seq_len, special, tok) for s in writers}

        def jobs() -> Iterator[tuple[str, list[str]]]:
            pending = {s: [] for s in writers}
            for doc in _documents(cfg, cache):
                split = _split_of(doc, cfg.validation_fraction)
                pending[split].append(doc)
                if len(pending[split]) == DOCS_PER_JOB:
                    yield split, pending[split]
                    pending[split] = []
            yield from ((s, docs) for s, docs in pending.items() if docs)

        num_proc = cfg.num_proc or (1 if cfg.segmenter == "wordpiece" else os.cpu_count() or 1)
        worker_args = (str(tmp / "tokenizer" / "tokenizer.json"), cfg.segmenter, cfg.segmenter_options, num_proc > 1)
        # closed on an error too, so that the error starts a line of its own
        with (tqdm(total=_total_bytes(cfg), unit="B", unit_scale=True, desc="tokenize+pack", file=sys.stderr) as bar,
              _pool(num_proc, worker_args) as imap):
            for split, tokenized, nbytes in imap(tokenize, jobs()):
                counts[split]["documents"] += len(tokenized.lengths)
                counts[split]["tokens"] += int(tokenized.lengths.sum())
                for chunk in packers[split].add(tokenized):
                    writers[split].add(chunk)
                bar.update(nbytes)

        splits = {}
        for split, writer in writers.items():
            shards = writer.close()
            rows = sum(s["rows"] for s in shards)
            if rows == 0:
                raise UserError(f"data.path '{cfg.path}': too little text for one {split} row of {cfg.seq_len} "
                                f"tokens ({counts[split]['documents']} documents); add text, lower data.seq_len "
                                "or raise data.validation_fraction")
            splits[split] = {**counts[split], "rows": rows, "shards": shards}
        manifest = {
            "format": FORMAT_VERSION, "config_hash": digest, "data": cfg.model_dump(mode="json"),
            "packing": packing, "seq_len": cfg.seq_len, "segmenter": cfg.segmenter,
            "tokenizer_hash": tokenizers_.fingerprint(tok), "vocab_size": len(tok), "splits": splits,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        durable.replace(tmp, root)
        log(f"data_prep: {splits['train']['rows']} train rows, {splits['validation']['rows']} validation rows, "
            f"{splits['train']['tokens'] + splits['validation']['tokens']} tokens")


@contextmanager
def _pool(num_proc: int, worker_args: tuple):
    """An ordered `imap` over tokenization jobs: in-process (Rust threads) or over forked workers."""
    if num_proc == 1:
        init_worker(*worker_args)
        yield map
        return
    with get_context("fork").Pool(num_proc, initializer=init_worker, initargs=worker_args) as pool:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=1)
