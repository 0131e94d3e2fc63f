"""gsnb.core.data: corpus sources and token windows, checked against direct tokenizer calls."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json

import pytest
import torch
from tiny import tiny_tokenizer

from gsnb.core import data

DOCS = [
    "the cat sat on the mat .",
    "a dog ran to the park , the dog sat .",
    "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11",
    "the mat",
    "a cat ran to a dog .",
]


def reference_stream(tokenizer, docs):
    """Each document's tokens followed by EOS, from one tokenizer call per document."""
    stream = []
    for doc in docs:
        stream += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
    return stream


def test_windows_start_with_bos_and_continue_the_document_stream():
    tok = tiny_tokenizer()
    windows = data.token_windows(tok, DOCS, n_windows=4, seq_len=9, progress=False)
    stream = reference_stream(tok, DOCS)
    assert windows.shape == (4, 9) and windows.dtype == torch.long
    assert (windows[:, 0] == tok.bos_token_id).all()
    assert windows[:, 1:].reshape(-1).tolist() == stream[: 4 * 8]


def test_windows_batching_does_not_change_tokens(model):
    one_by_one = data.token_windows(model, DOCS * 3, 5, 7, docs_per_batch=1, progress=False)
    batched = data.token_windows(model.tokenizer, DOCS * 3, 5, 7, progress=False)
    assert torch.equal(one_by_one, batched)


def test_windows_read_only_the_documents_they_need():
    consumed = []

    def endless():
        for i in itertools.count():
            consumed.append(i)
            yield "the cat sat on the mat ."

    windows = data.token_windows(
        tiny_tokenizer(), endless(), 3, 5, docs_per_batch=2, progress=False
    )
    assert windows.shape == (3, 5)
    assert (
        len(consumed) <= 4
    )  # 12 body tokens need 2 documents of 8; one batch of 2, maybe one more


@pytest.mark.parametrize(
    ("n_windows", "seq_len", "match"),
    [
        (0, 8, "n_windows must be a positive"),
        (2, 1, "seq_len must be an int >= 2"),
        (50, 8, r"the corpus gave only 2 windows of 8 tokens \(20 tokens\).* ask for fewer or add"),
    ],
)
def test_windows_reject_bad_sizes_and_short_corpora(n_windows, seq_len, match):
    with pytest.raises(ValueError, match=match):
        data.token_windows(tiny_tokenizer(), DOCS[:2], n_windows, seq_len, progress=False)


def test_windows_longer_than_the_model_context_are_refused(gemma3):
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        data.token_windows(gemma3, DOCS, 1, 129, progress=False)


def test_special_token_mask_marks_bos_eos_and_pad():
    tok = tiny_tokenizer()
    windows = data.token_windows(tok, DOCS, 4, 9, progress=False)
    windows[-1, -2:] = tok.pad_token_id
    mask = data.special_token_mask(windows, tok)
    expected = torch.tensor(
        [
            [t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) for t in row]
            for row in windows.tolist()
        ]
    )
    assert torch.equal(mask, expected)
    assert mask[:, 0].all() and mask.sum() > 4 + 2  # BOS everywhere, plus EOS and the pads


def test_offline_corpus_is_deterministic_deduplicated_and_large():
    first = list(itertools.islice(data.offline_corpus(), 150))
    again = list(itertools.islice(data.offline_corpus(), 150))
    assert first == again
    assert all(len(doc) >= data.MIN_DOC_CHARS for doc in first)
    normalised = {" ".join(doc.split()) for doc in first}
    assert len(normalised) == len(first)
    assert sum(map(len, first)) > 300_000  # the reference topics alone are ~0.5M characters


def test_offline_corpus_drops_short_and_duplicate_documents(monkeypatch):
    long_a, long_b = "alpha " * 50, "beta " * 50
    raw = [long_a, "too short", long_b, "  " + long_a.replace(" ", "\n"), long_b, "gamma " * 50]
    monkeypatch.setattr(data, "_raw_offline_documents", lambda: iter(raw))
    assert list(data.offline_corpus()) == [long_a, long_b, "gamma " * 50]


def test_default_tokens_window_the_offline_corpus(gemma3):
    tokens = data.default_tokens(gemma3, n_windows=3, seq_len=16, progress=False)
    train_docs = (d for d in data.offline_corpus() if not _in_eval(d))
    stream = reference_stream(gemma3.tokenizer, list(itertools.islice(train_docs, 2)))
    assert (tokens[:, 0] == gemma3.tokenizer.bos_token_id).all()
    assert tokens[:, 1:].reshape(-1).tolist() == stream[:45]


def _in_eval(doc: str) -> bool:
    """Independent restatement of the split rule: the first 4 bytes of the blake2b hash of the
    whitespace-normalised text, read big-endian, below 10% of 2**32."""
    h = hashlib.blake2b(" ".join(doc.split()).encode(), digest_size=4).hexdigest()
    return int(h, 16) < 0.1 * 2**32


def test_train_and_eval_splits_are_disjoint_and_stable():
    docs = list(itertools.islice(data.offline_corpus(), 400))
    train = list(data.split_documents(docs, "train"))
    held = list(data.split_documents(docs, "eval"))
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(docs)
    assert 10 <= len(held) <= 80  # about 10% of 400
    assert held == [d for d in docs if _in_eval(d)]
    # A document's side does not depend on its neighbours or on whitespace.
    assert list(data.split_documents(reversed(docs), "eval")) == held[::-1]
    assert list(data.split_documents([" \n".join(held[0].split())], "eval")) != []
    with pytest.raises(ValueError, match="'train'.*'eval'"):
        list(data.split_documents(docs, "test"))


def test_default_eval_windows_come_from_eval_documents(gemma3):
    held = data.default_tokens(gemma3, n_windows=3, seq_len=16, split="eval", progress=False)
    eval_docs = (d for d in data.offline_corpus() if _in_eval(d))
    stream = reference_stream(gemma3.tokenizer, list(itertools.islice(eval_docs, 2)))
    assert held[:, 1:].reshape(-1).tolist() == stream[:45]


def test_read_texts_reads_txt_jsonl_folders_and_strings(tmp_path):
    (tmp_path / "a.txt").write_text("first file\nwith two lines")
    rows = [{"text": "row one"}, {"text": "row two", "id": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "skip.csv").write_text("not read")
    assert list(data.read_texts(tmp_path)) == ["first file\nwith two lines", "row one", "row two"]
    got = list(data.read_texts([str(tmp_path / "a.txt"), "just a string", tmp_path / "b.jsonl"]))
    assert got == ["first file\nwith two lines", "just a string", "row one", "row two"]
    assert list(data.read_texts("one document")) == ["one document"]


def test_read_texts_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        list(data.read_texts("missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has no string field 'text'"):
        list(data.read_texts(tmp_path / "bad.jsonl"))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
def test_hub_dataset_without_datasets_says_how_to_install():
    with pytest.raises(ImportError, match="pip install datasets"):
        next(data.hub_dataset("HuggingFaceFW/fineweb"))


@pytest.mark.embedded
def test_control_tokens_written_in_text_stay_text(embedded):
    doc = "The tokenizer marks a new document with <bos> and ends it with <eos>. " * 4
    windows = data.token_windows(embedded, [doc], 1, 24, progress=False)
    assert data.special_token_mask(windows, embedded)[0].tolist() == [True] + [False] * 23
