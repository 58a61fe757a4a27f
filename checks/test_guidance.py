"""Classifier-free guidance (scratch/unet.py's guidance_mix and guided_eps, scratch/guidance.py) and the draw command
(scratch/draw.py): scale 0 is the unconditional model and scale 1 the conditional one to the last bit, the mix's
equation and sign, the guided DDIM sampler, the words dropped to ∅ in training, exact resume, and `python -m
scratch draw` on a tiny checkpoint trained here."""

import json
import os

import numpy as np
import pytest

from checks.tolerances import assert_clear_error, assert_close
from scratch import diffusion as Df
from scratch import guidance as G
from scratch import unet as U
from scratch.__main__ import main
from scratch.draw import parse_number
from scratch.runs import load_checkpoint, run_training

pytestmark = pytest.mark.diffusion

TINY = U.UNetConfig(channels=(4, 4, 6), emb_dim=6, time_dim=4, groups=2, num_steps=10)


def setup(dtype=np.float64, batch=3, side=8, seed=0):
    rng = np.random.default_rng(seed)
    params = U.init_unet(TINY, rng, dtype)
    for name, p in params.items():  # off the zero-initialised convolutions, so that ε̂ depends on the word
        p[...] = rng.standard_normal(p.shape) * 0.4 + (1.0 if name.endswith("gamma") else 0.0)
    x = rng.standard_normal((batch, 1, side, side)).astype(dtype)
    return params, x, np.array([0, 4, 9][:batch]), np.array([3, 0, 9][:batch])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_guidance_scale_0_is_the_unconditional_model_and_1_the_conditional_one_exactly(dtype):
    params, x, t, words = setup(dtype)
    unconditional = U.unet_forward(params, x, t, TINY, None)[0]
    conditional = U.unet_forward(params, x, t, TINY, words)[0]
    assert np.max(np.abs(conditional - unconditional)) > 1e-3, "the test needs a word that changes ε̂"
    for scale, expected, what in ((0.0, unconditional, "ε(x, ∅)"), (1.0, conditional, "ε(x, word)")):
        guided = U.guided_eps(params, x, t, words, scale, TINY)
        assert guided.dtype == dtype
        assert np.array_equal(guided, expected), (
            f"guided_eps at scale {scale} must equal {what} bit for bit; max abs difference {np.max(np.abs(guided - expected)):.3g}")


def test_guidance_mix_follows_ho_and_salimans_and_pushes_away_from_the_null_prediction():
    params, x, t, words = setup()
    eps_null = U.unet_forward(params, x, t, TINY, None)[0]
    eps_word = U.unet_forward(params, x, t, TINY, words)[0]
    for scale in (0.5, 3.0, 6.0):
        guided = U.guided_eps(params, x, t, words, scale, TINY)
        # ε̃ = ε(x, ∅) + s (ε(x, word) − ε(x, ∅))
        assert_close(guided, eps_null + scale * (eps_word - eps_null), impl="scratch", what=f"guided ε at s = {scale}")
        # Eq. (6), Ho and Salimans 2022, with w = s − 1: ε̃ = (1 + w) ε(x, c) − w ε(x, ∅)
        w = scale - 1.0
        assert_close(guided, (1.0 + w) * eps_word - w * eps_null, impl="scratch", what=f"Eq. (6) at w = {w}")
    # the sign: at s > 1 the guided prediction lies beyond the conditional one, away from the null one
    guided = U.guided_eps(params, x, t, words, 3.0, TINY)
    assert np.sum((guided - eps_word) * (eps_word - eps_null)) > 0.0


def test_guided_eps_treats_each_image_alone_and_checks_the_words():
    params, x, t, words = setup()
    together = U.guided_eps(params, x, t, words, 3.0, TINY)
    alone = U.guided_eps(params, x[1:2], t[1:2], words[1:2], 3.0, TINY)
    assert_close(alone, together[1:2], impl="scratch", what="image 1's guided ε alone vs in a batch of 3")
    assert_clear_error("scratch", "words of the wrong length", lambda: U.guided_eps(params, x, t, words[:2], 3.0, TINY),
                       ValueError, ["words", "(3,)", "(2,)"])


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_the_guided_ddim_sampler_runs_the_guided_eps_through_ddim(scale):
    params, _, _, _ = setup()
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", TINY.num_steps))
    x_T = np.random.default_rng(5).standard_normal((3, 1, 8, 8))
    words = np.array([1, 7, 7])
    ours = G.guided_ddim(params, TINY, x_T, words, scale, 4, alphas_cumprod)
    reference = Df.ddim_sample(lambda x, t: U.guided_eps(params, x, t, words, scale, TINY), x_T, alphas_cumprod, 4)
    assert np.array_equal(ours, reference), f"guided_ddim at s = {scale} differs from ddim_sample with guided_eps"


