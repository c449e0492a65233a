"""One-token GPT-2 decoder blocks on fused weights: fewer, larger kernels per token.

Why by hand: at batch 1 a decode step is bound by the number of kernels it
runs, not by bytes (docs/benchmarks.md, issue 20: 279 kernels a token through
keras-hub's `TransformerDecoder`, ~23 a layer). keras-hub's cached attention
projects query, key and value with three `EinsumDense` layers, slices the
cache into keys and values, writes each and stacks them back into a new cache
array every step. This block computes the same thing with one query/key/value
product on weights concatenated once per launch (`fuse`), one in-place write
of the new key and value into the layer's cache, and attention as two small
products over the cache (no cuDNN call, whose layout copies cost more than the
products at one query). GELU and the embeddings keep Keras' numerics, and so
do the layer norms (`ops.layer_normalization`, float32 inside) unless
`one_pass_norm`. On a JAX GPU kgpt2.generation.decoding also asks for `gemv` (one row's
products as row sums, `_project`) and `one_pass_norm` (`_norm`): 204 kernels a
token in all, 2,070 tokens/s at batch 1 on an H200 against 1,202 with
keras-hub's layers (docs/benchmarks.md, "Generation speed, round 3").

On a JAX CPU, one row of a model loaded with bfloat16 weights
(`bfloat16_products`) reads bfloat16 [out, in] copies of the products' weights
and the tied embedding and computes in float32: XLA's CPU dots on float32
weights are bound by their bytes, and the copies halve them (58 tokens/s at
batch 1 for 124M on 2 cores against float32's 37; docs/benchmarks.md,
"Generation on the CPU, round 5").

Only plain GPT-2 weights take this path (`supports`): quantised or LoRA
layers and other architectures keep keras-hub's layers.

    >>> import keras_hub
    >>> from kgpt2.generation.fused_decode import FusedBlocks
    >>> b = keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
    ...                                   intermediate_dim=16, max_sequence_length=16)
    >>> FusedBlocks.supports(b)
    True
"""

from __future__ import annotations

import math

from kgpt2.compat import decoder_block_parts

# Set on a model (True) whose weights hold bfloat16 values (kgpt2.generate, weights "bfloat16" on a JAX CPU):
# its fused decode steps read bfloat16 copies of the products' weights and compute in float32.
BFLOAT16_PRODUCTS = "kgpt2_bfloat16_products"


def opaque(arrays):
    """The same arrays behind an XLA optimization barrier (JAX): XLA neither moves nor fuses across it.

    The bfloat16 products need it twice (a JAX CPU): on their weights inside the decode loop's body, so
    that XLA cannot see they never change and hoist one float32 copy of every weight out of the loop
    (which every token then reads: 2x slower than float32 weights); and on each product's result, so
    that the bias add does not fuse into the product, which would stop the bfloat16 upcast from fusing
    into it (a float32 copy of the weight written and read every token: 75 against 12 ms a token for the
    124M products alone; benchmarks/cpu_bf16_products.py, docs/benchmarks.md)."""
    import jax

    return jax.lax.optimization_barrier(arrays)


