"""What `python -m scratch train diffusion --data mnist` trains: the U-Net of scratch/unet.py, guided by a digit's word.

Not math (the math is scratch/diffusion.py and scratch/unet.py): the trainer of classifier-free
guidance (Ho and Salimans 2022) on the 4,000 training digits, and the guided DDIM sampler.

Training (their Algorithm 1): each row of a batch is trained with its digit's word, except a
share p_uncond of the rows, chosen afresh at every step, whose word is replaced by the null
token ∅. One network thus learns both ε(x_t, t, word) and ε(x_t, t, ∅), and sampling mixes the
two (scratch/unet.py's guidance_mix): ε̃ = ε(x, ∅) + s · (ε(x, word) − ε(x, ∅)). The rows
dropped at step s come from default_rng([seed, WORD_DROP, s]), like everything else of a step
(scratch/train_diffusion.py), so a resumed run is exact.

Sampling: DDIM with η = 0 (Song et al. 2021) over `sample_steps` of the T = 1,000 steps, every
step evaluating ε̃ through one forward of both branches. samples.npy holds 1,000 images, 100
per word, "zero" first, from the fixed evaluation noise x_T.
"""

import os
import time

import numpy as np

from scratch import diffusion as Df
from scratch import unet as U
from scratch.runs import EVAL_NOISE, _atomic_write, noise_for_step
from scratch.train_conv import single_threaded_blas
from scratch.train_diffusion import DATA_SAMPLES, ScratchDiffusionTrainer

WORD_DROP = 8  # the stream of the rows whose word is dropped to ∅ (train_diffusion.py uses 1 … 7)
CHUNK = 100  # images per forward when sampling or evaluating: bounds the memory the caches take
EVAL_IMAGES = 500  # the evaluation loss is measured on the first 500 of the fixed evaluation batch

# The default digit run, sized by measurement to train within 10 CPU minutes on one BLAS thread: a step of 32
# digits costs ≈ 0.3 CPU s (forward and backward), and 1,500 steps with 3 evaluations took 468 CPU s (seed 0);
# sampling 1,000 guided digits with 20 DDIM steps costs ≈ 40,000 image-forwards, about 3 CPU minutes more
DIGIT_RUN = {"steps": 1500, "batch_size": 32, "lr": 2e-3, "p_uncond": 0.2, "guidance": 3.0, "sample_steps": 20}
DIGIT_UNET = U.UNetConfig(channels=(16, 32, 64), emb_dim=64, time_dim=32, groups=8, num_steps=1000)


def unet_for_digits(config=DIGIT_UNET):
    """(Denoiser, config): the entry of scratch/train_diffusion.py's DENOISERS for --data mnist."""
    return U.UNET_DENOISER, config


def drop_words(cond, p_uncond, rng):
    """cond (B,) word ids with each entry replaced by U.NULL with probability p_uncond (rng draws which)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
    return np.where(rng.random(len(cond)) < p_uncond, U.NULL, cond)  # (B,)


def guided_ddim(params, config, x_T, words, scale, num_steps, alphas_cumprod):
    """x_0 (N, 1, H, W) in the model's range [−1, 1]: DDIM (η = 0) from x_T, ε̃ guided towards `words` (N,) ids.

    CHUNK images at a time, each chunk its own chain: image i depends on x_T[i] and words[i] alone.
    """
    out = []
    for start in range(0, len(x_T), CHUNK):
        w = words[start:start + CHUNK]

        def eps_fn(x_t, t, w=w):
            # at s = 0 and s = 1 one branch has weight 0 and guidance_mix returns the other to the last bit
            # (checks/test_guidance.py): run that branch alone, half the work
            if scale in (0.0, 1.0):
                return U.unet_forward(params, x_t, t, config, w if scale == 1.0 else None)[0]
            return U.guided_eps(params, x_t, t, w, scale, config)

        out.append(Df.ddim_sample(eps_fn, x_T[start:start + CHUNK], alphas_cumprod, num_steps))
    return np.concatenate(out)


def sample_digits(params, config, words, scale, num_steps, seed, alphas_cumprod):
    """Images (N, 28, 28) in [0, 1] of the words (N,) ids, from EVAL_NOISE's x_T of `seed`."""
    dtype = params["unet.conv_in.w"].dtype
    x_T = noise_for_step(0, seed, (len(words), 1, 28, 28), dtype, EVAL_NOISE)  # (N, 1, 28, 28)
    with single_threaded_blas():
        x0 = guided_ddim(params, config, x_T, np.asarray(words), scale, num_steps, alphas_cumprod)
    return np.clip((x0[:, 0] + 1.0) * 0.5, 0.0, 1.0)  # (N, 28, 28): [−1, 1] → pixels


