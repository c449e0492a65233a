"""The generation engine's compiled programs: a batched prefill and a chunked decode loop.

`Programs` holds the two kinds of program `kgpt2.generation.engine.Engine` launches,
traced once per shape and shared by every engine on the same model and
shapes (`compiles` counts the traces):

- `prefill(rows, prompt_width)`: the prompts of all requests admitted in one
  step, run together (rows padded to a power of two), each row's keys and
  values rotated into its slot of the shared ring cache, and each row's
  first new token sampled (with its log-probability and the top ones: one
  log-softmax of a row per launch, nothing beside the prompt's forward pass).
  `prefill(scored=True)` also scores every prompt token (`echo` with
  `logprobs` in serve): the logits of every position, so a program of its own.
- `decode(greedy_only, logprobs)`: up to `steps_per_launch` one-token steps for every
  slot in one launch. The steps run in chunks of `chunk` tokens: an inner
  loop with a fixed trip count (on XLA's GPU runtime a loop of known length
  runs without copying its condition to the host, so no device-to-host
  synchronisation per token) inside an outer loop that stops after the
  chunk in which a row ended (one synchronisation per chunk). All-greedy
  launches compile without the top-k / top-p code (no conditional in the
  loop: XLA's GPU runtime also synchronises on every conditional); launches
  with a sampling row take the other program. Two decode programs, then.

Each decode step runs the decoder blocks fused (kgpt2.generation.fused_decode: fewer
kernels a token) where the model's layers allow it, else keras-hub's layers.

How rows at different lengths share one cache is described in
kgpt2.generation.engine: every row writes its next key/value at one shared column `t`
of a ring of `cache_length` columns; a row's attention mask is its own arc.

Per-row state travels in two packed arrays (one host-to-device copy each per
launch) and the new tokens come back in one array whose last column is the
number of steps taken (one device-to-host copy).

    >>> bucket(5, 1, 64), bucket(100, 32, 64)
    (8, 64)
"""

from __future__ import annotations

import functools
import weakref

import numpy as np

from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS, FusedBlocks, opaque
from kgpt2.generation.sampling import MAX_LOGPROBS, sample, token_scores
from kgpt2.model.models import mask_padding

MIN_PROMPT_BUCKET = 32  # prompts are padded to a power of two of at least this
GPU_CHUNK = 1  # decode steps per inner (fixed-length) loop on an accelerator (see default_chunk)
# The packed per-row int32 state: columns of `Programs.pack`'s `ints`.
LAST, POS, START, LIMIT, ACTIVE, GREEDY, TOP_K, SEED = range(8)


# What `Programs.kept_weights` built, per model and form (bfloat16 products or not): the two most recent
# weight versions, each as (weak references to its values, what was built). A Generator has programs for
# several cache lengths; they share one copy.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bucket(n: int, smallest: int, cap: int) -> int:
    """The power of two >= max(n, smallest), capped at `cap`: few shapes, few compiles."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, cap)


def on_accelerator() -> bool:
    """Whether the backend computes on a GPU or TPU (not the CPU)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    return False


def default_chunk() -> int:
    """Steps per fixed-length inner loop: `GPU_CHUNK` on an accelerator, 1 on a CPU.

    On a CPU a loop's condition costs nothing, so chunks would only add the steps
    computed past a row's end. On an H200 chunks of 8 were meant to spare a host
    round trip per token, but 1 was faster in every call that ran both (batch 1
    +0.6-3.3%, 64 streams +0.4% and +1.1%; docs/benchmarks.md), so `GPU_CHUNK` is 1.
    """
    return GPU_CHUNK if on_accelerator() else 1


