"""Diagnose posterior collapse in your own model: train one VAE with a heavy KL weight, and one with
free bits as well (Kingma et al. 2016), then read what ``ppl_vae.diagnose`` measured of each.

    python examples/diagnose_collapse.py [--epochs 20] [--limit N]
"""

import argparse

import torch

import ppl_vae
from ppl_vae.guides import GaussianGuide
from ppl_vae.models import vae

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--limit", type=int, default=None, help="train on this many digits only (a smoke run)")
parser.add_argument("--seed", type=int, default=0, help="the networks' initial weights")
args = parser.parse_args()
torch.manual_seed(args.seed)

data = ppl_vae.data.digits(limit=args.limit)
for name, options in {"KL weight 50": {"kl_weight": 50.0},
                      "KL weight 50, free bits 0.5": {"kl_weight": 50.0, "free_bits": 0.5}}.items():
    model = vae(data.data_shape, latent_dim=16, hidden=[256])
    found = ppl_vae.fit(model, GaussianGuide(model), data, epochs=args.epochs, **options).diagnostics
    print(f"{name}: {found['active_units']} of 16 units active, KL {found['kl']:.2f} nats "
          f"(I(x; z) {found['mi']:.2f}, KL(q(z) || p(z)) {found['marginal_kl']:.2f})")
