"""A grid on Ray: the bundled bits-vae study (a 1-D latent VAE on replicated bits, n = 1 and 5,
three seeds: six cells) with every cell a Ray task, on a new local Ray instance or the cluster at
``--address``. Needs the optional extra: pip install -e '.[ray]'.

    python examples/ray_grid.py [--address HOST:PORT] [--quick] [--out runs/ray-grid]
"""

import argparse

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--address", default="", help="a Ray cluster (auto, HOST:PORT); default: a new local instance")
parser.add_argument("--quick", action="store_true", help="smoke size: seconds")
parser.add_argument("--out", default="runs/ray-grid")
args = parser.parse_args()

summaries = ppl_vae.run("bits-vae", args.out, quick_run=args.quick, ray=args.address, force=True, progress=False)
for s in summaries:  # one per cell, gathered from the Ray tasks into the run folder
    print(f"{s['cell']}: -ELBO {s['loss']:.3f} nats, KL {s['kl']:.3f}, {s['active_units']} active")
print(f"results: {args.out}/results.csv")
