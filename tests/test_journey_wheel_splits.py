"""A corpus whose one file is called train.jsonl: `kgpt2 prepare` tells how to split it by article.

Found on a student's journey from the built wheel: `kgpt2 prepare --source .../memsum_pubmed_300/train.jsonl`
(100 PubMed articles) put every article in train, as `--splits auto` keeps a source's own split names, and said
"validation and test hold no articles (100 documents in all, each split whole): ...; prepare again with
--splits tail:0.1 to hold out the last 10% of each document's text, or from more documents": advice for one long
text, when `--splits hash` is what splits 100 articles. The oracle is that advice taken: it fills every split.
"""

from __future__ import annotations

import json
import logging

import pytest

from kgpt2.data.shards import prepare

pytestmark = pytest.mark.backend_neutral  # data preparation (shards)


def _papers(path, n):
    path.write_text("".join(json.dumps({"text": [f"article {i} body sentence ."], "summary": [f"summary {i} ."]})
                            + "\n" for i in range(n)))
    return path


def test_a_file_called_train_is_told_to_split_by_article(tmp_path, pydoc_tokenizer, caplog):
    corpus = _papers(tmp_path / "train.jsonl", 100)
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        prepare(corpus, tmp_path / "auto", pydoc_tokenizer, progress=False)
    assert caplog.messages == [
        "validation and test hold no articles (100 documents in all, in the split the source names: train): training "
        "would report no validation loss and `kgpt2 evaluate` has nothing to score; --splits auto keeps a source's "
        "own splits (a file or folder called train, an hf: dataset's split), so prepare again with --splits hash to "
        "split the 100 documents by article (90/5/5% train/validation/test)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        taken = prepare(corpus, tmp_path / "hash", pydoc_tokenizer, splits="hash", progress=False)
    assert all(s["num_articles"] > 0 for s in taken["splits"].values()) and not caplog.messages


def test_few_documents_keep_the_advice_for_long_texts(tmp_path, pydoc_tokenizer, caplog):
    corpus = _papers(tmp_path / "train.jsonl", 3)  # by article, 3 documents could not fill three splits either
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        prepare(corpus, tmp_path / "auto", pydoc_tokenizer, progress=False)
    assert caplog.messages[0].endswith("each split whole): training would report no validation loss and `kgpt2 "
                                       "evaluate` has nothing to score; prepare again with --splits tail:0.1 to hold "
                                       "out the last 10% of each document's text, or from more documents")
