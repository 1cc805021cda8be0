import ppl_vae
from ppl_vae.guides import GaussianGuide
from ppl_vae.models import vae

data = ppl_vae.data.digits()                     # 5,000 MNIST digits shipped with the install
model = vae(data.data_shape, latent_dim=16)
fitted = ppl_vae.fit(model, GaussianGuide(model), data, epochs=5)
print(f"held-out -ELBO {fitted.diagnostics['loss']:.1f} nats, {fitted.diagnostics['active_units']} active units")
