from tutorial_vae import VAE

from ppl_vae import DATASETS, TrainConfig, Trainer
from ppl_vae.evaluation.collapse import diagnose

data = DATASETS["digits"]()
vae = VAE()
trainer = Trainer(vae.model, vae.guide, data, TrainConfig(epochs=3))
history = trainer.fit()                      # trains vae.encoder and vae.decoder themselves
report = diagnose(trainer.model, trainer.guide, data.test_eval)
print(f"held-out -ELBO {history[-1]['test_loss']:.1f} nats, KL by site {report['kl_sites']}, "
      f"active units {report['active_units']}")
