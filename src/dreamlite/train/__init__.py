"""Training: the Shapes VAE (``vae``) and the diffusion recipes."""
