"""Packing invariants and the prepared-data cache."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_prep import sources
from data_prep.pack import ConcatPacker, SpecialIds, Tokenized
from data_prep.prepare import DataConfig, prepare
from pretrain_bench.errors import UserError

SPECIAL = SpecialIds(cls=2, sep=3, pad=0)


def random_docs(rng, count):
    lengths = rng.integers(1, 300, count)
    ids = rng.integers(5, 1000, lengths.sum()).astype(np.int32)
    starts = rng.random(lengths.sum()) < 0.7
    return Tokenized(ids, starts, lengths)


def test_concat_packing_loses_and_duplicates_nothing():
    rng = np.random.default_rng(0)
    batches = [random_docs(rng, 50) for _ in range(5)]
    packer = ConcatPacker(64, SPECIAL)
    rows = [chunk for batch in batches for chunk in packer.add(batch)]
    ids = np.concatenate([c["input_ids"] for c in rows])
    starts = np.concatenate([c["word_start"] for c in rows])
    assert ids.shape[1] == 64 and (ids[:, 0] == SPECIAL.cls).all() and (ids[:, -1] == SPECIAL.sep).all()
    assert not (ids == SPECIAL.pad).any()
    stream = ids[:, 1:-1].reshape(-1)
    expected = np.concatenate([np.append(d, SPECIAL.sep) for b in batches
                               for d in np.split(b.ids, np.cumsum(b.lengths)[:-1])])
    assert len(expected) - len(stream) < 62  # only the last partial row is dropped
    assert np.array_equal(stream, expected[: len(stream)])  # order kept, nothing lost or duplicated
    # documents are joined by [SEP]; word flags follow the tokens, and every row starts a word
    expected_starts = np.concatenate([np.append(s, True) for b in batches
                                      for s in np.split(b.word_start, np.cumsum(b.lengths)[:-1])])
    body_starts = starts[:, 1:-1].copy()
    body_starts[:, 0] = expected_starts[: len(stream)].reshape(-1, 62)[:, 0]
    assert np.array_equal(body_starts.reshape(-1), expected_starts[: len(stream)])
    assert starts[:, 1].all()


def test_prepare_is_cached_split_is_by_document_and_checksummed(corpus_file, tmp_path, capsys):
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                     tokenizer={"vocab_size": 300}, validation_fraction=0.1)
    first = prepare(cfg)
    manifest = first.manifest
    total_docs = sum(1 for _ in open(corpus_file))
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == total_docs
    assert 0.05 < manifest["splits"]["validation"]["documents"] / total_docs < 0.15
    again = prepare(cfg)
    assert "cache hit, nothing to do" in capsys.readouterr().out
    assert again.root == first.root
    assert prepare(cfg.model_copy(update={"num_proc": 2})).root == first.root  # speed settings key nothing
    # and change nothing: a pool of workers, prepared afresh, writes the very same shards
    parallel = prepare(cfg.model_copy(update={"num_proc": 2, "cache_dir": str(tmp_path / "parallel")}))
    assert parallel.manifest["splits"] == first.manifest["splits"]
    first.verify()
    shard = first.root / first.shards("train")[0]["files"]["input_ids"]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum does not match"):
        first.verify()


def test_a_tokenization_worker_that_cannot_start_fails_its_first_job(corpus_file, tmp_path, monkeypatch):
    """A Pool restarts a failing initializer for ever (a hang); a worker keeps the error for its first job."""
    from data_prep import tokenize as worker

    prepared = prepare(DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                                  tokenizer={"vocab_size": 150, "min_frequency": 1}))
    monkeypatch.setattr(worker, "_state", {})
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # a pool's worker turns it off: restored afterwards
    missing = str(tmp_path / "no_dict.txt")
    worker.init_worker(str(prepared.root / "tokenizer" / "tokenizer.json"), "jieba", {"user_dict": missing}, True)
    with pytest.raises(UserError, match="user_dict .* does not exist"):
        worker.tokenize(("train", ["一个句子"]))
    with pytest.raises(UserError, match="user_dict .* does not exist"):  # in the parent: at once
        worker.init_worker(str(prepared.root / "tokenizer" / "tokenizer.json"), "jieba", {"user_dict": missing}, False)


def test_a_tokenizer_named_by_path_keys_the_cache_by_its_content(corpus_file, tmp_path):
    import shutil

    small, smaller = (prepare(DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                                         tokenizer={"vocab_size": size, "min_frequency": 1})) for size in (150, 120))
    folder = tmp_path / "my-tokenizer"
    shutil.copytree(small.root / "tokenizer", folder)
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), tokenizer={"path": str(folder)})
    before = cfg.fingerprint("concat")
    shutil.rmtree(folder)
    shutil.copytree(smaller.root / "tokenizer", folder)  # retrained in place: same path, another tokenizer
    assert cfg.fingerprint("concat") != before


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """JSON written with ensure_ascii=False keeps U+2028 and U+0085 raw inside strings: they are text."""
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text(json.dumps({"text": "第一段\u2028第二段\x85完"}, ensure_ascii=False) + "\r\n"
                      + json.dumps({"text": "second"}) + "\n", encoding="utf-8")
    docs = list(sources.read_documents(str(corpus), "text", "blank_line", "strict", "train", tmp_path))
    assert docs == ["第一段\u2028第二段\x85完", "second"]


def test_word_starts_follow_wordpiece(corpus_file, tmp_path):
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                     tokenizer={"vocab_size": 150, "min_frequency": 1})
    prepared = prepare(cfg)
    files = prepared.shards("train")[0]["files"]
    ids = np.load(prepared.root / files["input_ids"]["file"])
    starts = np.load(prepared.root / files["word_start"]["file"])
    tokens = np.array(prepared.tokenizer.convert_ids_to_tokens(list(range(len(prepared.tokenizer)))))
    body_tokens, body_starts = tokens[ids[:, 2:-1]], starts[:, 2:-1]
    assert np.array_equal(body_starts, ~np.char.startswith(body_tokens, "##"))
    assert np.char.startswith(body_tokens, "##").any()  # the small vocabulary splits words


def test_special_token_text_is_not_a_special_token(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(f"the [PAD] and [MASK] tokens appear in text number {i}" for i in range(400)))
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "c"), seq_len=32, num_proc=1,
                     tokenizer={"vocab_size": 200, "min_frequency": 1}, validation_fraction=0.3)
    prepared = prepare(cfg)
    ids = np.load(prepared.root / prepared.shards("train")[0]["files"]["input_ids"]["file"])
    tok = prepared.tokenizer
    assert not np.isin(ids, [tok.pad_token_id, tok.mask_token_id]).any()


def test_manifest_records_hashes(corpus_file, tmp_path):
    prepared = prepare(DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                                  tokenizer={"vocab_size": 300}))
    manifest = json.loads((prepared.root / "manifest.json").read_text())
    assert manifest["tokenizer_hash"] and manifest["config_hash"] and manifest["segmenter"] == "wordpiece"
    for shard in manifest["splits"]["train"]["shards"]:
        assert set(shard["files"]) == {"input_ids", "word_start"}
        assert all(len(f["sha256"]) == 64 for f in shard["files"].values())


def test_one_tokenizer_per_corpus_shared_by_every_packing(corpus_file, tmp_path):
    """Tokenizer training breaks ties in hash-map order, so it is trained once and reused: data prepared
    with another row length (or packer, or segmenter) gets the very same tokenizer."""
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, tokenizer={"vocab_size": 300})
    a, b = prepare(cfg), prepare(cfg.model_copy(update={"seq_len": 32}))
    assert a.root != b.root
    assert a.manifest["tokenizer_hash"] == b.manifest["tokenizer_hash"]
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2  # the tokenizer folder and its lock
    assert a.tokenizer.model_max_length == 64 and b.tokenizer.model_max_length == 32


def test_excluded_files_are_not_read_and_do_not_touch_the_cache(corpus_file, tmp_path):
    """data.exclude leaves a folder's matching files out of the documents, and the prepared data does not
    depend on them: editing an excluded file keeps the cache, excluding another file makes new data."""
    folder = tmp_path / "corpus"
    (folder / "code").mkdir(parents=True)
    (folder / "prose.jsonl").write_text(corpus_file.read_text())
    (folder / "code" / "docs.jsonl").write_text('{"text": "def f(x): return x"}\n' * 50)
    cfg = DataConfig(path=str(folder), exclude=["code/*"], cache_dir=str(tmp_path / "cache"), seq_len=64,
                     tokenizer={"vocab_size": 300})
    everything = len(list(sources.read_documents(str(folder), "text", "blank_line", "strict", "train", tmp_path)))
    kept = list(sources.read_documents(str(folder), "text", "blank_line", "strict", "train", tmp_path, cfg.exclude))
    assert len(kept) == everything - 50 and "def f(x): return x" not in kept
    prepared, unfiltered = prepare(cfg), prepare(cfg.model_copy(update={"exclude": []}))
    assert unfiltered.root != prepared.root
    assert "(" in unfiltered.tokenizer.get_vocab() and "(" not in prepared.tokenizer.get_vocab()
    (folder / "code" / "docs.jsonl").write_text('{"text": "edited"}\n')
    assert prepare(cfg).root == prepared.root


def test_every_cache_file_is_on_disk_before_its_folder_takes_its_final_name(corpus_file, tmp_path, monkeypatch):
    """A power cut may reorder unsynced writes and a rename: the tokenizer, the shards and an artifact are each
    fsynced before the rename that publishes them, and the rename before `prepare` returns."""
    from data_prep.cooccur import CooccurrenceConfig

    synced, renames = [], []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])

    def spy(src, dst):  # what is being published, and how much of it was synced by then
        renames.append((dst, {str(p) for p in Path(src).rglob("*")}, len(synced)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), seq_len=64, num_proc=1,
                     tokenizer={"vocab_size": 300})
    prepared = prepare(cfg, "concat", {"cooccurrence": CooccurrenceConfig()})
    published = {Path(dst) for dst, _, _ in renames}
    assert {prepared.root, prepared.artifacts["cooccurrence"]} <= published
    assert any((folder / "tokenizer.json").exists() for folder in published)
    for dst, contents, synced_before in renames:
        assert contents and contents <= set(synced[:synced_before]), dst
        assert str(Path(dst).parent) in synced[synced_before:], dst


def test_the_library_versions_that_decide_the_content_key_the_cache(corpus_file, tmp_path, monkeypatch):
    """An upgrade of tokenizers (training and encoding) or of the chosen segmenter rebuilds the shards;
    an upgrade of a segmenter the config does not use does not."""
    from data_prep import prepare as prepare_module

    wordpiece = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path))
    jieba = DataConfig(path=str(corpus_file), cache_dir=str(tmp_path), segmenter="jieba")
    before = [wordpiece.fingerprint("concat"), jieba.fingerprint("concat")]
    installed = prepare_module.metadata.version

    def upgraded(package):
        monkeypatch.setattr(prepare_module.metadata, "version", lambda p: "99.0" if p == package else installed(p))
        return [wordpiece.fingerprint("concat"), jieba.fingerprint("concat")]

    wordpiece_key, jieba_key = upgraded("jieba")
    assert wordpiece_key == before[0] and jieba_key != before[1]
    assert all(a != b for a, b in zip(upgraded("tokenizers"), before))
    assert upgraded("ltp") == before


def test_a_hub_data_set_is_read_at_its_pinned_revision_and_keyed_by_it(tmp_path, monkeypatch):
    """No network here: `datasets.load_dataset` is replaced by an in-memory data set, which is what it returns."""
    import datasets

    asked = []

    def load_dataset(name, config, split, revision):
        asked.append((name, config, split, revision))
        if revision == "missing":
            raise FileNotFoundError("Revision 'missing' does not exist for dataset 'org/corpus'")
        return datasets.Dataset.from_dict({"text": ["one document", "", "another document"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    read = lambda spec: list(sources.read_documents(spec, "text", "file", "strict", "train", tmp_path))
    assert read("hub:org/corpus:en@v1.0") == ["one document", "another document"]
    assert read("hub:org/corpus") == ["one document", "another document"]
    assert asked == [("org/corpus", "en", "train", "v1.0"), ("org/corpus", None, "train", None)]
    with pytest.raises(UserError, match=r"data.path 'hub:org/corpus@missing': could not load it from the hub "
                                        r"\(FileNotFoundError: Revision 'missing' does not exist.*\); without network"):
        read("hub:org/corpus@missing")
    keys = {DataConfig(path=p).fingerprint("concat") for p in ("hub:org/corpus@v1.0", "hub:org/corpus@v2.0")}
    assert len(keys) == 2
