"""Keras 3 models in the doctor (issue 14): `clipdoctor diagnose DATA --keras model.keras`.

With the torch backend (``KERAS_BACKEND=torch``, set before keras is first imported) a Keras 3
``keras.Model`` IS a ``torch.nn.Module``: its variables are ``torch.nn.Parameter`` objects
(``requires_grad`` follows ``Variable.trainable``; ``layer.trainable = False`` clears it on the
layer's weights), and calling the model on a torch tensor runs eagerly in torch and builds an
autograd graph. So the doctor's framework-agnostic probes can train and inspect it once they
are given four things, which :class:`KerasAdapter` provides:

- ``module``: a :class:`KerasModule` (``nn.Module``) whose ``forward`` takes clipdoctor's batch
  ``(B, T, C, H, W)`` (float32, ImageNet-normalised), converts it to what the Keras model
  expects (pixel range and channels-last layout) and calls the model with
  ``training=self.training``, so ``.train()`` / ``.eval()`` reach Keras' Dropout, BatchNorm
  and random augmentation layers. Its ``parameters()`` are exactly the model's trainable
  variables.
- ``loss_fn(outputs, y_int)``: the compiled Keras loss rebuilt in torch on integer labels.
- ``make_optimizer(params)``: the compiled Keras optimizer rebuilt as a torch optimizer.
- ``facts()``: architecture facts read from the Keras graph (per-frame pooling and random
  augmentation inside ``TimeDistributed``, last-step reads of bidirectional sequences, the
  output activation, frozen layers...), which torch module inspection cannot see because
  Keras layers are not torch layers.

Keras itself is imported only by the functions that need it (:func:`import_keras`), so
importing this module costs nothing for users without Keras.

Package layout: ``loading`` (import_keras, is_keras_model, load_keras_model), ``module``
(KerasModule, copy_keras_model), ``losses`` and ``optimizers`` (the compile config in torch),
``graph`` (walking the layer graph: the facts), ``inputs`` (input shape, pixel range) and
``adapter`` (KerasAdapter), ``augment`` (per-frame random layers as a clip callable).
"""

from __future__ import annotations

from .adapter import KerasAdapter
from .augment import FrameAugmenter, frame_augmenter
from .loading import INSTALL_HINT, import_keras, is_keras_model, load_keras_model
from .losses import KerasLossFn, LossSpec, ProbabilityCrossEntropy, make_loss_fn, read_loss
from .module import KerasModule, copy_keras_model
from .optimizers import TorchOptimizerFactory, read_optimizer

__all__ = ["INSTALL_HINT", "FrameAugmenter", "KerasAdapter", "KerasLossFn", "KerasModule",
           "LossSpec", "ProbabilityCrossEntropy", "TorchOptimizerFactory", "copy_keras_model",
           "frame_augmenter", "import_keras", "is_keras_model", "load_keras_model",
           "make_loss_fn", "read_loss", "read_optimizer"]
