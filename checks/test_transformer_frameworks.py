"""After weight conversion, PyTorch's own Transformer modules compute what scratch computes.

`torch.nn.TransformerEncoderLayer`, `TransformerDecoderLayer`, `torch.nn.Transformer`,
`torch.nn.functional.layer_norm` and `torch.nn.functional.cross_entropy` are written by other
people, independently of this project: agreeing with them checks our conventions (post- and
pre-norm order, biased variance and ε inside the root, weight layout, mask meaning, the √D
embedding scale, label smoothing's ε/V, the mean over non-ignored targets), not just our
arithmetic. All in float64, forward and backward, and every converter round-trips exactly.
"""

import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from checks.implementations import require
from checks.strategies import (cross_entropy_cases, decoder_layer_cases, encoder_layer_cases, layer_norm_cases,
                               transformer_cases)
from checks.tolerances import assert_close
from scratch import encoder_decoder as M
from scratch import transformer as T

pytestmark = [
    pytest.mark.transformer,
    # torch's eval-mode encoder packs padded batches into a (prototype) nested tensor, and says so
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning"),
]

# A layer forward and backward in torch and in scratch: a few ms each; a third of the profile's examples.
LAYER_EXAMPLES = max(5, settings.default.max_examples // 3)


def torch_masks(mask, b, tq, tk, num_heads):
    """Our mask (True = attend, broadcastable to (B, Tq, Tk)) as torch's two: (attn_mask, key_padding_mask),
    each True = *blocked*. A padding mask (B, 1, Tk) becomes key_padding_mask (B, Tk); any other becomes
    attn_mask: (Tq, Tk) when shared by the batch, else one (Tq, Tk) slice per batch element and head."""
    import torch

    if mask is None:
        return None, None
    if mask.shape == (b, 1, tk):
        return None, torch.from_numpy(~mask[:, 0, :])
    if mask.ndim == 2:
        return torch.from_numpy(~mask), None
    full = np.broadcast_to(mask, (b, tq, tk))
    return torch.from_numpy(~np.repeat(full, num_heads, axis=0)), None


def gradients_in_scratch_layout(module, grads, from_torch):
    """Read parameter gradients with a converter: it is linear (copies and transposes), so applied to a
    copy of the module whose parameters hold their gradients it returns the gradients in scratch's layout."""
    shadow = copy.deepcopy(module)
    for p, g in zip(shadow.parameters(), grads):
        p.data = g
    return from_torch(shadow)


def assert_round_trip(what, back, params):
    assert list(back) == list(params), f"{what}: converted back, the keys are {list(back)}, expected {list(params)}"
    for name in params:
        assert np.array_equal(back[name], params[name]), f"{what} changed {name}"


# ----------------------------------------------------------------------------------------------
# The layers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@settings(max_examples=LAYER_EXAMPLES)
@given(data=st.data())
def test_torch_encoder_layer_matches_scratch(norm_first, data):
    torch = pytest.importorskip("torch")
    port = require("torch", "transformer")
    case = data.draw(encoder_layer_cases(np.float64, norm_first, empty_rows=False), label="case")
    layer = port.to_torch_encoder_layer(case.params, case.num_heads, norm_first)
    layer.train()  # (dropout is 0; eval mode with gradients recorded takes the same path)
    b, s, _ = case.x.shape
    attn_mask, padding = torch_masks(case.mask, b, s, s, case.num_heads)
    x = torch.tensor(case.x, requires_grad=True)
    out = layer(x, src_mask=attn_mask, src_key_padding_mask=padding)
    dx, *grads = torch.autograd.grad(out, [x, *layer.parameters()], torch.from_numpy(case.dout))
    expected, cache = T.encoder_layer_forward(case.x, case.params, case.num_heads, case.mask, norm_first)
    e_dx, e_grads = T.encoder_layer_backward(case.dout, cache)
    what = "torch.nn.TransformerEncoderLayer"
    assert_close(out.detach().numpy(), expected, impl=what, what="out")
    assert_close(dx.numpy(), e_dx, impl=what, what="dx")
    for name, g in gradients_in_scratch_layout(layer, grads, port.from_torch_encoder_layer).items():
        assert_close(g, e_grads[name], impl=what, what=f"d{name}")
    assert_round_trip("from_torch_encoder_layer", port.from_torch_encoder_layer(layer), case.params)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@settings(max_examples=LAYER_EXAMPLES)
@given(data=st.data())
def test_torch_decoder_layer_matches_scratch(norm_first, data):
    """Self-attention (self_attn), cross-attention (multihead_attn), feed-forward, norm1/2/3."""
    torch = pytest.importorskip("torch")
    port = require("torch", "transformer")
    case = data.draw(decoder_layer_cases(np.float64, norm_first), label="case")
    layer = port.to_torch_decoder_layer(case.params, case.num_heads, norm_first)
    b, t, _ = case.y.shape
    s = case.memory.shape[1]
    tgt_mask, tgt_padding = torch_masks(case.self_mask, b, t, t, case.num_heads)
    memory_mask, memory_padding = torch_masks(case.memory_mask, b, t, s, case.num_heads)
    y, memory = torch.tensor(case.y, requires_grad=True), torch.tensor(case.memory, requires_grad=True)
    out = layer(y, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_padding,
                memory_key_padding_mask=memory_padding)
    dy, dmemory, *grads = torch.autograd.grad(out, [y, memory, *layer.parameters()], torch.from_numpy(case.dout))
    expected, cache = T.decoder_layer_forward(case.y, case.memory, case.params, case.num_heads, case.self_mask,
                                              case.memory_mask, norm_first)
    e_dy, e_dmemory, e_grads = T.decoder_layer_backward(case.dout, cache)
    what = "torch.nn.TransformerDecoderLayer"
    assert_close(out.detach().numpy(), expected, impl=what, what="out")
    assert_close(dy.numpy(), e_dy, impl=what, what="dy")
    assert_close(dmemory.numpy(), e_dmemory, impl=what, what="dmemory")
    for name, g in gradients_in_scratch_layout(layer, grads, port.from_torch_decoder_layer).items():
        assert_close(g, e_grads[name], impl=what, what=f"d{name}")
    assert_round_trip("from_torch_decoder_layer", port.from_torch_decoder_layer(layer), case.params)


# ----------------------------------------------------------------------------------------------
# The whole model around torch.nn.Transformer
# ----------------------------------------------------------------------------------------------


@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(data=st.data())
def test_torch_transformer_matches_scratch(data):
    """TorchTransformer in train mode (dropout 0): logits and every parameter's gradient, tied output
    included (one torch Parameter used twice); then in eval mode without gradients, where torch's
    encoder takes its fast path (nested tensors for the padded batch), the logits again."""
    torch = pytest.importorskip("torch")
    port = require("torch", "transformer")
    case = data.draw(transformer_cases(np.float64, padding="end"), label="case")
    module = port.to_torch_transformer(case.params, case.config)
    assert_round_trip("from_torch_transformer", port.from_torch_transformer(module), case.params)
    src, tgt_in = torch.from_numpy(case.src), torch.from_numpy(case.tgt_in)
    expected, cache = M.transformer_forward(case.src, case.tgt_in, case.params, case.config)
    e_grads = M.transformer_backward(case.dlogits, cache)
    what = "TorchTransformer (torch.nn.Transformer)"

    module.train()
    logits = module(src, tgt_in)
    grads = torch.autograd.grad(logits, list(module.parameters()), torch.from_numpy(case.dlogits))
    assert_close(logits.detach().numpy(), expected, impl=what, what="logits (train mode)")
    for name, g in gradients_in_scratch_layout(module, grads, port.from_torch_transformer).items():
        assert_close(g, e_grads[name], impl=what, what=f"d{name}")

    module.eval()
    with torch.no_grad():
        assert_close(module(src, tgt_in).numpy(), expected, impl=what, what="logits (eval mode, fast path)")


def test_torch_eval_fast_path_zeroes_the_memory_at_padding_and_the_logits_still_agree():
    """Pins the behaviour TorchTransformer's docstring describes. In eval mode without gradients a
    post-norm nn.TransformerEncoder given a right-padded batch runs on a nested tensor and returns
    exactly 0 at the padded positions, where scratch's memory holds numbers; the cross-attention
    masks those positions, so the logits are scratch's. In train mode the memory is scratch's too."""
    torch = pytest.importorskip("torch")
    port = require("torch", "transformer")
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=5)
    params = M.init_transformer(config, np.random.default_rng(0))
    src, tgt_in = np.array([[3, 4, 5, 0, 0], [6, 2, 4, 5, 3]]), np.array([[1, 3, 2], [1, 2, 3]])
    module = port.to_torch_transformer(params, config)
    memory, _ = M.encode_forward(src, params, config)  # (B, S, D)
    padding = torch.from_numpy(src == config.pad_id)
    x = module.embed(torch.from_numpy(src), module.src_embed)
    with torch.no_grad():
        module.train()
        slow = module.transformer.encoder(x, src_key_padding_mask=padding).numpy()
        module.eval()
        fast = module.transformer.encoder(x, src_key_padding_mask=padding).numpy()
        logits = module(torch.from_numpy(src), torch.from_numpy(tgt_in)).numpy()
    assert_close(slow, memory, impl="torch", what="memory (train mode)")
    assert np.all(fast[0, 3:] == 0.0), f"torch's eval fast path no longer zeroes the padded memory: {fast[0, 3:]}"
    assert np.abs(memory[0, 3:]).max() > 0.1, "scratch's memory at padded positions is not 0"
    assert_close(fast[0, :3], memory[0, :3], impl="torch", what="memory at real positions (eval mode)")
    assert_close(fast[1], memory[1], impl="torch", what="memory of the unpadded sequence (eval mode)")
    assert_close(logits, M.transformer_forward(src, tgt_in, params, config)[0], impl="torch", what="logits (eval mode)")


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_torch_with_a_source_made_only_of_padding(norm_first):
    """Every attention over that source has no key. scratch returns 0 for such a query (DESIGN.md), and
    torch's attention does too in train mode: the logits agree. In eval mode without gradients a
    pre-norm encoder's fused fast path returns NaN instead (pinned here, as TorchTransformer says)."""
    torch = pytest.importorskip("torch")
    port = require("torch", "transformer")
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=5,
                                 norm_first=norm_first)
    params = M.init_transformer(config, np.random.default_rng(0))
    src, tgt_in = np.array([[0, 0, 0], [3, 4, 0]]), np.array([[1, 2], [1, 3]])
    expected, _ = M.transformer_forward(src, tgt_in, params, config)
    module = port.to_torch_transformer(params, config)
    with torch.no_grad():
        train = module.train()(torch.from_numpy(src), torch.from_numpy(tgt_in)).numpy()
        evaluated = module.eval()(torch.from_numpy(src), torch.from_numpy(tgt_in)).numpy()
    assert_close(train, expected, impl="TorchTransformer", what="logits (train mode)")
    assert_close(evaluated[1], expected[1], impl="TorchTransformer", what="logits of the real source (eval mode)")
    if norm_first:
        assert np.isnan(evaluated[0]).all(), "torch's pre-norm fast path no longer returns NaN here: update the docs"
    else:
        assert_close(evaluated[0], expected[0], impl="TorchTransformer", what="logits of the padding (eval mode)")


