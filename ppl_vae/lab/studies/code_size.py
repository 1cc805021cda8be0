"""Compression against code size: what a smaller code costs, autoencoder and VAE side by side.

Seed 000's point, made a table: squeeze the digits through 2, 4, ..., 32 numbers and the
held-out reconstruction gets worse by a measurable amount; the autoencoder spends every
dimension on reconstruction, the VAE pays a KL for each and leaves the ones it cannot afford
inactive. Reads the grid axes ``method`` (variants ``ae`` and ``vae``) and ``latent_dim``.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.evaluation.latent_space import reconstruction_error
from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.viz import plots


def measure(model, guide, data, config: dict) -> dict:
    """Held-out mean squared error of the reconstructions against the clean (grey) digits."""
    return {"recon_mse": reconstruction_error(model, guide, data.test_eval, data.test).mean().item()}


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Per code size: each method's held-out reconstruction (nats and MSE), the VAE's -ELBO, KL and
    active units; a curve of them; checks that the 2-D code costs reconstruction against the largest."""
    by = {(r["method"], r["latent_dim"]): r for r in rows}
    sizes = sorted({r["latent_dim"] for r in rows})
    lines = ["# Compression against code size", "",
             "Held-out digits, nats per image unless marked. recon = -E_q log p(x | z) (the autoencoder's whole "
             "loss); MSE = mean squared pixel error of the reconstruction against the clean grey digit; the VAE's "
             "-ELBO = recon + KL; active units: Cov_x E_q[z_d | x] > 0.01 (Burda et al. 2016).", "",
             "| code size | AE recon | AE MSE | VAE recon | VAE MSE | VAE KL | VAE -ELBO | VAE log p(x) IW "
             "| VAE active units |",
             "|" + "---|" * 9]
    for size in sizes:
        ae, vae = by.get(("ae", size)), by.get(("vae", size))
        cell = lambda r, key, f: f"{r[key]:{f}}" if r else ""  # noqa: E731
        lines.append(f"| {size} | {cell(ae, 'recon', '.2f')} | {cell(ae, 'recon_mse', '.4f')} | "
                     f"{cell(vae, 'recon', '.2f')} | {cell(vae, 'recon_mse', '.4f')} | {cell(vae, 'kl', '.2f')} | "
                     f"{cell(vae, 'loss', '.2f')} | {cell(vae, 'log_px_iw', '.2f')} | "
                     f"{f'{vae['active_units']} / {size}' if vae else ''} |")
    series = {f"{m.upper()} recon": [by[(m, s)]["recon"] for s in sizes] for m in ("ae", "vae")
              if all((m, s) in by for s in sizes)}
    if all(("vae", s) in by for s in sizes):
        series["VAE -ELBO"] = [by[("vae", s)]["loss"] for s in sizes]
    drawn = plots.curves(sizes, series, out / "figures" / "code_size.png", "code size (dimensions)",
                         "nats per held-out image", logx=True, title="What a smaller code costs")
    lines += ["", figure(out, drawn, "Held-out reconstruction (and the VAE's -ELBO) against the code size"), "",
              "## Checks", ""]
    small, large = sizes[0], sizes[-1]
    for method in ("ae", "vae"):
        if (method, small) in by and (method, large) in by and small < large:
            a, b = by[(method, small)]["recon"], by[(method, large)]["recon"]
            lines.append(check_line(a > b, f"{method.upper()}: a {small}-D code reconstructs worse than a "
                                           f"{large}-D one ({a:.2f} against {b:.2f} nats, {a - b:.2f} nats the price)"))
    if all(("vae", s) in by for s in sizes):
        used = [by[("vae", s)]["active_units"] for s in sizes]
        lines.append("- observed: the VAE's active units per code size: "
                     + ", ".join(f"{u} of {s}" for u, s in zip(used, sizes)))
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("method", "latent_dim"), variants={"method": ("ae", "vae")}, measure=measure,
              columns=("recon_mse",))
