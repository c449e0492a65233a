"""kgpt2 tokenises exactly like OpenAI's GPT-2; keras-hub 0.32's GPT2Tokenizer does not.

The reference is tiktoken built from ../shared/data/gpt2-tokenizer with GPT-2's
regex (an encoding independent of kgpt2's own construction). Both kgpt2
engines (tiktoken for GPT-2-shaped files, `tokenizers` for BPEs trained here)
are checked on real PubMed, Shakespeare and Alpaca text plus the hard cases.

The full keras-hub disagreement count of docs/tokenization.md:

    KERAS_BACKEND=tensorflow .venv/bin/python tests/test_tokenizer.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral  # tokenizers (no Keras model)

# The reference's split regex comes from tiktoken's own GPT-2 definition, not
# from kgpt2's copy of it, so the comparison below tests kgpt2's pattern too.
GPT2_PATTERN = pytest.importorskip("tiktoken_ext.openai_public").r50k_pat_str

HARD_CASES = [
    "research on anxiety in parkinson 's disease ( pd ) has been neglected",  # " 's" -> [705, 82]
    "the patient 's chart and the doctors ' notes ; we 'll see , they 've , i 'm , it 'd",
    "BACKGROUND\n\nthe phytohormone is widely distributed",  # "\n\n" before a word -> [198, 198]
    "end.\n\n\nThree newlines, then\n\n\n\n four and a space",
    "non\u00a0breaking\u00a0space, thin\u2009space, ideographic\u3000space",
    "\u00a0\u00a0 mixed \u2009 unicode\u3000\u3000spaces \u00a0",
    "runs:  two   three    four\t\ttabs \t mixed \r\n crlf   ",
    "   leading and trailing whitespace   ",
    "3-indole-acetyl-ε-l-lysine, β-catenin, 37 °C, μm, naïve café, Ærøskøbing",
    "中文文本，日本語のテキスト, 한국어, العربية, emoji 🙂🧬 and ZWJ 👩‍🔬",
    "<|endoftext|> in a text is ordinary text",
    "digits 1234567890 123,456.78 <dig> <cit> 3.14e-10",
    "",
]


def _reference(shared):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    d = Path(shared) / "gpt2-tokenizer"
    ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    return tiktoken.Encoding("gpt2-reference", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def real_texts(shared, pubmed_bodies: int = 300, sumpubmed: int = 100, alpaca: int = 1000,
               shakespeare: bool = True) -> list[str]:
    """Real texts from ../shared/data, as kgpt2's sources render them."""
    from kgpt2.data.sources import open_source

    shared = Path(shared)
    texts = []
    for split in ("train", "val", "test"):
        with open(shared / "pubmed" / "memsum_pubmed_300" / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                texts += [" ".join(record["summary"]), "\n".join(record["text"])]
    texts = texts[:2 * pubmed_bodies]
    texts += [d.text for _, d in zip(range(sumpubmed), open_source(shared / "pubmed" / "sumpubmed_1000",
                                                                  contents="body"))]
    texts += [d.text for _, d in zip(range(alpaca), open_source(shared / "alpaca" / "alpaca_5000.json"))]
    if shakespeare:
        texts += [d.text for d in open_source(shared / "shakespeare" / "input.txt", separator="\n\n")]
    return texts


@pytest.fixture(scope="module")
def reference(shared_data):
    return _reference(shared_data)


@pytest.fixture(scope="module")
def texts(shared_data):
    return real_texts(shared_data, pubmed_bodies=50, sumpubmed=10) + HARD_CASES


def test_gpt2_files_use_the_tiktoken_engine(gpt2_tokenizer, pydoc_tokenizer):
    assert gpt2_tokenizer.engine == "tiktoken"
    assert pydoc_tokenizer.engine == "tokenizers"  # ids of a trained BPE are not merge ranks


def test_hard_cases_match_openai(gpt2_tokenizer, reference):
    assert gpt2_tokenizer.encode("parkinson 's disease")[-3:] == [705, 82, 4369]
    assert gpt2_tokenizer.encode("a\n\nword") == [64, 198, 198, 4775]
    for text in HARD_CASES:
        assert gpt2_tokenizer.encode(text) == reference.encode_ordinary(text), repr(text)
        assert gpt2_tokenizer.decode(gpt2_tokenizer.encode(text)) == text


def test_every_kgpt2_path_matches_openai_on_real_text(gpt2_tokenizer, reference, texts):
    from concurrent.futures import ThreadPoolExecutor

    from kgpt2.model.tokenizer import Tokenizer

    assert len(texts) > 8000  # mostly short: Shakespeare paragraphs and Alpaca records
    expected = reference.encode_ordinary_batch(texts)
    assert gpt2_tokenizer.encode_batch(texts) == expected
    assert [gpt2_tokenizer.encode(t) for t in texts[:1000]] == expected[:1000]
    with ThreadPoolExecutor(2) as pool:
        arrays = gpt2_tokenizer.encode_arrays(texts, pool)
    assert all(a.tolist() == e for a, e in zip(arrays, expected))
    # The `tokenizers` engine (what BPEs trained here use) on the same files.
    hf_engine = Tokenizer(gpt2_tokenizer.vocabulary, gpt2_tokenizer.merges)
    hf_engine._tiktoken = None
    assert hf_engine.engine == "tokenizers"
    assert hf_engine.encode_batch(texts) == expected
    assert all(gpt2_tokenizer.decode(ids) == t for t, ids in zip(texts, expected))


def keras_hub_counts(shared, texts) -> dict:
    """How many texts each keras-hub GPT2Tokenizer path encodes differently from the reference."""
    import keras_hub
    import tensorflow as tf

    d = Path(shared) / "gpt2-tokenizer"
    vocab = json.loads((d / "encoder.json").read_text(encoding="utf-8"))
    merges = [m for m in (d / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if m]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    probes = ["parkinson 's disease", "a\n\nword"]  # the cases the issue cites
    texts = probes + list(texts)
    expected = _reference(shared).encode_ordinary_batch(texts)
    eager = [[int(i) for i in tokenizer(t)] for t in texts]  # the `tokenizers`-based path
    graph = [[int(i) for i in ids] for ids in  # the tf.text path, as in a tf.data pipeline
             tf.data.Dataset.from_tensor_slices(texts).map(tokenizer).as_numpy_iterator()]
    rest = slice(len(probes), None)
    return {"texts": len(texts) - len(probes),
            "eager_vs_reference": sum(a != b for a, b in zip(eager[rest], expected[rest])),
            "tf_data_vs_reference": sum(a != b for a, b in zip(graph[rest], expected[rest])),
            "eager_vs_tf_data": sum(a != b for a, b in zip(eager[rest], graph[rest])),
            "eager_apostrophe_s": eager[0], "tf_data_newlines": graph[1],
            "reference_apostrophe_s": expected[0], "reference_newlines": expected[1]}


# `backend` too, so the TensorFlow pass of `make test` runs it: keras-hub's tf.text graph exists only there
@pytest.mark.backend
def test_keras_hub_gpt2_tokenizer_disagrees_where_kgpt2_does_not(shared_data, gpt2_tokenizer, reference):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    pytest.importorskip("keras_hub")
    if keras.backend.backend() != "tensorflow":  # keras-hub 0.32 has its tf.text graph path only there
        pytest.skip("keras-hub's GPT2Tokenizer takes no tf.data tensors off the TensorFlow backend")
    texts = real_texts(shared_data, pubmed_bodies=10, sumpubmed=0, alpaca=100, shakespeare=False)
    counts = keras_hub_counts(shared_data, texts)
    print(counts)
    # kgpt2: exact on every text; keras-hub: the cited disagreements.
    assert gpt2_tokenizer.encode_batch(texts) == reference.encode_ordinary_batch(texts)
    assert counts["reference_apostrophe_s"][-3:] == [705, 82, 4369]
    assert counts["eager_apostrophe_s"][-3:] == [220, 338, 4369]
    assert counts["reference_newlines"] == [64, 198, 198, 4775]
    assert counts["tf_data_newlines"] == [64, 628, 4775]
    assert counts["eager_vs_reference"] > 0 and counts["tf_data_vs_reference"] > 0


if __name__ == "__main__":  # the full count for docs/tokenization.md
    SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # as conftest's shared_data
    all_texts = real_texts(SHARED, pubmed_bodies=300, sumpubmed=1000, alpaca=1000, shakespeare=False)
    print(json.dumps(keras_hub_counts(SHARED, all_texts)))


def test_both_tokenizers_satisfy_the_tokenizer_protocol(tmp_path):
    """Every member of the protocol is on both classes, and `kind` tells them apart."""
    import typing

    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.tokenizer import Tokenizer as BPETokenizer
    from kgpt2.model.tokenizer_protocol import KINDS, Tokenizer

    texts = ["the cat sat on the mat", "the dog sat on the log"] * 20
    bpe, chars = BPETokenizer.train(texts, vocab_size=280), CharTokenizer.train(texts)
    members = set(typing.get_type_hints(Tokenizer)) | {n for n in vars(Tokenizer) if not n.startswith("_")}
    for tok, kind in ((bpe, "bpe"), (chars, "char")):
        assert isinstance(tok, Tokenizer) and tok.kind == kind and kind in KINDS
        assert all(hasattr(tok, m) for m in members), members - {m for m in members if hasattr(tok, m)}
        ids = tok.encode("the cat")
        assert tok.decode(ids + [tok.eos_id]) == "the cat" and tok.vocab_size > max(ids)
        assert type(tok).from_dir(tok.save(tmp_path / kind)).hash == tok.hash
    assert not isinstance(object(), Tokenizer)


def test_a_hugging_face_tokenizer_json_is_a_tokenizer_folder(tmp_path, shared_data, reference, texts):
    """`--tokenizer` refused a folder holding only tokenizer.json (what transformers 5 saves), which --preset took."""
    from tokenizers import ByteLevelBPETokenizer

    from kgpt2.model.tokenizer import Tokenizer

    d = shared_data / "gpt2-tokenizer"
    hf = ByteLevelBPETokenizer(str(d / "encoder.json"), str(d / "vocab.bpe"))
    (tmp_path / "hf").mkdir()
    hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    for path in (tmp_path / "hf", tmp_path / "hf" / "tokenizer.json"):
        tok = Tokenizer.from_dir(path)
        assert [tok.encode(t) for t in texts] == [reference.encode_ordinary(t) for t in texts]


def test_a_tokenizer_path_without_its_files_lists_every_accepted_pair(tmp_path):
    from kgpt2.errors import UserError
    from kgpt2.model.tokenizer import Tokenizer

    (tmp_path / "corpus.jsonl").write_text("{}\n")
    for path, kind in ((tmp_path, "holds no GPT-2 tokenizer files"),
                       (tmp_path / "corpus.jsonl", "is a file, not a folder of tokenizer files")):
        with pytest.raises(UserError) as e:
            Tokenizer.from_dir(path)
        assert str(e.value) == (f"'{path}' {kind} (vocabulary.json + merges.txt, vocab.json + merges.txt, "
                                "OpenAI's encoder.json + vocab.bpe or a Hugging Face tokenizer.json) nor a "
                                "char_vocabulary.json")


def test_a_tokenizer_path_that_does_not_exist_says_so(tmp_path, monkeypatch):
    """The recipes name their tokenizer relative to the folder kgpt2 runs in: the message names that folder."""
    from kgpt2.errors import UserError
    from kgpt2.model.tokenizer import Tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"^tokenizer folder 'data/tok' does not exist \\(relative to {tmp_path}\\)$"):
        Tokenizer.from_dir("data/tok")
    with pytest.raises(UserError, match=f"^tokenizer folder '{tmp_path}/tok' does not exist$"):
        Tokenizer.from_dir(tmp_path / "tok")


def test_a_run_folder_is_a_tokenizer_folder(tmp_path):
    """`kgpt2 prepare --tokenizer checkpoints/quickstart` (the run, not its tokenizer/ inside) was refused as
    holding no tokenizer files; a run's own tokenizer/ comes first, else its preset's."""
    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.tokenizer import Tokenizer

    texts = ["the cat sat on the mat", "the dog sat on the log"] * 20
    bpe, chars = Tokenizer.train(texts, vocab_size=280), CharTokenizer.train(texts)
    chars.save(tmp_path / "run" / "preset" / "assets" / "tokenizer")
    assert Tokenizer.from_dir(tmp_path / "run").hash == chars.hash  # the preset's, while the run has no own
    bpe.save(tmp_path / "run" / "tokenizer")
    assert Tokenizer.from_dir(tmp_path / "run").hash == bpe.hash


EMPTY_FILES = {  # case -> (files written into the tokenizer folder, the refusal, naming which file)
    "empty merges.txt": ({"merges.txt": ""}, "tokenizer file '{d}/merges.txt' holds no merges (it is empty or only "
                         "a #version line), but its vocabulary has 50,000 tokens made by merges; the file is cut "
                         "short or not this vocabulary's merges"),
    "header-only merges.txt": ({"merges.txt": "#version: 0.2\n"}, "tokenizer file '{d}/merges.txt' holds no merges"),
    "empty vocab.json": ({"vocab.json": ""}, "tokenizer file '{d}/vocab.json' is empty: it holds no tokens"),
    "{} vocab.json": ({"vocab.json": "{}"}, "tokenizer file '{d}/vocab.json' is empty: it holds no tokens"),
    "no end-of-text": ({"vocab.json": '{"a": 0}'}, "tokenizer file '{d}/vocab.json' has no '<|endoftext|>' token"),
    "empty char vocabulary": ({"char_vocabulary.json": ""},
                              "tokenizer file '{d}/char_vocabulary.json' is empty: it holds no characters"),
    "no characters": ({"char_vocabulary.json": '{"type": "char", "chars": []}'},
                      "tokenizer file '{d}/char_vocabulary.json' is empty: it holds no characters"),
}


@pytest.mark.parametrize("case", EMPTY_FILES)
def test_an_empty_tokenizer_file_is_refused_naming_it(tmp_path, shared_data, kgpt2_cli, case):
    """An empty merges.txt was accepted: every byte then encoded on its own, silently (~4x the tokens)."""
    files, message = EMPTY_FILES[case]
    d = tmp_path / "tok"
    d.mkdir()
    if "char_vocabulary.json" not in files:
        (d / "vocab.json").write_bytes((shared_data / "gpt2-tokenizer" / "encoder.json").read_bytes())
        (d / "merges.txt").write_bytes((shared_data / "gpt2-tokenizer" / "vocab.bpe").read_bytes())
    for name, text in files.items():
        (d / name).write_text(text)
    (tmp_path / "c.txt").write_text("hello world")
    result = kgpt2_cli("prepare", "--source", "c.txt", "--out", "shards", "--tokenizer", d, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("kgpt2: error: " + message.format(d=d)), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "shards").exists()


def test_a_merges_file_of_only_its_version_line_is_fine_for_a_byte_vocabulary(tmp_path):
    """256 byte tokens and end-of-text need no merges; GPT-2's own file starts with '#version: 0.2'."""
    from tokenizers import pre_tokenizers

    from kgpt2.errors import UserError
    from kgpt2.model.tokenizer import Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))} | {"<|endoftext|>": 256}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    assert len(Tokenizer.from_dir(tmp_path).encode("hello")) == 5
    hf = json.loads(Tokenizer.train(["hello hello world"] * 5, vocab_size=300)._hf.to_str())
    hf["model"]["merges"] = []  # a tokenizer.json cut the same way: named too
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match=f"^tokenizer file '{tmp_path}/hf/tokenizer.json' holds no merges"):
        Tokenizer.from_dir(tmp_path / "hf")
