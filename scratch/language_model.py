"""What `python -m scratch train gpt` trains, and `python -m scratch sample` runs: a character-level GPT.

Not math: characters and their ids, the data (census names, or any text file's lines), the
bigram baseline in closed form, the trainer, and sampling from a checkpoint. The model is
scratch/gpt.py; the optimizer AdamW with a warm-up + cosine rate (scratch/optim.py).

Every example (a name, a line) is one sequence: the boundary token, its characters, the boundary
token again (GPT-2's <|endoftext|>, which both starts and ends a document; makemore's "."). A
batch is right-padded with <pad>, whose targets the loss ignores, so each character and each end
counts once: the held-out loss is in nats per character, the end of each example included.
"""

import functools
import json
from typing import NamedTuple

import numpy as np

from scratch import data as D
from scratch import gpt as G
from scratch.optim import AdamW, warmup_cosine
from scratch.runs import RunError, batch_for_step, blas_threads, checkpoint_model, describe_checkpoint, load_checkpoint, run_training
from scratch.transformer import cross_entropy_forward

PAD, BOUNDARY = "<pad>", "<|endoftext|>"
PAD_ID, BOUNDARY_ID = 0, 1
SAMPLE_STREAM = 6  # the samples of every evaluation come from default_rng([seed, 6]): the same noise each time
EVAL_SAMPLES = 1000


class CharVocabulary:
    """Characters ↔ ids: 0 is <pad>, 1 the boundary, then the characters in sorted order."""

    def __init__(self, tokens):
        tokens = [str(t) for t in tokens]
        if tokens[:2] != [PAD, BOUNDARY] or len(set(tokens)) != len(tokens) or any(len(t) != 1 for t in tokens[2:]):
            raise ValueError(f"tokens must be [{PAD!r}, {BOUNDARY!r}] then distinct single characters, got {tokens[:8]}…")
        self.tokens, self._ids = tokens, {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts):
        return cls([PAD, BOUNDARY, *sorted(set("".join(texts)))])

    def __len__(self):
        return len(self.tokens)

    def encode(self, text, what="text"):
        """[boundary, ids of text's characters]: a sequence ready to be continued; unknown characters raise."""
        unknown = sorted({c for c in text if c not in self._ids or len(c) != 1 or c in (PAD, BOUNDARY)})
        if unknown:
            known = "".join(self.tokens[2:])
            raise ValueError(f"{what} {text!r} has character(s) {unknown} that the model never saw; it knows {known!r}")
        return np.array([BOUNDARY_ID] + [self._ids[c] for c in text], dtype=np.int64)

    def decode(self, ids):
        """The characters of ids up to the first boundary or padding (the end of an example)."""
        out = []
        for i in np.asarray(ids).tolist():
            if i in (PAD_ID, BOUNDARY_ID):
                break
            out.append(self.tokens[i])
        return "".join(out)

    def to_array(self):
        return np.array(self.tokens, dtype=str)  # (V,) unicode, stored without pickle

    @classmethod
    def from_array(cls, array):
        return cls(np.asarray(array).tolist())


class LMData(NamedTuple):
    vocab: CharVocabulary
    train: list  # of str
    test: list
    train_ids: list  # of (L + 2,) int arrays: boundary, characters, boundary
    test_ids: list
    block_size: int  # 1 + the longest example: the inputs of "boundary + example" fit
    info: dict  # what the data is, stored in the checkpoint and metrics.json


def load_lm_data(data="names", held_out=None, split_seed=0):
    """The examples of --data, split into train and held-out test, and their vocabulary (treat as read-only).

    "names" (= "names:last"): the 88,799 census surnames, lowercase, 2,000 held out; "names:first":
    the 5,163 first names, 2,000 held out too; "text:FILE": the non-blank lines of a UTF-8 file,
    10% held out (at least 1). The split is a pure function of split_seed (not of the training
    seed), so every run and every implementation is scored on the same held-out examples.
    The names are read and encoded once per process (a text file every time: it may have changed).
    """
    if data in ("names", "names:last", "names:first"):
        return _load_names_data(data, held_out, split_seed)
    return _load_lm_data(data, held_out, split_seed)


