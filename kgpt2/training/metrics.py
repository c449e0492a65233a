"""Loss and metrics of next-token prediction, shared by training and evaluation.

Padding never counts: the loss divides by the sum of sample weights
(`mean_with_sample_weight`), and the weighted metrics average over real
tokens only. Perplexity is exp(mean token loss).

    >>> import numpy as np
    >>> from kgpt2.training.metrics import perplexity
    >>> round(perplexity(np.log(4.0)), 6)
    4.0
"""

import math

import keras

from kgpt2 import compat
from kgpt2.kernels.cross_entropy import token_cross_entropy
from kgpt2.kernels.fused_block import use_fused_blocks
from kgpt2.kernels.layer_norm import use_fused_layer_norm
from kgpt2.model.models import real_vocabulary_size
from kgpt2.model.packed_attention import for_windows
from kgpt2.training.devices import step_compiler_options


def lm_loss():
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )


def lm_metrics(token_loss: bool = True):
    # Weighted metrics accumulate sum(value * weight) / sum(weight) over the
    # whole pass, so `token_loss` is the exact mean over real tokens.
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if token_loss:
        metrics.append(keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="token_loss"))
    return metrics


def compile_lm(model, optimizer="adam", token_loss: bool = True, loss_chunk: int = 0, fused_loss: bool = False,
               kernel: str = "auto", **kwargs):
    """Compile with the masked loss and the accuracy (+ exact token loss) metrics.

    Train with `token_loss=False`: a batch's loss already is its mean token
    loss, and the metric's second cross-entropy over the whole logits tensor
    cost 2-3% of an H100 training step (docs/benchmarks.md).
    `loss_chunk` > 0 (train.loss_chunk, JAX, training only): the chunked
    cross-entropy below, `loss_chunk` positions at a time; `fused_loss`
    (train.fused_loss): the same loss in one piece (`token_losses`). Both
    need `token_loss=False` (the token-loss metric would want the full logits).
    `kernel`: the fused loss's forward ("pallas", "jnp", "auto": kgpt2.kernels.cross_entropy).
    """
    model.compile(optimizer=optimizer, loss=lm_loss(), weighted_metrics=lm_metrics(token_loss), **kwargs)
    if not token_loss and (loss_chunk > 0 or fused_loss):
        use_chunked_loss(model, loss_chunk, kernel)  # 0: the whole sequence at once
    return model


def compile_for_training(fit_model, cfg, optimizer, device, hidden_dim: int, xla_options: dict | None = None):
    """Compile `fit_model` as `kgpt2 train` trains it: loss form, layer norms, steps per launch, XLA options.

    One place for the trainer and the speed benchmarks (benchmarks/train_throughput.py,
    lever_ablation.py), so a benchmark times the step users run. `xla_options` go on top of
    `devices.step_compiler_options` (a benchmark's lever; {} in kgpt2 train).
    """
    kernel = "pallas" if device.runs_triton else "jnp"  # where the step runs, not the first device JAX lists
    compile_lm(fit_model, optimizer, token_loss=False, loss_chunk=cfg.train.loss_chunk,
               fused_loss=wants_fused_kernel(cfg.train.fused_loss, device), kernel=kernel,
               steps_per_execution=cfg.train.steps_per_execution)
    # LoRA's layer norms are frozen: with the kernel its step measured -0.8% and -1.2% on an H200, and -0.6% to
    # -0.8% with the fused blocks' residual adds inside it (session 14); so "auto" is full training only.
    if wants_fused_kernel(cfg.train.fused_layer_norm, device, auto_too=not cfg.lora.enabled):
        use_fused_layer_norm(fit_model, kernel)
        use_fused_blocks(fit_model, kernel)  # the blocks' residual adds inside their norms
    options = {**step_compiler_options(cfg.train, cfg.lora.enabled, device, hidden_dim), **(xla_options or {})}
    compat.compile_train_step_with(fit_model, options)
    return fit_model


def wants_fused_kernel(setting, device, auto_too: bool = True) -> bool:
    """train.fused_loss / fused_layer_norm: True, False, or "auto" = a JAX GPU of Ampere or newer
    without a distribution (and `auto_too`: the setting's own condition).

    "auto" stays off under a distribution: a Pallas kernel is one custom call XLA cannot split
    by rows, so its operands would be gathered onto every device. `True` elsewhere (a CPU, a T4)
    runs the kernels' jnp forms.
    """
    if keras.backend.backend() != "jax":
        return False
    if setting == "auto":
        return auto_too and device.runs_triton and keras.distribution.distribution() is None
    return bool(setting)



