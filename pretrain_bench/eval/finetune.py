"""GLUE-sane fine-tuning (cramming): one global recipe for every task, several seeds, the dev score at
the end of training (no per-task search, no best-epoch picking). Plain PyTorch on
`AutoModelForSequenceClassification`, so any exported checkpoint (BERT, the crammed ModernBERT layout,
an ELECTRA discriminator) and any plain transformers checkpoint is fine-tuned the same way."""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from tqdm import tqdm

from pretrain_bench.errors import UserError
from pretrain_bench.eval.metrics import METRICS, task_score
from pretrain_bench.eval.tasks import Examples, Task, TaskConfig
from pretrain_bench.section import Beta, Section, merged
from pretrain_bench.train.engine import takes_weight_decay
from pretrain_bench.train.host_memory import keep_freed_memory
from pretrain_bench.train.run import EXPORT_INFO
from pretrain_bench.train.schedules import ScheduleConfig, lr_factor

Init = Literal["pretrained", "random"]
GLUE_SANE_SCHEDULE = {"shape": "cosine", "warmup": 0.1}  # fine-tuning's defaults, not pre-training's


class FinetuneConfig(Section):
    """The one recipe every task is fine-tuned with. Defaults are cramming's GLUE-sane (eval/GLUE_sane.yaml
    with optim/adam.yaml); tiny models on a CPU want a larger lr and fewer epochs (see configs/)."""

    epochs: int = Field(5, ge=1, description="passes over the training set")
    batch_size: int = Field(16, ge=1, description="examples per optimizer step")
    lr: float = Field(4e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay (not on biases and norms)")
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.98), description="AdamW betas, each in [0, 1)")
    adam_eps: float = Field(1e-6, gt=0, description="AdamW epsilon")
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(**GLUE_SANE_SCHEDULE),
                                     description="learning-rate shape over the fine-tuning steps")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip (0: off)")
    max_seq_len: int = Field(128, ge=8, description="tokens per example after truncation, specials included")
    seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="one fine-tuning run per seed (head "
                             "initialisation, data order, dropout); the report gives their median and spread")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout while fine-tuning, on every dropout "
                                  "of the encoder and head (cramming pre-trains without and fine-tunes with 0.1); "
                                  "null: the checkpoint's own")
    pooling: Literal["cls", "mean"] | None = Field(None, description="what the classifier reads: the [CLS] "
                                                   "vector or the mean over tokens (crammed/ModernBERT only); "
                                                   "null: the checkpoint's own")
    layer_lr_decay: float = Field(1.0, ge=0, le=1, description="each layer's lr is the one above it times this "
                                  "(ELECTRA fine-tunes with 0.8): what sits above the last layer (pooler, head, "
                                  "classifier) at finetune.lr, the last layer at lr x decay, ..., the embeddings "
                                  "at lr x decay^(layers + 1); 1: one lr everywhere; 0: the encoder stays frozen")
    reinit_top_layers: int = Field(0, ge=0, description="encoder layers, counted from the top, that start from "
                                   "fresh weights instead of the checkpoint's (Zhang et al., 2021: the top layers "
                                   "are specialised to the pre-training task); 0: keep every pre-trained layer")
    freeze_embeddings: bool = Field(False, description="keep the embedding layer as the checkpoint has it (Kim, "
                                    "2014, 'static' word vectors): words absent from the labelled set keep their "
                                    "place beside the words it moves; the floor's random embeddings stay frozen too")
    eval_batch_size: int = Field(128, ge=1, description="examples per evaluation forward pass")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")
    keep_freed_memory: bool = Field(True, description="on a CPU under glibc, as train.keep_freed_memory")

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_defaults(cls, value):  # `schedule.floor: 0.1` keeps the cosine shape and its warm-up
        return merged(GLUE_SANE_SCHEDULE, value) if isinstance(value, dict) else value


class FinetuneJob(Section):
    """What `pretrain-bench finetune` validates: the recipe and the task."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="the fine-tuning recipe")
    task: TaskConfig = Field(description="the task to fine-tune on")


@dataclass(frozen=True)
class Encoded:
    """Token ids of a task's examples, ready for batching."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)


def model_folder(checkpoint: str | Path) -> Path:
    """The transformers folder to fine-tune: the checkpoint itself, the model our export lists first
    in pretrain_bench.json (the one meant for fine-tuning, e.g. ELECTRA's discriminator), or a run
    folder's final/."""
    path = Path(checkpoint).expanduser()
    if (path / "final" / EXPORT_INFO).is_file():
        path = path / "final"
    if (path / "config.json").is_file():
        return path
    if (path / EXPORT_INFO).is_file():
        models = json.loads((path / EXPORT_INFO).read_text()).get("models") or []
        if models and (path / models[0] / "config.json").is_file():
            return path / models[0]
    raise UserError(f"checkpoint '{checkpoint}': not a transformers model folder (config.json), an export "
                    f"({EXPORT_INFO} listing its models) or a run folder with final/; give one of those")


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint '{folder}': no usable tokenizer ({str(e).splitlines()[0][:200]}); "
                        "save the tokenizer beside the model (our exports do)") from None


