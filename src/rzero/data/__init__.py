"""Training data of a prompt-only method: prompt sources (the world grammar, prompt files), grids, tracking subsets."""
