"""The study: experiment grids over prompts, generators and mix-ins."""