# The dropout rates of the transformers families we export (BERT and ELECTRA; ModernBERT).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                "embedding_dropout", "attention_dropout", "mlp_dropout")


def build_model(folder: Path, task: Task, init: Init, seed: int, dropout: float | None = None,
                pooling: str | None = None, reinit_top_layers: int = 0):
    """The checkpoint's encoder with a fresh task head, or (init='random') the same architecture with
    fresh weights everywhere: the floor a pre-trained encoder has to beat. `dropout` replaces every
    dropout rate of the checkpoint's config, `pooling` its classifier pooling; the top `reinit_top_layers`
    encoder layers of a pre-trained one get fresh weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with _quiet_transformers():
        config = AutoConfig.from_pretrained(str(folder), num_labels=task.num_labels, local_files_only=True)
        config.problem_type = "regression" if task.regression else "single_label_classification"
        if dropout is not None:
            for key in DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, dropout)
        if pooling is not None:
            if not hasattr(config, "classifier_pooling"):
                raise UserError(f"finetune.pooling '{pooling}': {folder} is a {config.model_type} checkpoint, whose "
                                "classifier always reads the [CLS] vector; set finetune.pooling: null (pooling is "
                                "a choice of the crammed architecture, ModernBERT)")
            config.classifier_pooling = pooling
        if reinit_top_layers > config.num_hidden_layers:
            raise UserError(f"finetune.reinit_top_layers {reinit_top_layers}: {folder} has "
                            f"{config.num_hidden_layers} encoder layers; give at most {config.num_hidden_layers}")
        torch.manual_seed(seed)  # the new head (and, for the floor, every weight)
        # fp32 whatever the checkpoint's dtype: transformers would build a bf16-saved one (and its floor) in
        # bf16, whose AdamW updates round away
        if init == "random":
            return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            str(folder), config=config, dtype=torch.float32, local_files_only=True, output_loading_info=True)
        # inside the encoder (its pooler aside, which an MLM checkpoint lacks); the task head sits outside it
        fresh = [name for name in loading["missing_keys"]
                 if name.startswith(f"{model.base_model_prefix}.") and ".pooler." not in name]
        if fresh:  # transformers would start them from random values and only warn (silenced above)
            raise UserError(f"{folder}: {len(fresh)} encoder weight(s) are missing from the checkpoint "
                            f"({', '.join(sorted(fresh)[:3])}), so the 'pre-trained' model would be partly random; "
                            "export it again, or give a checkpoint of this architecture")
        if reinit_top_layers:
            reinit_top(model, reinit_top_layers, AutoModelForSequenceClassification.from_config(config,
                                                                                             dtype=torch.float32))
        return model


def reinit_top(model, count: int, fresh) -> None:
    """Copy the top `count` encoder layers of `fresh` (a model of the same config with transformers' own
    initialisation) into `model`: the loaded weights are marked as initialised, so re-running the
    initialisers in place would leave them as they are."""
    num_layers = model.config.num_hidden_layers
    fresh_weights = fresh.state_dict()
    top = {name: fresh_weights[name] for name in fresh_weights
           if num_layers - count < layer_depth(name, num_layers) <= num_layers}
    model.load_state_dict(top, strict=False)


@contextmanager
def _quiet_transformers():
    """Loading an MLM checkpoint into a classifier reports the new head and the dropped MLM head:
    expected here, so neither that report nor a progress bar per seed is shown."""
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")  # BERT/ELECTRA: encoder.layer.3.; ModernBERT: layers.3.


def layer_depth(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for what sits above the last layer."""
    if "embeddings" in name:
        return 0
    found = LAYER_INDEX.search(name)
    return int(found.group(1)) + 1 if found else num_layers + 1