def evaluation_model(model, windows: str = "packed"):
    """A model on `model`'s backbone (the same variables) compiled with all metrics, for `evaluate`.

    Keras compiles a model's train and test steps with one metric list; this
    twin gives validation the exact token loss without adding it to every
    training step of `model`. `windows` = "packed_examples": the twin takes
    packed windows (kgpt2.model.packed_attention.for_windows).
    """
    twin = type(model)(backbone=model.backbone, preprocessor=None)
    return compile_lm(for_windows(twin, windows))


def perplexity(token_loss: float) -> float:
    return math.exp(min(float(token_loss), 700.0))


def summarise(logs: dict) -> dict:
    """evaluate() logs -> {loss, accuracy, perplexity} over real tokens."""
    token_loss = float(logs.get("token_loss", logs.get("loss")))
    return {
        "loss": token_loss,
        "accuracy": float(logs["accuracy"]),
        "perplexity": perplexity(token_loss),
    }


# -- Chunked cross-entropy (JAX training step) -------------------------------
#
# The plain loss materialises float32 logits of batch x T x vocabulary (16 x
# 1,024 x 50,304 = 3.3 GB) and their gradient. Keras and keras-hub have no
# fused or chunked LM loss, so kgpt2 computes it here: the sequence is cut
# into chunks, each chunk's logits come from the tied embedding inside a
# `jax.checkpoint`ed `lax.scan` body, and the backward pass recomputes them
# chunk by chunk. Each chunk does exactly what the plain path does (matmul
# in the compute dtype, pad rows masked, float32 cross-entropy), so the
# loss and gradients equal the plain ones up to float summation order.


def chunk_length(sequence_length: int, chunk: int) -> int:
    """The largest divisor of `sequence_length` that is at most `chunk` (the scan needs equal chunks)."""
    chunk = max(1, min(int(chunk), sequence_length))
    while sequence_length % chunk:
        chunk -= 1
    return chunk


def chunked_token_losses(hidden, embeddings, labels, real_vocabulary: int, chunk: int):
    """Per-token (loss, correct) of next-token prediction, logits never all at once.

    hidden: (batch, T, H) in the compute dtype; embeddings: (V, H) tied
    embedding (any float dtype; cast per chunk so its gradient sums in its
    own dtype); labels: (batch, T) ints. Rows >= `real_vocabulary` are the
    padded vocabulary's never-predicted rows (kgpt2.model.models.PaddedReversibleEmbedding).
    """
    import jax
    import jax.numpy as jnp

    batch, length, width = hidden.shape
    c = chunk_length(length, chunk)
    n = length // c
    xs = (hidden.reshape(batch, n, c, width).swapaxes(0, 1), labels.reshape(batch, n, c).swapaxes(0, 1))
    vocabulary = embeddings.shape[0]

    @jax.checkpoint  # the backward recomputes this chunk's logits instead of storing them
    def one_chunk(h, y):
        logits = jnp.einsum("bch,vh->bcv", h, embeddings.astype(h.dtype)).astype("float32")
        if real_vocabulary < vocabulary:
            logits = jnp.where(jnp.arange(vocabulary) < real_vocabulary, logits, -1.0e9)
        target = jnp.take_along_axis(logits, y[..., None].astype("int32"), axis=-1)[..., 0]
        loss = jax.nn.logsumexp(logits, axis=-1) - target
        correct = (jnp.argmax(logits, axis=-1) == y).astype("float32")
        return loss, correct

    _, (loss, correct) = jax.lax.scan(lambda carry, x: (carry, one_chunk(*x)), None, xs)
    return loss.swapaxes(0, 1).reshape(batch, length), correct.swapaxes(0, 1).reshape(batch, length)


