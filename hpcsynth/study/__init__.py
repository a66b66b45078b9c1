"""The study: experiment grids over prompts, generators and mix-ins (grid*), what a run will cost
(estimate) and did cost (account), charts of both."""
