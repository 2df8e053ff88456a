"""Weight mapping between our models and published checkpoints (diffusers Wan layouts, Hugging Face T5)."""
