"""Recipes: run configs that ship inside the package, found by name.

`kgpt2 train --config pubmed_lora` reads kgpt2/recipes/pubmed_lora.toml
wherever kgpt2 is installed, from any folder; `kgpt2 recipes` lists them
(the first comment line of each file is its description) and `kgpt2 recipes
--copy NAME [DEST]` copies one out to edit. DEST works as it does for `cp`: an
existing folder gets NAME.toml inside it, any other path is the file's name,
and a path ending in "/" must be an existing folder.

    >>> from kgpt2 import recipes
    >>> "pubmed_lora" in recipes.names()
    True
    >>> recipes.find("pubmed_lora").name
    'pubmed_lora.toml'
    >>> recipes.verb_for(recipes.find("dpo"))
    'align'
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shlex
import tomllib
from pathlib import Path

from kgpt2.errors import UserError

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def is_name(text: str) -> bool:
    """A bare word such as "pubmed_lora": no folder, no file extension."""
    return bool(text) and "/" not in text and os.sep not in text and not Path(text).suffix


def find(name: str) -> Path:
    """The recipe file called `name`; unknown names are refused with close matches."""
    if name.removesuffix(".toml") in names():  # a name only: HERE / "/etc/x.toml" would be that very file
        return HERE / f"{name.removesuffix('.toml')}.toml"
    close = difflib.get_close_matches(name.removesuffix(".toml"), names(), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; recipes: {', '.join(names())}"
    raise UserError(f"'{name}' is neither a config file nor a kgpt2 recipe{hint} (`kgpt2 recipes` lists them)")


def description(path: Path) -> str:
    """The recipe's first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.lstrip("#").strip()
    return ""


def verb_for(path: Path) -> str:
    """The verb that runs a recipe: "align" for one that sets align.data (dpo), else "train" (the rule `kgpt2
    train` refuses an alignment config by)."""
    return "align" if tomllib.loads(path.read_text(encoding="utf-8")).get("align", {}).get("data") else "train"


def listing() -> list[tuple[str, str, str]]:
    """(name, one-line description, the verb that runs it) for every recipe."""
    return [(name, description(path), verb_for(path)) for name, path in ((n, find(n)) for n in names())]


def copy(name: str, dest: str | Path | None = None) -> Path:
    """Copy recipe `name` to `dest` (a file, or an existing folder to put NAME.toml in; default ./NAME.toml).

    A `dest` ending in "/" that is no folder is refused, as `cp` refuses it.

    Never overwrites: an existing file is refused. The copy is written under
    a temporary name and hard-linked into place, so `dest` appears whole or
    not at all, even with two copies racing.
    """
    source = find(name)
    dest = _destination(source, dest)
    if dest.exists():
        raise UserError(f"'{dest}' already exists; give another destination (nothing was changed)")
    if not dest.parent.is_dir():
        raise UserError(f"'{dest.parent}' is a file, not a folder" if dest.parent.exists()
                        else f"folder '{dest.parent}' does not exist")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        try:
            os.link(tmp, dest)  # fails if dest appeared meanwhile: never overwrites
        except FileExistsError:
            raise UserError(f"'{dest}' already exists; give another destination (nothing was changed)") from None
        except OSError:  # no hard links on this file system (some FUSE mounts)
            if dest.exists():
                raise UserError(f"'{dest}' already exists; give another destination (nothing was changed)") from None
            os.replace(tmp, dest)
    except OSError as e:  # read-only folder, full disk
        raise UserError(f"cannot write '{dest}': {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses this too: its sentence is said above
            tmp.unlink(missing_ok=True)
    return dest


def _destination(source: Path, dest: str | Path | None) -> Path:
    """The file `copy` writes, as `cp` picks it: DEST/NAME.toml for a folder, else DEST itself."""
    if dest is None:
        return Path(source.name)
    path = Path(dest)  # (Path drops a trailing slash: it is looked at in the text)
    if path.is_dir():
        return path / source.name
    if str(dest).endswith(tuple(filter(None, ("/", os.sep, os.altsep)))):
        # cp refuses too ("Not a directory"); writing a file called like the folder was the surprise
        if path.exists():
            raise UserError(f"'{path}' is a file, not a folder; give a folder or a new file name")
        raise UserError(f"folder '{dest}' does not exist; create it first (mkdir -p {shlex.quote(str(dest))}) "
                        "or give a file name")
    return path
