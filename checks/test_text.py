"""scratch/text.py: tokens, vocabulary, batches by length, the number-words corpus and its cache,
and sentence-pair files the tests write themselves. Every corpus is cached in a temporary folder."""

import inspect
import os

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scratch import text

pytestmark = pytest.mark.data


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A default cache_dir, should a test forget one, lands in a temporary folder, never in ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("number-words")


@pytest.fixture(scope="module")
def corpus(cache_dir):
    """The default corpus (50,000 train, 2,000 test), generated once for the module."""
    return text.load_number_words(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def vocabularies(corpus):
    """(English, French) vocabularies of the training split."""
    return tuple(text.Vocabulary.build(row[i] for row in corpus.train) for i in (1, 2))


def forbid_generation(monkeypatch):
    def fail(n):
        raise AssertionError(f"number_words({n}) was called: the cache was not used")
    monkeypatch.setattr(text, "number_words", fail)


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentence, tokens", [
    ("quatre-vingt-dix-sept", ["quatre-", "vingt-", "dix-", "sept"]),
    ("ninety-seven", ["ninety-", "seven"]),
    ("Hello, world!", ["hello", ",", "world", "!"]),
    ("l'homme", ["l'", "homme"]),
    ("  Deux \t CENTS\n", ["deux", "cents"]),
    ("Ça a été à Noël", ["ça", "a", "été", "à", "noël"]),
    ("vingt et un", ["vingt", "et", "un"]),
    ("a - b", ["a", "-", "b"]),  # a hyphen between spaces joins nothing: its own token
    ("dix- sept", ["dix", "-", "sept"]),  # nor does one before a space
    ("«l' homme»", ["«", "l", "'", "homme", "»"]),
    ("", []),
    (" \t\n ", []),
])
def test_tokenize(sentence, tokens):
    assert text.tokenize(sentence) == tokens


def test_tokenize_wants_a_str():
    with pytest.raises(TypeError, match="sentence must be a str, got bytes"):
        text.tokenize(b"one")


@pytest.mark.parametrize("tokens, sentence", [
    (["quatre-", "vingt-", "dix-", "sept"], "quatre-vingt-dix-sept"),
    (["l'", "homme"], "l'homme"),
    (["a", "-", "b"], "a - b"),
    (["hello", ",", "world", "!"], "hello , world !"),
    ([], ""),
])
def test_detokenize(tokens, sentence):
    assert text.detokenize(tokens) == sentence


def test_detokenize_inverts_tokenize_on_the_whole_corpus(corpus):
    for number, english, french in corpus.train + corpus.test:
        for sentence in (english, french):
            assert text.detokenize(text.tokenize(sentence)) == sentence.lower(), number


# ----------------------------------------------------------------------------------------------
# Number words
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, english, french", [
    (0, "zero", "zéro"),
    (21, "twenty-one", "vingt et un"),
    (80, "eighty", "quatre-vingts"),  # the s of quatre-vingts when nothing follows …
    (81, "eighty-one", "quatre-vingt-un"),  # … and not when something does
    (97, "ninety-seven", "quatre-vingt-dix-sept"),
    (200, "two hundred", "deux cents"),
    (201, "two hundred and one", "deux cent un"),
    (1200, "one thousand two hundred", "mille deux cents"),  # num2words writes "one thousand, two hundred"
    (80_000, "eighty thousand", "quatre-vingt mille"),
    (999_999, "nine hundred and ninety-nine thousand nine hundred and ninety-nine",
     "neuf cent quatre-vingt-dix-neuf mille neuf cent quatre-vingt-dix-neuf"),
])
def test_number_words_examples(n, english, french):
    assert text.number_words(n) == (english, french)


@given(n=st.integers(0, text.NUMBER_LIMIT - 1))
@example(n=10**9 + 1)
@example(n=text.NUMBER_LIMIT - 1)
def test_number_words_are_num2words(n):
    """The faster converters (num2words' own, with the number names cut below 10¹²) say the same words."""
    from num2words import num2words

    english, french = text.number_words(n)
    assert english == num2words(n, lang="en").replace(",", "")
    assert french == num2words(n, lang="fr")
    for sentence in (english, french):
        assert text.detokenize(text.tokenize(sentence)) == sentence


