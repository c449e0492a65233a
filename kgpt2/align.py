"""`kgpt2 align`: Direct Preference Optimization (DPO) of a GPT-2 in plain Keras.

DPO (Rafailov et al., 2023) trains the policy pi on pairs (prompt, chosen,
rejected) against a frozen reference ref (the model before DPO) with

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

where log p(.) sums the log-probabilities of the response tokens (and the
end-of-text) given the prompt. The reference log-probs are computed once,
before training, with the same model (policy = reference at step 0), so no
second model is held in memory and the recipe runs on every Keras backend:
`PolicyLogProbs` wraps the GPT2CausalLM and outputs [log pi(c), log pi(r)]
per pair, `DPOLoss` takes the reference pair as `y_true`, and `fit` trains
it (LoRA adapters or all weights, as the config says). Held-out pairs give
the reward accuracy (share of pairs with chosen reward > rejected reward,
rewards beta * (log pi - log ref)) and the mean margin, before and after.

TRL's DPOTrainer is torch-only; this is the same loss in ~50 lines of Keras.

    >>> import numpy as np
    >>> from kgpt2.align import DPOLoss
    >>> ref, pol = np.array([[-5.0, -5.0]]), np.array([[-4.0, -6.0]])
    >>> round(float(DPOLoss(beta=0.1)(ref, pol)), 4)  # -log sigmoid(0.1 * 2)
    0.5981

Run it: `kgpt2 align --config dpo` (see docs/instruction_dpo_qlora.md).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kgpt2.checkpoints import CheckpointManager
from kgpt2.data.examples import encode_example
from kgpt2.data.instructions import record_prompt
from kgpt2.devices import resolve_device
from kgpt2.errors import UserError
from kgpt2.models import build_causal_lm, check_sequence_length, load_tokenizer
from kgpt2.io import atomic_write_text
from kgpt2.optimizer import make_optimizer
from kgpt2.run import Run, same_files

log = logging.getLogger("kgpt2")


# Data -----------------------------------------------------------------------
@dataclass
class PairStats:
    read: int = 0
    ties: int = 0  # demo votes without a preference
    identical: int = 0  # chosen == rejected: no preference signal
    too_long: int = 0  # the prompt alone fills the window
    used: int = 0
    files: list = field(default_factory=list)


def _records(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte {e.start})") from None
    if text.lstrip().startswith("["):
        try:
            yield from ((f"{path} [record {i}]", r) for i, r in enumerate(json.loads(text)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: invalid JSON") from None


def read_pairs(paths, template: str = "plain", stats: PairStats | None = None) -> list[dict]:
    """(prompt, chosen, rejected) from JSON/JSONL files or demo vote files.

    Records give `instruction`/`input` (rendered with the Alpaca template) or
    a raw `prompt` (votes: the `model_input` the model saw). Ties (no chosen)
    and pairs whose chosen equals rejected are skipped and counted.
    """
    stats = stats if stats is not None else PairStats()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("align.data is empty: give preference files (prompt/chosen/rejected JSON or JSONL)")
    pairs = []
    for path in map(Path, paths):
        if path.is_dir():
            path = path / "votes.jsonl"  # a demo run directory
        if not path.is_file():
            raise UserError(f"preference file '{path}' does not exist")
        stats.files.append(str(path))
        for where, rec in _records(path):
            if not isinstance(rec, dict) or "chosen" not in rec or "rejected" not in rec:
                raise UserError(f"{where}: expected chosen and rejected fields")
            stats.read += 1
            if rec["chosen"] is None or rec["rejected"] is None:
                stats.ties += 1
                continue
            chosen, rejected = str(rec["chosen"]).strip(), str(rec["rejected"]).strip()
            if chosen == rejected:
                stats.identical += 1
                continue
            pairs.append({"prompt": record_prompt(rec, where, template), "chosen": chosen, "rejected": rejected})
    return pairs


def encode_pairs(tokenizer, pairs: list[dict], sequence_length: int, stats: PairStats | None = None):
    """(inputs, kept): model inputs, a dict of [N, 2, T] arrays (index 0 chosen, 1
    rejected), and the indices of the pairs they hold (a pair whose prompt
    fills the window is dropped and counted).

    `weights` is 1 on the targets that are response tokens (or the final
    end-of-text), so a sum of weighted log-probs is log p(response | prompt).
    """
    stats = stats if stats is not None else PairStats()
    T = sequence_length
    rows, kept = [], []
    for k, pair in enumerate(pairs):
        row = []
        for response in (pair["chosen"], pair["rejected"]):
            ids, mask = encode_example(tokenizer, pair["prompt"], response)
            ids, mask = ids[:T + 1], mask[:T + 1]
            row.append((ids, mask))
        if min(int(m[1:].sum()) for _, m in row) == 0:  # no response token fits
            stats.too_long += 1
            continue
        rows.append(row)
        kept.append(k)
    n = len(rows)
    tokens = np.zeros((n, 2, T + 1), dtype="int32")
    mask = np.zeros((n, 2, T + 1), dtype="float32")
    valid = np.zeros((n, 2, T + 1), dtype=bool)
    for i, row in enumerate(rows):
        for j, (ids, m) in enumerate(row):
            tokens[i, j, :len(ids)], mask[i, j, :len(ids)], valid[i, j, :len(ids)] = ids, m, True
    stats.used = n
    inputs = {"token_ids": tokens[..., :-1], "padding_mask": valid[..., :-1],
              "targets": tokens[..., 1:], "weights": mask[..., 1:] * valid[..., :-1]}
    return inputs, np.asarray(kept, dtype=np.int64)


def heldout_mask(pairs: list[dict], fraction: float, seed: int) -> np.ndarray:
    """Deterministic held-out split by a seeded hash of the prompt (a prompt is never on both sides)."""
    u = np.array([zlib.crc32(f"{seed}:{p['prompt']}".encode()) / 2**32 for p in pairs])
    return u < fraction


# Model and loss ---------------------------------------------------------------
def token_logprobs(logits, targets):
    """log softmax(logits)[target] per position, in float32."""
    logits = ops.cast(logits, "float32")
    picked = ops.squeeze(ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1), -1)
    return picked - ops.logsumexp(logits, axis=-1)


class PolicyLogProbs(keras.Model):
    """[log pi(chosen), log pi(rejected)] per pair, summed over response tokens."""

    def __init__(self, policy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy

    def call(self, inputs):
        shape = ops.shape(inputs["token_ids"])  # [B, 2, T]
        flat = lambda x: ops.reshape(x, (-1, shape[-1]))  # noqa: E731  (chosen and rejected in one pass)
        logits = self.policy({"token_ids": flat(inputs["token_ids"]),
                              "padding_mask": flat(inputs["padding_mask"])})
        logp = token_logprobs(logits, flat(inputs["targets"])) * flat(ops.cast(inputs["weights"], "float32"))
        return ops.reshape(ops.sum(logp, axis=-1), (-1, 2))


def _rewards(y_true, y_pred, beta):
    """beta * (log pi - log ref) of chosen and rejected."""
    r = beta * (ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    return r[:, 0], r[:, 1]


class DPOLoss(keras.losses.Loss):
    """-log sigmoid(chosen reward - rejected reward); y_true: reference log-probs [B, 2]."""

    def __init__(self, beta: float = 0.1, name="dpo_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = beta

    def call(self, y_true, y_pred):
        chosen, rejected = _rewards(y_true, y_pred, self.beta)
        return -ops.log_sigmoid(chosen - rejected)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


def dpo_metrics(beta: float) -> list:
    def reward_accuracy(y_true, y_pred):
        chosen, rejected = _rewards(y_true, y_pred, beta)
        return ops.cast(chosen > rejected, "float32")

    def reward_margin(y_true, y_pred):
        chosen, rejected = _rewards(y_true, y_pred, beta)
        return chosen - rejected

    def chosen_reward(y_true, y_pred):
        return _rewards(y_true, y_pred, beta)[0]

    def rejected_reward(y_true, y_pred):
        return _rewards(y_true, y_pred, beta)[1]

    return [keras.metrics.MeanMetricWrapper(f, name=f.__name__)
            for f in (reward_accuracy, reward_margin, chosen_reward, rejected_reward)]


def _take(inputs: dict, index) -> dict:
    return {k: v[index] for k, v in inputs.items()}


# The verb -------------------------------------------------------------------
def align(cfg, verbose="auto") -> dict:
    """DPO-train the model of `cfg` on `cfg.align.data`; return the results (also in <run>/align.json)."""
    check_sequence_length(cfg)  # before the lock makes the run folder
    with Run.of(cfg).lock():  # one writing process per run (kgpt2.lock)
        return _align(cfg, verbose)


def _align(cfg, verbose) -> dict:
    a = cfg.align
    check_sequence_length(cfg)
    run = Run.of(cfg)
    ckpts = run.checkpoints()
    if ckpts.latest() is not None:
        raise UserError(f"run '{cfg.run_dir}' already has checkpoints; choose a new run name")
    stats = PairStats()
    pairs = read_pairs(a.data, a.template, stats)  # the data is checked before any model loads
    tokenizer = load_tokenizer(cfg.model)
    inputs, kept = encode_pairs(tokenizer, pairs, cfg.data.sequence_length, stats)
    held = heldout_mask(pairs, a.heldout_fraction, cfg.seed)[kept]
    train_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_idx) == 0 or len(held_idx) == 0:
        raise UserError(f"{stats.used} usable preference pairs are too few to hold out {a.heldout_fraction:.0%}")
    log.info("preference pairs: %d read, %d ties skipped, %d with chosen == rejected dropped, %d too long; "
             "%d train, %d held out", stats.read, stats.ties, stats.identical, stats.too_long,
             len(train_idx), len(held_idx))

    device = resolve_device(cfg.train.device)
    keras.config.set_dtype_policy(device.policy(cfg.train.precision))
    keras.utils.set_random_seed(cfg.seed)
    bs = cfg.train.batch_size
    with device.scope():
        policy = build_causal_lm(cfg)
        if a.init_run:
            _load_init(policy, cfg, a.init_run, a.init_checkpoint)
        model = PolicyLogProbs(policy)
        # The reference: the same weights, before any update, once for all pairs.
        reference = model.predict(inputs, batch_size=bs, verbose=0)
        optimizer, _ = make_optimizer(cfg, a.steps)
        model.compile(optimizer=optimizer, loss=DPOLoss(a.beta), metrics=dpo_metrics(a.beta))
        held_x, held_y = _take(inputs, held_idx), reference[held_idx]
        before = model.evaluate(held_x, held_y, batch_size=bs, verbose=0, return_dict=True)
        order = np.random.default_rng(cfg.seed).permutation(np.resize(train_idx, a.steps * bs))
        history = model.fit(_take(inputs, order), reference[order], batch_size=bs, epochs=1,
                            shuffle=False, verbose=verbose)
        after = model.evaluate(held_x, held_y, batch_size=bs, verbose=0, return_dict=True)
        run.save_config(cfg)
        ckpt = ckpts.save(policy, None, {"stage": 0, "epoch": 1, "batch": 0, "step": a.steps,
                                         "stage_end": True, "signature": cfg.model_signature(),
                                         "config_hash": cfg.hash(), "kind": "dpo"})
    result = {"pairs": {"read": stats.read, "ties_skipped": stats.ties, "identical_dropped": stats.identical,
                        "too_long_dropped": stats.too_long, "train": int(len(train_idx)),
                        "heldout": int(len(held_idx)), "files": stats.files},
              "beta": a.beta, "steps": a.steps, "batch_size": bs, "backend": keras.backend.backend(),
              "heldout_before": _floats(before), "heldout_after": _floats(after),
              "train_last": {k: float(v[-1]) for k, v in history.history.items()},
              "checkpoint": ckpt.id}
    atomic_write_text(run.align_result, json.dumps(result, indent=2))
    return result


def _floats(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def _load_init(policy, cfg, run_dir, checkpoint: str) -> None:
    """Start from another run's checkpoint (e.g. Alpaca SFT) with the same model signature."""
    other = Run(run_dir).config()
    theirs, ours = other.model_signature(), cfg.model_signature()
    if Path(other.model.preset).is_dir() and Path(cfg.model.preset).is_dir() and same_files(other.model.preset, cfg.model.preset):
        theirs["preset"] = ours["preset"]  # the run holds its own copy of this preset (kgpt2.run.Run.adopt)
    if theirs != ours:
        raise UserError(f"align.init_run '{run_dir}' was trained with another model, LoRA or sequence "
                        "setting than this config; use the same [model], [lora] and data.sequence_length")
    CheckpointManager.restore(policy, Run(run_dir).checkpoint(checkpoint))
