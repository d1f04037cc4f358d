"""The few-step generator of R0 and its EMA."""
from .few_step import FewStepGenerator, GeneratorOutput, TrainableGenerator
from .load import load_generator, resolve_snapshot

__all__ = ["FewStepGenerator", "GeneratorOutput", "TrainableGenerator", "load_generator", "resolve_snapshot"]