@pytest.mark.parametrize("n, error, message", [
    (-1, ValueError, "n must be ≥ 0, got -1"),
    (10**12, ValueError, "n must be < 1000000000000"),
    (1.0, TypeError, "n must be an int, got 1.0"),
])
def test_number_words_arguments(n, error, message):
    with pytest.raises(error, match=message):
        text.number_words(n)


def test_corpus_splits(corpus):
    assert len(corpus.train) == 50_000 and len(corpus.test) == 2_000
    train_numbers = [row[0] for row in corpus.train]
    test_numbers = [row[0] for row in corpus.test]
    assert len(set(train_numbers)) == 50_000 and len(set(test_numbers)) == 2_000, "numbers repeat"
    assert not set(train_numbers) & set(test_numbers), "a test number is in train"
    assert set(range(101)) <= set(train_numbers), "a number 0 … 100 is missing from train"
    assert all(0 <= n <= 999_999 and type(n) is int for n in train_numbers + test_numbers)
    assert max(test_numbers) > 990_000 and min(test_numbers) < 10_000, "test is not spread over the range"
    for row in corpus.train[::997] + corpus.test[::97]:
        assert row[1:] == text.number_words(row[0])


def test_corpus_defaults_are_documented():
    parameters = inspect.signature(text.load_number_words).parameters
    for name in ("train", "test", "high", "seed"):
        assert parameters[name].default == text.NUMBER_WORDS[name], name


def test_every_test_token_is_in_the_training_vocabulary(corpus, vocabularies):
    """Held-out numbers test generalisation to new combinations, not to unseen words."""
    for language, column, vocabulary in (("English", 1, vocabularies[0]), ("French", 2, vocabularies[1])):
        seen = set(vocabulary.tokens)
        unseen = sorted({token for row in corpus.test for token in text.tokenize(row[column])} - seen)
        assert not unseen, f"{language} test tokens never seen in training: {unseen}"
    assert {"vingts", "cents", "quatre-", "vingt-", "et"} <= set(vocabularies[1].tokens)


def test_corpus_depends_on_the_seed(tmp_path):
    a = text.load_number_words(train=200, test=20, high=9_999, seed=1, cache_dir=tmp_path)
    b = text.load_number_words(train=200, test=20, high=9_999, seed=2, cache_dir=tmp_path)
    assert [row[0] for row in a.test] != [row[0] for row in b.test]
    assert sorted(os.listdir(tmp_path)) == ["number-words-v2-train200-test20-high9999-seed1.tsv",
                                            "number-words-v2-train200-test20-high9999-seed2.tsv"]


def test_the_cache_is_read_on_a_second_call(corpus, cache_dir, monkeypatch):
    (name,) = os.listdir(cache_dir)  # one file, and no temporary file left behind
    with open(cache_dir / name, encoding="utf-8") as file:
        assert file.readline() == "# number-words v2 train=50000 test=2000 high=999999 seed=0\n"
        assert file.readline() == "0\tzero\tzéro\n"
    forbid_generation(monkeypatch)
    assert text.load_number_words(cache_dir=cache_dir) == corpus


SMALL = dict(train=150, test=30, high=999, seed=3)


