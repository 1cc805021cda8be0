"""A beta sweep with the disentanglement metrics: train a conv VAE at beta = 1 and 4 on dSprites-like
shapes (Higgins et al. 2017, 32 x 32 here), then score each encoder with the beta-VAE score, the
FactorVAE score and the MIG, beside what each beta spends on the KL.

    python examples/beta_sweep.py [--epochs 10] [--train-size 20000] [--points 2000]
"""

import argparse

import torch

import ppl_vae
from ppl_vae.evaluation.disentanglement import beta_vae_score, encoder_means, factor_vae_score, mig
from ppl_vae.guides import GaussianGuide
from ppl_vae.models import vae

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--train-size", type=int, default=20_000)
parser.add_argument("--points", type=int, default=2_000, help="training points of each metric")
parser.add_argument("--seed", type=int, default=0, help="the networks' initial weights")
args = parser.parse_args()
torch.manual_seed(args.seed)

data = ppl_vae.DATASETS["dsprites"](image_size=32, train_size=args.train_size, test_size=args.train_size // 10)
for beta in (1.0, 4.0):
    model = vae(data.data_shape, latent_dim=10, hidden=[256], network="conv")
    fitted = ppl_vae.fit(model, GaussianGuide(model), data, epochs=args.epochs, kl_weight=beta, batch_size=64,
                         diagnostics=ppl_vae.DiagnosticsConfig(rows=200, iw_samples=25))
    represent = encoder_means(fitted.guide)
    scores = [f(represent, data.world, num_train=args.points, num_eval=args.points // 2)["score"]
              for f in (beta_vae_score, factor_vae_score)]
    scores.append(mig(represent, data.world, num_train=args.points)["score"])
    print(f"beta {beta:g}: KL {fitted.diagnostics['kl']:.2f} nats, {fitted.diagnostics['active_units']} active units; "
          f"beta-VAE {scores[0]:.3f}, FactorVAE {scores[1]:.3f}, MIG {scores[2]:.3f}")
