"""Issue 21's speed levers change speed, not results: train.fused_loss and train.decay_steps.

Oracles: the plain Keras loss and metric on the full logits (what kgpt2
trains with otherwise), gradients through Keras' own JAX train step
(`compute_loss_and_updates`, the function it differentiates), and nanoGPT's
get_lr written out here for the schedule.
"""

import math
from unittest import mock

import numpy as np
import pytest
from test_fused_loss import _assert_same_loss_and_grads, _batch, _tiny_lm

pytestmark = [pytest.mark.backend, pytest.mark.filterwarnings("ignore::UserWarning")]


def _jax_only():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the fused loss is a JAX training step (elsewhere the plain loss trains)")
    return keras


def _pair(seed=0, vocabulary=301):
    keras = _jax_only()
    from kgpt2.training.metrics import compile_lm

    plain, fused = _tiny_lm(vocabulary=vocabulary, seed=seed), _tiny_lm(vocabulary=vocabulary, seed=seed + 1)
    fused.set_weights(plain.get_weights())
    compile_lm(plain, keras.optimizers.SGD(0.1), token_loss=False)
    compile_lm(fused, keras.optimizers.SGD(0.1), token_loss=False, fused_loss=True)
    return plain, fused


def test_fused_loss_equals_plain_loss_and_gradients():
    plain, fused = _pair()
    for m in (plain, fused):
        m.optimizer.build(m.trainable_variables)
    assert fused.compute_loss_and_updates.__func__ is not plain.compute_loss_and_updates.__func__
    grads_f = _assert_same_loss_and_grads(plain, fused, *_batch())
    emb = [i for i, v in enumerate(plain.trainable_variables) if v.shape[0] == 320][0]
    assert np.all(grads_f[emb][301:] == 0)  # the padded vocabulary's rows never get a gradient


def test_fused_training_steps_match_plain_fit():
    """Three `fit` steps: same losses, accuracies and weights; evaluation keeps the plain path."""
    plain, fused = _pair(seed=3)
    x, y, w = _batch(batch=4)
    logits = np.asarray(plain.predict(x, verbose=0))
    accuracy = ((logits.argmax(-1) == y) * w).sum() / w.sum()
    logs_p = [plain.train_on_batch(x, y, w, return_dict=True) for _ in range(3)]
    logs_f = [fused.train_on_batch(x, y, w, return_dict=True) for _ in range(3)]
    assert logs_f[0]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    for a, b in zip(logs_p, logs_f):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)
    for a, b in zip(plain.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    ev_p = plain.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    ev_f = fused.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert ev_f["loss"] == pytest.approx(ev_p["loss"], rel=1e-6)


def test_fused_loss_in_mixed_bfloat16_stays_close():
    """bf16 logits, float32 log-sum-exp: the plain path casts the same bf16 logits to float32."""
    keras = _jax_only()
    from kgpt2.training.devices import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        plain, fused = _pair(seed=5)
        x, y, w = _batch(batch=4, seed=2)
        a = plain.train_on_batch(x, y, w, return_dict=True)
        b = fused.train_on_batch(x, y, w, return_dict=True)
    assert keras.backend.standardize_dtype(plain.backbone.compute_dtype) == "bfloat16"
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)


def test_fused_loss_is_a_checked_config_key():
    from kgpt2.config import load_config
    from kgpt2.errors import UserError

    assert load_config(None).train.fused_loss == "auto"  # on for a JAX GPU (tests/test_fused_kernels.py)
    assert load_config(None, ["train.fused_loss=true"]).train.fused_loss is True
    with pytest.raises(UserError, match="train.fused_loss"):
        load_config(None, ['train.fused_loss="yes"'])


