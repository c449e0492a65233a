"""kgpt2's Pallas kernels alone against the XLA code they replace, at GPT-2 124M's training shapes.

Issue 21, round 8. Times, on the GPU, forward + backward (`jax.value_and_grad`) of
- the loss over 16 x 1,024 x 50,304 bf16 logits: Keras' SparseCategoricalCrossentropy
  (from logits, mean) plus its accuracy's argmax (what the plain training step computes),
  against kgpt2.kernels.cross_entropy at each (BLOCK, WARPS, STAGES) of a sweep;
- one layer norm over 16,384 x 768 bf16 rows: keras.ops.layer_normalization against
  kgpt2.kernels.layer_norm at each (ROWS, WARPS);
- with `--old DIR`, the loss of another kgpt2 checkout (`DIR/kgpt2/kernels/cross_entropy.py`, or
  `DIR/kgpt2/cross_entropy.py` before the package had folders; its own settings) too.
Each timing is the median of `--reps` runs of a jitted call after 3 warm-ups, synchronised, divided by
the `COPIES` independent inputs the call processes (so Python's dispatch is not what is timed).

    python benchmarks/fused_kernels.py --out $OUT/kernels.json            # on the GPU machine
    python benchmarks/fused_kernels.py --tiny                             # a CPU dry run (interpreter)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


COPIES = 4


def _copies(fn):
    """One jitted call of `fn` on each of a list of inputs (the first argument; no slicing copies)."""
    import jax

    return jax.jit(lambda xs, *rest: [fn(x, *rest) for x in xs])


def _time(fn, *args, reps: int) -> float:
    import jax

    for _ in range(3):
        jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e3 / len(args[0])


def loss_rows(rows, width, real, reps, sweep, old_dir=None):
    import jax
    import jax.numpy as jnp
    import keras

    from kgpt2.kernels import cross_entropy

    logits = [(jax.random.normal(jax.random.PRNGKey(i), (rows, width)) * 2).astype("bfloat16") for i in range(COPIES)]
    labels = jax.random.randint(jax.random.PRNGKey(1), (rows,), 0, real)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def keras_loss(z):
        z = jnp.where(jnp.arange(width) < real, z, -1e9)  # kgpt2's padded vocabulary, as the model masks it
        correct = jnp.argmax(z, axis=-1) == labels
        return loss_fn(labels, z), correct

    def kgpt2_loss(z, kernel="auto"):
        loss, correct = cross_entropy.token_cross_entropy(z, labels, real, kernel)
        return jnp.mean(loss), correct

    def jnp_loss(z):
        return kgpt2_loss(z, "jnp")

    out = [{"what": "loss fwd+bwd, Keras (XLA)", "ms": _time(_copies(jax.value_and_grad(keras_loss, has_aux=True)),
                                                              logits, reps=reps)},
           {"what": "loss kgpt2, XLA forward (kernel jnp)", "fwd_ms": _time(_copies(jnp_loss), logits, reps=reps),
            "ms": _time(_copies(jax.value_and_grad(jnp_loss, has_aux=True)), logits, reps=reps)}]
    if old_dir:
        old = _old_module(old_dir, "cross_entropy")

        def old_loss(z):
            loss, correct = old.token_cross_entropy(z, labels, real)
            return jnp.mean(loss), correct

        out.append({"what": f"loss of {old_dir} (block {old.BLOCK} warps {old.WARPS} stages {old.STAGES})",
                    "fwd_ms": _time(_copies(old_loss), logits, reps=reps),
                    "ms": _time(_copies(jax.value_and_grad(old_loss, has_aux=True)), logits, reps=reps)})
    for block, warps, stages in sweep:
        cross_entropy.BLOCK, cross_entropy.WARPS, cross_entropy.STAGES = block, warps, stages
        fwd = _time(_copies(kgpt2_loss), logits, reps=reps)
        both = _time(_copies(jax.value_and_grad(kgpt2_loss, has_aux=True)), logits, reps=reps)
        out.append({"what": f"loss kgpt2 block {block} warps {warps} stages {stages}", "fwd_ms": fwd, "ms": both})
    return out


def layer_norm_rows(rows, width, reps, sweep):
    import jax
    import jax.numpy as jnp
    import keras

    from kgpt2.kernels import layer_norm as ln

    x = [jax.random.normal(jax.random.PRNGKey(i), (rows, width)).astype("bfloat16") for i in range(COPIES)]
    gamma, beta = jnp.ones(width), jnp.zeros(width)
    cot = jax.random.normal(jax.random.PRNGKey(1), (rows, width)).astype("bfloat16")

    def run(f):
        return _copies(jax.value_and_grad(lambda x, g, b: jnp.sum((f(x, g, b) * cot).astype("float32")),
                                          argnums=(0, 1, 2)))

    keras_ln = run(lambda x, g, b: keras.ops.layer_normalization(x, g, b, -1, 1e-5).astype(x.dtype))
    out = [{"what": "layer norm fwd+bwd, Keras (XLA)", "ms": _time(keras_ln, x, gamma, beta, reps=reps)}]
    for rows_per, warps in sweep:
        ln.ROWS, ln.WARPS = rows_per, warps
        fwd = _time(_copies(lambda x, g, b: ln.layer_norm(x, g, b, 1e-5)), x, gamma, beta, reps=reps)
        both = _time(run(lambda x, g, b: ln.layer_norm(x, g, b, 1e-5)), x, gamma, beta, reps=reps)
        out.append({"what": f"layer norm kgpt2 rows {rows_per} warps {warps}", "fwd_ms": fwd, "ms": both})
    return out


def residual_norm_rows(rows, width, reps, sweep):
    """`add_layer_norm` (a fused block's second norm: the residual add inside) forward, and forward + backward
    with gradients for both outputs, at each (ROWS, WARPS, GRAD_STEPS); the Keras add + layer norm it replaces."""
    import jax
    import jax.numpy as jnp
    import keras

    from kgpt2.kernels import layer_norm as ln

    a = [jax.random.normal(jax.random.PRNGKey(i), (rows, width)).astype("bfloat16") for i in range(COPIES)]
    residual = jax.random.normal(jax.random.PRNGKey(9), (rows, width)).astype("bfloat16")
    gamma, beta = jnp.ones(width), jnp.zeros(width)
    c1, c2 = (jax.random.normal(jax.random.PRNGKey(k), (rows, width)).astype("bfloat16") for k in (1, 2))

    def run(f):
        def loss(a, r, g, b):
            s, y = f(a, r, g, b)
            return jnp.sum((s * c1).astype("float32")) + jnp.sum((y * c2).astype("float32"))
        return _copies(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))

    def keras_add_norm(a, r, g, b):
        s = a + r
        return s, keras.ops.layer_normalization(s, g, b, -1, 1e-5).astype(s.dtype)

    out = [{"what": "add + layer norm fwd+bwd, Keras (XLA)", "ms": _time(run(keras_add_norm), a, residual, gamma,
                                                                          beta, reps=reps)}]
    for rows_per, warps, steps in sweep:
        ln.ROWS, ln.WARPS, ln.GRAD_STEPS = rows_per, warps, steps
        fused = lambda a, r, g, b: ln.add_layer_norm(a, r, g, b, 1e-5)  # noqa: E731
        fwd = _time(_copies(fused), a, residual, gamma, beta, reps=reps)
        both = _time(run(fused), a, residual, gamma, beta, reps=reps)
        out.append({"what": f"add_layer_norm rows {rows_per} warps {warps} grad steps {steps}", "fwd_ms": fwd,
                    "ms": both})
    return out


def _old_module(old_dir: str, name: str):
    """kgpt2/kernels/`name`.py (kgpt2/`name`.py before the folders) of another checkout, imported beside this
    one's (its kgpt2 imports resolve here)."""
    import importlib.util

    path = os.path.join(old_dir, "kgpt2", "kernels", f"{name}.py")
    path = path if os.path.isfile(path) else os.path.join(old_dir, "kgpt2", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="small shapes, one config each (a CPU dry run)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out")
    p.add_argument("--norms", action="store_true", help="only the residual layer norm, over a launch sweep")
    p.add_argument("--loss", action="store_true", help="only the loss")
    p.add_argument("--old", help="an older checkout's root: its loss timed beside this one's")
    args = p.parse_args(argv)
    if args.tiny:
        rows, vocab, real, width, reps = 64, 5000, 4990, 48, 2
        ce_sweep, ln_sweep = [(4096, 8, 2)], [(16, 4)]
    else:
        rows, vocab, real, width, reps = 16 * 1024, 50304, 50257, 768, args.reps
        ce_sweep = list(itertools.product([1024, 2048, 4096], [4, 8], [2]))
        ln_sweep = list(itertools.product([2, 4, 8], [4, 8]))
    if args.norms:
        sweep = [(16, 4, 1)] if args.tiny else list(itertools.product([4, 8, 16], [4, 8], [1, 2, 4, 8]))
        results = residual_norm_rows(rows, width, reps, sweep)
    else:
        results = loss_rows(rows, vocab, real, reps, ce_sweep, args.old)
        results += [] if args.loss else layer_norm_rows(rows, width, reps, ln_sweep)
    for r in results:
        extra = f"  (forward {r['fwd_ms']:.3f})" if "fwd_ms" in r else ""
        print(f"{r['ms']:8.3f} ms  {r['what']}{extra}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
