"""Weight mapping between our models and published checkpoints (diffusers Wan VAE layouts)."""
