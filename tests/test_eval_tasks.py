"""Task loaders: the GLUE TSV layouts (CoLA's header-less file, QQP's new_dev.tsv), the CLUE/FewCLUE
JSON layouts, caps and dev splits, the built-in docstrings task, and one-line errors for bad files."""

import json

import pytest

from pretrain_bench.errors import UserError
from pretrain_bench.eval import builtin
from pretrain_bench.eval.tasks import TaskConfig, load_task
from tests.conftest import SHARED_DATA


def write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def load(folder, **settings):
    return load_task(TaskConfig(path=str(folder), **settings), folder)


def test_cola_has_no_header(tmp_path):
    rows = "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe more we study verbs.\ngj04\t1\t\tThey drank.\n"
    task = load(write(tmp_path / "CoLA", {"train.tsv": rows, "dev.tsv": rows}))
    assert task.name == "cola" and task.metrics == ("matthews",) and task.labels == ("0", "1")
    assert task.train.text_a == ["The sailors rode the breeze.", "The more we study verbs.", "They drank."]
    assert task.train.labels == [1, 0, 1] and task.train.text_b is None


def test_sst2_stsb_mrpc_qnli_headers(tmp_path):
    sst2 = load(write(tmp_path / "SST-2", {"train.tsv": "sentence\tlabel\nit 's fine . \t1\nbleak \t0\n",
                                           "dev.tsv": "sentence\tlabel\ngood\t1\n"}))
    assert sst2.train.text_a == ["it 's fine . ", "bleak "] and sst2.train.labels == [1, 0]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    stsb = load(write(tmp_path / "STS-B", {n: header + "0\tg\tf\t2012\t1\tn\tn\tA man.\tA person.\t4.750\n"
                                           for n in ("train.tsv", "dev.tsv")}))
    assert stsb.regression and stsb.num_labels == 1 and stsb.train.labels == [4.75]
    assert stsb.train.text_b == ["A person."] and stsb.metrics == ("pearson", "spearman")
    mrpc_rows = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tHe said.\tHe stated.\n0\t9\t10\tA.\tB.\n"
    mrpc = load(write(tmp_path / "MRPC", {"train.tsv": mrpc_rows, "dev.tsv": mrpc_rows}))
    assert mrpc.train.labels == [1, 0] and mrpc.train.text_b == ["He stated.", "B."] and mrpc.metrics == ("f1", "accuracy")
    qnli = "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis.\tnot_entailment\n1\tWho?\tHim.\tentailment\n"
    task = load(write(tmp_path / "QNLI", {"dev.tsv": qnli * 1}), split_dev=0.5)
    assert len(task.train) == 1 and len(task.evals["dev"]) == 1
    assert sorted(task.train.labels + task.evals["dev"].labels) == [0, 1]


def test_qqp_new_dev_without_header_skips_the_malformed_row(tmp_path):
    rows = ["1\t2\t3\tHow?\tWhy?\t0", "4\t5\t6\tWhere?\tThere? 0", "7\t8\t9\tWhen?\tNow?\t1", "10\t11\t12\tA?\tB?\t1"]
    folder = write(tmp_path / "QQP", {"new_dev.tsv": "\n".join(rows) + "\n"})
    with pytest.raises(UserError, match="split_dev"):
        load(folder)
    task = load(folder, split_dev=1 / 3)
    assert len(task.train) + len(task.evals["dev"]) == 3
    assert any("skipped 1 row with missing fields" in note for note in task.notes)
    assert task.metric_keys() == ["accuracy", "f1"]


def test_mnli_reports_matched_and_mismatched(tmp_path):
    header = "index\tsentence1\tsentence2\tgold_label\n"
    rows = header + "0\tA.\tB.\tneutral\n1\tC.\tD.\tcontradiction\n"
    task = load(write(tmp_path / "MNLI", {"train.tsv": rows, "dev_matched.tsv": rows, "dev_mismatched.tsv": rows}))
    assert task.labels == ("contradiction", "entailment", "neutral") and task.train.labels == [2, 0]
    assert list(task.evals) == ["dev", "dev_mismatched"]
    assert task.metric_keys() == ["accuracy", "accuracy_mismatched"]


def jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_fewclue_layouts(tmp_path):
    tnews = [{"label": 100, "label_desc": "news_story", "sentence": "故事"},
             {"label": "102", "label_desc": "news_entertainment", "sentence": "娱乐"}]
    task = load(write(tmp_path / "tnews", {"train_few_all.json": jsonl(tnews), "dev_few_all.json": jsonl(tnews[::-1])}))
    assert task.labels == ("100", "102") and task.train.labels == [0, 1] and task.evals["dev"].labels == [1, 0]
    ocnli = [{"sentence1": "村里", "sentence2": "只有", "label": "neutral"}, {"sentence1": "a", "sentence2": "b", "label": "-"}]
    task = load(write(tmp_path / "ocnli", {"train_few_all.json": jsonl(ocnli), "dev_few_all.json": jsonl(ocnli)}))
    assert task.train.labels == [2] and task.train.text_b == ["只有"] and "skipped 1 row without a gold label" in task.notes[0]
    csl = [{"abst": "摘要", "keyword": ["环境", "侵权"], "label": "1"}]
    task = load(write(tmp_path / "csl", {"train_few_all.json": jsonl(csl), "dev_few_all.json": jsonl(csl)}))
    assert task.train.text_a == ["环境；侵权"] and task.train.text_b == ["摘要"]
    wsc = [{"text": "刀光一闪，那舌头跳出来，它想走。", "label": "true",
            "target": {"span1_index": 6, "span1_text": "舌头", "span2_index": 12, "span2_text": "它"}}]
    task = load(write(tmp_path / "cluewsc", {"train_few_all.json": jsonl(wsc), "dev_few_all.json": jsonl(wsc)}))
    assert task.train.text_a == ["刀光一闪，那[舌头]跳出来，<它>想走。"] and task.train.labels == [1]
    wsc[0]["target"]["span2_index"] = 11
    with pytest.raises(UserError, match=r"train_few_all.json:1: .*span '它' is not at index 11"):
        load(write(tmp_path / "cluewsc", {"train_few_all.json": jsonl(wsc)}))


def test_caps_pick_a_fixed_subset_and_dev_file_override(tmp_path):
    rows = "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(50))
    folder = write(tmp_path / "SST-2", {"train.tsv": rows, "dev.tsv": rows, "other.tsv": "sentence\tlabel\nx\t0\n"})
    a, b = load(folder, max_train_examples=10, max_dev_examples=5), load(folder, max_train_examples=10)
    assert len(a.train) == 10 and a.train.text_a == b.train.text_a and len(a.evals["dev"]) == 5
    assert a.train.text_a != [f"s{i}" for i in range(10)]  # random, not the file's head
    assert load(folder, dev_file="other.tsv").evals["dev"].text_a == ["x"]