def _nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay=5000):
    """nanoGPT's get_lr (train.py @3adf61e), which starts its warmup at lr/101 where Keras starts at 0."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_decay_steps_makes_a_short_run_follow_the_long_runs_curve():
    from kgpt2.config import load_config
    from kgpt2.training.optimizer import make_schedule

    base = ["train.learning_rate=1e-3", "train.min_learning_rate=1e-4", "train.warmup_steps=100"]
    long = make_schedule(load_config(None, base), 5000)
    short = make_schedule(load_config(None, base + ["train.decay_steps=5000"]), 2500)
    for step in (0, 50, 100, 1000, 2499):
        assert float(short(step)) == pytest.approx(float(long(step)), rel=1e-6)
    for step in (100, 1000, 2500, 4999):  # after the warmup: nanoGPT's cosine
        assert float(long(step)) == pytest.approx(_nanogpt_lr(step), rel=1e-4)
    assert float(make_schedule(load_config(None, base + ["train.decay_steps=1000"]), 5000)(3000)) == pytest.approx(1e-4)
    assert load_config(None).train.decay_steps == 0  # default: the run's own total


def test_run_summary_times_rows_from_their_stamps_and_skips_evaluation_windows(tmp_path):
    """Rows of 10 steps, 5 ms a step, an evaluation after step 100 that took 2 s: the median is 5 ms a step.

    The step log's tokens_per_s column is a mean since its `fit` call began (here deliberately wrong), so
    the summary reads the stamps; the row after the evaluation (steps 101-110) holds it and is left out.
    """
    from kgpt2.config import load_config, save_config
    from kgpt2.pretrain import run_summary

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    cfg = load_config(None, ["train.batch_size=4", "data.sequence_length=8", "train.steps_per_execution=10",
                             f"checkpoints_root={tmp_path}", "run=run"])
    save_config(cfg, run / "config.json")
    t, rows = 1000.0, []
    for step in range(10, 201, 10):
        t += (3.0 if step == 10 else 0.05) + (2.0 if step == 110 else 0.0)  # compile; the evaluation after step 100
        rows.append(f"{step},1,2.0,0.5,1e-3,99.0,{t:.4f}")
    (run / "logs" / "steps.csv").write_text("step,stage,loss,accuracy,learning_rate,tokens_per_s,time\n"
                                            + "\n".join(rows) + "\n")
    (run / "logs" / "evals.csv").write_text("step,train_loss,val_loss,train_accuracy,val_accuracy,eval_seconds,best\n"
                                            "0,4.0,4.1,0.1,0.1,1.0,1\n100,2.0,2.1,0.4,0.4,2.0,1\n")
    summary = run_summary(run)
    assert summary["ms_per_step_median"] == pytest.approx(5.0, abs=1e-3)
    assert summary["ms_per_step_p90"] == pytest.approx(5.0, abs=1e-3)  # the evaluation's row is not among them
    assert summary["best_val_loss"] == 2.1


def test_fused_loss_trains_packed_windows_as_the_plain_loss_does():
    """kgpt2 train wraps the model for packed examples (data.windows = packed_examples): the fused loss
    reads the wrapper's per-example hidden states, so the step equals the plain one on the same windows."""
    keras = _jax_only()
    from kgpt2.model.packed_attention import for_windows
    from kgpt2.training.metrics import compile_lm

    models = []
    for fused in (False, True):
        lm = _tiny_lm(seed=7)
        if models:
            lm.set_weights(models[0].causal_lm.get_weights())
        packed = for_windows(lm, "packed_examples")
        compile_lm(packed, keras.optimizers.SGD(0.1), token_loss=False, fused_loss=fused)
        models.append(packed)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 301, (2, 17)).astype("int32")
    segments = np.array([[1] * 6 + [2] * 7 + [0] * 3, [1] * 16], "int32")  # two examples, then padding
    positions = np.array([list(range(6)) + list(range(7)) + [0] * 3, list(range(16))], "int32")
    x = {"token_ids": ids[:, :-1], "segment_ids": segments, "positions": positions}
    y, w = ids[:, 1:], (segments > 0).astype("float32")
    logs = [m.train_on_batch(x, y, w, return_dict=True) for m in models]
    assert logs[1]["loss"] == pytest.approx(logs[0]["loss"], rel=1e-5)
    assert logs[1]["accuracy"] == pytest.approx(logs[0]["accuracy"], abs=1e-6)
    for a, b in zip(models[0].causal_lm.get_weights(), models[1].causal_lm.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_triton_gemm_option_reaches_the_train_step_compile_and_only_on_a_gpu():
    keras = _jax_only()
    from kgpt2 import compat
    from kgpt2.training.devices import Device, step_compiler_options
    from kgpt2.training.metrics import compile_lm

    gpu, cpu = Device("gpu:0", "NVIDIA H200", True), Device("cpu:0", "CPU", False)
    from kgpt2.config_sections import TrainConfig

    off = {"xla_gpu_enable_triton_gemm": False}

    def options(triton, lora=False, device=gpu, hidden=768, kernel="xla"):
        train = TrainConfig(triton_gemm=triton, attention_dropout_kernel=kernel)
        return step_compiler_options(train, lora=lora, device=device, hidden_dim=hidden)

    assert options("auto") == off  # full fine-tuning of GPT-2 124M and up: cuBLAS (+3.3%)
    assert options("auto", lora=True) == {}  # LoRA: XLA's default (off: -0.9%)
    assert options("auto", hidden=384) == {}  # the Shakespeare model: XLA's default (off: -4.2%)
    assert options("off", lora=True) == off and options("off", hidden=384) == off
    assert options("on") == {}
    assert options("off", device=cpu) == {} and options("on", device=cpu, kernel="cudnn") == {}
    # cuDNN's attention dropout aborts inside a command buffer: every other kind stays recorded
    assert options("on", kernel="cudnn") == {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"}
    # "auto" (the Shakespeare recipe's): the same where cuDNN can run, nothing where it cannot
    from kgpt2.kernels import cudnn_attention

    for available in (True, False):
        with mock.patch.object(cudnn_attention, "cudnn_available", lambda: available):
            assert options("on", kernel="auto") == (options("on", kernel="cudnn") if available else {})

    x, y, w = _batch(batch=4)
    model = _tiny_lm()
    compile_lm(model, keras.optimizers.SGD(0.1), token_loss=False)
    # The options reach XLA: one it does not know fails the compile, the real one compiles and trains.
    with compat.train_step_compiler_options({"xla_no_such_option_kgpt2": True}):
        with pytest.raises(Exception, match="xla_no_such_option_kgpt2"):
            model.fit(x, y, sample_weight=w, epochs=1, batch_size=len(x), verbose=0)
    model = _tiny_lm()
    compile_lm(model, keras.optimizers.SGD(0.1), token_loss=False)
    with compat.train_step_compiler_options(off):
        history = model.fit(x, y, sample_weight=w, epochs=1, batch_size=len(x), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    import jax
    from keras.src.backend.jax import trainer
    assert trainer.jit is jax.jit  # put back


@pytest.mark.parametrize("verb", ["train", "align"])
def test_every_training_path_compiles_its_step_with_train_triton_gemm(verb, tmp_path, monkeypatch, make_tiny_config,
                                                                       tiny_preset, pydoc_shards):
    """kgpt2 train and kgpt2 align both compile their train step with train.triton_gemm's options (they go with
    the compiled model, not with one verb's scope): an option XLA does not know fails the first step of each."""
    _jax_only()
    import json

    import kgpt2.align
    import kgpt2.train
    import kgpt2.training.metrics

    asked = []

    def unknown_option(train, lora, device, hidden_dim):
        asked.append((train.triton_gemm, lora))
        return {"xla_no_such_option_kgpt2": True}

    module = {"train": kgpt2.train, "align": kgpt2.align}[verb]
    # train compiles through kgpt2.training.metrics.compile_for_training (as the speed benchmarks do); align on its own
    compiler = {"train": kgpt2.training.metrics, "align": kgpt2.align}[verb]
    monkeypatch.setattr(compiler, "step_compiler_options", unknown_option)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"The {w} statement", "chosen": " is good.", "rejected": " no"}) + "\n"
                             for w in ("assert", "with", "for", "while", "if", "try", "import", "return", "global",
                                       "pass", "raise", "del")))
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, f"run={verb}", "train.stages=[5]",
                           "train.triton_gemm=off", f"align.data={pairs}", "align.steps=1", "align.heldout_fraction=0.2",
                           "train.batch_size=4")
    with pytest.raises(Exception, match="xla_no_such_option_kgpt2"):
        module.__dict__[verb](cfg, verbose=0)
    assert asked == [("off", False)]