def token_losses(hidden, embeddings, labels, real_vocabulary: int, kernel: str = "auto"):
    """Per-token (loss, correct) in one piece (train.fused_loss): what `chunked_token_losses` computes per chunk.

    The logits come from one matmul with the whole (padded) embedding, in
    the compute dtype; kgpt2.kernels.cross_entropy reads them once forward (a Pallas
    kernel on a GPU) and writes their gradient in one pass backward, the pad
    columns never counting. No `jax.checkpoint`: the backward keeps the bf16 logits.
    """
    import jax.numpy as jnp

    logits = jnp.einsum("bth,vh->btv", hidden, embeddings.astype(hidden.dtype))
    return token_cross_entropy(logits, labels, real_vocabulary, kernel)


def use_chunked_loss(model, chunk: int, kernel: str = "auto") -> None:
    """Train `model` (compiled by `compile_lm` with accuracy only) with the chunked loss on JAX.

    `chunk` > 0: `chunked_token_losses`; 0: `token_losses`, the whole
    sequence at once (train.fused_loss). Replaces the model's
    `compute_loss_and_updates` (the function Keras' JAX trainer
    differentiates) and its metric update for training steps; evaluation
    and prediction keep the plain path. No-op on other backends
    (TensorFlow keeps the plain loss) and for a quantised embedding.
    """
    import types

    embedding = model.backbone.token_embedding
    if keras.backend.backend() != "jax" or chunk < 0 or getattr(embedding, "quantization_mode", None):
        return
    model.compute_loss_and_updates = types.MethodType(_chunked_loss_and_updates, model)
    model._update_metrics_variables = types.MethodType(_chunked_metrics_update, model)
    model._kgpt2_loss_chunk, model._kgpt2_loss_kernel = int(chunk), kernel


def _chunked_loss_and_updates(self, trainable_variables, non_trainable_variables, metrics_variables,
                              x, y, sample_weight, training=False, optimizer_variables=None):
    """keras JAXTrainer.compute_loss_and_updates with the backbone + chunked loss for training."""
    from keras.src import backend  # StatelessScope: how Keras binds traced values to variables

    if not training:
        return type(self).compute_loss_and_updates(self, trainable_variables, non_trainable_variables,
                                                   metrics_variables, x, y, sample_weight, training, optimizer_variables)
    import jax.numpy as jnp

    mapping = list(zip(self.trainable_variables, trainable_variables))
    mapping += list(zip(self.non_trainable_variables, non_trainable_variables))
    with backend.StatelessScope(state_mapping=mapping) as scope:
        # A packed model (kgpt2.model.packed_attention.PackedCausalLM) computes its hidden states over packed windows.
        hidden = self.hidden_states(x, training=True) if hasattr(self, "hidden_states") else self.backbone(x, training=True)
        embeddings = self.backbone.token_embedding.embeddings.value
        real, chunk = real_vocabulary_size(self.backbone), self._kgpt2_loss_chunk
        losses, correct = (chunked_token_losses(hidden, embeddings, y, real, chunk) if chunk > 0
                           else token_losses(hidden, embeddings, y, real, self._kgpt2_loss_kernel))
    updated = []  # RNG seed states (dropout) advanced by the forward pass
    for ref, value in zip(self.non_trainable_variables, non_trainable_variables):
        new = scope.get_current_value(ref)
        updated.append(value if new is None else new)
    weights = jnp.ones_like(losses) if sample_weight is None else sample_weight.astype("float32")
    total = jnp.sum(weights)  # mean_with_sample_weight, with Keras' divide_no_nan
    loss = jnp.where(total > 0, jnp.sum(losses * weights) / jnp.where(total > 0, total, 1.0), 0.0)
    unscaled = loss
    if self.optimizer is not None:
        with backend.StatelessScope(state_mapping=list(zip(self.optimizer.variables, optimizer_variables))):
            loss = self.optimizer.scale_loss(loss)
    return loss, (unscaled, {"chunked_correct": correct}, updated, metrics_variables)


def _chunked_metrics_update(self, metrics_variables, unscaled_loss, x, y, y_pred, sample_weight):
    """The accuracy metric from the chunked pass's per-token correctness.

    SparseCategoricalAccuracy is argmax(y_pred) == y_true; a two-column
    y_pred (wrong, right) with y_true = 1 gives it exactly that, weighted
    the same, without the full logits.
    """
    if isinstance(y_pred, dict) and "chunked_correct" in y_pred:
        import jax.numpy as jnp

        correct = y_pred["chunked_correct"]
        y, y_pred = jnp.ones_like(y), jnp.stack([1.0 - correct, correct], axis=-1)
    return type(self)._update_metrics_variables(self, metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)
