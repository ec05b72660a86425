"""Reference code: a straightforward Flax linen ResNet for CIFAR, written the way the Flax ImageNet example writes it.

Same ``ResNetBlock`` / ``ResNet`` modules, ``partial``-bound conv and BatchNorm (momentum 0.9, epsilon 1e-5), a
projection shortcut (1x1 conv + norm) where the shape changes, and the example's train step (cross-entropy + L2
weight penalty in the loss, ``value_and_grad``, ``TrainState.apply_gradients``, batch statistics as mutable state).
Adapted to CIFAR as in He et al. 2015 section 4.2: a 3x3/16 stem without max-pool, three stages of n basic blocks
with 16/32/64 filters, depth = 6n + 2 (ResNet-20/56/110). Input NHWC (B, 32, 32, 3) float32.

``ImageNetResNet`` / ``imagenet_resnet(50)`` is the example's ImageNet network itself (``BottleneckResNetBlock``,
v1.5: stride on the 3x3; 7x7/2 stem, 3x3/2 max-pool, stages of 3/4/6/3 blocks with 64..512 filters x4). With
``dtype=jnp.bfloat16`` it computes in bfloat16 from float32 parameters (the example's half precision); the loss is
taken in float32 either way.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

ModuleDef = Any


class ResNetBlock(nn.Module):
    """ResNet block (as in the Flax ImageNet example)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNetV1 for 32x32 inputs (CIFAR stem: 3x3 conv, no max-pool)."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = ResNetBlock
    num_classes: int = 10
    num_filters: int = 16
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        x = conv(self.num_filters, (3, 3), name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck ResNet block (as in the Flax ImageNet example)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), self.strides)(y)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ImageNetResNet(nn.Module):
    """ResNetV1.5 for ImageNet (the example's ``ResNet``, without its multi-device ``axis_name``)."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BottleneckResNetBlock
    num_classes: int = 1000
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


IMAGENET_STAGES = {18: (ResNetBlock, (2, 2, 2, 2)), 34: (ResNetBlock, (3, 4, 6, 3)),
                   50: (BottleneckResNetBlock, (3, 4, 6, 3)), 101: (BottleneckResNetBlock, (3, 4, 23, 3)),
                   152: (BottleneckResNetBlock, (3, 8, 36, 3))}


def imagenet_resnet(depth: int, num_classes: int = 1000, dtype: Any = jnp.float32) -> ImageNetResNet:
    """The example's ResNet18/34/50/101/152."""
    if depth not in IMAGENET_STAGES:
        raise ValueError(f"imagenet_resnet: depth must be one of {sorted(IMAGENET_STAGES)}, got {depth}")
    block, stages = IMAGENET_STAGES[depth]
    return ImageNetResNet(stage_sizes=stages, block_cls=block, num_classes=num_classes, dtype=dtype)


def cifar_resnet(depth: int, num_classes: int = 10, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-``depth`` for CIFAR, depth = 6n + 2."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    return ResNet(stage_sizes=(n, n, n), num_classes=num_classes, dtype=dtype)


class TrainState(train_state.TrainState):
    batch_stats: Any


def create_train_state(model: nn.Module, rng: jax.Array, image_shape: Sequence[int], learning_rate: float = 0.1,
                       momentum: float = 0.9) -> TrainState:
    variables = jax.jit(model.init, static_argnames="train")(rng, jnp.ones(image_shape, jnp.float32), train=False)
    tx = optax.sgd(learning_rate=learning_rate, momentum=momentum, nesterov=True)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


def cross_entropy_loss(logits, labels):
    logits = logits.astype(jnp.float32)  # a bfloat16 model's loss in float32 (a no-op for float32 models)
    one_hot_labels = jax.nn.one_hot(labels, num_classes=logits.shape[-1])
    return jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot_labels))


def train_step(state: TrainState, batch: dict, weight_decay: float = 1e-4):
    """Perform a single training step (the example's, without the learning-rate metric)."""

    def loss_fn(params):
        logits, new_model_state = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                                 batch["image"], mutable=["batch_stats"])
        loss = cross_entropy_loss(logits, batch["label"])
        weight_penalty_params = jax.tree_util.tree_leaves(params)
        weight_l2 = sum(jnp.sum(x**2) for x in weight_penalty_params if x.ndim > 1)
        loss = loss + weight_decay * 0.5 * weight_l2
        return loss, (new_model_state, logits)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    aux, grads = grad_fn(state.params)
    new_model_state, logits = aux[1]
    metrics = {"loss": aux[0], "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state["batch_stats"])
    return new_state, metrics
