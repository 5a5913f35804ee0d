"""Networks: the MobileUNet, text encoders, the VAE factory and official-checkpoint conversion."""
