"""The study: what a run will cost (estimate), what it did cost (account), charts of both."""
