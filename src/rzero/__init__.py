"""rzero: reward-centric few-step text-to-image generation."""
__version__ = "0.1.0"
