"""`kgpt2 generate`: text from a run's checkpoint, with KerasHub's samplers.

Prompts are tokenised with kgpt2's exact GPT-2 tokenizer and fed to
`GPT2CausalLM.generate` as token ids (the task has no preprocessor).
Samplers: greedy, top_k, top_p (nucleus, with an optional top-k cut),
random (temperature only) and beam. The defaults are the seed project's
demo settings: sampling on, temperature 0.8, top-p 0.95, top-k 50, max
length 100.

`Generator.stream` yields text as tokens are produced; with the same seed and
greedy decoding it produces exactly what `Generator.generate` returns.

    >>> from kgpt2.generate import generate_from_run
    >>> # generate_from_run("checkpoints/quickstart", "The assert statement", sampler="greedy")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np

from kgpt2.errors import UserError

SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")
TEMPLATES = ("plain", "instruction")


def render_prompt(prompt: str, template: str = "plain", input_text: str = "") -> str:
    """Apply a prompt template; `instruction` is the Alpaca template training uses."""
    if template == "plain":
        return prompt
    if template == "instruction":
        from kgpt2.instructions import format_prompt

        return format_prompt(prompt, input_text)
    raise UserError(f"unknown prompt template '{template}' (one of: {', '.join(TEMPLATES)})")


@dataclass
class Settings:
    sampler: str = "top_p"
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_length: int = 100
    max_new_tokens: int = 0  # 0 = up to max_length
    seed: int = 0
    num_beams: int = 5
    template: str = "plain"

    @classmethod
    def from_config(cls, gen_cfg, **overrides) -> "Settings":
        values = {f.name: getattr(gen_cfg, f.name) for f in fields(cls) if hasattr(gen_cfg, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.sampler}' (one of: {', '.join(SAMPLERS)})")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise UserError(f"top_k must be at least 1, got {self.top_k}")


def make_sampler(s: Settings):
    """The KerasHub sampler for `s` (seeded where it samples)."""
    import keras_hub

    samplers = keras_hub.samplers
    if s.sampler == "greedy":
        return samplers.GreedySampler()
    if s.sampler == "top_k":
        return samplers.TopKSampler(k=s.top_k, seed=s.seed, temperature=s.temperature)
    if s.sampler == "top_p":
        return samplers.TopPSampler(p=s.top_p, k=s.top_k, seed=s.seed, temperature=s.temperature)
    if s.sampler == "random":
        return samplers.RandomSampler(seed=s.seed, temperature=s.temperature)
    return samplers.BeamSampler(num_beams=s.num_beams)


class Generator:
    """Generation on one loaded model with kgpt2's tokenizer."""

    def __init__(self, model, tokenizer, max_sequence_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_sequence_length = max_sequence_length or model.backbone.max_sequence_length
        self._sampler_key = None

    def _prepare(self, prompt: str, s: Settings):
        s.check()
        ids = self.tokenizer.encode(render_prompt(prompt, s.template))
        if not ids:
            ids = [self.tokenizer.eos_id]  # an empty prompt starts a new document
        total = len(ids) + s.max_new_tokens if s.max_new_tokens else max(s.max_length, len(ids) + 1)
        total = min(total, self.max_sequence_length)
        if len(ids) >= total:
            raise UserError(f"the prompt is {len(ids)} tokens; it must be shorter than {total} to leave room to generate")
        return ids, total

    def _compile(self, s: Settings) -> None:
        key = (s.sampler, s.temperature, s.top_k, s.top_p, s.seed, s.num_beams)
        if key != self._sampler_key:
            self.model.compile(sampler=make_sampler(s))
            self._sampler_key = key

    def generate(self, prompt: str, settings: Settings | None = None, **kw) -> str:
        """The continuation of `prompt` (the new text only)."""
        s = settings or Settings(**kw)
        ids, total = self._prepare(prompt, s)
        self._compile(s)
        token_ids = np.zeros((1, total), dtype="int32")
        token_ids[0, :len(ids)] = ids
        mask = np.zeros((1, total), dtype=bool)
        mask[0, :len(ids)] = True
        out = self.model.generate({"token_ids": token_ids, "padding_mask": mask},
                                  stop_token_ids=[self.tokenizer.eos_id])
        out_ids, out_mask = np.asarray(out["token_ids"][0]), np.asarray(out["padding_mask"][0])
        new = [int(t) for t, m in zip(out_ids[len(ids):], out_mask[len(ids):]) if m]
        return self.tokenizer.decode(new)

    def stream(self, prompt: str, settings: Settings | None = None, **kw) -> Iterator[str]:
        """Yield pieces of the continuation as tokens are produced."""
        from keras import ops

        s = settings or Settings(**kw)
        if s.sampler == "beam":
            yield self.generate(prompt, s)  # beams are only final at the end
            return
        ids, total = self._prepare(prompt, s)
        sampler = make_sampler(s)
        token_ids = np.zeros((1, total), dtype="int32")
        token_ids[0, :len(ids)] = ids
        hidden, cache = self.model._build_cache(ops.convert_to_tensor(token_ids))
        new: list[int] = []
        emitted = ""
        index = len(ids)
        while index < total:
            logits, _, cache = self.model.call_with_cache(
                ops.convert_to_tensor(token_ids[:, index - 1:index]), cache, index - 1)
            probs = sampler.compute_probabilities(logits[:, 0, :])
            next_id = int(ops.convert_to_numpy(sampler.get_next_token(probs))[0])
            if next_id == self.tokenizer.eos_id:
                break
            token_ids[0, index] = next_id
            new.append(next_id)
            index += 1
            text = self.tokenizer.decode(new)
            # Hold back a partial UTF-8 character until it is complete.
            if not text.endswith("\ufffd") and len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.tokenizer.decode(new)
        if len(text) > len(emitted):
            yield text[len(emitted):]


def generate_from_run(run_dir, prompt: str, checkpoint: str = "latest", **settings) -> str:
    from kgpt2.runs import load_model

    model, tokenizer, cfg = load_model(run_dir, checkpoint)
    s = Settings.from_config(cfg.generate, **settings)
    return Generator(model, tokenizer).generate(prompt, s)
