"""A catalogue of bad inputs: each ends with one line naming the file or field and the fix, exit code 2,
and leaves every earlier output (a finished run folder, the prepared data cache) byte for byte as it was.

The cases run in-process through `pretrain_bench.cli.main`, the same function the console script calls:
most fail in validation before any heavy import, the rest before training starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pretrain_bench import cli
from pretrain_bench.train.run import train
from tests import tasks
from tests.conftest import REPO, tiny_config

CONFIG = REPO / "configs" / "tiny-cpu.yaml"


def tree(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders, and every folder, empty ones included (lock files aside:
    taking a lock is not output)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for folder in folders if folder.exists()
            for p in sorted(folder.rglob("*")) if p.suffix != ".lock"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_overrides, cache_dir):
    """A finished run, the prepared cache it used, and a folder of bad files."""
    root = tmp_path_factory.mktemp("bad")
    run_dir = root / "done"
    train(tiny_config(tiny_overrides, run_dir, "train.max_steps=4", "train.eval_at=[1.0]"))
    files = root / "files"
    files.mkdir()
    (files / "empty_dir").mkdir()
    (files / "empty.txt").write_bytes(b"")
    (files / "latin1.txt").write_bytes("Un caf\xe9 cr\xe8me, s'il vous pla\xeet.\n\nencore".encode("latin-1"))
    (files / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "oops"\n')
    (files / "no_field.jsonl").write_text('{"body": "a document without the text field"}\n')
    (files / "numbers.jsonl").write_text('{"text": "a document"}\n{"text": 42}\n')
    (files / "surrogate.jsonl").write_text('{"text": "half an emoji \\ud83d here"}\n')
    (files / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    (files / "bad.yaml").write_text("run_dir: r\ntrain: [unclosed\n")
    (files / "list.yaml").write_text("- run_dir\n- r\n")
    (files / "notes.txt").write_text("stray run files\n")
    (files / "finetune_int.yaml").write_text("finetune: 3\n")
    orphan = root / "orphan"
    (orphan / "checkpoints").mkdir(parents=True)
    sst = tasks.write(files / "SST-2", "binary", 20, 10)
    wrong = files / "wrong" / "SST-2"
    wrong.mkdir(parents=True)
    (wrong / "train.tsv").write_text("text\tgold\nthe cat sits\t1\n")
    (wrong / "dev.tsv").write_text("text\tgold\nthe cat sits\t1\n")
    return {"root": root, "run": run_dir, "cache": cache_dir, "files": files, "orphan": orphan, "sst": sst,
            "wrong": wrong}


def _cases(w) -> list[tuple[str, list[str], list[str]]]:
    """(id, argv, fragments the error line must hold)."""
    f, fresh = w["files"], str(w["root"] / "fresh")
    train_args = ["train", str(CONFIG), *w["overrides"]]
    new = [*train_args, f"run_dir={fresh}"]
    return [
        ("config-missing", ["train", str(f / "nope.yaml")], ["nope.yaml: config file not found"]),
        ("config-bad-yaml", ["train", str(f / "bad.yaml")], ["bad.yaml: not valid YAML", "fix the syntax"]),
        ("config-not-mapping", ["train", str(f / "list.yaml")], ["list.yaml: the top level must be a mapping"]),
        ("unknown-section", [*new, "trian.lr=0.1"], ["unknown key 'trian'", "did you mean 'train'", "remove or rename"]),
        ("unknown-key", [*new, "train.lrr=0.1"], ["unknown key 'train.lrr'", "did you mean 'lr'"]),
        ("unknown-nested-key", [*new, "objective.masking.rat=0.2"], ["unknown key 'objective.masking.rat'", "'rate'"]),
        ("wrong-type", [*new, "train.max_steps=many"], ["'train.max_steps=many'", "is invalid"]),
        ("out-of-range", [*new, "train.lr=-1"], ["'train.lr'", "greater than 0"]),
        ("bad-choice", [*new, "train.precision=fp8"], ["'train.precision'", "'fp32', 'bf16' or 'auto'"]),
        ("bad-encoding-mode", [*new, "data.encoding_errors=ignore"], ["'data.encoding_errors'", "'strict' or 'replace'"]),
        ("override-syntax", [*new, "train.lr"], ["override 'train.lr'", "key.sub=value"]),
        ("override-after-a-flag", [*new, "--overwrite", "train.lr=-1"],
         ["command-line override 'train.lr=-1'", "greater than 0"]),
        ("override-typo-section", [*new, "buget.minutes=2"],
         ["command-line override 'buget.minutes=2': unknown key 'buget'", "did you mean 'budget'"]),
        ("typo-in-a-list-entry", [*new, "budget.seq_len_curriculum=[{until: 0.5, seqlen: 32}]"],
         ["unknown key 'budget.seq_len_curriculum.0.seqlen'", "did you mean 'seq_len'"]),
        ("base-60-number", [*new, "budget.minutes=1:30"], ["'budget.minutes' = '1:30' is invalid"]),
        ("infinite-number", [*new, "train.lr=.inf"], ["'train.lr' = inf is invalid", "finite number"]),
        ("adam-beta-out-of-range", [*new, "train.adam_betas=[0.9,1.5]"], ["'train.adam_betas.1' = 1.5", "less than 1"]),
        ("run-dir-empty", [*train_args, "run_dir="], ["'run_dir' = '' is invalid", "at least 1 character"]),
        ("override-not-section", [*new, "seed.x=1"], ["'seed' is not a section"]),
        ("no-stop", [*new, "train.max_steps=null"], ["neither train.max_steps nor a budget is set"]),
        ("negative-seed", [*new, "seed=-1"], ["'seed'", "greater than or equal to 0"]),
        ("unknown-objective", [*new, "objective.name=mlmm"], ["unknown objective 'mlmm'", "did you mean 'mlm'"]),
        ("plugin-not-importable", [*new, "objective.name=tests.plugins.missing:Nope"],
         ["objective.name 'tests.plugins.missing:Nope': cannot import it"]),
        ("plugin-not-objective", [*new, "objective.name=tests.plugins.shuffle_objective:NotAnObjective"],
         ["is not a subclass of pretrain_bench.objectives.Objective"]),
        ("objective-model-mismatch", [*new, "objective.name=electra", "model.arch=crammed"],
         ["objective.embedding_sharing 'es' on model.arch crammed", "set objective.generator_width: 1.0"]),
        ("flash-attention-on-the-cpu", [*new, "model.attn_implementation=flash_attention_2"],
         ["model.attn_implementation flash_attention_2 runs on a GPU in bf16 only", "this run is fp32 on the",
          "use model.attn_implementation sdpa"]),
        ("seq-len-vs-positions", [*new, "data.seq_len=1024"],  # across sections: the file and the override named
         ["with command-line override 'data.seq_len=1024': data.seq_len 1024 exceeds model.max_position_embeddings"]),
        ("ramp-without-accumulation", [*new, "budget.batch_size_ramp=0.5"],
         ["with command-line override 'budget.batch_size_ramp=0.5': budget.batch_size_ramp"]),
        ("corpus-missing", [*new, f"data.path={f / 'nowhere'}"], ["data.path", "does not exist"]),
        ("corpus-empty-folder", [*new, f"data.path={f / 'empty_dir'}"], ["data.path", "holds no"]),
        ("corpus-empty-file", [*new, f"data.path={f / 'empty.txt'}"], ["empty.txt", "empty"]),
        ("corpus-not-utf8", [*new, f"data.path={f / 'latin1.txt'}"],
         ["latin1.txt: not UTF-8 at byte", "data.encoding_errors=replace"]),
        ("corpus-bad-json", [*new, f"data.path={f / 'broken.jsonl'}"], ["broken.jsonl:2: invalid JSON"]),
        ("corpus-no-text-field", [*new, f"data.path={f / 'no_field.jsonl'}"],
         ["no_field.jsonl:1: no field 'text'", "data.text_field"]),
        ("corpus-text-not-a-string", [*new, f"data.path={f / 'numbers.jsonl'}"],
         ["numbers.jsonl:2: field 'text' holds int, not text"]),
        ("corpus-lone-surrogate", [*new, f"data.path={f / 'surrogate.jsonl'}"],
         ["surrogate.jsonl:1: field 'text': not valid Unicode", "data.encoding_errors=replace"]),
        ("corpus-bad-parquet", [*new, f"data.path={f / 'broken.parquet'}"],
         ["broken.parquet: not a readable Parquet file"]),
        ("segmenter-unknown", [*new, "data.segmenter=jiebaa"], ["data.segmenter", "unknown segmenter 'jiebaa'"]),
        ("segmenter-option-unknown", [*new, "data.segmenter=jieba", "data.segmenter_options.hmmm=false"],
         ["data.segmenter_options for segmenter jieba: 'hmmm'", "valid keys: hmm, user_dict"]),
        ("segmenter-options-for-wordpiece", [*new, "data.segmenter_options.hmm=false"],
         ["segmenter wordpiece takes no options; remove them"]),
        ("segmenter-option-in-workers", [*new, "data.segmenter=jieba", "data.num_proc=2",
                                         f"data.segmenter_options.user_dict={f / 'no_dict.txt'}"],
         ["data.segmenter_options.user_dict", "does not exist"]),
        ("exclude-matches-nothing", [*new, f"data.path={f}", "data.exclude=[nope.jsonl]"],
         ["data.exclude: 'nope.jsonl' matches no file", "fix the pattern"]),
        ("exclude-everything", [*new, f"data.path={f}", "data.exclude=['*']"],
         ["data.exclude: the patterns leave out every file", "remove or narrow one"]),
        ("exclude-from-a-file", [*new, f"data.path={f / 'notes.txt'}", "data.exclude=[x.txt]"],
         ["data.exclude: only a folder's files", "not a folder"]),
        ("tokenizer-path-missing", [*new, f"data.tokenizer.path={f / 'no_tokenizer'}"],
         ["data.tokenizer.path", "not a transformers tokenizer folder"]),
        ("run-dir-taken", [*train_args, f"run_dir={w['run']}", "train.lr=0.002"],
         [f"run_dir {w['run']} already holds a run", "--resume", "--overwrite"]),
        ("resume-other-config", [*train_args, f"run_dir={w['run']}", "train.lr=0.002", "--resume"],
         ["the run was made with a different config", "train.lr"]),
        ("run-dir-orphan-files", [*train_args, f"run_dir={w['orphan']}"], ["holds run files but no config.yaml"]),
        ("task-wrong-columns", ["finetune", str(w["run"] / "final"), str(w["wrong"])],
         ["dev.tsv:1: expected a header line naming label, sentence", "set the task's format"]),
        ("finetune-no-checkpoint", ["finetune", str(w["root"] / "no_model"), str(w["sst"])],
         ["no_model", "not a transformers model folder"]),
        ("finetune-recipe-not-a-mapping", ["finetune", str(w["run"] / "final"), str(w["sst"]), "--recipe",
                                           str(f / "finetune_int.yaml")], ["'finetune' must be a mapping"]),
        ("finetune-unknown-key", ["finetune", str(w["run"] / "final"), str(w["sst"]), "finetune.lrr=1e-4"],
         ["unknown key 'finetune.lrr'"]),
    ]


CASE_IDS = [c[0] for c in _cases({"files": Path(), "root": Path(), "run": Path(), "orphan": Path(), "sst": Path(),
                                  "wrong": Path(), "overrides": []})]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, world, tiny_overrides, capsys):
    w = {**world, "overrides": [*tiny_overrides, "train.max_steps=4", "train.eval_at=[1.0]"]}
    _, argv, fragments = next(c for c in _cases(w) if c[0] == case)
    fresh = w["root"] / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    watched = (w["run"], w["cache"], w["orphan"], w["files"])
    before = tree(*watched)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pretrain-bench: error: ")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert tree(*watched) == before
    assert not fresh.exists() or not any(fresh.iterdir()), "a refused run wrote into its run folder"


def test_corrupted_shard_is_named_before_training(world, tiny_overrides, tmp_path, capsys):
    """A flipped byte in a cached shard: the run refuses before training, naming the file; nothing is written."""
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    manifest = next(cache.glob("prepared/*/manifest.json"))
    entry = json.loads(manifest.read_text())["splits"]["train"]["shards"][0]["files"]["input_ids"]
    shard = manifest.parent / entry["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(CONFIG), *tiny_overrides, f"data.cache_dir={cache}", "train.max_steps=4",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{shard}: checksum does not match manifest.json" in err, err[-2000:]
    assert not run_dir.exists()


def test_tokenizer_that_does_not_match_the_shards_is_refused(world, tiny_overrides, tmp_path, capsys):
    """A prepared folder whose tokenizer was swapped for another vocabulary: refused before training."""
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    manifest = next(cache.glob("prepared/*/manifest.json"))
    vocab = manifest.parent / "tokenizer" / "tokenizer.json"
    state = json.loads(vocab.read_text())
    pieces = state["model"]["vocab"]
    last = max(pieces, key=pieces.get)
    pieces[last + "x"] = pieces.pop(last)
    vocab.write_text(json.dumps(state))
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(CONFIG), *tiny_overrides, f"data.cache_dir={cache}", "train.max_steps=4",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "tokenizer does not match the shards" in err and str(manifest.parent) in err, err[-2000:]
    assert not run_dir.exists()


def test_non_utf8_replaced_when_configured(world, tiny_overrides, tmp_path):
    """data.encoding_errors=replace: the same file is read, its bad bytes become U+FFFD."""
    from data_prep import sources

    docs = list(sources.read_documents(str(world["files"] / "latin1.txt"), "text", "blank_line", "replace", "train",
                                       tmp_path))
    assert docs == ["Un caf\ufffd cr\ufffdme, s'il vous pla\ufffdt.", "encore"]
