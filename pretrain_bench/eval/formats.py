"""Where each task keeps its examples: the GLUE TSV layouts and the CLUE/FewCLUE JSON-lines layouts,
keyed by a short name (the task folder's name lower-cased without '-' and '_': SST-2 -> sst2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

GLUE_TRAIN = ("train.tsv",)
GLUE_DEV = {"dev": ("dev.tsv",)}
FEWCLUE_TRAIN = ("train_few_all.json", "train.json")  # FewCLUE's merged few-shot set; CLUE's full set
FEWCLUE_DEV = {"dev": ("dev_few_all.json", "dev.json")}
BINARY = ("0", "1")
NLI = ("contradiction", "entailment", "neutral")
QNLI = ("entailment", "not_entailment")


@dataclass(frozen=True)
class Layout:
    """One task's files and fields. `text` names one field (single sentence) or two (a pair)."""

    reader: Literal["tsv", "jsonl"]
    text: tuple[str, ...]
    label: str
    labels: tuple[str, ...] | None  # fixed label names; None: the sorted labels found in the files
    metrics: tuple[str, ...] = ("accuracy",)
    regression: bool = False
    train: tuple[str, ...] = GLUE_TRAIN  # candidate file names, the first that exists is used
    evals: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(GLUE_DEV))
    columns: tuple[str, ...] | None = None  # field names of header-less TSV files
    unlabeled: tuple[str, ...] = ("",)  # label values of rows without a gold label: skipped and counted
    skip_malformed: bool = False  # rows with another number of fields are skipped (QQP has some), not an error
    rewrite: Callable[[dict], dict] | None = None  # builds `text` fields that are not in the files (ValueError: bad row)


def _csl(record: dict) -> dict:
    """CSL pairs the keyword list with the abstract (the CLUE baseline's text_a / text_b)."""
    keywords = record.get("keyword")
    return {**record, "keyword": "；".join(keywords) if isinstance(keywords, list) else str(keywords or "")}


def _cluewsc(record: dict) -> dict:
    """CLUEWSC marks the candidate antecedent with [ ] and the pronoun with < > in the text, so that a
    sentence classifier can see which pair the label is about (as the CLUE baselines do)."""
    text, target = record["text"], record["target"]
    spans = sorted([(target["span1_index"], target["span1_text"], "[", "]"),
                    (target["span2_index"], target["span2_text"], "<", ">")], reverse=True)
    for start, span, left, right in spans:  # the later span first, so the earlier index stays valid
        if text[start:start + len(span)] != span:
            raise ValueError(f"span '{span}' is not at index {start} of the text")
        text = f"{text[:start]}{left}{span}{right}{text[start + len(span):]}"
    return {**record, "text": text}


LAYOUTS: dict[str, Layout] = {
    # GLUE (the official TSV files; test.tsv is unlabeled and not read)
    "cola": Layout("tsv", ("sentence",), "label", BINARY, ("matthews",),
                   columns=("source", "label", "original_label", "sentence")),  # no header line
    "sst2": Layout("tsv", ("sentence",), "label", BINARY),
    "mrpc": Layout("tsv", ("#1 String", "#2 String"), "Quality", BINARY, ("f1", "accuracy")),
    "stsb": Layout("tsv", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), regression=True),
    "qqp": Layout("tsv", ("question1", "question2"), "is_duplicate", BINARY, ("accuracy", "f1"),
                  evals={"dev": ("dev.tsv", "new_dev.tsv")}, skip_malformed=True,
                  columns=("id", "qid1", "qid2", "question1", "question2", "is_duplicate")),
    "mnli": Layout("tsv", ("sentence1", "sentence2"), "gold_label", NLI,
                   evals={"dev": ("dev_matched.tsv",), "dev_mismatched": ("dev_mismatched.tsv",)}),
    "qnli": Layout("tsv", ("question", "sentence"), "label", QNLI),
    "rte": Layout("tsv", ("sentence1", "sentence2"), "label", QNLI),
    "wnli": Layout("tsv", ("sentence1", "sentence2"), "label", BINARY),
    # FewCLUE (few-shot splits) and CLUE (full splits): one JSON object per line
    "tnews": Layout("jsonl", ("sentence",), "label", None, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV),
    "iflytek": Layout("jsonl", ("sentence",), "label", None, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV),
    "csldcp": Layout("jsonl", ("content",), "label", None, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV),
    "ocnli": Layout("jsonl", ("sentence1", "sentence2"), "label", NLI, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV,
                    unlabeled=("", "-")),
    "cmnli": Layout("jsonl", ("sentence1", "sentence2"), "label", NLI, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV,
                    unlabeled=("", "-")),
    "bustm": Layout("jsonl", ("sentence1", "sentence2"), "label", BINARY, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV),
    "afqmc": Layout("jsonl", ("sentence1", "sentence2"), "label", BINARY, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV),
    "csl": Layout("jsonl", ("keyword", "abst"), "label", BINARY, train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV,
                  rewrite=_csl),
    "cluewsc": Layout("jsonl", ("text",), "label", ("false", "true"), train=FEWCLUE_TRAIN, evals=FEWCLUE_DEV,
                      rewrite=_cluewsc),
}

# Formats that are not sentence(-pair) classification, with what to do instead.
UNSUPPORTED = {
    "chid": "ChID is multiple-choice idiom cloze, not sentence classification; it needs a multiple-choice head",
    "cmrc2018": "CMRC 2018 is span extraction (reading comprehension), not sentence classification",
}


def layout_name(folder_name: str) -> str:
    """'SST-2' -> 'sst2', 'STS-B' -> 'stsb', 'CoLA' -> 'cola'."""
    return folder_name.lower().replace("-", "").replace("_", "")
