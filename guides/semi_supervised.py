"""The inference model of M2 (Kingma et al. 2014, Eq. 4): q(y | x) q(z | x, y), the class drawn (or,
under estimator ``enum``, enumerated) only on the rows whose label the model does not observe."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from ppl_vae.data.datasets import batch_labels
from ppl_vae.errors import IncompatiblePairError
from ppl_vae.networks import Encoder, GaussianHead, Network, joined
from ppl_vae.registry import GUIDES


@GUIDES.register("m2")
class SemiSupervisedGuide(nn.Module):
    """q(y | x) is the model's ``classifier`` (one network serves the guide and the classification
    term of Eq. 9); q(z | x, y) a diagonal Gaussian from an encoder of x whose features are read beside
    the one-hot y. ``y_unobserved`` is marked for parallel enumeration, which only estimator ``enum``
    acts on (the others draw it, with score-function gradients under ``mc``).

    :param model: an M2 model (``SemiSupervisedVAE``): its ``classifier``, ``classes`` and sites are used.
    :param hidden, network: the z encoder's widths and kind (default: the model's).
    """

    mean_field = False  # q(z | x, y) depends on the latent y
    support = constraints.integer_interval(0, 9)  # what it draws at y_unobserved (z is real)
    reparameterised = False

    def __init__(self, model: nn.Module, hidden: list[int] | None = None, network: Network | None = None):
        super().__init__()
        if not hasattr(model, "classifier") or set(getattr(model, "latent_dims", {})) != {"z", "y_unobserved"}:
            raise IncompatiblePairError(
                f"guide 'm2' needs the M2 model (a class y, observed where labelled, and a style z, with a classifier "
                f"q(y | x)), but model {type(model).__name__} has the latent sites "
                f"{', '.join(map(repr, getattr(model, 'latent_dims', {}))) or 'none'}: use model 'm2'")
        config = model.network_config
        hidden = list(config.hidden if hidden is None else hidden)
        # q(y | x) is the model's network, not registered here a second time: the model owns it (its
        # parameters and state), and a module registered under two owners is swapped twice by functional_call
        object.__setattr__(self, "classifier", model.classifier)
        self.classes = model.classes
        self.encoder = Encoder(model.data_shape, hidden, network or config.network, config.activation)
        self.z_head = GaussianHead(self.encoder.out_features + model.classes, model.latent_dims["z"])

    def forward(self, x, y=None, labelled=None):
        y, labelled = batch_labels(x, y, labelled)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):
                guess = pyro.sample("y_unobserved", dist.Categorical(logits=self.classifier(x)))
            label = y.where(labelled, guess)  # the given label where known
            one_hot = nn.functional.one_hot(label, self.classes).to(x.dtype)
            pyro.sample("z", dist.Normal(*self.z_head(joined(self.encoder(x), one_hot))).to_event(1))
