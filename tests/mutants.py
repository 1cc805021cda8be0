"""One-line bugs that a named test must catch, each applied to the checkout in turn, its test run,
and the file put back: a check that the suite still guards what it claims to after code moves.

    .venv/bin/python tests/mutants.py [ROW ...]     # all rows by default; about a minute

Prints, per row, ``caught`` (the test failed with the bug in), ``SURVIVED`` (it passed) or ``NOT
APPLIED`` (the bug's text is not found once in its file: moved or rewritten code, so update the
row); exits 1 unless every row is caught. It refuses to start while a file it would change has
uncommitted changes, so nothing of yours is overwritten. Not a test module (pytest does not
collect it): each row runs pytest in a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """A bug: ``edits`` (old text, new text), each made once in ``file``; ``test``, the pytest node
    under ``tests/`` that must fail with it."""

    row: int
    bug: str
    file: str
    edits: tuple[tuple[str, str], ...]
    test: str


#: the Ray driver's collection of posted checkpoints, moved after the ended cells' files by row 10
_POSTS = (" " * 16 + "# checkpoints first: an ended cell's last posts are in, and its final files come after them\n"
          + " " * 16 + "for cell, files in ray.get(mailbox.collect.remote()):\n"
          + " " * 20 + "write_files(folders[cell], files)\n")
_ENDED = " " * 20 + 'line.ended_cell(result, running=len(waiting))  # "running": handed to Ray, which queues them\n'

MUTANTS = [
    Mutant(1, "the random state is not put back after the discovery run on 2 and 3 rows", "ppl_vae/infer/pairs.py",
           (("with preserved_rng(x.device):\n            sites = discover(",
             "if True:\n            sites = discover("),),
           "test_pyro_code.py::test_building_a_trainer_leaves_the_random_stream_and_each_modules_mode_as_it_was"),
    Mutant(2, "modules are left in eval mode after the discovery run", "ppl_vae/infer/pairs.py",
           (("            module.train(training)", "            pass"),),
           "test_pyro_code.py::test_building_a_trainer_leaves_the_random_stream_and_each_modules_mode_as_it_was"),
    Mutant(3, "beta-VAE score: one value of the fixed factor per batch of L pairs, not one per pair",
           "ppl_vae/evaluation/disentanglement.py",
           (("    pairs = sample_sharing_factor(world, np.repeat(k, batch_size), 2, rng)\n"
             "    groups = pairs.reshape(num_points, 2 * batch_size, -1)",
             "    groups = sample_sharing_factor(world, k, 2 * batch_size, rng)"),),
           "test_disentanglement.py::test_each_beta_vae_pair_draws_the_shared_factors_value_anew"),
    Mutant(4, "MIG: gaps divided by log(number of factor values), not the factor's sample entropy",
           "ppl_vae/evaluation/disentanglement.py",
           (("gaps = (top[0] - top[1]) / entropy",
             "gaps = (top[0] - top[1]) / np.log(np.asarray(world.factor_sizes)[varying])"),),
           "test_disentanglement.py::test_mig_divides_each_gap_by_the_factors_sample_entropy"),
    Mutant(5, "FactorVAE: dimensions pruned on their variance, not their standard deviation",
           "ppl_vae/evaluation/disentanglement.py",
           (("active = np.sqrt(global_variance) >= prune_threshold", "active = global_variance >= prune_threshold"),),
           "test_disentanglement.py::test_factor_vae_prunes_on_the_standard_deviation_not_the_variance"),
    Mutant(6, "the complexity-corrected score's sign flipped", "ppl_vae/evaluation/anomaly.py",
           (('"complexity_corrected": neg_log_px - png_nats(x)', '"complexity_corrected": png_nats(x) - neg_log_px'),),
           "test_image_studies.py::test_the_corrected_anomaly_scores_are_their_definitions"),
    Mutant(7, "the likelihood ratio inverted", "ppl_vae/evaluation/anomaly.py",
           (('"likelihood_ratio": neg_log_px + LocalPixelModel(train).log_prob(x)',
             '"likelihood_ratio": -neg_log_px - LocalPixelModel(train).log_prob(x)'),),
           "test_image_studies.py::test_the_corrected_anomaly_scores_are_their_definitions"),
    Mutant(8, "held-out and train-subset scoring on corrupted inputs when input_noise is on",
           "ppl_vae/infer/training.py",
           (("with preserved_rng(self.device):  # scoring draws z",
             "with preserved_rng(self.device), corrupted_inputs(self.guide, self.config.input_noise, "
             "self.config.noise_level):  # scoring draws z"),),
           "test_image_studies.py::test_a_denoising_run_is_scored_on_clean_inputs"),
    Mutant(9, "a cell's posted checkpoints written newest first", "ppl_vae/lab/ray_runner.py",
           (("for cell, files in ray.get(mailbox.collect.remote()):",
             "for cell, files in reversed(ray.get(mailbox.collect.remote())):"),),
           "test_ray.py::test_the_driver_writes_each_cells_checkpoints_oldest_first_and_its_final_files_last"),
    Mutant(10, "posted checkpoints written after the ended cell's final files", "ppl_vae/lab/ray_runner.py",
           ((_POSTS, ""), (_ENDED, _ENDED + _POSTS)),
           "test_ray.py::test_the_driver_writes_each_cells_checkpoints_oldest_first_and_its_final_files_last"),
    Mutant(11, "the replayed gradient check's tolerances 1,000 times looser", "ppl_vae/infer/capture.py",
           (("GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6", "GRAD_RTOL, GRAD_ATOL = 1e-1, 1e-3"),),
           "test_capture.py::test_a_replay_whose_gradients_differ_runs_eagerly_with_a_warning"),
    Mutant(12, "the compiled graph used without its check against the eager step", "ppl_vae/infer/capture.py",
           (("mismatch = self._mismatch(made, inputs, loss, grads, grad_of, rng_before, rng_after)",
             "mismatch = None"),),
           "test_capture.py::test_a_graph_that_does_not_compile_or_compiles_wrong_is_replayed_uncompiled"),
    Mutant(13, "the in-between distance includes an end point", "ppl_vae/evaluation/latent_space.py",
           (('"inner": distance[:, 1:-1].mean().item()', '"inner": distance[:, 1:].mean().item()'),),
           "test_image_studies.py::test_the_in_between_distance_counts_the_inner_points_only"),
    Mutant(14, "latent2d's k-means ARI scored against the training labels cut to the held-out length",
           "ppl_vae/lab/studies/latent2d.py",
           (("**cluster_scores(code, labels, CLUSTERS)",
             "**cluster_scores(code, data.train_labels[:len(x)], CLUSTERS)"),),
           "test_image_studies.py::test_latent2d_clusters_the_held_out_codes_against_the_held_out_labels"),
]


def outcome(mutant: Mutant) -> str:
    """Apply ``mutant``, run its test, put the file back: ``caught``, ``SURVIVED``, ``NOT APPLIED ...``
    or ``ERROR ...`` (pytest could not run the test)."""
    path = ROOT / mutant.file
    original = text = path.read_text()
    for old, new in mutant.edits:
        if text.count(old) != 1:
            return f"NOT APPLIED: {old.strip().splitlines()[0]!r} is found {text.count(old)} times in {mutant.file}"
        text = text.replace(old, new)
    path.write_text(text)
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              f"tests/{mutant.test}"], cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    return {0: "SURVIVED", 1: "caught"}.get(run.returncode, f"ERROR: pytest exited {run.returncode}")


def main(rows: list[str]) -> int:
    unknown = set(rows) - {str(m.row) for m in MUTANTS}
    if unknown:
        print(f"no row {', '.join(sorted(unknown))}: the rows are 1 to {len(MUTANTS)}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if not rows or str(m.row) in rows]
    files = sorted({m.file for m in chosen})
    changed = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    if changed:
        print(f"uncommitted changes in files the mutants change:\n{changed}commit or stash them first", file=sys.stderr)
        return 2
    results = []
    for mutant in chosen:
        results.append(outcome(mutant))
        print(f"row {mutant.row:>2} {results[-1]:<9} {mutant.bug}\n       by {mutant.test}", flush=True)
    caught = results.count("caught")
    print(f"{caught} of {len(chosen)} caught")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