def _jax_platform() -> str | None:
    """The platform JAX computes on ("cpu", "gpu", "tpu") when Keras runs on JAX, else None."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    return jax.default_backend()


def on_jax_gpu() -> bool:
    """Whether Keras runs on JAX on a GPU (where kgpt2.generation.fused_decode's one-row forms were measured)."""
    return _jax_platform() == "gpu"


def on_jax_cpu() -> bool:
    """Whether Keras runs on JAX on the CPU."""
    return _jax_platform() == "cpu"


def compiled(fn, donate=(), compiler_options=None):
    """`fn` compiled for the backend: jax.jit, tf.function (XLA), or eager on torch.

    `compiler_options` (JAX only): XLA options for these programs, e.g.
    `{"xla_gpu_enable_cublaslt": True}` (benchmarks/generate_latency.py measures some).
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn, donate_argnums=donate, **({"compiler_options": compiler_options} if compiler_options else {}))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def pack(last, pos, start, limit, active, greedy, top_k, seed, temperature, top_p):
    """Per-row state as (int32 [rows, 8], float32 [rows, 2]): two arrays to copy, not ten."""
    ints = np.stack([np.asarray(a).astype("int32") for a in (last, pos, start, limit, active, greedy, top_k, seed)], 1)
    return ints, np.stack([np.asarray(temperature, "float32"), np.asarray(top_p, "float32")], 1)


def _sampling(ints, floats) -> tuple:
    """The `kgpt2.generation.sampling.sample` settings out of the packed state."""
    from keras import ops

    return (ops.cast(ints[:, GREEDY], "bool"), floats[:, 0], ints[:, TOP_K], floats[:, 1], ints[:, SEED])


class Programs:
    """The compiled prefill and decode of one model at one slot count and cache length."""

    def __init__(self, model, slots: int, cache_length: int, steps_per_launch: int, chunk: int | None = None,
                 compiler_options: dict | None = None, blocks: str = "auto"):
        """`blocks`: how a decode step runs the decoder blocks: "fused" (kgpt2.generation.fused_decode: fewer
        kernels a token), "keras-hub" (the model's own layers) or "auto" (fused where the model
        allows it: plain GPT-2 weights, no int8 or unmerged LoRA layers)."""
        self.model, self.slots, self.cache_length = model, slots, cache_length
        # The variables the programs read, in order (listing them walks every layer: ~0.2 ms). A model
        # quantised later has new variables: build its engines after quantising it.
        self.variables = list(model.variables)
        self.blocks = self._fused_blocks(blocks)
        self.chunk = max(1, min(chunk or default_chunk(), steps_per_launch))
        # Whole chunks: the token buffer has a column for every step of every chunk.
        self.steps_per_launch = -(-steps_per_launch // self.chunk) * self.chunk
        self.compiles = 0  # programs traced so far
        self._prefill_programs = {s: compiled(functools.partial(self._prefill, scored=s), (1,), compiler_options)
                                  for s in (False, True)}
        self._decode = {(g, lp): compiled(functools.partial(self._decode_loop, greedy_only=g, logprobs=lp), (1,),
                                          compiler_options) for g in (True, False) for lp in (False, True)}
        # On a JAX CPU the blocks' derived weights (`FusedBlocks.kept`: the query/key/value concatenation, or
        # the bfloat16 products) are built once per weight version (`kept_weights`), not once a launch: built in
        # the launch, a 124M float32 stream of 8 tokens a launch took 40 ms a token against 26 kept
        # (docs/benchmarks.md). On a GPU the concatenation costs ~0.1 ms a launch, and a kept copy (a quarter
        # of the layer weights) would take memory a T4 lacks.
        self.keeps_weights = self.blocks is not None and on_jax_cpu()
        self._build_kept = compiled(lambda values: self.blocks.kept(values))

    def _fused_blocks(self, blocks: str) -> FusedBlocks | None:
        if blocks not in ("auto", "fused", "keras-hub"):
            raise ValueError(f"blocks must be auto, fused or keras-hub, not {blocks!r}")
        supported = FusedBlocks.supports(self.model.backbone)
        if blocks == "fused" and not supported:
            raise ValueError("fused decoder blocks need plain GPT-2 weights (no int8, no unmerged LoRA)")
        if blocks == "keras-hub" or not supported:
            return None
        # On a JAX GPU (measured there, docs/benchmarks.md): one row's products as row sums, and one-pass
        # layer-norm moments (float32; bf16 greedy tokens may then differ from keras-hub's where logits tie).
        # On a JAX CPU, one row of a model loaded with bfloat16 weights (`BFLOAT16_PRODUCTS`) decodes from
        # bfloat16 copies of them in float32 (`FusedBlocks.kept`). Several rows keep float32 products on the
        # same (bfloat16-valued) weights: XLA makes a many-row product a matrix product on float32 operands,
        # and 4 streams ran at 39 tokens/s that way against 61 in float32 (docs/benchmarks.md).
        half = on_jax_cpu() and getattr(self.model, BFLOAT16_PRODUCTS, False) and self.slots == 1
        gpu = on_jax_gpu()
        return FusedBlocks(self.model.backbone, self.variables, gemv=gpu, one_pass_norm=gpu, bfloat16_products=half)

    def prefill(self, values, caches, prompts, ints, floats, scored: bool = False):
        """(caches, first tokens [rows], their scores) and, when `scored`, the prompt's scores:
        position p's entry is prompt token p + 1's (`kgpt2.generation.sampling.token_scores`)."""
        return self._prefill_programs[bool(scored)](values, caches, prompts, ints, floats)

    def decode(self, greedy_only: bool, logprobs: bool = False):
        """The decode loop, called as `(values, caches, ints, floats, scalars)`; with `logprobs` it also
        returns the new tokens' scores [slots, steps(, K)]."""
        program = self._decode[bool(greedy_only), bool(logprobs)]
        if not self.keeps_weights:
            return program
        return lambda values, *state: program(values, *state, self.kept_weights(values))

    def kept_weights(self, values) -> list:
        """`FusedBlocks.kept` of `values`, built on the first launch of a weight version and
        kept for the two most recent versions (the demo alternates two checkpoints on one engine's
        programs), shared by the model's programs of every cache length. A version is the identity of
        every array: JAX arrays are immutable, and Keras gives a variable a new array when it is
        assigned (a restore, a training step)."""
        shelf = _KEPT.setdefault(self.model, {})
        form = self.blocks.bfloat16_products
        versions = [(refs, kept) for refs, kept in shelf.get(form, []) if all(r() is not None for r in refs)]
        for refs, kept in versions:
            if len(refs) == len(values) and all(r() is v for r, v in zip(refs, values)):
                return kept
        built = self._build_kept(values)
        try:
            shelf[form] = versions[-1:] + [([weakref.ref(v) for v in values], built)]
        except TypeError:  # a value that takes no weak reference: rebuilt every launch
            pass
        return built

    def empty_caches(self, rows: int, length: int) -> list:
        from keras import ops

        b = self.model.backbone
        shape = (rows, 2, length, b.num_heads, b.hidden_dim // b.num_heads)
        return [ops.zeros(shape, self.model.compute_dtype) for _ in b.transformer_layers]

    def _scope(self, values):
        """Run the model on `values` (JAX traces them as arguments, not constants)."""
        import keras

        return keras.StatelessScope(state_mapping=list(zip(self.variables, values)))

    def _logits(self, hidden):
        b = self.model.backbone
        return b.token_embedding(b.layer_norm(hidden), reverse=True)[:, 0, :]

    def _prefill(self, values, caches, prompts, ints, floats, scored: bool):
        """Cache the prompts of newly admitted rows in their slots; sample each row's first token.

        `prompts` [rows, width]; `ints` rows of (length, slot, start, greedy, top_k, seed) and
        `floats` of (temperature, top_p). Padding rows repeat a real row (same slot, same values).
        """
        from keras import ops

        self.compiles += 1
        b, length = self.model.backbone, self.cache_length
        rows, width = prompts.shape
        lengths, slots, starts = ints[:, 0], ints[:, 1], ints[:, 2]
        fresh = self.empty_caches(rows, width)
        with self._scope(values):
            tokens = b.token_embedding(prompts)
            x = b.embeddings_add((tokens, b.position_embedding(tokens)))
            for i, layer in enumerate(b.transformer_layers):
                x, fresh[i] = layer(x, self_attention_cache=fresh[i], self_attention_cache_update_index=0)
            # A gather, not a slice: TensorFlow's XLA bridge treats slice offsets as
            # compile-time constants and would compile once per prompt length.
            logits = self._logits(ops.take_along_axis(x, ops.reshape(lengths - 1, (rows, 1, 1)), axis=1))
            if scored:  # every position's next prompt token (the last column's target is padding)
                every = b.token_embedding(b.layer_norm(x), reverse=True)
                following = ops.concatenate([prompts[:, 1:], prompts[:, :1]], axis=1)
                prompt_scores = token_scores(every, following)
        settings = (ops.cast(ints[:, 3], "bool"), floats[:, 0], ints[:, 4], floats[:, 1], ints[:, 5])
        first = sample(logits, *settings, position=lengths)
        scores = token_scores(logits, first)
        # Row r's position p goes to ring column (start_r + p) mod length: gather each row's
        # columns from its prompt (columns past the prompt are never read before written).
        offsets = ops.mod(ops.arange(length, dtype="int32")[None, :] - starts[:, None], length)
        source = ops.minimum(offsets, width - 1)[:, None, :, None, None]
        placed = [ops.scatter_update(c, ops.reshape(slots, (rows, 1)), ops.take_along_axis(f, source, axis=2))
                  for c, f in zip(caches, fresh)]
        return (placed, first, scores) + ((prompt_scores,) if scored else ())

    def _step(self, values, caches, last, pos, offsets, t, fused=(), embedding=None):
        """One token for every row: the model on `last` at `pos`, writing ring column `t`.
        `fused`: the launch's `FusedBlocks.fuse` weights when the blocks run fused; `embedding`: the
        kept bfloat16 embedding the logits read with bfloat16 products."""
        b = self.model.backbone
        mask = offsets <= pos[:, None]  # the row's own arc of the ring, up to this token
        with self._scope(values):
            tokens = b.token_embedding(last[:, None])
            x = b.embeddings_add((tokens, b.position_embedding(tokens, positions=pos[:, None])))
            if self.blocks is not None:
                x, new_caches = self.blocks.step(fused, x, caches, mask, t)
                if embedding is not None:
                    return new_caches, mask_padding(b.token_embedding, self.blocks.logits(b.layer_norm(x), embedding))
                return new_caches, self._logits(x)
            mask, new_caches = mask[:, None, :], []
            for layer, cache in zip(b.transformer_layers, caches):
                x, cache = layer(x, decoder_attention_mask=mask, use_causal_mask=False,
                                 self_attention_cache=cache, self_attention_cache_update_index=t)
                new_caches.append(cache)
            return new_caches, self._logits(x)

    def _decode_loop(self, values, caches, ints, floats, scalars, kept=None, greedy_only: bool = True,
                     logprobs: bool = False):
        """Up to `scalars[1]` steps for every active row, in chunks; stops after a chunk in which a row ended.

        `scalars` = (t, steps, eos_id). Returns the caches and int32 [slots, steps_per_launch + 1]:
        each row's new tokens, and in the last column the number of steps taken; with `logprobs`
        also the tokens' log-probabilities [slots, steps_per_launch] and the top ones (values, ids).
        """
        from keras import ops

        self.compiles += 1
        length, width = self.cache_length, self.steps_per_launch
        t0, steps, eos_id = scalars[0], scalars[1], scalars[2]
        active, limit = ops.cast(ints[:, ACTIVE], "bool"), ints[:, LIMIT]
        offsets = ops.mod(ops.arange(length, dtype="int32")[None, :] - ints[:, START][:, None], length)
        settings = _sampling(ints, floats)
        # The fused blocks' weights, once a launch outside the loop (`kept`: kept across launches).
        fused = self.blocks.fuse(values, self.slots, kept) if self.blocks is not None else ()
        # bfloat16 products: their weights ride in the loop's state through a barrier each token (`opaque`: why)
        carried = (fused, kept[1]) if self.blocks is not None and self.blocks.bfloat16_products else ()

        def one_token(_, state):
            (caches, last, pos, t, i, out, ended, carried), scored = state[:8], state[8:]
            live = i < steps  # the last chunk may run past `steps`: those steps change nothing
            running = ops.logical_and(ops.logical_and(active, ops.logical_not(ended)), live)
            if carried:
                carried = opaque(carried)
                caches, logits = self._step(values, caches, last, pos, offsets, t, *carried)
            else:
                caches, logits = self._step(values, caches, last, pos, offsets, t, fused)
            if greedy_only:
                token = ops.cast(ops.argmax(ops.cast(logits, "float32"), axis=-1), "int32")
            else:
                token = sample(logits, *settings, position=pos + 1, branch="both")
            out = ops.slice_update(out, [0, i], token[:, None])
            if logprobs:  # a flat state: one buffer per score, column i written like `out`
                new = token_scores(logits, token)
                scored = tuple(ops.slice_update(buf, [0, i] + [0] * (len(buf.shape) - 2),
                                                ops.expand_dims(v, 1)) for buf, v in zip(scored, new))
            pos = ops.where(running, pos + 1, pos)
            ended = ops.logical_or(ended, ops.logical_and(running, ops.logical_or(token == eos_id, pos >= limit)))
            step = ops.cast(live, "int32")
            return (caches, ops.where(running, token, last), pos, ops.mod(t + step, length), i + step, out,
                    ended, carried) + tuple(scored)

        def chunk(*state):
            return ops.fori_loop(0, self.chunk, one_token, tuple(state))

        def more(caches, last, pos, t, i, out, ended, carried, *scored):
            return ops.logical_and(i < steps, ops.logical_not(ops.any(ended)))

        state = (caches, ints[:, LAST], ints[:, POS], t0, ops.zeros((), "int32"),
                 ops.zeros((self.slots, width), "int32"), ops.zeros((self.slots,), "bool"), carried)
        if logprobs:
            state += (ops.zeros((self.slots, width), "float32"), ops.zeros((self.slots, width, MAX_LOGPROBS), "float32"),
                      ops.zeros((self.slots, width, MAX_LOGPROBS), "int32"))
        caches, _, _, _, i, out, _, _, *scored = ops.while_loop(more, chunk, state)
        steps_taken = ops.broadcast_to(ops.reshape(i, (1, 1)), (self.slots, 1))
        return (caches, ops.concatenate([out, steps_taken], axis=1)) + tuple(scored)
