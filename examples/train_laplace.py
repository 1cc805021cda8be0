from my_pairs import LaplaceEncoder, LaplaceVAE

from ppl_vae import DATASETS, TrainConfig, Trainer

data = DATASETS["digits"]()
model = LaplaceVAE(data.data_shape)
history = Trainer(model, LaplaceEncoder(model), data, TrainConfig(epochs=3)).fit()
print(f"held-out -ELBO {history[-1]['test_loss']:.1f} nats")