def layerwise_groups(model, weight_decay: float, decay: float, freeze_embeddings: bool = False) -> list[dict]:
    """AdamW groups by depth and weight decay, each with the `lr_scale` of its depth; a depth whose scale is
    0 (and the embeddings, with `freeze_embeddings`) is frozen instead (no gradients computed)."""
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        depth = layer_depth(name, num_layers)
        scale = 0.0 if freeze_embeddings and depth == 0 else decay ** (num_layers + 1 - depth)
        if scale == 0:
            param.requires_grad_(False)
            continue
        param_decay = weight_decay if takes_weight_decay(name, param) else 0.0
        group = groups.setdefault((scale, param_decay), {"params": [], "weight_decay": param_decay, "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def encode(tokenizer, examples: Examples, max_seq_len: int, regression: bool) -> Encoded:
    pairs = (examples.text_a,) if examples.text_b is None else (examples.text_a, examples.text_b)
    out = tokenizer(*pairs, truncation=True, max_length=max_seq_len)
    dtype = torch.float32 if regression else torch.long
    return Encoded(out["input_ids"], out.get("token_type_ids"), torch.tensor(examples.labels, dtype=dtype))


def _batch(data: Encoded, indices, pad_id: int, use_types: bool) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to their longest one."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if use_types and data.token_type_ids is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if use_types:
        batch["token_type_ids"] = types
    return batch


def _takes_token_types(model) -> bool:
    """ModernBERT has no segment embeddings; BERT and ELECTRA have two."""
    return ("token_type_ids" in inspect.signature(model.forward).parameters
            and getattr(model.config, "type_vocab_size", 2) >= 2)


def _loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels)
    return F.cross_entropy(logits.float(), labels)


def predict(model, data: Encoded, pad_id: int, batch_size: int, regression: bool) -> np.ndarray:
    """Label indices (or scores) for every example, in order; batches of similar length for speed."""
    model.eval()
    use_types = _takes_token_types(model)
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    outputs = np.empty(len(data), dtype=np.float64 if regression else np.int64)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            logits = model(**_batch(data, chosen, pad_id, use_types)).logits.float()
            outputs[chosen] = (logits.squeeze(-1) if regression else logits.argmax(-1)).numpy()
    return outputs


def evaluate(model, task: Task, evals: dict[str, Encoded], pad_id: int, batch_size: int) -> dict[str, float]:
    """Every metric of the task on every evaluation set (keys as Task.metric_keys)."""
    values = {}
    for split, data in evals.items():
        predictions = predict(model, data, pad_id, batch_size, task.regression)
        labels = data.labels.numpy()
        for metric in task.metrics:
            key = metric if split == "dev" else f"{metric}_{split.removeprefix('dev_')}"
            values[key] = METRICS[metric](predictions, labels)
    return values


def finetune_once(folder: Path, tokenizer, task: Task, train: Encoded, evals: dict[str, Encoded],
                  cfg: FinetuneConfig, seed: int, init: Init = "pretrained") -> dict:
    """Fine-tune one seed and score it on the evaluation sets; returns the result record."""
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory and not torch.cuda.is_available():
        keep_freed_memory()
    model = build_model(folder, task, init, seed, cfg.dropout, cfg.pooling, cfg.reinit_top_layers)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.max_seq_len > limit:
        raise UserError(f"finetune.max_seq_len {cfg.max_seq_len} exceeds the model's max_position_embeddings "
                        f"{limit} ({folder}); lower finetune.max_seq_len")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    use_types = _takes_token_types(model)
    groups = layerwise_groups(model, cfg.weight_decay, cfg.layer_lr_decay, cfg.freeze_embeddings)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step, epoch_losses = 0, []
    model.train()
    bar = tqdm(total=total, desc=f"finetune {task.name} seed {seed} ({init})", unit="step", leave=False,
               file=sys.stderr, dynamic_ncols=True)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        losses = []
        for first in range(0, len(order), cfg.batch_size):
            chosen = order[first:first + cfg.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(step / total, cfg.schedule)
            logits = model(**_batch(train, chosen, pad_id, use_types)).logits
            loss = _loss(logits, train.labels[chosen], task.regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update()
            bar.set_postfix_str(f"loss {losses[-1]:.3f}", refresh=False)
        epoch_losses.append(float(np.mean(losses)))
    bar.close()
    metrics = evaluate(model, task, evals, pad_id, cfg.eval_batch_size)
    return {"task": task.name, "seed": seed, "init": init, "model": str(folder), "metrics": metrics,
            "score": task_score(metrics), "train_examples": len(train),
            "eval_examples": {split: len(data) for split, data in evals.items()}, "steps": total,
            "epoch_train_loss": epoch_losses, "seconds": round(time.perf_counter() - start, 3)}


def encode_task(tokenizer, task: Task, max_seq_len: int) -> tuple[Encoded, dict[str, Encoded]]:
    return (encode(tokenizer, task.train, max_seq_len, task.regression),
            {split: encode(tokenizer, examples, max_seq_len, task.regression) for split, examples in task.evals.items()})


def finetune_seeds(checkpoint: str | Path, task: Task, cfg: FinetuneConfig, init: Init = "pretrained",
                   log: Callable[[str], None] = print) -> list[dict]:
    """One result record per seed of `cfg.seeds`."""
    folder = model_folder(checkpoint)
    tokenizer = load_tokenizer(folder)
    train, evals = encode_task(tokenizer, task, cfg.max_seq_len)
    results = []
    for seed in cfg.seeds:
        result = finetune_once(folder, tokenizer, task, train, evals, cfg, seed, init)
        log(f"finetune: {task.name} seed {seed} ({init}): " + ", ".join(
            f"{k} {100 * v:.1f}" for k, v in result["metrics"].items()) + f" ({result['seconds']:.0f}s)")
        results.append(result)
    return results
