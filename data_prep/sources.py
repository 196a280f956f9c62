"""Where documents come from: local .txt/.jsonl/.parquet files or folders, a hub data set (online only),
or the built-in corpus of docstrings harvested with `ast` from the installed Python standard library and
this project's dependencies (real English prose that exists on every machine that can run us)."""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import json
import os
import sys
import sysconfig
from importlib import metadata
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator, Sequence

from data_prep import durable
from pretrain_bench.errors import UserError

BUILTIN = "builtin:docstrings"
HUB_PREFIX = "hub:"
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# Packages whose docstrings join the standard library's: the project's own dependencies.
BUILTIN_PACKAGES = ("torch", "transformers", "numpy", "scipy", "datasets", "deepspeed", "matplotlib",
                    "pydantic", "tokenizers", "yaml", "tqdm", "jieba", "safetensors", "huggingface_hub")
_SKIP_DIRS = {"test", "tests", "testing", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
MIN_DOCSTRING_WORDS = 20


def files_of(path: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The corpus files under `path` (a file or a folder), sorted for a deterministic order, without those
    whose path relative to the folder matches a glob pattern of `exclude`."""
    if path.is_file():
        return [path]
    return _kept(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES), path, exclude)


def _kept(files: list[Path], root: Path, exclude: Sequence[str]) -> list[Path]:
    return [p for p in files if not any(_matches(p.relative_to(root), pattern) for pattern in exclude)]


def _matches(relative: Path, pattern: str) -> bool:
    # case-sensitive everywhere, so a config selects the same files (and cache entry) on every platform
    return fnmatch.fnmatchcase(relative.as_posix(), pattern)


def fingerprint(spec: str, exclude: Sequence[str] = ()) -> str:
    """Identity of the source content: names, sizes and modification times (or the installed packages and their
    versions: an upgrade changes the docstrings)."""
    if spec == BUILTIN:
        return hashlib.sha256(json.dumps([_builtin_roots(), _builtin_versions()]).encode()).hexdigest()
    if spec.startswith(HUB_PREFIX):  # its text only: pin '@<revision>', or a hub update goes unnoticed
        return spec
    path = Path(spec).expanduser()
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files_of(path, exclude)]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def check(spec: str, exclude: Sequence[str] = (), field: str = "data.path") -> None:
    """Fail before any work if the source cannot be read."""
    not_a_folder = (f"data.exclude: only a folder's files can be excluded, and data.path '{spec}' is not a folder; "
                    "remove data.exclude or point data.path at a folder")
    if spec == BUILTIN or spec.startswith(HUB_PREFIX):
        if exclude:
            raise UserError(not_a_folder)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{field}: '{spec}' does not exist; give a text file or folder, '{BUILTIN}', "
                        f"or '{HUB_PREFIX}<dataset name>'")
    if exclude and path.is_file():
        raise UserError(not_a_folder)
    everything = files_of(path)
    for pattern in exclude:
        if not any(_matches(p.relative_to(path), pattern) for p in everything):
            raise UserError(f"data.exclude: '{pattern}' matches no file under '{spec}' (patterns match paths "
                            "relative to the folder, such as 'python311_docs.jsonl' or 'code/*'); fix the pattern")
    if not everything:
        raise UserError(f"{field}: '{spec}' holds no {'/'.join(SUFFIXES)} files; point it at the corpus")
    files = _kept(everything, path, exclude)
    if not files:
        raise UserError(f"data.exclude: the patterns leave out every file under '{spec}'; remove or narrow one")
    if all(p.stat().st_size == 0 for p in files):
        raise UserError(f"{field}: '{spec}' is empty (every corpus file has 0 bytes); point it at the corpus")


def read_documents(spec: str, text_field: str, txt_documents: str, encoding_errors: str,
                   hub_split: str, cache_dir: Path, exclude: Sequence[str] = ()) -> Iterator[str]:
    """Every document of the source, in a deterministic order; empty documents are dropped."""
    if spec == BUILTIN:
        for record in builtin_docstrings(cache_dir):
            yield record["text"]
        return
    if spec.startswith(HUB_PREFIX):
        yield from _hub_documents(spec[len(HUB_PREFIX):], hub_split, text_field)
        return
    for path in files_of(Path(spec).expanduser(), exclude):
        for text in _file_documents(path, text_field, txt_documents, encoding_errors):
            if text.strip():
                yield text


def _decode(path: Path, data: bytes, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 at byte {e.start}; convert the file, or set "
                        "data.encoding_errors=replace to substitute U+FFFD") from None


def _file_documents(path: Path, text_field: str, txt_documents: str, errors: str) -> Iterator[str]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: not a readable Parquet file ({e}); rewrite it or leave it out with "
                            "data.exclude") from None
        if text_field not in table.column_names:
            raise UserError(f"{path}: no column '{text_field}' (has {table.column_names}); set data.text_field")
        for row, value in enumerate(table.column(text_field).to_pylist()):
            if value is not None:
                yield _text(value, f"{path}: row {row}, column '{text_field}'", errors)
        return
    text = _decode(path, path.read_bytes(), errors)
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: invalid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict) or text_field not in record:
                raise UserError(f"{path}:{number}: no field '{text_field}'; set data.text_field to the text key")
            if record[text_field] is not None:
                yield _text(record[text_field], f"{path}:{number}: field '{text_field}'", errors)
    elif txt_documents == "file":
        yield text
    elif txt_documents == "line":
        yield from text.splitlines()
    else:  # blank_line: paragraphs separated by empty lines
        yield from (block for block in text.replace("\r\n", "\n").split("\n\n"))


def _lines(text: str) -> list[str]:
    """JSON Lines ended by \\n (or \\r\\n) only: str.splitlines() also cuts at U+2028, U+0085 and form feeds,
    which JSON written with ensure_ascii=False keeps raw inside strings."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _text(value, where: str, errors: str) -> str:
    """A document's text as UTF-8 can hold it; anything else is named with where it is."""
    if not isinstance(value, str):
        raise UserError(f"{where} holds {type(value).__name__}, not text; set data.text_field to the text key")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, which JSON's \\ud83d escapes can spell
        if errors == "strict":
            raise UserError(f"{where}: not valid Unicode at character {e.start} (a lone surrogate); fix the text, or "
                            "set data.encoding_errors=replace to substitute U+FFFD") from None
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _hub_documents(name: str, split: str, text_field: str) -> Iterator[str]:
    import datasets

    named, _, revision = name.partition("@")
    dataset_name, _, config_name = named.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, config_name or None, split=split, revision=revision or None)
    except Exception as e:  # offline, unknown name, no such split: all end the same way for the user
        raise UserError(f"data.path '{HUB_PREFIX}{name}': could not load it from the hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); without network, download it elsewhere and give "
                        "data.path as a local .parquet/.jsonl file or folder") from None
    if text_field not in dataset.column_names:
        raise UserError(f"data.path '{HUB_PREFIX}{name}' has no column '{text_field}' "
                        f"(has {dataset.column_names}); set data.text_field")
    yield from (t for t in dataset[text_field] if t)


# --- the built-in corpus -------------------------------------------------------------------------

def _builtin_roots() -> list[tuple[str, str]]:
    """(label, folder) for the standard library and each installed dependency, in a fixed order."""
    roots = [("stdlib", sysconfig.get_paths()["stdlib"])]
    purelib = Path(sysconfig.get_paths()["purelib"])
    for package in BUILTIN_PACKAGES:
        folder = purelib / package
        if folder.is_dir():
            roots.append((package, str(folder)))
    return roots


@functools.cache  # 0.4 s to scan the installed distributions; they do not change under a running process
def _builtin_versions() -> dict[str, str]:
    """Python's version and each harvested package's."""
    distributions = metadata.packages_distributions()  # import name -> distribution names
    return {"python": sys.version, **{package: metadata.version(distributions[package][0])
                                      for package in BUILTIN_PACKAGES if package in distributions}}


def _module_label(label: str, root: Path, file: Path) -> str:
    """The package a docstring comes from: the top-level stdlib module, or the dependency's name."""
    if label != "stdlib":
        return label
    return file.relative_to(root).parts[0].removesuffix(".py")


def _docstrings(job: tuple[str, str, str]) -> list[dict]:
    label, root, file = job
    try:
        tree = ast.parse(Path(file).read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    package = _module_label(label, Path(root), Path(file))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= MIN_DOCSTRING_WORDS:
                out.append({"text": doc, "package": package, "source": label})
    return out


def builtin_docstrings(cache_dir: Path) -> list[dict]:
    """Docstrings of at least 20 words, de-duplicated, with the package each comes from.
    Harvested once per set of installed packages and cached as JSONL."""
    cache = cache_dir / f"builtin-docstrings-{fingerprint(BUILTIN)[:16]}.jsonl"
    if cache.exists():
        return [json.loads(line) for line in _lines(cache.read_text(encoding="utf-8")) if line]
    jobs = []
    for label, root in _builtin_roots():
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            jobs += [(label, root, os.path.join(folder, f)) for f in sorted(files) if f.endswith(".py")]
    seen, records = set(), []
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        for found in pool.imap(_docstrings, jobs, chunksize=32):
            for record in found:
                if record["text"] not in seen:
                    seen.add(record["text"])
                    records.append(record)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    durable.replace(tmp, cache)
    return records
