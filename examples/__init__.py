"""Your own networks trained by genpar: model.name "examples.custom_vae:TinyVAE" and
"examples.custom_gan:TinyGAN" (README, "Your own network"). Run from the repository root (or
with it on PYTHONPATH) so that `examples` imports."""
