from ppl_vae import DATASETS, GUIDES, MODELS
from ppl_vae.evaluation.disentanglement import beta_vae_score, encoder_means, factor_vae_score, mig

data = DATASETS["dsprites"](image_size=32, train_size=256, test_size=64)
model = MODELS["vae"](data.data_shape, latent_dim=10, hidden=[256], network="conv")
represent = encoder_means(GUIDES["gaussian"](model))  # images -> E_q[z | x]; untrained here
print("beta-VAE", beta_vae_score(represent, data.world, num_train=300, num_eval=150)["score"])
print("FactorVAE", factor_vae_score(represent, data.world, num_train=300, num_eval=150)["score"])
print("MIG", mig(represent, data.world, num_train=300)["score"])