def in_chunks(eps, x_t, t, cond):
    """eps(x_t, t, cond) → ε̂ (B, 1, H, W), called on CHUNK images at a time (cond None: ∅ on every row)."""
    return np.concatenate([eps(x_t[i:i + CHUNK], t[i:i + CHUNK], None if cond is None else cond[i:i + CHUNK])
                           for i in range(0, len(x_t), CHUNK)])


class GuidedDigitTrainer(ScratchDiffusionTrainer):
    """ScratchDiffusionTrainer on --data mnist with the U-Net, each step's words dropped to ∅ on a share p_uncond."""

    def __init__(self, data, seed, decay_steps=DIGIT_RUN["steps"], batch_size=DIGIT_RUN["batch_size"],
                 lr=DIGIT_RUN["lr"], p_uncond=DIGIT_RUN["p_uncond"], config=DIGIT_UNET, dtype=np.float32, **kwargs):
        if data != "mnist":
            raise ValueError(f"the guided U-Net trains on the 28×28 digits: --data mnist, got {data!r}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
        self.p_uncond = p_uncond
        super().__init__(data, seed, decay_steps, batch_size=batch_size, lr=lr, dtype=dtype,
                         denoiser=unet_for_digits(config), **kwargs)
        self.eval_batch = tuple(a[:EVAL_IMAGES] for a in self.eval_batch)  # every word kept: no row dropped

    def batch(self, step, n, stream):
        x0, t, eps, cond = super().batch(step, n, stream)
        if stream == DATA_SAMPLES:  # a training batch: a share p_uncond of its rows learns ε(x_t, t, ∅)
            cond = drop_words(cond, self.p_uncond, np.random.default_rng([self.seed, WORD_DROP, step]))
        return x0, t, eps, cond

    def evaluate(self):
        """The loss of the fixed evaluation batch with its words (eval_loss) and with ∅ for every row."""
        figures = super().evaluate()
        with single_threaded_blas():
            x0, t, eps, _ = self.eval_batch
            x_t = Df.q_sample(x0, t, eps, self.alphas_cumprod)
            figures["eval_loss_null"] = Df.eps_loss_forward(self._eps(x_t, t, None), eps)[0]
        figures["process_cpu_s"] = time.process_time()
        return figures

    def _eps(self, x_t, t, cond):
        return in_chunks(lambda x, s, c: self.denoiser.forward(self.params, x, s, self.denoiser_config, c)[0], x_t, t, cond)

    def config(self):
        return {**super().config(), "p_uncond": self.p_uncond}

    def digit_samples(self, scale, num_steps, per_word=100):
        """per_word images of each word, "zero" first: (10·per_word, 28, 28) in [0, 1]."""
        words = np.repeat(np.arange(10), per_word)  # (N,)
        return sample_digits(self.params, self.denoiser_config, words, scale, num_steps, self.seed, self.alphas_cumprod)


def train_guided_digits(args, make_trainer=GuidedDigitTrainer, make_bar=None):
    """Train the guided U-Net as the command line asks; write OUT/samples.npy, 1,000 images (1000, 28, 28) in [0, 1],
    100 per word, DDIM over DIGIT_RUN["sample_steps"] steps at guidance scale DIGIT_RUN["guidance"]."""
    from scratch.runs import run_training, write_metrics

    scale, sample_steps = DIGIT_RUN["guidance"], DIGIT_RUN["sample_steps"]
    trainer = make_trainer(args.data, args.seed, args.decay_steps, batch_size=args.batch_size, lr=args.lr,
                           p_uncond=getattr(args, "p_uncond", None) or DIGIT_RUN["p_uncond"],
                           dtype=np.dtype(getattr(args, "dtype", "float32")))
    extra = {"overwrite": args.overwrite} if hasattr(args, "overwrite") else {}
    with single_threaded_blas():  # CPU seconds are then the time on an idle core (scratch/train_conv.py)
        metrics = run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                               make_bar=make_bar, **extra)
        began = time.process_time()
        samples = trainer.digit_samples(scale, sample_steps)  # (1000, 28, 28)
    figures = {"sampler": "ddim", "sample_steps": sample_steps, "guidance": scale, "sample_cpu_s": time.process_time() - began}
    _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    if metrics["final"] is not None:
        metrics["final"].update(figures)
    write_metrics(os.path.join(args.out, "metrics.json"), metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# Scores: the image generators' scores (scratch/scoring.py), and how often the classifier reads the word asked for
# ----------------------------------------------------------------------------------------------


def score_digit_samples(samples, words, classifier=None):
    """FID, KID, precision, recall and IS of images (N, 28, 28) against the 1,000 test digits, plus word_accuracy:
    the share of images that the scoring classifier puts in the class of the word they were drawn for (words (N,) ids)."""
    from scratch import classifier as C
    from scratch import scoring

    params, config = scoring._classifier(classifier, None)
    images = scoring.check_samples(samples)  # (N, 1, 28, 28)
    scores = scoring.score_samples(images, (params, config))
    predicted = C.probabilities(images, params, config).argmax(axis=1)  # (N,)
    return {**scores, "word_accuracy": float(np.mean(predicted == np.asarray(words)))}


def guidance_sweep(params, config, alphas_cumprod, seed, scales=(0.0, 1.0, 3.0, 6.0), per_word=100,
                   sample_steps=DIGIT_RUN["sample_steps"], classifier=None):
    """{scale: (images (10·per_word, 28, 28), scores)}: the same x_T at every scale, so only the guidance changes."""
    words = np.repeat(np.arange(10), per_word)  # (N,), "zero" first
    sweep = {}
    for scale in scales:
        began = time.process_time()
        images = sample_digits(params, config, words, scale, sample_steps, seed, alphas_cumprod)
        seconds = time.process_time() - began
        sweep[scale] = (images, {**score_digit_samples(images, words, classifier), "sample_cpu_s": seconds})
    return sweep


def write_sweep(run_dir, scales=(0.0, 1.0, 3.0, 6.0), per_word=100, sample_steps=DIGIT_RUN["sample_steps"], seed=None):
    """Run guidance_sweep on run_dir's checkpoint; save sweep-s{scale}.npy and sweep.json (the scores) beside it.

    A scale whose images are already in run_dir (samples.npy at the run's guidance scale, or an earlier sweep file)
    is scored again but not sampled again.
    """
    import json

    from scratch.draw import load_guided_model

    params, config, alphas_cumprod = load_guided_model(os.path.join(run_dir, "checkpoint.npz"))
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    final, seed = metrics["final"], metrics["seed"] if seed is None else seed  # x_T of the run's own seed by default
    words = np.repeat(np.arange(10), per_word)
    scores = {}
    for scale in scales:
        path = os.path.join(run_dir, f"sweep-s{scale:g}.npy")
        seconds = None
        if os.path.exists(path):
            images = np.load(path)
        elif (per_word == 100 and sample_steps == final.get("sample_steps") and scale == final.get("guidance")
              and os.path.exists(os.path.join(run_dir, "samples.npy"))):
            images, seconds = np.load(os.path.join(run_dir, "samples.npy")), final.get("sample_cpu_s")
        else:
            began = time.process_time()
            images = sample_digits(params, config, words, scale, sample_steps, seed, alphas_cumprod)
            seconds = time.process_time() - began
        _atomic_write(path, lambda f, images=images: np.save(f, images))
        scores[f"{scale:g}"] = {**score_digit_samples(images, words), "sample_cpu_s": seconds}
        print(f"s = {scale:g}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores[f"{scale:g}"].items() if v is not None),
              flush=True)
    text = json.dumps({"per_word": per_word, "sample_steps": sample_steps, "seed": seed, "scores": scores}, indent=2)
    _atomic_write(os.path.join(run_dir, "sweep.json"), lambda f: f.write(text.encode()))
    return scores