@functools.lru_cache(maxsize=None)
def _load_names_data(data, held_out, split_seed):
    return _load_lm_data(data, held_out, split_seed)


def _load_lm_data(data, held_out, split_seed):
    if data in ("names", "names:last", "names:first"):
        kind = "first" if data == "names:first" else "last"
        examples, default_held_out = D.load_names(kind), D.NAMES_HELD_OUT
    elif data.startswith("text:"):
        import os

        if not os.path.isfile(data.split(":", 1)[1]):
            raise RunError(f"--data {data}: no such file")
        examples = D.load_text_lines(data.split(":", 1)[1])
        default_held_out = max(1, len(examples) // 10)
    else:
        raise RunError(f"--data must be names, names:last, names:first or text:FILE for the GPT, got {data!r}")
    held_out = default_held_out if held_out is None else held_out
    train, test = D.held_out_split(examples, held_out, split_seed)
    vocab = CharVocabulary.build(examples)  # every character of either split: no example is unencodable
    info = {"data": data, "held_out": held_out, "split_seed": split_seed, "train": len(train), "test": len(test),
            "lowercase": data.startswith("names")}
    block_size = 1 + max(map(len, examples))
    return LMData(vocab, train, test, [vocab.encode(t) for t in train], [vocab.encode(t) for t in test],
                  block_size, info)


def pad_sequences(encoded):
    """(B, L + 2) int64 tokens: each encoded example with its closing boundary, right-padded with <pad>."""
    batch = np.full((len(encoded), max(map(len, encoded)) + 1), PAD_ID, dtype=np.int64)
    for b, ids in enumerate(encoded):
        batch[b, : len(ids)] = ids
        batch[b, len(ids)] = BOUNDARY_ID
    return batch


def bigram_nll(train_ids, test_ids, vocab_size, alpha=1.0):
    """Held-out nats per character of the bigram model in closed form: P(b | a) = (N(a, b) + α) / (N(a) + α V′).

    N counts the pairs of consecutive tokens in the training sequences (boundary, characters,
    boundary); add-α smoothing (Laplace's add-one at α = 1) gives an unseen pair a little mass;
    V′ = vocab_size − 1 tokens can follow (not <pad>). The maximum-likelihood model of the next
    character given the previous one: the floor a GPT, which reads the whole prefix, must beat.
    """
    counts = np.zeros((vocab_size, vocab_size))
    train = pad_sequences(train_ids)
    real = train[:, 1:] != PAD_ID
    np.add.at(counts, (train[:, :-1][real], train[:, 1:][real]), 1.0)
    counts[:, PAD_ID] = -alpha  # <pad> never follows anything: no smoothing mass for it
    with np.errstate(invalid="ignore"):  # at α = 0 a row never seen (<pad>'s) is 0/0; no target reads it
        probs = (counts + alpha) / (counts + alpha).sum(axis=1, keepdims=True)  # (V, V), rows sum to 1
    test = pad_sequences(test_ids)
    real = test[:, 1:] != PAD_ID
    return float(-np.log(probs[test[:, :-1][real], test[:, 1:][real]]).mean())


def sample_texts(params, config, vocab, num, rng, temperature=1.0, top_k=None, top_p=None, prompt=""):
    """`num` examples drawn from the model, each the prompt plus its continuation up to the end token."""
    start = vocab.encode(prompt, "prompt")  # (P + 1,)
    if len(start) > config.block_size:
        raise ValueError(f"prompt {prompt!r} has {len(prompt)} characters; the model reads at most "
                         f"{config.block_size - 1} after the start token")
    seq = G.generate(params, config, np.tile(start, (num, 1)), config.block_size, rng, temperature, top_k, top_p)
    return [prompt + vocab.decode(row[len(start):]) for row in seq]


class GPTTrainer:
    """What every implementation's GPT trainer shares, for scratch/runs.py.

    All start from scratch's `init_gpt(config, default_rng(seed))` and train on the same batches
    (`batch(step)`: a pure function of (seed, step)) with AdamW at the rate `schedule(step)`:
    warm-up then cosine. `decay_names` are the parameters weight decay applies to (the matrices
    and embeddings; not biases or layer-norm parameters). An implementation sets IMPLEMENTATION
    and OPTIMIZER and writes `_build(params)` (model and optimizer from a scratch parameter dict),
    `_step(tokens, step) -> loss` (one update on tokens (B, T + 1), inputs and targets shifted by
    one, <pad> targets ignored, at rate schedule(step)), `logits(inputs) -> (B, T, V)` NumPy,
    `numpy_params()` (the scratch layout), `state()` and `load_state(arrays)` (the checkpoint in
    the scratch layout; `extra_state()` adds the vocabulary and configs).
    """

    IMPLEMENTATION = OPTIMIZER = None
    BETAS, EPS = (0.9, 0.99), 1e-8
    BLAS_THREADS = None  # an int: NumPy's BLAS threads while train_gpt runs (threadpoolctl); None leaves them

    def __init__(self, config, data, seed, batch_size=64, lr=1e-2, warmup=200, decay_steps=4000, lr_min=None,
                 weight_decay=0.01, dtype=np.float32, eval_samples=EVAL_SAMPLES):
        self.model_config, self.data, self.seed = G.check_gpt_config(config), data, seed
        self.batch_size, self.lr, self.warmup, self.decay_steps = batch_size, lr, warmup, decay_steps
        self.lr_min = lr / 100.0 if lr_min is None else lr_min
        self.weight_decay, self.dtype, self.eval_samples = weight_decay, np.dtype(dtype), eval_samples
        self.schedule = warmup_cosine(lr, warmup, decay_steps, self.lr_min)
        self.decay_names = [n for n, s in G.parameter_shapes(config).items() if len(s) == 2]
        self._train_set, self.last_step = set(data.train), 0
        self._build(G.init_gpt(config, np.random.default_rng(seed), dtype=self.dtype))

    def batch(self, step):
        """tokens (B, L + 2) of step `step`: boundary, name, boundary, then <pad>."""
        idx = batch_for_step(step, len(self.data.train_ids), self.batch_size, self.seed)
        return pad_sequences([self.data.train_ids[i] for i in idx])

    def train_step(self, step):
        self.last_step = step
        return self._step(self.batch(step), step)

    def held_out_nll(self, chunk=500):
        """Nats per character on the held-out examples, their ends included."""
        total, count = 0.0, 0
        for start in range(0, len(self.data.test_ids), chunk):
            tokens = pad_sequences(self.data.test_ids[start : start + chunk])
            targets = tokens[:, 1:]
            n = int((targets != PAD_ID).sum())
            loss, _ = cross_entropy_forward(self.logits(tokens[:, :-1]).astype(np.float64), targets, 0.0, PAD_ID)
            total, count = total + float(loss) * n, count + n
        return total / count

    def samples(self, n=None, temperature=1.0):
        rng = np.random.default_rng([self.seed, SAMPLE_STREAM])
        return sample_texts(self.numpy_params(), self.model_config, self.data.vocab, n or self.eval_samples, rng,
                            temperature)

    def evaluate(self):
        samples = self.samples()
        return {"test_nats_per_char": self.held_out_nll(), "lr": self.schedule(max(self.last_step, 1)),
                "new_share": float(np.mean([bool(s) and s not in self._train_set for s in samples])),
                "examples": samples[:5]}

    def config(self):
        return {"model": "gpt", "implementation": self.IMPLEMENTATION, **self.model_config._asdict(),
                **self.data.info, "batch_size": self.batch_size, "lr": self.lr, "lr_min": self.lr_min,
                "warmup": self.warmup, "decay_steps": self.decay_steps, "weight_decay": self.weight_decay,
                "betas": self.BETAS, "eps": self.EPS, "optimizer": self.OPTIMIZER, "dtype": self.dtype.name}

    def extra_state(self):
        """The vocabulary and configs, stored in the checkpoint so that `sample` needs nothing else."""
        return {"vocab.tokens": self.data.vocab.to_array(), "model.config": np.array(json.dumps(self.model_config._asdict())),
                "data.info": np.array(json.dumps(self.data.info))}


class ScratchGPTTrainer(GPTTrainer):
    """The NumPy GPT, its backward written by hand, with scratch/optim.py's AdamW."""

    IMPLEMENTATION, OPTIMIZER = "scratch", "adamw"
    # NumPy's BLAS on one thread: the products here are at most (900, 256) @ (256, 64), too small to
    # share across threads; on two busy cores OpenBLAS's threads made a step 8× slower (36 ms → 290 ms).
    BLAS_THREADS = 1

    def _build(self, params):
        self.params = params
        self.optimizer = AdamW(self.schedule, self.BETAS, self.EPS, self.weight_decay, self.decay_names)

    def _step(self, tokens, step):
        loss, cache = G.gpt_loss_forward(tokens, self.params, self.model_config, PAD_ID)
        self.optimizer.step(self.params, G.gpt_loss_backward(1.0, cache))
        return loss

    def logits(self, inputs):
        return G.gpt_forward(inputs, self.params, self.model_config)[0]

    def numpy_params(self):
        return self.params

    def state(self):
        return {**self.params, **self.extra_state(), **{f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}}

    def load_state(self, arrays):
        from scratch.train import split_optimizer_state

        self._build({name: arrays[name] for name in G.parameter_shapes(self.model_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


def gpt_config_from_args(args, data):
    return G.GPTConfig(vocab_size=len(data.vocab), block_size=data.block_size, n_layer=args.layers, n_head=args.heads,
                       d_model=args.d_model)


def train_gpt(args, make_trainer=ScratchGPTTrainer, make_bar=None):
    """Train a character-level GPT as the command line asks; shared by scratch and the ports."""
    data = load_lm_data(args.data)
    config = gpt_config_from_args(args, data)
    trainer = make_trainer(config, data, args.seed, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           decay_steps=args.decay_steps, weight_decay=args.weight_decay, dtype=np.dtype(args.dtype))
    bigram = bigram_nll(data.train_ids, data.test_ids, len(data.vocab))
    with blas_threads(trainer.BLAS_THREADS):
        return run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                            overwrite=getattr(args, "overwrite", False), make_bar=make_bar,
                            describe=lambda: {"bigram_nats_per_char": bigram})


# ----------------------------------------------------------------------------------------------
# Sampling from a trained checkpoint
# ----------------------------------------------------------------------------------------------


class Sampler(NamedTuple):
    params: dict
    config: G.GPTConfig
    vocab: CharVocabulary
    info: dict


def load_sampler(path):
    """A trained GPT and its vocabulary from a checkpoint.npz written by any implementation's trainer."""
    arrays = load_checkpoint(path)  # RunError if missing or damaged
    missing = [k for k in ("vocab.tokens", "model.config", "data.info") if k not in arrays]
    if missing:
        found = f"holds {describe_checkpoint(arrays)}" if checkpoint_model(arrays) else f"lacks {missing}"
        raise RunError(f"{path} is not a GPT checkpoint: it {found}")
    config = G.GPTConfig(**json.loads(str(arrays["model.config"])))
    params = {name: arrays[name] for name in G.parameter_shapes(config)}
    return Sampler(params, config, CharVocabulary.from_array(arrays["vocab.tokens"]), json.loads(str(arrays["data.info"])))


def sample_from(sampler, num, seed, temperature=1.0, top_k=None, top_p=None, prompt=""):
    """`num` samples, the same for the same seed; names are lowercase, so a names prompt is lowercased."""
    if sampler.info.get("lowercase"):
        prompt = prompt.lower()
    return sample_texts(sampler.params, sampler.config, sampler.vocab, num, np.random.default_rng(seed),
                        temperature, top_k, top_p, prompt)