@pytest.mark.parametrize("damage", [
    lambda raw: raw[: len(raw) // 2],  # truncated mid-line
    lambda raw: raw[: raw.rindex(b"\n", 0, len(raw) - 1) + 1],  # one whole line short
    lambda raw: raw.replace(b"\t", b" ", 1),  # a line with one column
    lambda raw: raw.replace(b"train=150", b"train=151"),  # another corpus's header
    lambda raw: b"\xff\xfe" + raw,  # not UTF-8
    lambda raw: b"",
])
def test_a_damaged_cache_is_regenerated(tmp_path, monkeypatch, damage):
    first = text.load_number_words(**SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(UserWarning, match="number-words cache .* is damaged"):
        assert text.load_number_words(**SMALL, cache_dir=tmp_path) == first
    forbid_generation(monkeypatch)  # and the file is whole again
    assert text.load_number_words(**SMALL, cache_dir=tmp_path) == first


def test_a_cache_of_other_numbers_is_regenerated(tmp_path):
    """Same parameters, other numbers (a changed draw): the words must follow the numbers."""
    first = text.load_number_words(**SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_text(path.read_text(encoding="utf-8").replace("\n0\tzero", "\n1\tzero", 1), encoding="utf-8")
    with pytest.warns(UserWarning, match="damaged"):
        assert text.load_number_words(**SMALL, cache_dir=tmp_path) == first


def test_default_cache_dir(tmp_path):
    corpus = text.load_number_words(**SMALL)  # XDG_CACHE_HOME is tmp_path / "xdg" (see private_cache)
    assert os.listdir(tmp_path / "xdg" / "genai-from-scratch") == ["number-words-v2-train150-test30-high999-seed3.tsv"]
    assert len(corpus.train) == 150 and len(corpus.test) == 30


@pytest.mark.parametrize("arguments, error, message", [
    (dict(train=0), ValueError, "train must be ≥ 1, got 0"),
    (dict(test=0), ValueError, "test must be ≥ 1, got 0"),
    (dict(train=100, test=10), ValueError, r"train must be ≥ 101 to hold every number 0 … 100, got 100"),
    (dict(train=900, test=101, high=999), ValueError, r"train \+ test must be ≤ high \+ 1 = 1000"),
    (dict(high=10**12), ValueError, "high must be < 1000000000000"),
    (dict(seed=-1), ValueError, "seed must be ≥ 0, got -1"),
    (dict(train=500.0), TypeError, "train must be an int, got 500.0"),
])
def test_corpus_arguments_are_checked(tmp_path, arguments, error, message):
    with pytest.raises(error, match=message):
        text.load_number_words(**arguments, cache_dir=tmp_path)


def test_the_smallest_corpus_is_every_number(tmp_path):
    corpus = text.load_number_words(train=150, test=50, high=199, cache_dir=tmp_path)
    assert sorted(row[0] for row in corpus.train + corpus.test) == list(range(200))


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------


def test_vocabulary_build_orders_by_count_then_alphabet():
    vocabulary = text.Vocabulary.build(["b a c", "a c", "d a", "C x"])  # a: 3, c: 3, b d x: 1
    assert vocabulary.tokens == ["<pad>", "<s>", "</s>", "<unk>", "a", "c", "b", "d", "x"]
    assert len(vocabulary) == 9
    assert text.Vocabulary.build(["b a c", "a c", "d a", "C x"], min_count=2).tokens[4:] == ["a", "c"]
    assert [text.PAD_ID, text.BOS_ID, text.EOS_ID, text.UNK_ID] == [0, 1, 2, 3]


def test_vocabulary_build_is_deterministic(corpus, vocabularies):
    english = [row[1] for row in corpus.train]
    assert text.Vocabulary.build(english).tokens == vocabularies[0].tokens
    assert text.Vocabulary.build(english[::-1]).tokens == vocabularies[0].tokens, "ids depend on the order of sentences"


@pytest.mark.parametrize("tokens, message", [
    (["<s>", "<pad>", "</s>", "<unk>", "a"], "must start with the special tokens"),
    (["a", "b"], "must start with the special tokens"),
    (["<pad>", "<s>", "</s>", "<unk>", "a", "b", "a", "<s>"], r"repeated: \['<s>', 'a'\]"),
])
def test_vocabulary_rejects_bad_tokens(tokens, message):
    with pytest.raises(ValueError, match=message):
        text.Vocabulary(tokens)


def test_encode_decode_round_trip(corpus, vocabularies):
    english, french = vocabularies
    for number, en, fr in corpus.test[:300]:
        for vocabulary, sentence in ((english, en), (french, fr)):
            ids = vocabulary.encode(sentence)
            assert ids.dtype == np.int64 and ids.shape == (len(text.tokenize(sentence)) + 1,)
            assert ids[-1] == text.EOS_ID and np.all(ids[:-1] > text.UNK_ID)
            assert vocabulary.decode(ids) == sentence
            with_bos = vocabulary.encode(sentence, add_bos=True, add_eos=False)
            assert with_bos[0] == text.BOS_ID and np.array_equal(with_bos[1:], ids[:-1])
            assert vocabulary.decode(list(with_bos)) == sentence


def test_encode_values():
    vocabulary = text.Vocabulary.build(["deux cents", "deux"])  # deux: 4, cents: 5
    assert vocabulary.encode("Deux  cents").tolist() == [4, 5, 2]
    assert vocabulary.encode("deux", add_bos=True).tolist() == [1, 4, 2]


def test_decode_stops_at_eos_and_drops_pad_and_bos():
    vocabulary = text.Vocabulary.build(["quatre-vingts deux"])  # quatre-: 4, vingts: 5, deux: 6 (ties alphabetical)
    assert vocabulary.tokens[4:] == ["deux", "quatre-", "vingts"]
    assert vocabulary.decode([1, 5, 6, 0, 4, 2, 4, 4]) == "quatre-vingts deux"
    assert vocabulary.decode(np.array([5, 3, 6], dtype=np.int32)) == "quatre-<unk> vingts"
    assert vocabulary.decode([]) == "" and vocabulary.decode([2, 4]) == ""
    with pytest.raises(ValueError, match=r"ids must be in \[0, 7\).*\[0, 7\]"):
        vocabulary.decode([0, 7])
    with pytest.raises(ValueError, match=r"ids must be a 1-D array of ints, got int64 of shape \(1, 2\)"):
        vocabulary.decode([[4, 5]])


def test_unknown_words():
    vocabulary = text.Vocabulary.build(["one two"])
    with pytest.raises(ValueError, match=r"2 word\(s\) not in the vocabulary: \['four', 'three'\]; pass unknown='unk'"):
        vocabulary.encode("three one four three")
    unk, one = text.UNK_ID, vocabulary.tokens.index("one")
    assert vocabulary.encode("three one four three", unknown="unk").tolist() == [unk, one, unk, unk, text.EOS_ID]
    with pytest.raises(ValueError, match="unknown must be 'error' or 'unk', got 'skip'"):
        vocabulary.encode("one", unknown="skip")


def test_empty_sentence():
    vocabulary = text.Vocabulary.build(["one"])
    assert vocabulary.encode("").tolist() == [text.EOS_ID]
    assert vocabulary.encode("  ", add_bos=True).tolist() == [text.BOS_ID, text.EOS_ID]
    empty = vocabulary.encode("", add_eos=False)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_vocabulary_through_an_npz(tmp_path, vocabularies):
    french = vocabularies[1]
    array = french.to_array()
    assert array.dtype.kind == "U" and array.shape == (len(french),)
    np.savez(tmp_path / "checkpoint.npz", **{"vocab.target": array})
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as saved:
        restored = text.Vocabulary.from_array(saved["vocab.target"])
    assert restored.tokens == french.tokens and "zéro" in restored.tokens
    assert restored.encode("quatre-vingt-dix-sept").tolist() == french.encode("quatre-vingt-dix-sept").tolist()
    with pytest.raises(ValueError, match="array must be 1-D unicode strings"):
        text.Vocabulary.from_array(np.array(french.tokens, dtype=object))


# ----------------------------------------------------------------------------------------------
# Padded batches and batching by length
# ----------------------------------------------------------------------------------------------


def test_pad_batch():
    batch = text.pad_batch([np.array([5, 6, 2]), np.array([7, 2]), [2]])
    assert batch.dtype == np.int64
    assert batch.tolist() == [[5, 6, 2], [7, 2, 0], [2, 0, 0]]
    assert text.pad_batch([[1, 2], [3]], pad_id=-1).tolist() == [[1, 2], [3, -1]]
    with pytest.raises(ValueError, match="empty list"):
        text.pad_batch([])
    with pytest.raises(ValueError, match=r"sequences\[1\] must be a 1-D array of ints, got int64 of shape \(1, 2\)"):
        text.pad_batch([[1], [[1, 2]]])


@given(lengths=st.lists(st.integers(1, 12), max_size=80), batch_size=st.integers(1, 20),
       seed=st.integers(0, 2**63 - 1), epoch=st.integers(0, 1000))
def test_length_batches_cover_every_index_once(lengths, batch_size, seed, epoch):
    batches = text.length_batches(lengths, batch_size, seed, epoch)
    full, rest = divmod(len(lengths), batch_size)
    assert sorted(len(batch) for batch in batches) == [rest] * (rest > 0) + [batch_size] * full, "the last may be shorter"
    joined = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert np.array_equal(np.sort(joined), np.arange(len(lengths))), "not every index exactly once"
    np.random.seed(1)  # the global NumPy state must not matter
    again = text.length_batches(np.array(lengths), batch_size, seed, epoch)
    assert len(again) == len(batches) and all(np.array_equal(a, b) for a, b in zip(again, batches))
    # the documented recipe: shuffle, stable sort by length, cut, shuffle the batches (one generator)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(np.array(lengths, dtype=np.int64)[order], kind="stable")]
    cut = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    assert all(np.array_equal(cut[k], b) for k, b in zip(rng.permutation(len(cut)), batches))


def test_length_batches_group_similar_lengths(corpus):
    lengths = np.array([len(text.tokenize(row[2])) for row in corpus.train])
    batches = text.length_batches(lengths, 64, seed=0, epoch=0)
    spread = np.array([np.ptp(lengths[batch]) for batch in batches])
    assert lengths.max() - lengths.min() >= 10 and np.mean(spread) < 0.1, "batches mix short and long sentences"
    starts = [lengths[batch].min() for batch in batches]
    assert starts != sorted(starts), "the batches are not shuffled: every epoch would go short to long"
    other = text.length_batches(lengths, 64, seed=0, epoch=1)
    assert not np.array_equal(other[0], batches[0]), "the epoch is ignored"


def test_batch_for_step_walks_epochs():
    lengths = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])  # 10 sentences, 4 batches of 3, 3, 3, 1
    epochs = [text.length_batches(lengths, 3, 7, epoch) for epoch in range(3)]
    steps = [text.batch_for_step(step, lengths, 3, 7) for step in range(1, 13)]
    expected = [batch for epoch in epochs for batch in epoch]
    assert all(np.array_equal(s, e) for s, e in zip(steps, expected, strict=True))
    with pytest.raises(ValueError, match="step must be ≥ 1, got 0"):
        text.batch_for_step(0, lengths, 3, 7)
    with pytest.raises(ValueError, match="lengths is empty"):
        text.batch_for_step(1, [], 3, 7)
    with pytest.raises(ValueError, match=r"lengths must be a 1-D array of ints, got float64 of shape \(2,\)"):
        text.length_batches([1.5, 2.0], 3, 7, 0)


# ----------------------------------------------------------------------------------------------
# Sentence pairs (Tatoeba / Anki files)
# ----------------------------------------------------------------------------------------------

ANKI = (
    "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)\n"
    "\n"
    "Where is the station?\tOù est la gare ?\n"
    "   \n"
    "I'm hungry.\tJ'ai faim.\r\n"
    "Merry Christmas!\tJoyeux Noël !\textra\tcolumns"
)


def test_load_sentence_pairs(tmp_path):
    path = tmp_path / "fra.txt"
    path.write_bytes(ANKI.encode("utf-8"))
    expected = [("Go.", "Va !"), ("Where is the station?", "Où est la gare ?"),
                ("I'm hungry.", "J'ai faim."), ("Merry Christmas!", "Joyeux Noël !")]
    assert text.load_sentence_pairs(path) == expected
    assert text.load_sentence_pairs(str(path), max_pairs=2) == expected[:2]
    assert text.load_sentence_pairs(path, max_pairs=0) == []
    path.write_bytes(b"\xef\xbb\xbf" + ANKI.encode("utf-8"))  # a byte-order mark
    assert text.load_sentence_pairs(path) == expected


@pytest.mark.parametrize("bad_line", ["no tab here", "\tonly a target", "only a source\t"])
def test_load_sentence_pairs_names_the_bad_line(tmp_path, bad_line):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"Go.\tVa !\n\n{bad_line}\nHi.\tSalut !\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"pairs.tsv, line 3: expected 'source<TAB>target'"):
        text.load_sentence_pairs(path)
    with pytest.raises(ValueError, match="max_pairs must be ≥ 0"):
        text.load_sentence_pairs(path, max_pairs=-1)
