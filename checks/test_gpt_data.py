"""The GPT's data: the census names the `names` package ships, a text file's lines, the held-out
split, characters ↔ ids, padded batches, and the bigram baseline in closed form."""

import subprocess
import sys

import numpy as np
import pytest

from checks.tolerances import assert_clear_error
from scratch import data as D
from scratch import language_model as LM

pytestmark = pytest.mark.gpt


@pytest.fixture(scope="module")
def surnames():
    return D.load_names("last")


def test_the_census_lists(surnames):
    assert len(surnames) == 88_799 and len(set(surnames)) == len(surnames)
    assert surnames[:3] == ["smith", "johnson", "williams"]  # the files' order: most frequent first
    assert set("".join(surnames)) == set("abcdefghijklmnopqrstuvwxyz")
    assert max(map(len, surnames)) == 13
    first = D.load_names("first")
    assert len(first) == 5_163 and first[0] == "mary" and "james" in first  # female then male, each once
    with pytest.raises(ValueError, match="kind must be one of"):
        D.load_names("middle")


def test_the_names_package_is_found_not_imported():
    code = "import sys; from scratch import data; data.load_names(); print('names' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_held_out_split_is_a_pure_function_of_the_seed(surnames):
    train, test = D.held_out_split(surnames, 2000, seed=0)
    assert len(test) == 2000 and len(train) == len(surnames) - 2000
    assert not set(train) & set(test)
    assert (train, test) == D.held_out_split(surnames, 2000, seed=0)
    assert D.held_out_split(surnames, 2000, seed=1)[1] != test
    with pytest.raises(ValueError, match="only 3"):
        D.held_out_split(["a", "b", "c"], 3)


def test_names_data_encodes_every_name_with_its_boundaries():
    data = LM.load_lm_data("names")
    assert data.block_size == 14 and len(data.vocab) == 28  # <pad>, the boundary, a–z
    assert data.info == {"data": "names", "held_out": 2000, "split_seed": 0, "train": 86_799, "test": 2000, "lowercase": True}
    ids = data.train_ids[0]
    assert ids[0] == LM.BOUNDARY_ID and data.vocab.decode(ids[1:]) == data.train[0]
    batch = LM.pad_sequences([data.vocab.encode("ab"), data.vocab.encode("abcd")])
    b, a = data.vocab.encode("b")[1], data.vocab.encode("a")[1]
    assert batch.tolist() == [[1, a, b, 1, 0, 0], [1, a, b, *data.vocab.encode("cd")[1:], 1]]
    again = LM.CharVocabulary.from_array(data.vocab.to_array())
    assert again.tokens == data.vocab.tokens and data.vocab.to_array().dtype.kind == "U"


def test_text_file_lines_are_the_examples(tmp_path):
    path = tmp_path / "poem.txt"
    lines = [f"ligne {i}: é{'ü' * (i % 3)}." for i in range(40)]
    path.write_text("\n\n".join(lines) + "\n   \n", encoding="utf-8")  # blank lines are skipped
    assert D.load_text_lines(path) == lines
    data = LM.load_lm_data(f"text:{path}")
    assert data.info["held_out"] == 4 and len(data.train) == 36  # 10% held out
    assert "é" in data.vocab.tokens and "." in data.vocab.tokens  # "." is a character here, not the boundary
    assert data.block_size == 1 + max(map(len, lines))
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no non-blank line"):
        LM.load_lm_data(f"text:{tmp_path / 'empty.txt'}")
    with pytest.raises(ValueError, match="--data must be names"):
        LM.load_lm_data("digits")


def test_unknown_characters_get_a_clear_error():
    vocab = LM.CharVocabulary.build(["abc", "cab"])
    assert_clear_error("scratch", "an unknown character", lambda: vocab.encode("ax!", "prompt"), ValueError,
                       ["prompt", "'ax!'", "['!', 'x']", "'abc'"])


def test_bigram_is_the_smoothed_count_model():
    vocab = LM.CharVocabulary.build(["ab", "b"])  # ids: 0 pad, 1 boundary, 2 a, 3 b
    train = [vocab.encode(t) for t in ("ab", "ab", "b")]
    test = [vocab.encode("ba")]
    # counts of (previous → next) over ·ab·, ·ab·, ·b·: ·→a 2, ·→b 1, a→b 2, b→· 3; 3 tokens may follow
    p = {("·", "b"): (1 + 1) / (3 + 3), ("b", "a"): (0 + 1) / (3 + 3), ("a", "·"): (0 + 1) / (2 + 3)}
    expected = -np.mean(np.log(list(p.values())))
    assert LM.bigram_nll(train, test, len(vocab), alpha=1.0) == pytest.approx(expected, rel=1e-12)
    # unsmoothed, a pair never seen costs infinitely much: the reason for α
    with np.errstate(divide="ignore"):
        assert LM.bigram_nll(train, test, len(vocab), alpha=0.0) == np.inf


def test_bigram_on_the_census_surnames():
    """The README's floor: within 0.01 of the issue's calibration (2.565) on its own 2,000-name split."""
    data = LM.load_lm_data("names")
    assert LM.bigram_nll(data.train_ids, data.test_ids, len(data.vocab)) == pytest.approx(2.565, abs=0.01)
