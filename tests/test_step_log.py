"""The step log's training curve: each step's own loss, not Keras' running mean that restarts at every `fit` call.

kgpt2 calls `fit` once per checkpoint interval; loss.png used to plot the logged running means, which fell off a
cliff at each checkpoint (a 2-layer alpaca run on the CPU: 9.76 at step 40, 7.8 right after). The oracle here is
numpy: a model that does not learn (learning rate 0) has a known loss on each batch.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.backend  # Keras' logs as each backend's fit loop writes them

BATCH = 4


def _fit_calls(run_dir, calls):
    """Train (learning rate 0) through kgpt2's step logger in `fit` calls of the given numbers of batches, the way
    the trainer does between checkpoints; return each batch's loss computed in numpy."""
    import keras

    from kgpt2.run import Run
    from kgpt2.training.run_logs import StepLog

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].set_weights([weights])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    log, step, want = StepLog(Run(run_dir).steps_log), 0, []
    for batches in calls:
        x = rng.normal(size=(batches * BATCH, 3)).astype("float32")
        y = (rng.normal(size=(batches * BATCH, 1)) * np.arange(1, batches * BATCH + 1)[:, None]).astype("float32")
        want += [float(np.mean((xb @ weights - yb) ** 2)) for xb, yb in
                 zip(np.split(x, batches), np.split(y, batches))]
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[log.callback(step, lambda s: 0.0, stage=0, tokens_per_batch=BATCH)])
        step += batches
    return want


def test_the_plotted_curve_is_each_steps_loss_across_fit_calls(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kgpt2.training.run_logs import per_step_loss, read_steps
    from kgpt2.training.run_plot import _plot_training_loss, plot_run

    want = _fit_calls(tmp_path, [5, 7, 30])
    steps = read_steps(tmp_path)
    assert steps["step"].tolist() == list(range(1, 43)) and steps["since_step"].tolist() == [0] * 5 + [5] * 7 + [12] * 30
    assert per_step_loss(steps).tolist() == pytest.approx(want, rel=1e-4)
    assert steps["loss"].tolist() != pytest.approx(want, rel=1e-2)  # the logged running means are not the losses
    fig, ax = plt.subplots()
    _plot_training_loss(ax, steps)
    raw, smooth = ax.lines
    assert raw.get_ydata().tolist() == pytest.approx(want, rel=1e-4)
    assert raw.get_label() == "train loss per step" and smooth.get_label().startswith("moving average")
    plt.close(fig)
    assert plot_run(tmp_path).is_file()


def test_a_log_from_before_since_step_still_plots_its_running_means(tmp_path):
    """A run logged by an older kgpt2 and resumed by this one: its old rows keep their running means, the new rows
    are per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kgpt2.run import Run
    from kgpt2.training.run_logs import STEP_FIELDS, StepLog, read_steps
    from kgpt2.training.run_plot import _plot_training_loss

    old = [f for f in STEP_FIELDS if f != "since_step"]
    path = Run(tmp_path).steps_log
    path.parent.mkdir(parents=True)
    path.write_text(",".join(old) + "\n" + "".join(f"{s},1,{5 - s / 10},0.1,1e-3,100,{s},\n" for s in (1, 2, 3)))
    StepLog(path, truncate_after=2)  # a resume from step 2: the old rows are kept under the new header
    steps = read_steps(tmp_path)
    assert steps["loss"].tolist() == [4.9, 4.8] and steps["since_step"].isna().all()
    fig, ax = plt.subplots()
    _plot_training_loss(ax, steps)
    assert ax.lines[0].get_ydata().tolist() == [4.9, 4.8] and "running mean" in ax.lines[0].get_label()
    plt.close(fig)


def test_each_stages_validation_point_is_labelled_and_visible_on_both_axes():
    """loss.png's right panel: one stage put the accuracy's square exactly on the loss's circle (two axes, each
    scaled to its own single point), hiding one of them; now each point carries its value and the loss's circle
    is hollow and larger."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kgpt2.training.run_plot import _plot_stage_validation

    for stages in ([{"stage": 1, "loss": 5.9113, "accuracy": 0.0661}],
                   [{"stage": 1, "loss": 5.9, "accuracy": 0.07}, {"stage": 2, "loss": 4.7623, "accuracy": 0.1125}]):
        fig, ax = plt.subplots()
        _plot_stage_validation(ax, stages)
        loss_axis, accuracy_axis = fig.axes
        labels = {a.get_text() for axis in fig.axes for a in axis.texts}
        assert labels == {f"{m['loss']:.3f}" for m in stages} | {f"{m['accuracy']:.1%}" for m in stages}
        (loss_line,), (accuracy_line,) = loss_axis.get_lines(), accuracy_axis.get_lines()
        assert loss_line.get_markerfacecolor() == "none" and loss_line.get_markersize() > accuracy_line.get_markersize()
        plt.close(fig)