class FusedBlocks:
    """The decoder blocks of a keras-hub GPT-2 backbone as one-token steps on fused weights.

    `variables` is the list the caller passes its values in (`Programs.variables`);
    `fuse(values)` builds the per-launch weights (from `concatenated(values)`, which a
    caller may keep across launches), `step(fused, x, caches, mask, t)`
    runs every block for one token per row.
    """

    def __init__(self, backbone, variables, gemv: bool = False, one_pass_norm: bool = False,
                 bfloat16_products: bool = False):
        # gemv: one-row products as a multiply and a row sum over weights stored [out, in] (see `_project`);
        # one_pass_norm: a layer norm's two moments in one pass (see `_norm`);
        # bfloat16_products: every product (and the logits) reads a bfloat16 [out, in] copy of its weights and
        # computes in float32 (a JAX CPU: see `kept` and `_project`); the weights must hold bfloat16 values
        self.gemv, self.one_pass_norm, self.bfloat16_products = gemv, one_pass_norm, bfloat16_products
        index = {id(v): i for i, v in enumerate(variables)}
        self.heads = backbone.num_heads
        self.head_dim = backbone.hidden_dim // backbone.num_heads
        self.dtype = backbone.compute_dtype
        blocks = [decoder_block_parts(block) for block in backbone.transformer_layers]
        self.epsilon = blocks[0]["norm1"].epsilon
        self.embedding = index[id(backbone.token_embedding.embeddings)]
        self.layers = []
        for p in blocks:
            parts = (p["norm1"].gamma, p["norm1"].beta, p["query"].kernel, p["key"].kernel, p["value"].kernel,
                     p["query"].bias, p["key"].bias, p["value"].bias, p["out"].kernel, p["out"].bias,
                     p["norm2"].gamma, p["norm2"].beta, p["fc"].kernel, p["fc"].bias, p["proj"].kernel, p["proj"].bias)
            self.layers.append(tuple(index[id(v)] for v in parts))

    @staticmethod
    def supports(backbone) -> bool:
        """Plain GPT-2 blocks: Keras' own Dense/EinsumDense layers with float kernels. Anything else
        (int8, Keras LoRA, kgpt2's adapter classes, another architecture) computes more than a
        kernel and a bias, so it keeps keras-hub's layers."""
        import keras
        from keras_hub.models import GPT2Backbone

        if not isinstance(backbone, GPT2Backbone):
            return False
        for block in backbone.transformer_layers:
            parts = decoder_block_parts(block)
            for dense in (parts[k] for k in ("query", "key", "value", "out", "fc", "proj")):
                if type(dense) not in (keras.layers.Dense, keras.layers.EinsumDense):
                    return False
                if dense.quantization_mode or getattr(dense, "lora_enabled", False):
                    return False
        return True

    def kept(self, values) -> list:
        """What a caller may build once per weight version and pass to `fuse` (kgpt2.generation.decoding keeps it on a
        JAX CPU): `concatenated(values)`, or with `bfloat16_products` per layer the query/key/value, output,
        MLP-in and MLP-out kernels as bfloat16 [out, in] and the query/key/value biases as one, then the
        token embedding in bfloat16 ([vocabulary, C], the logits' [out, in]).

        Why bfloat16 [out, in]: XLA's CPU dot on float32 weights is bound by their bytes (~22 GB/s
        here); a one-row product against a bfloat16 [out, in] kernel upcast in the same expression
        compiles to a loop that reads the bfloat16 bytes, 1.6-1.8x faster (docs/benchmarks.md). On
        CPUs without bfloat16 arithmetic the float32 compute is what the hardware does anyway."""
        from keras import ops

        if not self.bfloat16_products:
            return self.concatenated(values)

        def half(x):  # [in, ...] -> bfloat16 [out, in]
            return ops.cast(ops.transpose(ops.reshape(x, (x.shape[0], -1))), "bfloat16")

        layers = []
        for (qkv, qkv_bias), (_, _, _, _, _, _, _, _, o, _, _, _, fc, _, pr, _) in zip(
                self.concatenated(values), self.layers):
            width = values[o].shape[-1]
            layers.append((half(qkv), qkv_bias, half(ops.reshape(values[o], (-1, width))), half(values[fc]),
                           half(values[pr])))
        return [layers, ops.cast(values[self.embedding], "bfloat16")]

    def concatenated(self, values) -> list:
        """Per layer, the query, key and value kernels as one [C, 3C] array and their biases as one
        [3C], in the compute dtype: the only new arrays `fuse` makes (the rest are the weights)."""
        from keras import ops

        out = []
        for (_, _, q, k, v, qb, kb, vb, *_) in self.layers:
            width = values[q].shape[0]
            out.append((ops.concatenate([ops.reshape(self._cast(values[i]), (width, -1)) for i in (q, k, v)], axis=1),
                        ops.concatenate([ops.reshape(self._cast(values[i]), (-1,)) for i in (qb, kb, vb)], axis=0)))
        return out

    def fuse(self, values, rows: int = 2, concatenated=None) -> list:
        """Per layer: the block's weights in the compute dtype, query/key/value as one [C, 3C] product
        (transposed to [out, in] when one row's products run as row sums). `concatenated`: what
        `concatenated(values)` gave, when the caller keeps it across launches."""
        from keras import ops

        if self.bfloat16_products:
            fused = []
            for (qkv, qkv_bias, out, fc, proj), layer in zip((concatenated or self.kept(values))[0], self.layers):
                g1, b1, _, _, _, _, _, _, _, ob, g2, b2, _, fcb, _, prb = layer
                fused.append((values[g1], values[b1], qkv, qkv_bias, out, values[ob], values[g2], values[b2], fc,
                              values[fcb], proj, values[prb]))
            return fused
        flip = self.gemv and rows == 1
        w = self._cast

        def kernel(x):
            return ops.transpose(x) if flip else x

        fused = []
        for layer, (qkv, qkv_bias) in zip(self.layers, concatenated or self.concatenated(values)):
            g1, b1, _, _, _, _, _, _, o, ob, g2, b2, fc, fcb, pr, prb = layer
            width = values[o].shape[-1]
            fused.append((values[g1], values[b1], kernel(qkv), qkv_bias, kernel(ops.reshape(w(values[o]), (-1, width))),
                          w(values[ob]), values[g2], values[b2], kernel(w(values[fc])), w(values[fcb]),
                          kernel(w(values[pr])), w(values[prb])))
        return fused

    def _cast(self, x):
        from keras import ops

        return ops.cast(x, self.dtype)

    def step(self, fused, x, caches, mask, t):
        """Every block on `x` [rows, 1, C]: (x, new caches). `mask` [rows, L] marks each row's keys;
        the new key and value go to column `t` of each cache [rows, 2, L, heads, head_dim]."""
        new_caches = []
        for weights, cache in zip(fused, caches):
            x, cache = self._block(weights, x, cache, mask, t)
            new_caches.append(cache)
        return x, new_caches

    def _block(self, weights, x, cache, mask, t):
        from keras import ops

        g1, b1, qkv, qkv_bias, out, out_bias, g2, b2, fc, fc_bias, proj, proj_bias = weights
        rows, heads, dim = x.shape[0], self.heads, self.head_dim
        gemv = self.gemv and rows == 1
        h = self._norm(x, g1, b1)
        q_k_v = ops.reshape(self._project(h, qkv, qkv_bias, gemv), (rows, 3, 1, heads, dim))
        cache = ops.slice_update(cache, [0, 0, t, 0, 0], q_k_v[:, 1:])
        scores = ops.einsum("bqhd,bkhd->bhqk", ops.cast(q_k_v[:, 0], "float32"), ops.cast(cache[:, 0], "float32"))
        # Keras' attention: float32 scores times 1/sqrt(head_dim), masked, float32 softmax.
        scores = ops.where(mask[:, None, None, :], scores * (1.0 / math.sqrt(float(dim))), -1e30)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.dtype)
        attended = ops.reshape(ops.einsum("bhqk,bkhd->bqhd", probs, cache[:, 1]), (rows, 1, heads * dim))
        x = x + self._project(attended, out, out_bias, gemv)
        h = self._norm(x, g2, b2)
        x = x + self._project(ops.gelu(self._project(h, fc, fc_bias, gemv), approximate=True), proj, proj_bias, gemv)
        return x, cache

    def logits(self, x, embedding):
        """With `bfloat16_products`: the tied logits of x [rows, 1, C] (already layer-normed) from the kept
        bfloat16 embedding, float32 [rows, vocabulary]."""
        from keras import ops

        return ops.matmul(x[:, 0, :], ops.transpose(ops.cast(embedding, "float32")))

    def _norm(self, x, gamma, beta):
        """Keras' layer norm (float32 inside), or with `one_pass_norm` both moments from one pass:
        XLA runs the two sums as one kernel where Keras' mean-then-variance takes two. The values
        are shifted by their first element first, so the variance loses no digits to a large mean."""
        from keras import ops

        if not self.one_pass_norm:
            return ops.cast(ops.layer_normalization(x, gamma, beta, epsilon=self.epsilon), self.dtype)
        d = ops.cast(x, "float32")
        d = d - d[..., :1]
        mean = ops.mean(d, axis=-1, keepdims=True)
        variance = ops.maximum(ops.mean(d * d, axis=-1, keepdims=True) - mean * mean, 0.0)
        y = (d - mean) * ops.rsqrt(variance + self.epsilon)
        return ops.cast(y * ops.cast(gamma, "float32") + ops.cast(beta, "float32"), self.dtype)

    def _project(self, h, kernel, bias, gemv: bool):
        """h [rows, 1, in] times the kernel, plus bias. One row on a GPU (`gemv`): a float32 multiply
        and a sum over the minor axis of the [out, in] kernel, which XLA runs as one row-reduction
        kernel reading the weights once. (As a dot, XLA strength-reduces a one-row product into a
        multiply kernel that writes a weight-sized product and a second kernel that sums its columns.)"""
        from keras import ops

        if self.bfloat16_products:  # kernel: bfloat16 [out, in] (`kept`), upcast inside the product
            return opaque(ops.matmul(h, ops.transpose(ops.cast(kernel, "float32")))) + bias
        if not gemv:
            return ops.matmul(h, kernel) + bias
        products = ops.cast(h, "float32")[:, :, None, :] * ops.cast(kernel, "float32")
        return ops.cast(ops.sum(products, axis=-1) + ops.cast(bias, "float32"), self.dtype)