def test_drop_words_replaces_a_share_p_of_the_rows_by_the_null_token():
    cond = np.arange(10_000) % 10
    dropped = G.drop_words(cond, 0.2, np.random.default_rng(0))
    share = np.mean(dropped == U.NULL)
    assert abs(share - 0.2) < 0.02, f"a share 0.2 of the rows should become ∅, got {share:.3f}"
    assert np.array_equal(dropped[dropped != U.NULL], cond[dropped != U.NULL]), "kept rows keep their word"
    assert np.array_equal(G.drop_words(cond, 0.0, np.random.default_rng(0)), cond)
    assert np.all(G.drop_words(cond, 1.0, np.random.default_rng(0)) == U.NULL)
    assert_clear_error("scratch", "p_uncond above 1", lambda: G.drop_words(cond, 1.5, np.random.default_rng(0)),
                       ValueError, ["p_uncond", "1.5"])


TINY28 = U.UNetConfig(channels=(4, 4, 8), emb_dim=8, time_dim=4, groups=2, num_steps=1000)


def tiny_trainer(seed=0, steps=4):
    return G.GuidedDigitTrainer("mnist", seed, decay_steps=steps, batch_size=8, lr=1e-3, p_uncond=0.5, config=TINY28)


def test_training_batches_drop_words_and_the_evaluation_batch_keeps_them():
    trainer = tiny_trainer()
    _, _, _, cond = trainer.batch(1, 8, G.DATA_SAMPLES)
    dropped = [np.sum(trainer.batch(s, 8, G.DATA_SAMPLES)[3] == U.NULL) for s in range(1, 21)]
    assert 0 < np.mean(dropped) < 8, f"p_uncond = 0.5 should drop some of the 8 words, dropped {dropped}"
    assert np.array_equal(trainer.batch(3, 8, G.DATA_SAMPLES)[3], trainer.batch(3, 8, G.DATA_SAMPLES)[3]), \
        "a step's dropped rows must be a function of the step"
    assert not np.any(trainer.eval_batch[3] == U.NULL), "the evaluation batch is scored with every word"


def test_a_resumed_guided_run_continues_exactly(tmp_path):
    run_training(tiny_trainer(), str(tmp_path / "straight"), 4, 0, 2)
    run_training(tiny_trainer(), str(tmp_path / "resumed"), 2, 0, 2)
    run_training(tiny_trainer(), str(tmp_path / "resumed"), 4, 0, 2, resume=True)
    a, b = (load_checkpoint(str(tmp_path / d / "checkpoint.npz")) for d in ("straight", "resumed"))
    assert set(a) == set(b)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"a run resumed after step 2 differs from one that never stopped in {differ}"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("guided")
    run_training(tiny_trainer(), str(out), 2, 0, 2)
    return str(out / "checkpoint.npz")


def test_draw_writes_one_image_per_digit_of_the_number(tiny_checkpoint, tmp_path):
    import matplotlib.image

    png = str(tmp_path / "312.png")
    rc = main(["draw", "three hundred and twelve", "--guidance", "3", "--out", png, "--checkpoint", tiny_checkpoint,
               "--steps", "2", "--seed", "1"])
    assert rc == 0 and os.path.exists(png)
    image = matplotlib.image.imread(png)
    zoom, gap = 4, 2
    assert image.shape[:2] == (28 * zoom, (3 * 28 + 2 * gap) * zoom), f"three digits side by side, got {image.shape}"
    again = str(tmp_path / "again.png")
    assert main(["draw", "312", "--out", again, "--checkpoint", tiny_checkpoint, "--steps", "2", "--seed", "1"]) == 0
    assert np.array_equal(matplotlib.image.imread(again), image), "the integer and its words, same seed: the same PNG"
    with open(os.path.join(os.path.dirname(tiny_checkpoint), "metrics.json")) as f:
        assert tuple(json.load(f)["config"]["channels"]) == TINY28.channels


def test_draw_refuses_words_that_are_not_a_number_in_one_line(tiny_checkpoint, tmp_path, capsys):
    for words in (["banana"], ["two", "three"], ["hundred", "twelve"]):
        rc = main(["draw", *words, "--out", str(tmp_path / "x.png"), "--checkpoint", tiny_checkpoint])
        err = capsys.readouterr().err
        assert rc == 2 and "not a number in English words" in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(tmp_path / "x.png")
    assert main(["draw", "five", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_parse_number_reads_back_what_number_words_writes():
    from scratch.data import number_words

    for n in [0, 7, 13, 40, 42, 100, 101, 312, 999, 1000, 1001, 20_000, 123_456, 1_000_000, 7_000_512]:
        assert parse_number(number_words(n)[0]) == n, number_words(n)[0]
    assert parse_number("three hundred twelve") == 312 and parse_number("forty two") == 42 and parse_number(" 64 ") == 64
