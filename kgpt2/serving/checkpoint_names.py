"""How a checkpoint is named to a person: the demo's picker labels and the line `kgpt2 serve` and `kgpt2 export`
print, each with the checkpoint's id, its step and where it sits in the run's stages; and its run's preset, as the
demo's model line names it (`preset_name`).

A stage can end twice: more `train.epochs` on a finished one-stage run (or a higher `train.max_steps`) trains
the stage on, and its first stage-end checkpoint stays. Only the newest is called the stage's end; an earlier
one says that the stage was trained on after it.

    >>> from pathlib import Path
    >>> from kgpt2.training.checkpoints import Checkpoint
    >>> ends = [Checkpoint(Path("ckpt-74"), 74, {"stage": 1, "stage_end": True, "epochs": 1}),
    ...         Checkpoint(Path("ckpt-148"), 148, {"stage": 1, "stage_end": True, "epochs": 2})]
    >>> for label, _ in picker_choices(ends):
    ...     print(label)
    base (the untrained preset)
    ckpt-74 · step 74 · end of stage 1 at 1 epoch (trained on after)
    ckpt-148 · step 148 · end of stage 1 at 2 epochs · latest
    >>> checkpoint_line(ends[1], "latest", ends)
    'ckpt-148: latest, end of stage 1 at 2 epochs, step 148'
"""

from __future__ import annotations

from pathlib import Path

from kgpt2.model.scratch import SCRATCH_MARK
from kgpt2.run import BASE, Run
from kgpt2.training.checkpoints import WEIGHTS_ONLY, Checkpoint, CheckpointManager, max_steps_stop

BASE_LABEL = "base (the untrained preset)"


def _epochs(checkpoint: Checkpoint) -> str:
    n = checkpoint.state.get("epochs")
    return f" at {n} epoch{'' if n == 1 else 's'}" if isinstance(n, int) else ""


def stage_phrase(checkpoint: Checkpoint, checkpoints: list[Checkpoint]) -> str | None:
    """Where `checkpoint` sits among the run's `checkpoints`: "in stage 3", "end of stage 2", or, for a stage end
    the stage was trained on after, that (None when its state names no stage)."""
    n = checkpoint.stage_number
    if n is None:
        return None
    if not checkpoint.state.get("stage_end"):
        return f"in stage {n}" + _stopped(checkpoint.state, n)
    same = [c for c in checkpoints if c.stage_number == n and c.step != checkpoint.step]
    if any(c.step > checkpoint.step for c in same):
        return f"end of stage {n}{_epochs(checkpoint)} (trained on after)"
    if any(c.state.get("stage_end") for c in same):  # it ended before as well: the epochs tell the two apart
        return f"end of stage {n}{_epochs(checkpoint)}"
    return f"end of stage {n}"


def _stopped(state: dict, n: int) -> str:
    """", stopped at train.max_steps after 2 of 12 batches" for a checkpoint where train.max_steps stopped stage
    `n` before its end, else ""."""
    if state.get("stopped") != "max_steps":
        return ""
    stop = max_steps_stop(state)
    return f", stopped at train.max_steps {stop[1]}" if stop and stop[0] == n else ", stopped at train.max_steps"


def picker_choices(checkpoints: list[Checkpoint]) -> list[tuple[str, str]]:
    """(label, id) pairs for a picker, oldest first after `base`: id, step, stage, and the newest marked latest."""
    choices = [(BASE_LABEL, BASE)]
    for i, c in enumerate(checkpoints):
        where = stage_phrase(c, checkpoints)
        label = " · ".join([c.id, f"step {c.step}"] + ([where] if where else []))
        choices.append((label + (" · latest" if i == len(checkpoints) - 1 else ""), c.id))
    return choices


def checkpoint_line(checkpoint: Checkpoint | None, asked: str, checkpoints: list[Checkpoint]) -> str:
    """"ckpt-340: latest, end of stage 2, step 340": the checkpoint a command uses, with the name it was asked by
    when that is not its id (None: the base model)."""
    if checkpoint is None:
        return "base: the untrained preset"
    where = stage_phrase(checkpoint, checkpoints)
    named = [] if str(asked) in (checkpoint.id, str(checkpoint.step)) else [str(asked)]
    return f"{checkpoint.id}: " + ", ".join(named + ([where] if where else []) + [f"step {checkpoint.step}"])


def resolve(run_dir, asked: str = "latest") -> tuple[str, str]:
    """(id, line) of the checkpoint `asked` names in run `run_dir` (`latest`: the newest intact one, as every
    command takes it), for the line a command prints before it loads that id."""
    if asked == BASE:
        return BASE, checkpoint_line(None, asked, [])
    checkpoint = Run(run_dir).checkpoint(asked, WEIGHTS_ONLY)  # what `Run.restore` then loads: the weights alone
    listed = CheckpointManager(run_dir).list()
    return checkpoint.id, checkpoint_line(checkpoint, asked, listed)


def preset_name(preset: str, run_dir) -> str:
    """The run's preset as a person knows it: a KerasHub or Hub name as given; a folder in the run (its copy of a
    local preset) as `run/folder`, one elsewhere by its last two folders (a Kaggle download ends in a version
    number); "from scratch" when `kgpt2 pretrain init` made it. KerasHub's metadata.json holds no name to use.

        >>> preset_name("gpt2_base_en", "runs/pubmed")
        'gpt2_base_en'
        >>> preset_name("/home/me/.cache/kagglehub/models/keras/gpt2/keras/gpt2_base_en/2", "runs/pubmed")
        'gpt2_base_en/2'
    """
    if not preset:
        return "?"
    path, run_dir = Path(preset).expanduser(), Path(run_dir)
    if not path.is_absolute() and not path.is_dir():
        return str(preset)  # a preset name or handle
    try:
        name = f"{run_dir.name}/{path.resolve().relative_to(run_dir.resolve()).as_posix()}"
    except ValueError:  # outside the run
        name = "/".join(path.parts[-2:])
    return name + (" (from scratch)" if (path / SCRATCH_MARK).is_file() else "")