@pytest.mark.parametrize("folder,files,settings,message", [
    ("SST-2", {"train.tsv": "sentence\tlabel\ngood\n", "dev.tsv": "sentence\tlabel\nx\t1\n"}, {},
     r"train.tsv:2: 1 tab-separated fields"),
    ("CoLA", {n: "gj04\t1\t\tThe sailors\trode the breeze.\n" for n in ("train.tsv", "dev.tsv")}, {},
     r"\.tsv:1: 5 tab-separated fields where the header has 4"),  # a stray tab would cut the sentence
    ("SST-2", {"train.tsv": "sentence\tlabel\ngood\t2\n", "dev.tsv": "sentence\tlabel\nx\t1\n"}, {},
     r"train.tsv:2: label '2' is not one of 0, 1"),
    ("SST-2", {"train.tsv": "text\tlabel\ngood\t1\n", "dev.tsv": "sentence\tlabel\nx\t1\n"}, {},
     r"train.tsv:1: expected a header line"),
    ("SST-2", {"train.tsv": "sentence\tlabel\ngood\t1\n"}, {}, r"no evaluation file \(dev.tsv\)"),
    ("STS-B", {n: "sentence1\tsentence2\tscore\na\tb\thigh\n" for n in ("train.tsv", "dev.tsv")}, {},
     r"\.tsv:2: score 'high' is not a number"),
    ("bustm", {"train_few_all.json": "{\"sentence1\": \n", "dev_few_all.json": ""}, {},
     r"train_few_all.json:1: invalid JSON"),
    ("bustm", {"train_few_all.json": "{\"text\": \"a\", \"label\": \"1\"}\n", "dev_few_all.json": ""}, {},
     r"train_few_all.json:1: no field 'sentence1', 'sentence2'"),
    ("glue-sst", {"train.tsv": ""}, {}, r"unknown task format 'gluesst'"),
    ("sst", {"train.tsv": ""}, {}, r"\(did you mean 'sst2'\?\)"),
    ("chid", {"train.tsv": ""}, {}, r"multiple-choice"),
])
def test_bad_task_files_are_one_clear_line(tmp_path, folder, files, settings, message):
    with pytest.raises(UserError, match=message):
        load(write(tmp_path / folder, files), **settings)


def test_docstrings_task_is_balanced_split_by_hash_and_deterministic(monkeypatch, tmp_path):
    packages = {"torch": 500, "numpy": 300, "email": 40, "scipy": 120, "xml": 10, "json": 90, "tkinter": 70, "os": 5}
    records = [{"text": f"{p} doc {i} " + "word " * 20, "package": p} for p, n in packages.items() for i in range(n)]
    monkeypatch.setattr(builtin, "builtin_docstrings", lambda cache_dir: records)
    task = load_task(TaskConfig(path="builtin:docstrings"), tmp_path)
    assert task.labels == ("email", "json", "numpy", "scipy", "tkinter", "torch")  # the six biggest, sorted
    per_class = [task.train.labels.count(i) + task.evals["dev"].labels.count(i) for i in range(6)]
    assert per_class == [min(packages[p], builtin.PER_CLASS) for p in task.labels]
    dev_share = len(task.evals["dev"]) / (len(task.train) + len(task.evals["dev"]))
    assert abs(dev_share - builtin.DEV_SHARE) < 0.05
    assert not set(task.train.text_a) & set(task.evals["dev"].text_a)
    monkeypatch.setattr(builtin, "builtin_docstrings", lambda cache_dir: records[::-1])  # harvest order
    again = load_task(TaskConfig(path="builtin:docstrings"), tmp_path)
    assert sorted(again.evals["dev"].text_a) == sorted(task.evals["dev"].text_a)


def test_shared_glue_and_fewclue_files():
    glue, fewclue = SHARED_DATA / "tasks" / "glue", SHARED_DATA / "tasks" / "fewclue"
    cola = load(glue / "CoLA")
    assert (len(cola.train), len(cola.evals["dev"])) == (8551, 1043)
    assert 0.6 < sum(cola.evals["dev"].labels) / 1043 < 0.8  # CoLA dev is about 69% acceptable
    qqp = load(glue / "QQP", split_dev=0.5)
    assert len(qqp.train) + len(qqp.evals["dev"]) == 23496
    sst2 = load(glue / "SST-2", max_train_examples=1000)
    assert len(sst2.train) == 1000 and len(sst2.evals["dev"]) == 872
    stsb = load(glue / "STS-B")
    assert (len(stsb.train), len(stsb.evals["dev"])) == (5749, 1500) and max(stsb.train.labels) == 5.0
    tnews = load(fewclue / "tnews")
    assert len(tnews.labels) == 15
    assert load(fewclue / "cluewsc").labels == ("false", "true")