# ----------------------------------------------------------------------------------------------
# Layer norm and the cross-entropy against torch.nn.functional
# ----------------------------------------------------------------------------------------------


@given(case=layer_norm_cases(np.float64))
def test_layer_norm_equals_torch_functional_layer_norm(case):
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(a, requires_grad=True) for a in (case.x, case.gamma, case.beta)]
    out = torch.nn.functional.layer_norm(tensors[0], case.x.shape[-1:], tensors[1], tensors[2], eps=1e-5)
    grads = torch.autograd.grad(out, tensors, torch.from_numpy(case.dout))
    expected, cache = T.layer_norm_forward(case.x, case.gamma, case.beta)
    assert_close(out.detach().numpy(), expected, impl="torch.nn.functional.layer_norm", what="out")
    for name, g, e in zip(("dx", "dgamma", "dbeta"), grads, T.layer_norm_backward(case.dout, cache)):
        assert_close(g.numpy(), e, impl="torch.nn.functional.layer_norm", what=name)


@given(case=cross_entropy_cases(np.float64))
def test_cross_entropy_equals_torch_functional_cross_entropy(case):
    """F.cross_entropy(logits (N, V), targets (N,), label_smoothing=ε, ignore_index=…), mean reduction."""
    torch = pytest.importorskip("torch")
    v = case.logits.shape[-1]
    counted = np.ones(case.targets.shape, bool) if case.ignore_index is None else case.targets != case.ignore_index
    assume(counted.any())  # with nothing counted torch's mean is 0/0 = NaN; ours is 0 (the next check)
    logits = torch.tensor(case.logits.reshape(-1, v), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(case.targets.reshape(-1)),
                                             ignore_index=-100 if case.ignore_index is None else case.ignore_index,
                                             label_smoothing=case.label_smoothing)
    (dlogits,) = torch.autograd.grad(loss, logits, torch.tensor(case.dloss, dtype=torch.float64))
    expected, cache = T.cross_entropy_forward(case.logits, case.targets, case.label_smoothing, case.ignore_index)
    assert_close(loss.detach().numpy(), expected, impl="torch.nn.functional.cross_entropy", what="loss")
    assert_close(dlogits.numpy().reshape(case.logits.shape), T.cross_entropy_backward(case.dloss, cache),
                 impl="torch.nn.functional.cross_entropy", what="dlogits")


def test_torch_cross_entropy_is_nan_where_every_target_is_ignored_and_ours_is_zero():
    """The one documented difference: a mean over no targets. torch divides 0 by 0; we return 0
    with gradient 0, so a batch made only of padding cannot poison a training run with NaN."""
    torch = pytest.importorskip("torch")
    logits, targets = np.random.default_rng(0).standard_normal((3, 5)), np.zeros(3, np.int64)
    theirs = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), ignore_index=0,
                                               label_smoothing=0.1)
    assert torch.isnan(theirs), f"torch now returns {theirs} for a mean over no targets: update the docs"
    loss, cache = T.cross_entropy_forward(logits, targets, 0.1, ignore_index=0)
    assert loss == 0.0 and np.all(T.cross_entropy_backward(1.0, cache) == 0.0)
